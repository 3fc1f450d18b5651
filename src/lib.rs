//! Switchboard: a distributed one-to-one chat server.
//!
//! This crate is the `switchboard` binary's library: everything but the actor system
//! (`switchboard-actors`) and the schema (`migration`). One folder per service, each with
//! its routes and its repository, then what they share.
//!
//! The services (docs/architecture.md):
//!
//! - [`auth`]: accounts, passwords (argon2id), access tokens (JWT + revocable login
//!   sessions), `/api/auth/*`, and the `require_auth` hoop every service uses.
//! - [`contacts`]: the contact rules (requests, blocks, who may message whom) and user
//!   search.
//! - [`messaging`]: the message path (the WebSocket, the chat repository the actors write
//!   through and its writes on both databases, history) and files (chunked uploads,
//!   downloads).
//! - [`notify`]: notifications: the consumer that turns bus events into them, their
//!   storage (rules, reads and writes, on both databases), and `/api/notifications*` with
//!   the live stream.
//! - [`gateway`]: the public entry point: routing of paths to service instances (reverse
//!   proxy), health checks, edge limits.
//!
//! What they share:
//!
//! - [`web`]: the composition root of one process: the router (which services a `Mount`
//!   serves), the request state (`AppState`, `Repos`: every repository), the CSRF guard,
//!   health, the OpenAPI document, and the web UI's pages.
//! - [`storage`]: the database connection and the SeaORM entities.
//! - [`writer`]: the committer, the one writer of the hot paths (appends, receipts,
//!   notifications; group commit, on a SQLite file one writer thread). It sits above
//!   `messaging` and `notify`: it runs their statements and implements the ports they
//!   queue writes through.
//! - [`bus`]: the RabbitMQ implementation of the actors' `Bus` port.
//! - [`startup`]: [`startup::Application`] builds the services of one process on one
//!   listener and runs them until a shutdown future resolves; [`cli`] is its command line
//!   (`switchboard [all|auth|gateway|messaging|notify|migrate]`).
//! - [`config`]: layered configuration (defaults < file < environment < flags), validated.
//! - [`domain`]: typed ids and parsed inputs (`Username`, `Password`, `DisplayName`).
//! - [`error`]: [`error::AppError`], the one place errors become HTTP responses, and the
//!   error codes.
//! - [`net`]: the client's address behind trusted proxies (`X-Forwarded-For`).
//! - [`ratelimit`]: keyed rate limits (login per address and per username, registration).
//! - [`telemetry`]: tracing subscriber and panic hook.

pub mod accounts;
pub mod auth;
pub mod contacts;
pub mod gateway;
pub mod messaging;
pub mod notify;

pub mod bus;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod net;
pub mod ratelimit;
pub mod startup;
pub mod storage;
pub mod telemetry;
pub mod web;
pub mod writer;

/// Milliseconds since the Unix epoch: the one time unit stored in the database.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
