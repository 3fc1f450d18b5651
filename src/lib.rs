//! Switchboard: a distributed one-to-one chat server.
//!
//! This crate is the `switchboard` binary's library: everything but the actor system
//! (`switchboard-actors`) and the schema (`migration`). Modules, from the door inwards:
//!
//! - [`cli`]: the command line (`switchboard [all|auth|gateway|messaging|notify|migrate]`).
//! - [`config`]: layered configuration (defaults < file < environment < flags), validated.
//! - [`startup`]: [`startup::Application`] builds the services of one process on one
//!   listener and runs them until a shutdown future resolves.
//! - [`gateway`]: the public entry point: reverse proxy to the services, health checks.
//! - [`notify`]: the notify service's consumer: bus events → stored notifications.
//! - [`bus`]: the RabbitMQ implementation of the actors' `Bus` port.
//! - [`routes`]: HTTP handlers grouped by resource (`health`, `auth`, `pages`).
//! - [`auth`]: passwords (argon2id), access tokens (JWT + revocable sessions), the auth
//!   service logic, and the `require_auth` hoop that puts the caller in the depot.
//! - [`domain`]: typed ids and parsed inputs (`Username`, `Password`, `DisplayName`).
//! - [`storage`]: the database connection, SeaORM entities and one repository per aggregate.
//! - [`error`]: [`error::AppError`], the one place errors become HTTP responses.
//! - [`net`]: the client's address behind trusted proxies (`X-Forwarded-For`).
//! - [`ratelimit`]: keyed rate limits (login per address and per username, registration).
//! - [`telemetry`]: tracing subscriber and panic hook.

pub mod auth;
pub mod bus;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod gateway;
pub mod net;
pub mod notify;
pub mod ratelimit;
pub mod routes;
pub mod startup;
pub mod storage;
pub mod telemetry;

/// Milliseconds since the Unix epoch: the one time unit stored in the database.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
