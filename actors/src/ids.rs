//! Typed ids: a `UserId` cannot be passed where a `ConversationId` is expected.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! typed_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new time-ordered (v7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }
            /// Parses the textual form; `None` for anything that is not a UUID.
            pub fn parse(s: &str) -> Option<Self> {
                Uuid::parse_str(s).ok().map(Self)
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }
    };
}

typed_id!(
    /// A user account.
    UserId
);
typed_id!(
    /// A login session: the `jti` of the access token it issued.
    SessionId
);
typed_id!(
    /// A one-to-one conversation.
    ConversationId
);
typed_id!(
    /// A stored message.
    MessageId
);
typed_id!(
    /// A file upload in progress or done.
    TransferId
);
typed_id!(
    /// A stored file.
    FileId
);
typed_id!(
    /// One WebSocket connection.
    ConnId
);
typed_id!(
    /// A bus event (deduplication key).
    EventId
);
