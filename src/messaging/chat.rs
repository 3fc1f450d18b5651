//! The conversations-and-messages repository, and the [`ChatStore`] port the actors use.
//!
//! Writes on the message path (appends and receipt markers) are group-committed by the
//! process's committer ([`crate::writer`], through the [`MessageWrites`] port): one fsync
//! covers many messages, which is what makes `synchronous=FULL` affordable. Through
//! sea-orm (PostgreSQL) they are the functions below; on a SQLite file,
//! [`crate::messaging::sqlite_writes`].
//! A batch costs a fixed number of statements however many messages it holds (see
//! [`append_all`]): the permission check (accepted contact, no block) for every pair in the
//! batch, the resend lookup, one `UPDATE … RETURNING` that takes every conversation's new
//! `last_seq` at once (a row lock on PostgreSQL, the write lock on SQLite), and one
//! multi-row `INSERT`, so sequences are gap-free and unique even with several nodes
//! writing. An answer is sent only after the commit. If a batch fails as a whole
//! (say one row violates a constraint because another node raced it), its messages are
//! retried one transaction each, so one bad message never fails its neighbours.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use salvo::oapi::ToSchema;
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, Func, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde::Serialize;
use switchboard_actors::ports::{
    Appended, ChatStore, ConversationInfo, NewMessage, Pending, Receipt, StoreError, StoredMessage,
};
use switchboard_actors::states::MessageKind;
use uuid::Uuid;

use crate::auth::users::PublicUser;
use crate::domain::{ConversationId, FileId, MessageId, UserId};
use crate::storage::entities::{conversation, message, receipt, user};
use crate::storage::readers::Readers;
use crate::storage::rows::{opt_uuid_at, text_at, uuid_at};

/// The message path's writes, queued for a group commit (implemented by
/// [`crate::writer::Committer`]). Each returns once its write is queued, with the future of
/// its answer, which resolves after the commit: writes queued one after another commit in
/// that order.
#[async_trait::async_trait]
pub trait MessageWrites: Send + Sync + std::fmt::Debug {
    /// Appends a message (or finds it stored: a resend); with `notify`, its transaction
    /// also writes the recipient's message notification, keeping their newest `notify`
    /// ([`Appended::notification`]); with `delivered_to`, it also raises that user's
    /// delivered marker to the new message ([`Appended::delivered`]).
    async fn append(&self, message: NewMessage, notify: Option<u64>, delivered_to: Option<UserId>)
    -> Pending<Appended>;
    /// Raises a user's delivered and/or read markers.
    async fn raise_receipt(&self, receipt: RaiseReceipt) -> Pending<Receipt>;
    /// Records when `user`'s last connection closed (here rather than through the pool:
    /// see [`crate::auth::sessions::LoginWrites`] for why).
    async fn record_last_seen(&self, user: UserId, at: i64) -> Pending<()>;
}

#[derive(Clone, Debug)]
pub struct ChatRepo {
    db: DatabaseConnection,
    writes: Arc<dyn MessageWrites>,
    sessions: crate::auth::sessions::SessionRepo,
    /// On a SQLite file, the reads of session start and sync (conversations, messages
    /// after a seq) go here, without a thread hand-off ([`Readers`]).
    readers: Option<Arc<Readers>>,
    /// Each append also writes the recipient's notification, keeping their newest this
    /// many (one process running notify beside messaging: [`Self::with_inline_notifications`]).
    inline_notify: Option<u64>,
}

impl ChatRepo {
    /// The repository; its appends and receipts go through `writes` (the process's one
    /// group-committing writer).
    pub fn new(db: DatabaseConnection, writes: Arc<dyn MessageWrites>) -> Self {
        let readers = Readers::for_db(&db);
        let sessions = crate::auth::sessions::SessionRepo::sharing(db.clone(), readers.clone());
        Self { db, writes, sessions, readers, inline_notify: None }
    }

    /// The same repository writing each message's notification in its append's own
    /// transaction, keeping each user's newest `keep` notifications: for a process whose
    /// notify consumer reads its in-process bus, which then leaves those messages alone
    /// (`Event::MessageCreated::notified`). The notification is then as durable as the
    /// message (the in-process feed is not), and costs no write, no queue and no consumer
    /// wake-up of its own. With a broker the notify service makes it from its queue.
    pub fn with_inline_notifications(mut self, keep: u64) -> Self {
        self.inline_notify = Some(keep);
        self
    }

    /// The same repository sliding the logins it checks by `lifetimes` (the auth
    /// configuration's).
    pub fn with_login_lifetimes(mut self, lifetimes: crate::auth::sessions::Lifetimes) -> Self {
        self.sessions = self.sessions.with_lifetimes(lifetimes);
        self
    }

    /// The same repository writing the uses of the logins it checks through `writes`.
    pub fn with_login_writes(mut self, writes: Arc<dyn crate::auth::sessions::LoginWrites>) -> Self {
        self.sessions = self.sessions.with_writes(writes);
        self
    }

    /// The SQLite reader connections, on a SQLite file.
    pub fn readers(&self) -> Option<Arc<Readers>> {
        self.readers.clone()
    }

