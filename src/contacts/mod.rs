//! The contacts slice: who may talk to whom.
//!
//! - [`repo`]: the contact rules (the request state machine, blocks, the one messaging
//!   rule [`repo::messageable_pairs`]) and user search, over the `contacts` and `blocks`
//!   tables.
//! - [`service`]: each change with its consequences: published to both users as a
//!   `contact` event, a conversation opened on acceptance, uploads failed on a block.
//! - [`routes`]: `/api/contacts*` and `/api/users` (search), thin over the service.

pub mod repo;
pub mod routes;
pub mod service;
