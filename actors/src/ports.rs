//! Ports: what the actors need from the outside world, as traits. The main crate
//! implements them with SeaORM and lapin; unit tests use in-memory versions.

use serde::{Deserialize, Serialize};

use crate::ids::{ConversationId, EventId, FileId, MessageId, UserId};
use crate::states::{ContactChangeKind, ContactState, MessageKind, NotificationKind};

/// A stored message, as delivered to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: MessageId,
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub sender_id: UserId,
    pub client_msg_id: String,
    pub kind: MessageKind,
    pub body: String,
    pub file_id: Option<FileId>,
    pub created_at: i64,
    /// For an `edit` or `delete` entry: the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<MessageId>,
    /// When the message was last edited (`null` if never).
    #[serde(default)]
    pub edited_at: Option<i64>,
    /// Whether the message was deleted (its body and file link are gone). An `edit` entry
    /// of a deleted message is deleted too (its text erased with the message's).
    #[serde(default)]
    pub deleted: bool,
}

/// A message to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub client_msg_id: String,
    pub kind: MessageKind,
    pub body: String,
    pub file_id: Option<FileId>,
    /// For an `edit` or `delete`: the message it changes (the sender's own, in the same
    /// conversation; checked in the appending transaction).
    pub target_id: Option<MessageId>,
}

/// The result of an append: the stored message, and whether it was stored before (a
/// resend with the same `client_msg_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub message: StoredMessage,
    pub duplicate: bool,
    /// The recipient's message notification, when the append's own transaction wrote it
    /// (one process running notify beside messaging: the main crate's
    /// `ChatRepo::with_inline_notifications`); `None` when the notify consumer makes it
    /// from the published event.
    pub notification: Option<Box<InlineNotification>>,
    /// The recipient's receipt after the append's own transaction raised their delivered
    /// marker to this message or past it ([`ChatStore::queue_append_delivered`]); `None`
    /// when it did not (a resend, or not asked).
    pub delivered: Option<Receipt>,
}

/// What the append's transaction did to the recipient's notifications: the notification
/// it changed (`None` when none changed, say the recipient had read past the message
/// already) and their unread counts after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineNotification {
    pub to: UserId,
    pub view: Option<NotificationView>,
    pub unread: Unread,
}

/// A conversation's identity and counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConversationInfo {
    pub id: ConversationId,
    pub participants: [UserId; 2],
    pub last_seq: i64,
}

impl ConversationInfo {
    pub fn has(&self, user: UserId) -> bool {
        self.participants.contains(&user)
    }

    /// The other participant, if `user` is one.
    pub fn peer_of(&self, user: UserId) -> Option<UserId> {
        match self.participants {
            [a, b] if a == user => Some(b),
            [a, b] if b == user => Some(a),
            _ => None,
        }
    }
}

/// Delivered and read markers of one user in one conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    pub conversation_id: ConversationId,
    pub user_id: UserId,
    pub delivered_seq: i64,
    pub read_seq: i64,
}