    /// [`Self::history`] of `conversation` and its last seq, if `me` takes part in it
    /// (`None` otherwise: to everyone else it does not exist).
    pub async fn history_for(
        &self,
        me: UserId,
        conversation: ConversationId,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: u64,
    ) -> Result<Option<(Vec<StoredMessage>, i64)>, DbErr> {
        let found = conversation::Entity::find_by_id(conversation.0).one(&self.db).await?;
        let Some(c) = found.filter(|c| c.user_low == me.0 || c.user_high == me.0) else { return Ok(None) };
        Ok(Some((self.history(conversation, after_seq, before_seq, limit).await?, c.last_seq)))
    }

    /// One page of a conversation's history: `after_seq < seq < before_seq`, at most
    /// `limit`, oldest first. With only `before_seq` (or neither) it is the newest page.
    /// The messages in their current state: the `edit` and `delete` entries that changed
    /// them are left out (a page may hold fewer than `limit` for them).
    pub async fn history(
        &self,
        conversation: ConversationId,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: u64,
    ) -> Result<Vec<StoredMessage>, DbErr> {
        self.entries(conversation, after_seq, before_seq, limit, false).await
    }

    /// [`Self::history`], with the `edit` and `delete` entries if `changes` (the seq
    /// stream as `sync` delivers it).
    async fn entries(
        &self,
        conversation: ConversationId,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: u64,
        changes: bool,
    ) -> Result<Vec<StoredMessage>, DbErr> {
        let mut q = message::Entity::find().filter(message::Column::ConversationId.eq(conversation.0));
        if !changes {
            q = q.filter(message::Column::TargetId.is_null());
        }
        if let Some(a) = after_seq {
            q = q.filter(message::Column::Seq.gt(a));
        }
        if let Some(b) = before_seq {
            q = q.filter(message::Column::Seq.lt(b));
        }
        let rows = if after_seq.is_some() {
            q.order_by_asc(message::Column::Seq).limit(limit).all(&self.db).await?
        } else {
            let mut rows = q.order_by_desc(message::Column::Seq).limit(limit).all(&self.db).await?;
            rows.reverse();
            rows
        };
        rows.into_iter().map(to_stored).collect()
    }

    /// One message of a conversation `me` takes part in (`None` otherwise, or if there is
    /// no such message): what an edit or deletion is checked against.
    pub async fn message_for(&self, me: UserId, id: MessageId) -> Result<Option<StoredMessage>, DbErr> {
        let Some(m) = message::Entity::find_by_id(id.0).one(&self.db).await? else { return Ok(None) };
        let c = conversation::Entity::find_by_id(m.conversation_id).one(&self.db).await?;
        if !c.is_some_and(|c| c.user_low == me.0 || c.user_high == me.0) {
            return Ok(None);
        }
        to_stored(m).map(Some)
    }

    /// The caller's conversations, most recent first, with peer, last message and
    /// unread count (messages from the peer after the caller's read marker).
    pub async fn summaries(&self, me: UserId, limit: u64) -> Result<Vec<ConversationSummary>, DbErr> {
        let convs = conversation::Entity::find()
            .filter(
                Condition::any()
                    .add(conversation::Column::UserLow.eq(me.0))
                    .add(conversation::Column::UserHigh.eq(me.0)),
            )
            .order_by_desc(conversation::Column::UpdatedAt)
            .limit(limit)
            .all(&self.db)
            .await?;
        let mutes = crate::notify::repo::mutes_of(&self.db, me).await?;
        let mut out = Vec::with_capacity(convs.len());
        for c in convs {
            let peer_id = if c.user_low == me.0 { c.user_high } else { c.user_low };
            let peer = user::Entity::find_by_id(peer_id).one(&self.db).await?;
            let read_seq =
                receipt::Entity::find_by_id((c.id, me.0)).one(&self.db).await?.map(|r| r.read_seq).unwrap_or(0);
            // The peer's receipts, like their receipt frames, only while they are contacts.
            let (peer_delivered_seq, peer_read_seq) = if self.may_message(me, UserId(peer_id)).await.is_ok() {
                receipt::Entity::find_by_id((c.id, peer_id))
                    .one(&self.db)
                    .await?
                    .map_or((0, 0), |r| (r.delivered_seq, r.read_seq))
            } else {
                (0, 0)
            };
            // The newest message people see (not an edit or deletion entry).
            let last_message = message::Entity::find()
                .filter(message::Column::ConversationId.eq(c.id))
                .filter(message::Column::TargetId.is_null())
                .order_by_desc(message::Column::Seq)
                .one(&self.db)
                .await?
                .map(to_stored)
                .transpose()?;
            let unread = message::Entity::find()
                .filter(message::Column::ConversationId.eq(c.id))
                .filter(message::Column::Seq.gt(read_seq))
                .filter(message::Column::SenderId.eq(peer_id))
                .filter(message::Column::TargetId.is_null())
                .filter(message::Column::DeletedAt.is_null())
                .count(&self.db)
                .await?;
            out.push(ConversationSummary {
                id: ConversationId(c.id),
                peer: peer.map(PublicUser::from),
                last_seq: c.last_seq,
                read_seq,
                peer_delivered_seq,
                peer_read_seq,
                unread,
                last_message: last_message.map(MessageOut::from),
                updated_at: c.updated_at,
                muted: mutes.contains_key(&ConversationId(c.id)),
                muted_until: mutes.get(&ConversationId(c.id)).copied().flatten(),
            });
        }
        Ok(out)
    }
}

