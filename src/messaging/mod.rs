//! The messaging slice: the message path and files. The actors that carry live traffic
//! (sessions, rooms, transfers) are in the `switchboard-actors` crate; this is what they
//! are plugged into.
//!
//! - [`ws`]: `GET /ws`, the chat WebSocket: authenticates, opens a session actor, and
//!   moves frames between the socket and it.
//! - [`chat`]: the chat repository, the actors' `ChatStore`: appends and receipts (queued
//!   through its `MessageWrites` port for the committer, [`crate::writer`]),
//!   conversations, history.
//! - [`sqlite_writes`]: the same appends and receipts as the SQLite writer thread runs them.
//! - [`conversations`]: `/api/conversations*`, history for participants.
//! - [`messages`]: `/api/messages/{id}`, a sender's edits and deletions.
//! - [`search`]: `/api/search/messages`, full-text search in the caller's conversations.
//! - [`transfers`]: `/api/transfers*` (chunked uploads) and `/api/files/{id}` (downloads).
//! - [`transfer_service`]: the rules of uploads and downloads (who may, limits, chunk
//!   checks), with `TransferError`.
//! - [`files`]: the file repository (chunks, assembly, content addressing, quotas).
//! - [`debug`]: fault injection into the actor tree, mounted only when enabled.

pub mod chat;
pub mod conversations;
pub mod debug;
pub mod files;
pub mod images;
pub mod messages;
pub mod search;
pub(crate) mod sqlite_writes;
pub mod transfer_service;
pub mod transfers;
pub mod ws;
