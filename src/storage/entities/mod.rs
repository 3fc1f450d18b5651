//! SeaORM entities, one module per table (schema: the `migration` crate). Repositories
//! in the parent module are the only users of these.

pub mod block;
pub mod bus_directory;
pub mod bus_node;
pub mod contact;
pub mod conversation;
pub mod conversation_mute;
pub mod file;
pub mod login_session;
pub mod message;
pub mod notification;
pub mod notification_counter;
pub mod receipt;
pub mod transfer;
pub mod transfer_chunk;
pub mod user;
