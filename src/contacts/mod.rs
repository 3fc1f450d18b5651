//! The contacts slice: who may talk to whom.
//!
//! - [`repo`]: the contact rules (the request state machine, blocks, the one messaging
//!   rule [`repo::messageable_pairs`]) and user search, over the `contacts` and `blocks`
//!   tables.
//! - [`routes`]: `/api/contacts*` and `/api/users` (search); each change is published to
//!   both users as a `contact` event.

pub mod repo;
pub mod routes;
