#![allow(clippy::unwrap_used, clippy::expect_used)] // tests may panic: that is how they fail

//! Integration tests: the real app on real sockets, a real SQLite file per test, and the
//! local PostgreSQL where a module says so. One binary with modules, to link once.
//!
//! - [`helpers`]: `spawn_app()` and the `TestApp` client.
//! - [`auth`]: the auth API, instantiated once per database backend.
//! - [`health`]: health endpoints, error shapes, security headers.
//! - [`cluster`]: separate processes (auth, messaging nodes, gateway) on RabbitMQ;
//!   [`cluster_support`] starts them, and a private broker a test may restart.
//! - [`runtime`]: configuration file, restart with the same data, CLI exit codes,
//!   graceful shutdown.
//! - [`messaging`]: the delivery guarantee (acks, seqs, resends, sync, killed actors),
//!   receipts, typing, presence, limits; [`ws_client`] is the test's WebSocket client and
//!   [`ws_fuzz`] throws malformed frames at it.
//! - [`contacts`], [`files`], [`notifications`]: those services through their APIs.
//! - [`edits`]: edits and deletions of messages, through the seq stream.
//! - [`search`]: message search, isolation between users, both databases.
//! - [`images`]: image files: thumbnails, bombs and fakes refused.
//! - [`storage`]: the write queue on SQLite and PostgreSQL, migrations, checkpoints.
//! - [`holes`]: attacks that once worked (or could), each shut.
//! - [`openapi`]: the OpenAPI document against the routes.
//! - [`pages`]: the web pages and the CSRF guard over plain HTTP.
//! - [`bench_tool`]: the load tool runs against a real server.

mod accounts;
mod auth;
mod bench_tool;
mod cluster;
mod cluster_support;
mod contacts;
mod edits;
mod files;
mod health;
mod helpers;
mod holes;
mod images;
mod messaging;
mod notifications;
mod openapi;
mod pages;
mod runtime;
mod search;
mod storage;
mod ws_client;
mod ws_fuzz;
