//! Switchboard's actor system (ractor): every live thing is a supervised actor.
//!
//! ```text
//! NodeSupervisor
//! ├── SessionSupervisor       ── SessionActor   one per WebSocket connection
//! ├── RoomSupervisor          ── RoomActor      one per active conversation
//! ├── TransferSupervisor      ── TransferActor  one per file upload in progress
//! ├── NotificationSupervisor  ── NotificationStreamActor  one per user with open streams
//! └── BusBridge                                  events for this node's users
//! ```
//!
//! - [`ids`]: typed ids shared with the main crate.
//! - [`codes`]: [`codes::ErrorCode`], every error code a client can get (REST and WebSocket).
//! - [`ports`]: what the actors need from outside — [`ports::ChatStore`] (storage) and
//!   [`ports::Bus`] (events between nodes) — as traits the main crate implements.
//! - [`protocol`]: the WebSocket frames, client → server and server → client.
//! - [`supervisor`]: one generic one-for-one supervisor with a restart-intensity limit;
//!   every supervisor in the tree is one of these.
//! - [`session`]: [`session::SessionActor`] and the [`session::ConnHandle`] it shares
//!   with the socket tasks (which outlive a restarted actor).
//! - [`room`]: [`room::RoomActor`], which commits a conversation's messages and fans them out.
//! - [`transfer`]: [`transfer::TransferActor`]: progress of an upload, then assembly and
//!   the `file` message.
//! - [`bridge`]: [`bridge::BusBridge`], which hands bus events to local sessions.
//! - [`node`]: [`node::Node`], the handle the web layer uses: start the tree, open
//!   sessions, find rooms, read supervisor statistics.
//! - [`notify_stream`]: [`notify_stream::NotificationStreamActor`], which feeds a user's
//!   notification streams (SSE) from the database and live events, gap-free.
//! - [`faults`]: fault injection (off by default): kill or panic a named actor.
//!
//! Actor names and process groups are scoped by node id, so several nodes can live in
//! one process (tests do this).

pub mod bridge;
pub mod codes;
pub mod faults;
pub mod ids;
pub mod node;
pub mod notify_stream;
pub mod ports;
pub mod protocol;
pub mod room;
pub mod session;
pub mod supervisor;
pub mod transfer;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The exit reason of an actor that stopped on purpose; supervisors do not restart it.
pub const NORMAL_EXIT: &str = "normal";
