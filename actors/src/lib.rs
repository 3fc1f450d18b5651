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
//! - [`states`]: the states and kinds (message, contact, transfer, notification) as enums.
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
//! - [`bridge`]: [`bridge::dispatch`], which hands bus events to local sessions (called by
//!   the buses themselves once their node is attached, [`bridge::LocalDelivery`]), and
//!   [`bridge::BusBridge`], which does it for events that come before that and runs resyncs.
//! - [`node`]: [`node::Node`], the handle the web layer uses: start the tree, open
//!   sessions, find rooms, read supervisor statistics.
//! - [`notify_stream`]: [`notify_stream::NotificationStreamActor`], which feeds a user's
//!   notification streams (SSE) from the database and live events, gap-free.
//! - [`faults`]: fault injection (off by default): kill or panic a named actor.
//!
//! Actor names and process groups are scoped by node id, so several nodes can live in
//! one process (tests do this).

/// Declares an enum whose variants travel as fixed strings (in JSON, on the bus, in the
/// database): `as_str`, `parse`, `ALL`, `Display`, and serde as those strings. Used for
/// every state, kind and error code, so a misspelt one does not compile.
#[macro_export]
macro_rules! text_enum {
    ($(#[doc = $edoc:literal])* $name:ident { $($(#[doc = $doc:literal])* $variant:ident = $text:literal,)* }) => {
        $(#[doc = $edoc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[doc = $doc])* $variant,)*
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)*];

            /// The text it travels as.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)*
                }
            }

            /// The value written `s`, if any.
            pub fn parse(s: &str) -> Option<Self> {
                match s {
                    $($text => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                $name::parse(&s).ok_or_else(|| {
                    let expected: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                    serde::de::Error::custom(format!("unknown {} {:?}; expected one of {}", stringify!($name), s, expected.join(", ")))
                })
            }
        }
    };
}

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
pub mod states;
pub mod supervisor;
pub mod transfer;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The exit reason of an actor that stopped on purpose; supervisors do not restart it.
pub const NORMAL_EXIT: &str = "normal";