/// Why a store call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The conversation or user does not exist.
    #[error("not found")]
    NotFound,
    /// The sender may not message the recipient (not contacts, blocked).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The operation does not fit the thing's state now (say an edit of a deleted
    /// message).
    #[error("{0}")]
    Conflict(&'static str),
    /// The database failed; the operation may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// A store operation already queued; resolves when it is done (committed).
pub type Pending<T> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send>>;

/// Storage for conversations, messages and receipts.
#[async_trait::async_trait]
pub trait ChatStore: Send + Sync + 'static {
    /// The conversation with this id, if any.
    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationInfo>, StoreError>;
    /// The conversation between `a` and `b`, created if missing. Checks that `a` may
    /// message `b` (the one place that rule lives).
    async fn open_conversation(&self, a: UserId, b: UserId) -> Result<ConversationInfo, StoreError>;
    /// Whether `from` may send into a conversation with `to` now.
    async fn may_message(&self, from: UserId, to: UserId) -> Result<(), StoreError>;
    /// Of `peers`, those `me` may message now: whom a session's presence goes to. A real
    /// store answers with one query (a session starting after a restart would otherwise
    /// make one per conversation); this default asks one by one.
    async fn messageable_peers(
        &self,
        me: UserId,
        peers: &[UserId],
    ) -> Result<std::collections::HashSet<UserId>, StoreError> {
        let mut allowed = std::collections::HashSet::new();
        for peer in peers {
            if self.may_message(me, *peer).await.is_ok() {
                allowed.insert(*peer);
            }
        }
        Ok(allowed)
    }
    /// Appends a message, assigning the next sequence number in the same transaction; a
    /// resend of a stored `(sender, client_msg_id)` returns the stored message.
    async fn append(&self, msg: NewMessage) -> Result<Appended, StoreError> {
        self.queue_append(msg).await.await
    }
    /// Queues an append and returns as soon as it is queued, with a future of its
    /// commit. Appends queued one after another are committed in that order (so their
    /// sequence numbers follow the queue order), many per transaction.
    async fn queue_append(&self, msg: NewMessage) -> Pending<Appended>;
    /// As [`ChatStore::queue_append`], and the same transaction raises `recipient`'s
    /// delivered marker to the new message (the room saw a connection of theirs open,
    /// which the message is handed to right after the commit): the receipt comes back in
    /// [`Appended::delivered`], and no write of its own is needed. A store without that
    /// ability appends only (the recipient's session then writes the marker).
    async fn queue_append_delivered(&self, msg: NewMessage, recipient: UserId) -> Pending<Appended> {
        let _ = recipient;
        self.queue_append(msg).await
    }
    /// Up to `limit` messages with `seq > after_seq`, in order.
    async fn messages_after(
        &self,
        conversation: ConversationId,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<StoredMessage>, StoreError>;
    /// Every conversation `user` takes part in.
    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationInfo>, StoreError>;
    /// Records that `user` was last connected at `at` (their contacts' "last seen").
    async fn record_last_seen(&self, user: UserId, at: i64) -> Result<(), StoreError>;
    /// Whether the login session `session` of `user` is still valid (exists, not revoked,
    /// not expired). Sessions check again after the bus was down, when a revocation
    /// event may have been missed. `in_use`: the check is a connection's periodic one,
    /// which counts as a use of the login (so an open connection keeps it from expiring
    /// while idle); the checks at start and after an outage do not (a reconnect storm
    /// must not write a row per login).
    async fn login_active(&self, session: uuid::Uuid, user: UserId, in_use: bool) -> Result<bool, StoreError>;
    /// Raises the user's delivered and/or read markers (never lowers them; read implies
    /// delivered; both are capped at the conversation's last seq).
    async fn update_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        delivered_seq: Option<i64>,
        read_seq: Option<i64>,
    ) -> Result<Receipt, StoreError>;
}

/// An event for one user, carried by the bus to whichever node holds their sessions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
pub enum Event {
    /// A message was committed in a conversation of `to`.
    MessageCreated {
        to: UserId,
        message: StoredMessage,
        /// The message's `message` frame, encoded once by the room for every connection
        /// of every participant on this node (not carried across the broker: a node that
        /// receives the event encodes it there).
        #[serde(skip)]
        frame: Option<std::sync::Arc<str>>,
        /// The notification this message makes for `to` was written with the message
        /// itself ([`Appended::notification`]), so the notify consumer leaves it alone.
        /// Only within one process (never carried across the broker).
        #[serde(skip)]
        notified: bool,
        /// `to`'s delivered marker was raised to this message with the message itself
        /// ([`Appended::delivered`]), so `to`'s sessions write no marker of their own. Only
        /// within one process (never carried across the broker).
        #[serde(skip)]
        delivered: bool,
    },
    /// A participant's receipt markers moved.
    Receipt { to: UserId, receipt: Receipt },
    /// The peer started or stopped typing.
    Typing { to: UserId, conversation_id: ConversationId, user_id: UserId, active: bool },
    /// A peer came online or went offline.
    Presence {
        to: UserId,
        user_id: UserId,
        online: bool,
        /// With `online: false` on the user's last disconnect: when that was.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen_at: Option<i64>,
    },
    /// `from` just connected on a node where `to` has no session and asks whether `to` is
    /// online: `to`'s sessions, wherever they are, answer with a `Presence` to `from`.
    PresenceProbe { to: UserId, from: UserId },
    /// A contact request involving `to` changed.
    Contact { to: UserId, change: ContactChange },
    /// A notification for `to` was stored, or `to`'s unread counts changed (then
    /// `notification` is `None`). Published by the notify service.
    Notification { to: UserId, notification: Option<NotificationView>, unread: Unread },
    /// An upload in a conversation of `to` progressed, completed or failed.
    Transfer { to: UserId, progress: crate::transfer::TransferProgress },
    /// The login session `session_id` of `to` was revoked (logout): every socket and
    /// stream it authenticated, on every node, closes.
    SessionRevoked { to: UserId, session_id: uuid::Uuid },
    /// `user_id` (a contact of `to`, or `to`) changed their display name.
    Profile { to: UserId, user_id: UserId, display_name: String },
}