/// A conversation as listed for one of its participants.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[salvo(schema(name = ConversationOut))]
pub struct ConversationSummary {
    #[salvo(schema(value_type = String))]
    pub id: ConversationId,
    /// The other participant (`null` if their account was deleted).
    pub peer: Option<PublicUser>,
    pub last_seq: i64,
    pub read_seq: i64,
    /// How far the peer has received and read (0 unless you are contacts).
    pub peer_delivered_seq: i64,
    pub peer_read_seq: i64,
    pub unread: u64,
    pub last_message: Option<MessageOut>,
    pub updated_at: i64,
    /// Muted by the caller (`PUT /api/conversations/{id}/mute`)...
    pub muted: bool,
    /// ...until then (ms since the epoch); `null` when not muted or muted until unmuted.
    pub muted_until: Option<i64>,
}

// The actors' `StoredMessage` with its OpenAPI schema (the actors crate knows no HTTP).
/// A stored message (as in the WebSocket `message` frame).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MessageOut {
    #[salvo(schema(value_type = String))]
    pub id: MessageId,
    #[salvo(schema(value_type = String))]
    pub conversation_id: ConversationId,
    pub seq: i64,
    #[salvo(schema(value_type = String))]
    pub sender_id: UserId,
    pub client_msg_id: String,
    /// `text` or `file` (history lists messages in their current state, so never the
    /// `edit` and `delete` entries the WebSocket stream carries).
    #[salvo(schema(value_type = String))]
    pub kind: MessageKind,
    /// Empty once deleted.
    pub body: String,
    #[salvo(schema(value_type = Option<String>))]
    pub file_id: Option<FileId>,
    pub created_at: i64,
    /// On an `edit` or `delete` entry: the message it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[salvo(schema(value_type = Option<String>))]
    pub target_id: Option<MessageId>,
    /// When it was last edited (`null` if never).
    pub edited_at: Option<i64>,
    /// Deleted by its sender: `body` is empty and `file_id` null.
    pub deleted: bool,
}

impl From<StoredMessage> for MessageOut {
    fn from(m: StoredMessage) -> Self {
        // Every field named: a field added to `StoredMessage` does not compile here until
        // the API says whether it shows it.
        let StoredMessage {
            id,
            conversation_id,
            seq,
            sender_id,
            client_msg_id,
            kind,
            body,
            file_id,
            created_at,
            target_id,
            edited_at,
            deleted,
        } = m;
        Self {
            id,
            conversation_id,
            seq,
            sender_id,
            client_msg_id,
            kind,
            body,
            file_id,
            created_at,
            target_id,
            edited_at,
            deleted,
        }
    }
}

fn to_stored(m: message::Model) -> Result<StoredMessage, DbErr> {
    Ok(StoredMessage {
        id: MessageId(m.id),
        conversation_id: ConversationId(m.conversation_id),
        seq: m.seq,
        sender_id: UserId(m.sender_id),
        client_msg_id: m.client_msg_id,
        kind: crate::storage::stored(MessageKind::parse, "messages.kind", &m.kind)?,
        body: m.body,
        file_id: m.file_id.map(FileId),
        created_at: m.created_at,
        target_id: m.target_id.map(MessageId),
        edited_at: m.edited_at,
        deleted: m.deleted_at.is_some(),
    })
}

/// The columns [`message_at`] reads, in its order.
/// [`MESSAGE_COLUMNS`] as a literal, for statements put together at compile time
/// (`concat!`): the hot paths prepare them by text, and a `format!` per call costs an
/// allocation each time.
macro_rules! message_columns {
    () => {
        "id, conversation_id, seq, sender_id, client_msg_id, kind, body, file_id, created_at, target_id, edited_at, \
         deleted_at"
    };
}
pub(crate) use message_columns;

pub(crate) const MESSAGE_COLUMNS: &str = message_columns!();

/// A message row selected as [`MESSAGE_COLUMNS`] (rusqlite: the writer and the readers).
pub(crate) fn message_at(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: MessageId(uuid_at(r, 0)?),
        conversation_id: ConversationId(uuid_at(r, 1)?),
        seq: r.get(2)?,
        sender_id: UserId(uuid_at(r, 3)?),
        client_msg_id: r.get(4)?,
        kind: text_at(r, 5, MessageKind::parse)?,
        body: r.get(6)?,
        file_id: opt_uuid_at(r, 7)?.map(FileId),
        created_at: r.get(8)?,
        target_id: opt_uuid_at(r, 9)?.map(MessageId),
        edited_at: r.get(10)?,
        deleted: r.get::<_, Option<i64>>(11)?.is_some(),
    })
}

fn info(c: &conversation::Model) -> ConversationInfo {
    ConversationInfo {
        id: ConversationId(c.id),
        participants: [UserId(c.user_low), UserId(c.user_high)],
        last_seq: c.last_seq,
    }
}