/// A stored notification, as clients see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationView {
    pub id: uuid::Uuid,
    /// The user's notification number, the stream cursor: every change takes the next one
    /// (1, 2, 3, ...), so a notification updated in place moves up and the numbers it had
    /// before are gone.
    pub n: i64,
    /// `message` (one per conversation, updated in place by each new message: `seq` and
    /// `payload` are the newest message's), `contact_request` or `contact_accepted`.
    pub kind: NotificationKind,
    pub conversation_id: Option<ConversationId>,
    pub seq: Option<i64>,
    /// Kind-specific details (sender, preview, requester, ...).
    pub payload: serde_json::Value,
    pub read: bool,
    /// What it adds to the unread total while unread: a message notification stands for
    /// the unread messages of its conversation ("3 new messages"), the others for 1; 0 once
    /// read.
    pub count: i64,
    /// When it last changed (a message notification: its newest message's arrival).
    pub created_at: i64,
}

/// A user's unread counts: unread messages per conversation, and in all (those of
/// conversations not muted, and the unread contact notifications).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unread {
    pub total: i64,
    pub conversations: std::collections::BTreeMap<ConversationId, i64>,
    /// The user's muted conversations, each with when its mute ends (ms since the epoch;
    /// `None`: when the user unmutes). Their counts are in `conversations`, not in `total`.
    #[serde(default)]
    pub muted: std::collections::BTreeMap<ConversationId, Option<i64>>,
}

impl Unread {
    /// Adds `count` unread of `conversation` (`None`: not of a conversation, such as a
    /// contact request).
    pub fn add(&mut self, conversation: Option<ConversationId>, count: i64) {
        self.total += count;
        if let Some(c) = conversation {
            *self.conversations.entry(c).or_default() += count;
        }
    }

    /// Records `conversation` as muted (until `until`): its count leaves the total.
    pub fn mute(&mut self, conversation: ConversationId, until: Option<i64>) {
        if self.muted.insert(conversation, until).is_none() {
            self.total -= self.conversations.get(&conversation).copied().unwrap_or(0);
        }
    }
}

/// A contact request's new state, for both users it involves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactChange {
    pub kind: ContactChangeKind,
    pub request_id: uuid::Uuid,
    pub requester_id: UserId,
    pub addressee_id: UserId,
    pub state: ContactState,
}

impl Event {
    /// The user this event is for.
    pub fn recipient(&self) -> UserId {
        match self {
            Event::MessageCreated { to, .. }
            | Event::Receipt { to, .. }
            | Event::Typing { to, .. }
            | Event::Presence { to, .. }
            | Event::PresenceProbe { to, .. }
            | Event::Contact { to, .. }
            | Event::Notification { to, .. }
            | Event::Transfer { to, .. }
            | Event::SessionRevoked { to, .. }
            | Event::Profile { to, .. } => *to,
        }
    }

    /// Routing key on the bus: `user.<id>.<kind>`. A user's own copy of their message or
    /// of their read marker (for their other devices) ends in `.self`, so the notify
    /// queue, which needs only the other copies, is not sent them (docs/broker.md).
    pub fn routing_key(&self) -> String {
        let kind = match self {
            Event::MessageCreated { to, message, .. } if message.sender_id == *to => "message.created.self",
            Event::MessageCreated { .. } => "message.created",
            Event::Receipt { to, receipt } if receipt.user_id == *to => "receipt.self",
            Event::Receipt { .. } => "receipt",
            Event::Typing { .. } => "typing",
            Event::Presence { .. } => "presence",
            Event::PresenceProbe { .. } => "presence.probe",
            Event::Notification { .. } => "notification",
            Event::Transfer { .. } => "transfer",
            Event::SessionRevoked { .. } => "session.revoked",
            Event::Profile { .. } => "profile",
            Event::Contact { change, .. } => return format!("user.{}.contact.{}", self.recipient(), change.kind),
        };
        format!("user.{}.{kind}", self.recipient())
    }
}

/// A versioned event envelope: id (UUIDv7, for deduplication), schema version, time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub id: EventId,
    pub v: u8,
    pub time: i64,
    pub event: Event,
}

impl Envelope {
    pub fn new(event: Event) -> Self {
        Self { id: EventId::new(), v: 1, time: crate::now_ms(), event }
    }
}

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bus unavailable: {0}")]
pub struct BusError(pub String);

/// The event bus between nodes. A publish returns once the event is on its way, in
/// publish order (RabbitMQ: sent on a confirm-mode channel; confirms are tracked off the
/// caller's path). The database is the record: a lost event costs live delivery only.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes one event.
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError>;
    /// A session of `user` opened on this node: route the user's events here. Called once
    /// per session; the bus counts them and binds on the first.
    async fn bind_user(&self, user: UserId) -> Result<(), BusError>;
    /// A session of `user` on this node closed; the bus unbinds after the last one.
    async fn unbind_user(&self, user: UserId) -> Result<(), BusError>;
    /// The node this bus serves, once started (`Node::start`). Both buses then hand the
    /// node's own events to its sessions themselves ([`crate::bridge::LocalDelivery`]):
    /// inside `publish` and, with RabbitMQ, inside the consumer.
    fn attach(&self, _node: &std::sync::Arc<crate::node::NodeCtx>) {}
}