fn unavailable(e: DbErr) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn read_failed(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// [`ChatStore::conversations_of`] on a reader connection (what the sea-orm query reads).
fn read_conversations_of(c: &rusqlite::Connection, user: UserId) -> rusqlite::Result<Vec<ConversationInfo>> {
    let mut q = c.prepare_cached(
        "SELECT id, user_low, user_high, last_seq FROM conversations WHERE user_low = ?1 OR user_high = ?1",
    )?;
    let rows = q.query_map([user.0.as_bytes()], |r| {
        Ok(ConversationInfo {
            id: ConversationId(uuid_at(r, 0)?),
            participants: [UserId(uuid_at(r, 1)?), UserId(uuid_at(r, 2)?)],
            last_seq: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// [`ChatRepo::history`] after `after_seq` (oldest first, at most `limit`) on a reader
/// connection.
fn read_messages_after(
    c: &rusqlite::Connection,
    conversation: ConversationId,
    after_seq: i64,
    limit: u64,
) -> rusqlite::Result<Vec<StoredMessage>> {
    let mut q = c.prepare_cached(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = q.query_map(rusqlite::params![conversation.0.as_bytes(), after_seq, limit], message_at)?;
    rows.collect()
}

/// What became of one append while its batch is worked out.
enum Fate {
    Refused(StoreError),
    /// Stored before (a resend): answered with the stored original.
    Stored(Box<StoredMessage>),
    /// New: the `n`-th new message of its conversation in this batch (0-based).
    New(usize),
    /// The same `client_msg_id` as the new message at this index of the batch.
    SameAs(usize),
}

/// Appends a batch of messages with a fixed number of statements however large the batch:
/// read the conversations, check who may message whom, look up resends, take every
/// conversation's numbers with one `UPDATE … RETURNING`, insert all new rows in one
/// multi-row `INSERT`. The caller's transaction makes it all or nothing; the answers come
/// back in the order of `appends`.
pub(crate) async fn append_all(
    txn: &DatabaseTransaction,
    appends: &[&NewMessage],
    now: i64,
) -> Result<Vec<Result<Appended, StoreError>>, DbErr> {
    if appends.is_empty() {
        return Ok(Vec::new());
    }
    let conversation_ids: HashSet<Uuid> = appends.iter().map(|m| m.conversation_id.0).collect();
    let mut read = conversation::Entity::find().filter(conversation::Column::Id.is_in(conversation_ids));
    // An edit or deletion is checked against its target as read below: with several nodes
    // writing, take the conversations' row locks first (what the counter update takes
    // anyway, later), so another node's change of the same message commits before that
    // read or waits for this one. (SQLite's write lock is the database's.)
    if appends.iter().any(|m| m.kind.is_change()) && txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        read = read.order_by_asc(conversation::Column::Id).lock_exclusive();
    }
    let conversations: HashMap<Uuid, conversation::Model> =
        read.all(txn).await?.into_iter().map(|c| (c.id, c)).collect();
    let member = |m: &NewMessage| {
        conversations
            .get(&m.conversation_id.0)
            .filter(|c| c.user_low == m.sender_id.0 || c.user_high == m.sender_id.0)
            .map(|c| (c.user_low, c.user_high))
    };
    let pairs: HashSet<(Uuid, Uuid)> = appends.iter().filter_map(|m| member(m)).collect();
    let allowed = crate::contacts::repo::messageable_pairs(txn, &pairs.into_iter().collect::<Vec<_>>()).await?;

    let may_send = |m: &NewMessage| match member(m) {
        None => Err(StoreError::NotFound),
        Some(p) if !allowed.contains(&p) && m.kind != MessageKind::Delete => {
            Err(StoreError::Forbidden(crate::contacts::repo::NOT_A_CONTACT))
        }
        Some(_) => Ok(()),
    };
    let resends = appends.iter().filter(|m| may_send(m).is_ok()).fold(Condition::any(), |c, m| {
        c.add(
            Condition::all()
                .add(message::Column::SenderId.eq(m.sender_id.0))
                .add(message::Column::ClientMsgId.eq(m.client_msg_id.as_str())),
        )
    });
    let stored: HashMap<(Uuid, String), message::Model> = if resends.is_empty() {
        HashMap::new()
    } else {
        message::Entity::find()
            .filter(resends)
            .all(txn)
            .await?
            .into_iter()
            .map(|m| ((m.sender_id, m.client_msg_id.clone()), m))
            .collect()
    };

    let target_ids: HashSet<Uuid> = appends.iter().filter_map(|m| m.target_id.map(|t| t.0)).collect();
    let mut targets: HashMap<Uuid, Target> = if target_ids.is_empty() {
        HashMap::new()
    } else {
        message::Entity::find()
            .filter(message::Column::Id.is_in(target_ids))
            .all(txn)
            .await?
            .iter()
            .map(|m| (m.id, Target::from(m)))
            .collect()
    };

    let original = targets.clone();
    let mut new_per_conversation: HashMap<Uuid, usize> = HashMap::new();
    let mut first_in_batch: HashMap<(Uuid, &str), usize> = HashMap::new();
    let fates: Vec<Fate> = appends
        .iter()
        .enumerate()
        .map(|(i, m)| {
            if let Err(e) = may_send(m) {
                return Fate::Refused(e);
            }
            let reused = |conversation: Uuid| conversation != m.conversation_id.0;
            let old = if stored.is_empty() { None } else { stored.get(&(m.sender_id.0, m.client_msg_id.clone())) };
            if let Some(old) = old {
                return if reused(old.conversation_id) {
                    Fate::Refused(StoreError::Forbidden(REUSED_ID))
                } else {
                    match to_stored(old.clone()) {
                        Ok(stored) => Fate::Stored(Box::new(stored)),
                        Err(e) => Fate::Refused(StoreError::Unavailable(e.to_string())),
                    }
                };
            }
            if let Some(&j) = first_in_batch.get(&(m.sender_id.0, m.client_msg_id.as_str())) {
                return if reused(appends[j].conversation_id.0) {
                    Fate::Refused(StoreError::Forbidden(REUSED_ID))
                } else {
                    Fate::SameAs(j)
                };
            }
            // Checked against the target as the batch's earlier changes leave it.
            let target = m.target_id.and_then(|t| targets.get(&t.0).copied());
            if let Err(e) = check_change(m, target) {
                return Fate::Refused(e);
            }
            if let (MessageKind::Delete, Some(t)) = (m.kind, m.target_id)
                && let Some(target) = targets.get_mut(&t.0)
            {
                target.deleted = true;
            }
            first_in_batch.insert((m.sender_id.0, m.client_msg_id.as_str()), i);
            let n = new_per_conversation.entry(m.conversation_id.0).or_default();
            *n += 1;
            Fate::New(*n - 1)
        })
        .collect();

    // Each conversation's numbers in one statement: last_seq += its new messages.
    let mut last_seq: HashMap<Uuid, i64> = HashMap::new();
    if !new_per_conversation.is_empty() {
        let mut bump = CaseStatement::new();
        for (id, n) in &new_per_conversation {
            bump = bump.case(conversation::Column::Id.eq(*id), Expr::val(*n as i64));
        }
        let bumped = conversation::Entity::update_many()
            .col_expr(conversation::Column::LastSeq, Expr::col(conversation::Column::LastSeq).add(bump.finally(0i64)))
            .col_expr(conversation::Column::UpdatedAt, Expr::value(now))
            .filter(conversation::Column::Id.is_in(new_per_conversation.keys().copied()))
            .exec_with_returning(txn)
            .await?;
        last_seq = bumped.into_iter().map(|c| (c.id, c.last_seq)).collect();
    }

    let mut rows = Vec::new();
    let mut out: Vec<Result<Appended, StoreError>> = Vec::with_capacity(appends.len());
    for (m, fate) in appends.iter().zip(&fates) {
        out.push(match fate {
            Fate::Refused(e) => Err(e.clone()),
            Fate::Stored(old) => {
                Ok(Appended { message: (**old).clone(), duplicate: true, notification: None, delivered: None })
            }
            Fate::SameAs(j) => match &out[*j] {
                Ok(first) => Ok(Appended {
                    message: first.message.clone(),
                    duplicate: true,
                    notification: None,
                    delivered: None,
                }),
                Err(e) => Err(e.clone()),
            },
            Fate::New(n) => {
                let conversation = m.conversation_id.0;
                let (Some(&last), Some(&count)) =
                    (last_seq.get(&conversation), new_per_conversation.get(&conversation))
                else {
                    // The row was read above inside this transaction, so it is there.
                    return Err(DbErr::Custom(format!("conversation {conversation} vanished during its commit")));
                };
                let row = message::Model {
                    id: MessageId::new().0,
                    conversation_id: conversation,
                    seq: last - count as i64 + 1 + *n as i64,
                    sender_id: m.sender_id.0,
                    client_msg_id: m.client_msg_id.clone(),
                    kind: m.kind.to_string(),
                    body: m.body.clone(),
                    file_id: m.file_id.map(|f| f.0),
                    created_at: now,
                    target_id: m.target_id.map(|t| t.0),
                    edited_at: None,
                    deleted_at: None,
                };
                let stored = to_stored(row.clone())?;
                rows.push(message::ActiveModel::from(row));
                Ok(Appended { message: stored, duplicate: false, notification: None, delivered: None })
            }
        });
    }
    // Bound each statement's parameters (9 per row) well below both backends' limits.
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<message::ActiveModel> = rows.by_ref().take(INSERT_ROWS).collect();
        message::Entity::insert_many(chunk).exec_without_returning(txn).await?;
    }
    // Then the changes, in batch order (an edit and a deletion of one message in one
    // batch: the deletion erases the edit too).
    for ((m, fate), answer) in appends.iter().zip(&fates).zip(&out) {
        if let (Fate::New(_), Some(target), Ok(entry)) = (fate, m.target_id.and_then(|t| original.get(&t.0)), answer) {
            apply_change(txn, m, entry.message.id, target, now).await?;
        }
    }
    Ok(out)
}

/// What an edit or deletion is checked against: the message it changes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    pub conversation_id: ConversationId,
    pub sender_id: UserId,
    pub kind: MessageKind,
    pub file_id: Option<FileId>,
    pub deleted: bool,
}

impl From<&message::Model> for Target {
    fn from(m: &message::Model) -> Self {
        Target {
            conversation_id: ConversationId(m.conversation_id),
            sender_id: UserId(m.sender_id),
            // A kind the database holds that is none of ours cannot be changed.
            kind: MessageKind::parse(&m.kind).unwrap_or(MessageKind::Edit),
            file_id: m.file_id.map(FileId),
            deleted: m.deleted_at.is_some(),
        }
    }
}

pub(crate) const ALREADY_DELETED: &str = "the message was deleted";
const ONLY_TEXT: &str = "only text messages can be edited";

/// The one rule of edits and deletions (both write paths): a change names a message of
/// its own sender in its own conversation that is not itself a change (else, as for
/// anyone else's message, "not found"), not deleted, and for an edit a text. A plain
/// message names no target. Who may message whom is checked apart (a deletion needs no
/// contact: people can always take back what they said).
pub(crate) fn check_change(m: &NewMessage, target: Option<Target>) -> Result<(), StoreError> {
    match (m.kind.is_change(), m.target_id) {
        (false, None) => return Ok(()),
        (false, Some(_)) | (true, None) => return Err(StoreError::Conflict("a change names the message it changes")),
        (true, Some(_)) => {}
    }
    let target = target
        .filter(|t| t.conversation_id == m.conversation_id && t.sender_id == m.sender_id && !t.kind.is_change())
        .ok_or(StoreError::NotFound)?;
    if target.deleted {
        return Err(StoreError::Conflict(ALREADY_DELETED));
    }
    if m.kind == MessageKind::Edit && target.kind != MessageKind::Text {
        return Err(StoreError::Conflict(ONLY_TEXT));
    }
    Ok(())
}

/// Applies the change entry `entry` (`m`, just inserted) to its target (sea-orm, inside
/// the append's transaction): the target's earlier edit entries lose their text (an edit
/// supersedes them, a deletion erases them: `deleted`, empty body); an edit sets the
/// target's text and `edited_at`; a deletion erases the target's text and file link and
/// forgets its file ([`erase_file`]).
async fn apply_change(
    txn: &DatabaseTransaction,
    m: &NewMessage,
    entry: MessageId,
    target: &Target,
    now: i64,
) -> Result<(), DbErr> {
    let Some(id) = m.target_id else { return Ok(()) };
    message::Entity::update_many()
        .col_expr(message::Column::Body, Expr::value(""))
        .col_expr(message::Column::DeletedAt, Expr::value(now))
        .filter(message::Column::TargetId.eq(id.0))
        .filter(message::Column::Kind.eq(MessageKind::Edit.as_str()))
        .filter(message::Column::Id.ne(entry.0))
        .filter(message::Column::DeletedAt.is_null())
        .exec(txn)
        .await?;
    let the_target = || message::Entity::update_many().filter(message::Column::Id.eq(id.0));
    match m.kind {
        MessageKind::Edit => {
            the_target()
                .col_expr(message::Column::Body, Expr::value(m.body.clone()))
                .col_expr(message::Column::EditedAt, Expr::value(now))
                .filter(message::Column::DeletedAt.is_null())
                .exec(txn)
                .await?;
        }
        MessageKind::Delete => {
            the_target()
                .col_expr(message::Column::Body, Expr::value(""))
                .col_expr(message::Column::FileId, Expr::value(Option::<Uuid>::None))
                .col_expr(message::Column::EditedAt, Expr::value(Option::<i64>::None))
                .col_expr(message::Column::DeletedAt, Expr::value(now))
                .exec(txn)
                .await?;
            if let Some(file) = target.file_id {
                erase_file(txn, file).await?;
            }
        }
        MessageKind::Text | MessageKind::File => {}
    }
    Ok(())
}

/// Forgets the file of a deleted message: its record (no more downloads) and the upload
/// that made it (name, hash and size no longer shown to either user). The stored bytes
/// go after the commit if no other file shares them
/// ([`crate::messaging::files::FileRepo::remove_blob_if_unused`]).
async fn erase_file(txn: &DatabaseTransaction, file: FileId) -> Result<(), DbErr> {
    use crate::storage::entities::{file as files, transfer, transfer_chunk};
    let uploads: Vec<Uuid> = transfer::Entity::find()
        .filter(transfer::Column::FileId.eq(file.0))
        .all(txn)
        .await?
        .into_iter()
        .map(|t| t.id)
        .collect();
    if !uploads.is_empty() {
        transfer_chunk::Entity::delete_many()
            .filter(transfer_chunk::Column::TransferId.is_in(uploads.clone()))
            .exec(txn)
            .await?;
        transfer::Entity::delete_many().filter(transfer::Column::Id.is_in(uploads)).exec(txn).await?;
    }
    files::Entity::delete_by_id(file.0).exec(txn).await?;
    Ok(())
}

/// Pairs asked about in one permission query ([`ChatStore::messageable_peers`]).
const PAIRS_PER_QUERY: usize = 200;

pub(crate) const REUSED_ID: &str = "client_msg_id was already used for another conversation";
/// Rows per multi-row `INSERT` (9 parameters each).
const INSERT_ROWS: usize = 1000;

/// A receipt write: raise `user`'s delivered and/or read markers in `conversation`.
#[derive(Clone, Copy, Debug)]
pub struct RaiseReceipt {
    pub conversation: ConversationId,
    pub user: UserId,
    pub delivered: Option<i64>,
    pub read: Option<i64>,
}

/// Raises users' markers (never lowers them; read implies delivered; both capped at the
/// last seq), a whole batch in two statements: one read of the conversations, one
/// multi-row upsert that keeps the higher of the stored and the new value (several writes
/// to one receipt in the batch are merged first). Answers in the order of `writes`, each
/// with the receipt as the batch leaves it.
pub(crate) async fn raise_receipts(
    txn: &DatabaseTransaction,
    writes: &[&RaiseReceipt],
    now: i64,
) -> Result<Vec<Result<Receipt, StoreError>>, DbErr> {
    if writes.is_empty() {
        return Ok(Vec::new());
    }
    let ids: HashSet<Uuid> = writes.iter().map(|w| w.conversation.0).collect();
    let conversations: HashMap<Uuid, conversation::Model> = conversation::Entity::find()
        .filter(conversation::Column::Id.is_in(ids))
        .all(txn)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    // Per receipt: the highest delivered and read marker asked for (0: leave it).
    // Ordered: two nodes upserting the same receipts lock their rows in the same order.
    let mut raised: std::collections::BTreeMap<(Uuid, Uuid), (i64, i64)> = Default::default();
    for &&RaiseReceipt { conversation, user, delivered, read } in writes {
        let Some(c) = conversations.get(&conversation.0).filter(|c| c.user_low == user.0 || c.user_high == user.0)
        else {
            continue;
        };
        let read = read.map_or(0, |s| s.clamp(0, c.last_seq));
        let delivered = Ord::max(delivered.map_or(0, |s| s.clamp(0, c.last_seq)), read);
        let r = raised.entry((conversation.0, user.0)).or_default();
        *r = (Ord::max(r.0, delivered), Ord::max(r.1, read));
    }
    let mut stored: HashMap<(Uuid, Uuid), (i64, i64)> = HashMap::new();
    if !raised.is_empty() {
        let rows = raised.iter().map(|((c, u), (delivered, read))| receipt::ActiveModel {
            conversation_id: Set(*c),
            user_id: Set(*u),
            delivered_seq: Set(*delivered),
            read_seq: Set(*read),
            updated_at: Set(now),
        });
        let higher =
            |col: receipt::Column| Func::greatest([Expr::col((receipt::Entity, col)), Expr::col((Excluded, col))]);
        let grew = Expr::col((Excluded, receipt::Column::DeliveredSeq))
            .gt(Expr::col((receipt::Entity, receipt::Column::DeliveredSeq)))
            .or(Expr::col((Excluded, receipt::Column::ReadSeq))
                .gt(Expr::col((receipt::Entity, receipt::Column::ReadSeq))));
        let updated_at = CaseStatement::new()
            .case(grew, Expr::col((Excluded, receipt::Column::UpdatedAt)))
            .finally(Expr::col((receipt::Entity, receipt::Column::UpdatedAt)));
        let upsert = OnConflict::columns([receipt::Column::ConversationId, receipt::Column::UserId])
            .value(receipt::Column::DeliveredSeq, higher(receipt::Column::DeliveredSeq))
            .value(receipt::Column::ReadSeq, higher(receipt::Column::ReadSeq))
            .value(receipt::Column::UpdatedAt, updated_at)
            .to_owned();
        // Bound each statement's parameters (5 per row) well below both backends' limits.
        let rows: Vec<receipt::ActiveModel> = rows.collect();
        for chunk in rows.chunks(INSERT_ROWS) {
            let returned = receipt::Entity::insert_many(chunk.to_vec())
                .on_conflict(upsert.clone())
                .exec_with_returning(txn)
                .await?;
            stored
                .extend(returned.into_iter().map(|r| ((r.conversation_id, r.user_id), (r.delivered_seq, r.read_seq))));
        }
    }
    Ok(writes
        .iter()
        .map(|&&RaiseReceipt { conversation, user, .. }| {
            let (delivered_seq, read_seq) =
                stored.get(&(conversation.0, user.0)).copied().ok_or(StoreError::NotFound)?;
            Ok(Receipt { conversation_id: conversation, user_id: user, delivered_seq, read_seq })
        })
        .collect())
}

/// `excluded`, the row an upsert proposed (SQLite and PostgreSQL).
#[derive(Clone, Copy)]
struct Excluded;

impl sea_orm::sea_query::Iden for Excluded {
    fn unquoted(&self) -> &str {
        "excluded"
    }
}

/// Records `user` as last seen `at` (the committer's statement on PostgreSQL).
pub(crate) async fn record_last_seen_in(db: &impl ConnectionTrait, user: UserId, at: i64) -> Result<(), DbErr> {
    user::Entity::update_many()
        .col_expr(user::Column::LastSeenAt, sea_orm::sea_query::Expr::value(at))
        .filter(user::Column::Id.eq(user.0))
        .exec(db)
        .await?;
    Ok(())
}

/// The query for the conversation between `a` and `b` (stored once, as (lower, higher)).
pub(crate) fn between(a: UserId, b: UserId) -> sea_orm::Select<conversation::Entity> {
    let (low, high) = if a.0 < b.0 { (a.0, b.0) } else { (b.0, a.0) };
    conversation::Entity::find()
        .filter(conversation::Column::UserLow.eq(low))
        .filter(conversation::Column::UserHigh.eq(high))
}

#[async_trait::async_trait]
impl ChatStore for ChatRepo {
    async fn record_last_seen(&self, user: UserId, at: i64) -> Result<(), StoreError> {
        self.writes.record_last_seen(user, at).await.await
    }

    async fn login_active(&self, session: uuid::Uuid, user: UserId, in_use: bool) -> Result<bool, StoreError> {
        let (id, now) = (crate::domain::SessionId(session), crate::now_ms());
        let login = if in_use {
            // An open socket's or stream's periodic check keeps its login from expiring.
            self.sessions.use_login(id, user, now).await.map(|l| l.is_some())
        } else {
            self.sessions.is_active(id, user, now).await
        };
        login.map_err(unavailable)
    }

    async fn conversation(&self, id: ConversationId) -> Result<Option<ConversationInfo>, StoreError> {
        let c = conversation::Entity::find_by_id(id.0).one(&self.db).await.map_err(unavailable)?;
        Ok(c.as_ref().map(info))
    }

    async fn open_conversation(&self, a: UserId, b: UserId) -> Result<ConversationInfo, StoreError> {
        if a == b {
            return Err(StoreError::Forbidden("you cannot message yourself"));
        }
        if user::Entity::find_by_id(b.0).one(&self.db).await.map_err(unavailable)?.is_none() {
            return Err(StoreError::NotFound);
        }
        self.may_message(a, b).await?;
        let (low, high) = if a.0 < b.0 { (a.0, b.0) } else { (b.0, a.0) };
        let find = || between(a, b).one(&self.db);
        if let Some(c) = find().await.map_err(unavailable)? {
            return Ok(info(&c));
        }
        let now = crate::now_ms();
        let row = conversation::ActiveModel {
            id: Set(ConversationId::new().0),
            user_low: Set(low),
            user_high: Set(high),
            last_seq: Set(0),
            created_at: Set(now),
            updated_at: Set(now),
        };
        // Two first messages at once: one insert wins, the other finds it.
        let inserted = conversation::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([conversation::Column::UserLow, conversation::Column::UserHigh])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await
            .map_err(unavailable)?;
        let _ = inserted;
        find().await.map_err(unavailable)?.map(|c| info(&c)).ok_or(StoreError::NotFound)
    }

    async fn may_message(&self, from: UserId, to: UserId) -> Result<(), StoreError> {
        crate::contacts::repo::may_message(&self.db, from, to).await
    }

    async fn messageable_peers(&self, me: UserId, peers: &[UserId]) -> Result<HashSet<UserId>, StoreError> {
        use crate::contacts::repo::{messageable_pairs, pair};
        let mut allowed = HashSet::new();
        // A bounded OR of pairs per query, however many conversations the user has.
        for chunk in peers.chunks(PAIRS_PER_QUERY) {
            let pairs: Vec<(Uuid, Uuid)> = chunk.iter().map(|p| pair(me, *p)).collect();
            let ok = messageable_pairs(&self.db, &pairs).await.map_err(unavailable)?;
            allowed.extend(chunk.iter().filter(|p| ok.contains(&pair(me, **p))));
        }
        Ok(allowed)
    }

    async fn queue_append(&self, msg: NewMessage) -> Pending<Appended> {
        self.writes.append(msg, self.inline_notify, None).await
    }

    async fn queue_append_delivered(&self, msg: NewMessage, recipient: UserId) -> Pending<Appended> {
        self.writes.append(msg, self.inline_notify, Some(recipient)).await
    }

    async fn messages_after(
        &self,
        conversation: ConversationId,
        after_seq: i64,
        limit: u64,
    ) -> Result<Vec<StoredMessage>, StoreError> {
        if let Some(readers) = &self.readers {
            return readers.read(|c| read_messages_after(c, conversation, after_seq, limit)).map_err(read_failed);
        }
        self.entries(conversation, Some(after_seq), None, limit, true).await.map_err(unavailable)
    }

    async fn conversations_of(&self, user: UserId) -> Result<Vec<ConversationInfo>, StoreError> {
        if let Some(readers) = &self.readers {
            return readers.read(|c| read_conversations_of(c, user)).map_err(read_failed);
        }
        let rows = conversation::Entity::find()
            .filter(
                Condition::any()
                    .add(conversation::Column::UserLow.eq(user.0))
                    .add(conversation::Column::UserHigh.eq(user.0)),
            )
            .all(&self.db)
            .await
            .map_err(unavailable)?;
        Ok(rows.iter().map(info).collect())
    }

    async fn update_receipt(
        &self,
        conversation: ConversationId,
        user: UserId,
        delivered: Option<i64>,
        read: Option<i64>,
    ) -> Result<Receipt, StoreError> {
        self.writes.raise_receipt(RaiseReceipt { conversation, user, delivered, read }).await.await
    }
}
