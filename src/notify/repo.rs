//! Notifications: stored per user, numbered `n` = 1, 2, 3, ... (each change takes the next
//! number, in the storing transaction), capped per user. A contact notification is one
//! row per bus event; the messages of a conversation share one row per user, updated in
//! place with the newest message and the count of unread ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde_json::Value;
use switchboard_actors::ids::{ConversationId, UserId};
use switchboard_actors::notify_stream::NotificationStore;
use switchboard_actors::ports::{InlineNotification, NotificationView, Pending, StoreError, Unread};
use switchboard_actors::states::NotificationKind;
use uuid::Uuid;

use crate::storage::entities::{conversation_mute, notification, notification_counter, receipt, user};

/// Rows per multi-row `INSERT` (10 parameters each).
const INSERT_ROWS: usize = 1000;

/// A notification to store.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user: UserId,
    /// The bus event it comes from: one notification per (user, event).
    pub event_id: Uuid,
    pub kind: NotificationKind,
    pub conversation_id: Option<ConversationId>,
    pub seq: Option<i64>,
    pub payload: Value,
    /// The user it is from, and the prefix of the payload keys their name goes under:
    /// `<prefix>username` and `<prefix>display_name` are filled in by the storing
    /// transaction (`null` if the account is gone), so the notify service reads no users
    /// per event.
    pub from: Option<(UserId, &'static str)>,
}

impl NewNotification {
    /// The payload with the sender's names (`None`: unknown user, `null` names).
    pub(crate) fn payload_named(&self, names: Option<(&str, &str)>) -> Value {
        let mut payload = self.payload.clone();
        if let (Some((_, prefix)), Value::Object(map)) = (self.from, &mut payload) {
            let (username, display_name) = names.map_or((Value::Null, Value::Null), |(u, d)| (u.into(), d.into()));
            map.insert(format!("{prefix}username"), username);
            map.insert(format!("{prefix}display_name"), display_name);
        }
        payload
    }
}

/// What a batch of notifications stored: the new ones kept (in order, with their user),
/// and the unread counts after the batch of each user who got one.
#[derive(Debug, Default)]
pub struct Recorded {
    pub stored: Vec<(UserId, NotificationView)>,
    pub unread: HashMap<UserId, Unread>,
}

impl Recorded {
    /// What `to` got from recording one message's notification in its append's
    /// transaction.
    pub(crate) fn inline(mut self, to: UserId) -> InlineNotification {
        let view = self.stored.into_iter().find(|(user, _)| *user == to).map(|(_, view)| view);
        InlineNotification { to, view, unread: self.unread.remove(&to).unwrap_or_default() }
    }
}

/// The notification writes that come as often as messages, queued for a group commit
/// (implemented by [`crate::writer::Committer`]). Each returns once its write is queued,
/// with the future of its answer, which resolves after the commit. Through sea-orm
/// (PostgreSQL) they are [`record_in_txn`] and [`read_conversation_in_txn`]; on a SQLite
/// file, [`crate::notify::sqlite_writes`].
#[async_trait::async_trait]
pub trait NotificationWrites: Send + Sync + std::fmt::Debug {
    /// Stores `news`, capping each user's at `keep` (see [`NotificationRepo::record_batch`]).
    async fn record(&self, news: Vec<NewNotification>, keep: u64) -> Pending<Recorded>;
    /// `user` read `conversation` up to `seq` (see [`NotificationRepo::read_conversation`]).
    async fn read_conversation(&self, user: UserId, conversation: ConversationId, seq: i64) -> Pending<Option<Unread>>;
}

#[derive(Clone, Debug)]
pub struct NotificationRepo {
    db: DatabaseConnection,
    writes: Arc<dyn NotificationWrites>,
}

fn view(m: notification::Model) -> Result<NotificationView, DbErr> {
    Ok(NotificationView {
        id: m.id,
        n: m.n,
        kind: crate::storage::stored(NotificationKind::parse, "notifications.kind", &m.kind)?,
        conversation_id: m.conversation_id.map(ConversationId),
        seq: m.seq,
        payload: serde_json::from_str(&m.payload).unwrap_or(Value::Null),
        read: m.read_at.is_some(),
        count: m.count,
        created_at: m.created_at,
    })
}

impl NotificationRepo {
    /// Notifications are written through `writes` (the process's one busy writer).
    pub fn new(db: DatabaseConnection, writes: Arc<dyn NotificationWrites>) -> Self {
        Self { db, writes }
    }

    /// Whether the database answers at all (to tell an outage from a write it refuses).
    pub async fn database_answers(&self) -> bool {
        self.db.ping().await.is_ok()
    }

    /// Stores `news` (through the process's committer, in its next group transaction):
    /// a contact notification once per (user, event); a message updates its user's
    /// notification of that conversation (or makes it), once per batch however many
    /// messages of the conversation the batch has, and never for a message it stands for
    /// already (a redelivery). Each change takes its user's next number; each user's
    /// notifications not changed within their newest `keep` numbers are deleted. Returns
    /// the notifications changed and kept, in order, with their user.
    pub async fn record_batch(&self, news: Vec<NewNotification>, keep: u64) -> Result<Recorded, DbErr> {
        if news.is_empty() {
            return Ok(Recorded::default());
        }
        self.writes.record(news, keep).await.await.map_err(|e| DbErr::Custom(e.to_string()))
    }

    /// Counts `user`'s messages of `conversation` up to `seq` read in its notification
    /// (through the committer: a read marker per message read is as frequent as the
    /// messages); read up to its newest message, it is read. When that changed it,
    /// returns the user's unread counts after it.
    pub async fn read_conversation(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: i64,
    ) -> Result<Option<Unread>, DbErr> {
        self.writes.read_conversation(user, conversation, seq).await.await.map_err(|e| DbErr::Custom(e.to_string()))
    }

    /// Marks one of `user`'s notifications read. `false` if `user` has none with this id
    /// (another user's id is "not found", never "forbidden").
    pub async fn mark_read(&self, user: UserId, id: Uuid, now: i64) -> Result<bool, DbErr> {
        // The user's counter first, as every notification write takes it (no lock-order
        // deadlock with the notify consumer on PostgreSQL).
        let txn = self.db.begin().await?;
        lock_counters(&txn, [user.0]).await?;
        let found = notification::Entity::find_by_id(id)
            .filter(notification::Column::UserId.eq(user.0))
            .one(&txn)
            .await?
            .is_some();
        if found {
            mark_unread_read(&txn, user, Condition::all().add(notification::Column::Id.eq(id)), now).await?;
        }
        txn.commit().await?;
        Ok(found)
    }

    /// Marks `user`'s unread `contact_request` notification of request `request` read (the
    /// request was answered or withdrawn); returns how many changed.
    pub async fn read_request(&self, user: UserId, request: Uuid, now: i64) -> Result<u64, DbErr> {
        // The user's counter first, as every notification write takes it (see `mark_read`).
        let txn = self.db.begin().await?;
        lock_counters(&txn, [user.0]).await?;
        let which = Condition::all()
            .add(notification::Column::Kind.eq(NotificationKind::ContactRequest.as_str()))
            .add(notification::Column::Payload.contains(request.to_string()));
        let changed = mark_unread_read(&txn, user, which, now).await?;
        txn.commit().await?;
        Ok(changed)
    }

    /// Removes a deleted account's names from other users' notifications about it (its
    /// username may belong to someone else tomorrow): `sender_username`/`username` become
    /// null and the display names "Deleted user". Returns how many changed.
    pub async fn forget_sender(&self, user: UserId, deleted_name: &str) -> Result<u64, DbErr> {
        let id = user.0.to_string();
        let rows = notification::Entity::find()
            .filter(notification::Column::UserId.ne(user.0))
            .filter(notification::Column::Payload.contains(&id))
            .all(&self.db)
            .await?;
        let mut changed = 0;
        for row in rows {
            let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&row.payload) else { continue };
            let mut touched = false;
            for (id_key, prefix) in [("sender_id", "sender_"), ("user_id", "")] {
                if map.get(id_key).and_then(Value::as_str) == Some(id.as_str()) {
                    map.insert(format!("{prefix}username"), Value::Null);
                    map.insert(format!("{prefix}display_name"), Value::from(deleted_name));
                    touched = true;
                }
            }
            if touched {
                notification::Entity::update_many()
                    .col_expr(notification::Column::Payload, Expr::value(Value::Object(map).to_string()))
                    .filter(notification::Column::Id.eq(row.id))
                    .exec(&self.db)
                    .await?;
                changed += 1;
            }
        }
        Ok(changed)
    }

    /// Follows an edit or deletion of message `target` in `user`'s message notification of
    /// `conversation`, if that notification shows it: its preview becomes the message's
    /// text *as stored now* (its first `preview_chars` characters), or, deleted, is erased
    /// with the file name (a deleted message's text is kept nowhere). Reading the message
    /// rather than the event makes the outcome independent of the order in which changes
    /// are followed (two nodes' consumers may follow an edit and a deletion either way
    /// round). Like every change it takes the user's next number, so streams and clients
    /// that resume get it. Returns the changed notification.
    pub async fn follow_change(
        &self,
        user: UserId,
        conversation: ConversationId,
        target: Uuid,
        preview_chars: usize,
    ) -> Result<Option<NotificationView>, DbErr> {
        let txn = self.db.begin().await?;
        lock_counters(&txn, [user.0]).await?;
        let now = crate::storage::entities::message::Entity::find_by_id(target).one(&txn).await?;
        let preview =
            now.filter(|m| m.deleted_at.is_none()).map(|m| m.body.chars().take(preview_chars).collect::<String>());
        let Some(row) = notification::Entity::find()
            .filter(notification::Column::UserId.eq(user.0))
            .filter(notification::Column::ConversationId.eq(conversation.0))
            .filter(notification::Column::Kind.eq(NotificationKind::Message.as_str()))
            .one(&txn)
            .await?
        else {
            return Ok(None);
        };
        let Ok(Value::Object(mut map)) = serde_json::from_str::<Value>(&row.payload) else { return Ok(None) };
        if map.get("message_id").and_then(Value::as_str) != Some(target.to_string().as_str()) {
            return Ok(None);
        }
        match preview {
            Some(text) => {
                map.insert("preview".into(), Value::from(text));
                map.insert("edited".into(), Value::Bool(true));
            }
            None => {
                map.insert("preview".into(), Value::from(""));
                map.remove("file_name");
                map.insert("deleted".into(), Value::Bool(true));
            }
        }
        let counters = notification_counter::Entity::update_many()
            .col_expr(notification_counter::Column::LastN, Expr::col(notification_counter::Column::LastN).add(1))
            .filter(notification_counter::Column::UserId.eq(user.0))
            .exec_with_returning(&txn)
            .await?;
        let n = counters.first().map(|c| c.last_n).ok_or_else(|| DbErr::Custom("no notification counter".into()))?;
        let changed = notification::Model { n, payload: Value::Object(map).to_string(), ..row };
        notification::Entity::update_many()
            .col_expr(notification::Column::N, Expr::value(n))
            .col_expr(notification::Column::Payload, Expr::value(changed.payload.clone()))
            .filter(notification::Column::Id.eq(changed.id))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        view(changed).map(Some)
    }

    /// Deletes every notification of `user` (an account being deleted).
    pub async fn forget(&self, user: UserId) -> Result<u64, DbErr> {
        let r =
            notification::Entity::delete_many().filter(notification::Column::UserId.eq(user.0)).exec(&self.db).await?;
        Ok(r.rows_affected)
    }

    /// Marks all of `user`'s notifications read; returns how many changed.
    pub async fn mark_all_read(&self, user: UserId, now: i64) -> Result<u64, DbErr> {
        let txn = self.db.begin().await?;
        lock_counters(&txn, [user.0]).await?;
        let changed = mark_unread_read(&txn, user, Condition::all(), now).await?;
        txn.commit().await?;
        Ok(changed)
    }

    /// A page of `user`'s notifications, newest first, with `n < before` when given.
    pub async fn list(
        &self,
        user: UserId,
        unread_only: bool,
        before: Option<i64>,
        limit: u64,
    ) -> Result<Vec<NotificationView>, DbErr> {
        let mut q = notification::Entity::find().filter(notification::Column::UserId.eq(user.0));
        if unread_only {
            q = q.filter(notification::Column::ReadAt.is_null());
        }
        if let Some(b) = before {
            q = q.filter(notification::Column::N.lt(b));
        }
        let rows = q.order_by_desc(notification::Column::N).limit(limit).all(&self.db).await?;
        rows.into_iter().map(view).collect()
    }

    /// Deletes notifications created before `cutoff` (retention); returns how many.
    pub async fn expire(&self, cutoff: i64) -> Result<u64, DbErr> {
        let r = notification::Entity::delete_many()
            .filter(notification::Column::CreatedAt.lt(cutoff))
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
    }

    /// `user`'s unread counts.
    pub async fn unread_counts(&self, user: UserId) -> Result<Unread, DbErr> {
        Ok(self.unread_counts_of(&[user]).await?.remove(&user).unwrap_or_default())
    }

    /// The unread counts of each of `users` (one query however many).
    pub async fn unread_counts_of(&self, users: &[UserId]) -> Result<HashMap<UserId, Unread>, DbErr> {
        unread_counts_in(&self.db, users).await
    }

    /// Up to `limit` notifications of `user` with `n > after`, oldest first.
    pub async fn after_n(&self, user: UserId, after: i64, limit: u64) -> Result<Vec<NotificationView>, DbErr> {
        let rows = notification::Entity::find()
            .filter(notification::Column::UserId.eq(user.0))
            .filter(notification::Column::N.gt(after))
            .order_by_asc(notification::Column::N)
            .limit(limit)
            .all(&self.db)
            .await?;
        rows.into_iter().map(view).collect()
    }
}

/// The unread counts of each of `users`, on `db` (a connection or a transaction): the sum
/// of their unread notifications' counts, per conversation and in all.
async fn unread_counts_in<C: ConnectionTrait>(db: &C, users: &[UserId]) -> Result<HashMap<UserId, Unread>, DbErr> {
    let rows: Vec<(Uuid, Option<Uuid>, i64)> = notification::Entity::find()
        .select_only()
        .column(notification::Column::UserId)
        .column(notification::Column::ConversationId)
        .column_as(crate::storage::sum_bigint(notification::Column::Count), "count")
        .filter(notification::Column::UserId.is_in(users.iter().map(|u| u.0)))
        .filter(notification::Column::ReadAt.is_null())
        .group_by(notification::Column::UserId)
        .group_by(notification::Column::ConversationId)
        .into_tuple()
        .all(db)
        .await?;
    let mut out: HashMap<UserId, Unread> = users.iter().map(|u| (*u, Unread::default())).collect();
    for (user, conv, count) in rows {
        out.entry(UserId(user)).or_default().add(conv.map(ConversationId), count);
    }
    let mutes: Vec<(Uuid, Uuid, Option<i64>)> = conversation_mute::Entity::find()
        .select_only()
        .column(conversation_mute::Column::UserId)
        .column(conversation_mute::Column::ConversationId)
        .column(conversation_mute::Column::Until)
        .filter(conversation_mute::Column::UserId.is_in(users.iter().map(|u| u.0)))
        .filter(mute_active(crate::now_ms()))
        .into_tuple()
        .all(db)
        .await?;
    for (user, conv, until) in mutes {
        out.entry(UserId(user)).or_default().mute(ConversationId(conv), until);
    }
    Ok(out)
}

/// Mutes that have not ended at `now`.
fn mute_active(now: i64) -> Condition {
    Condition::any().add(conversation_mute::Column::Until.is_null()).add(conversation_mute::Column::Until.gt(now))
}

/// Muted conversations: set and lifted by their user (`PUT`/`DELETE
/// /api/conversations/{id}/mute`), read with the unread counts.
impl NotificationRepo {
    /// Mutes `conversation` for `user` until `until` (`None`: until unmuted), replacing
    /// any mute of it. The caller checked that `user` takes part in it.
    pub async fn mute(&self, user: UserId, conversation: ConversationId, until: Option<i64>) -> Result<(), DbErr> {
        let row = conversation_mute::ActiveModel {
            user_id: Set(user.0),
            conversation_id: Set(conversation.0),
            until: Set(until),
        };
        conversation_mute::Entity::insert(row)
            .on_conflict(
                OnConflict::columns([conversation_mute::Column::UserId, conversation_mute::Column::ConversationId])
                    .update_column(conversation_mute::Column::Until)
                    .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Lifts `user`'s mute of `conversation`; whether there was one.
    pub async fn unmute(&self, user: UserId, conversation: ConversationId) -> Result<bool, DbErr> {
        let gone = conversation_mute::Entity::delete_many()
            .filter(conversation_mute::Column::UserId.eq(user.0))
            .filter(conversation_mute::Column::ConversationId.eq(conversation.0))
            .exec(&self.db)
            .await?;
        Ok(gone.rows_affected > 0)
    }
}

/// `user`'s muted conversations now, with when each mute ends, read through `db`.
pub async fn mutes_of(db: &impl ConnectionTrait, user: UserId) -> Result<HashMap<ConversationId, Option<i64>>, DbErr> {
    let rows: Vec<(Uuid, Option<i64>)> = conversation_mute::Entity::find()
        .select_only()
        .column(conversation_mute::Column::ConversationId)
        .column(conversation_mute::Column::Until)
        .filter(conversation_mute::Column::UserId.eq(user.0))
        .filter(mute_active(crate::now_ms()))
        .into_tuple()
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|(c, until)| (ConversationId(c), until)).collect())
}

/// [`NotificationRepo::read_conversation`] inside the committer's transaction.
pub(crate) async fn read_conversation_in_txn(
    txn: &DatabaseTransaction,
    user: UserId,
    conversation: ConversationId,
    seq: i64,
    now: i64,
) -> Result<Option<Unread>, DbErr> {
    let mut q = notification::Entity::find()
        .filter(notification::Column::UserId.eq(user.0))
        .filter(notification::Column::ConversationId.eq(conversation.0))
        .filter(message_kind());
    lock_counters(txn, [user.0]).await?;
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        q = q.lock_exclusive();
    }
    let Some(row) = q.one(txn).await? else { return Ok(None) };
    let stored = Stored::of(&row);
    let Some(count) = after_read(stored, seq) else { return Ok(None) };
    notification::Entity::update_many()
        .col_expr(notification::Column::Count, Expr::value(count))
        .col_expr(notification::Column::ReadAt, Expr::value((count == 0).then_some(now)))
        .filter(notification::Column::Id.eq(row.id))
        .exec(txn)
        .await?;
    Ok(unread_counts_in(txn, &[user]).await?.remove(&user))
}

/// [`NotificationRepo::record_batch`] inside the committer's transaction: a fixed number
/// of statements however large the batch (the stored rows it changes, the read markers,
/// the names, the counter upsert and one `UPDATE … CASE … RETURNING` for every user's
/// numbers, one multi-row upsert, one cap delete, the counts).
pub(crate) async fn record_in_txn(
    txn: &DatabaseTransaction,
    news: &[NewNotification],
    keep: u64,
    now: i64,
) -> Result<Recorded, DbErr> {
    let changes = changes(news);
    if changes.is_empty() {
        return Ok(Recorded::default());
    }
    lock_counters(
        txn,
        changes.iter().map(|c| match c {
            Change::Single(n) => n.user.0,
            Change::Conversation { user, .. } => user.0,
        }),
    )
    .await?;
    // Contact notifications: one per (user, event); a redelivered event is stored already.
    let singles = changes.iter().filter_map(|c| match c {
        Change::Single(n) => Some(n),
        Change::Conversation { .. } => None,
    });
    let stored_before =
        any_pair(singles.map(|n| (n.user.0, n.event_id)), notification::Column::UserId, notification::Column::EventId);
    let seen: HashSet<(Uuid, Uuid)> = if stored_before.is_empty() {
        HashSet::new()
    } else {
        notification::Entity::find()
            .select_only()
            .column(notification::Column::UserId)
            .column(notification::Column::EventId)
            .filter(stored_before)
            .into_tuple()
            .all(txn)
            .await?
            .into_iter()
            .collect()
    };
    // Message notifications: the rows they update (locked on PostgreSQL, so two notify
    // instances add to a count one after the other) and the users' read markers.
    let pairs = changes.iter().filter_map(|c| match c {
        Change::Conversation { user, conversation, .. } => Some((user.0, conversation.0)),
        Change::Single(_) => None,
    });
    let mut current: HashMap<(Uuid, Uuid), notification::Model> = HashMap::new();
    let mut read_seqs: HashMap<(Uuid, Uuid), i64> = HashMap::new();
    let by_pair = any_pair(pairs.clone(), notification::Column::UserId, notification::Column::ConversationId);
    if !by_pair.is_empty() {
        let mut q =
            notification::Entity::find().filter(message_kind()).filter(by_pair).order_by_asc(notification::Column::Id);
        if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
            q = q.lock_exclusive();
        }
        for row in q.all(txn).await? {
            if let Some(c) = row.conversation_id {
                current.insert((row.user_id, c), row);
            }
        }
        let markers = any_pair(pairs, receipt::Column::UserId, receipt::Column::ConversationId);
        for r in receipt::Entity::find().filter(markers).all(txn).await? {
            read_seqs.insert((r.user_id, r.conversation_id), r.read_seq);
        }
    }
    // What each change makes: (the new or updated row without its number, its user's event).
    let mut planned: Vec<(notification::Model, &NewNotification)> = Vec::with_capacity(changes.len());
    for change in &changes {
        match change {
            Change::Single(new) => {
                if seen.contains(&(new.user.0, new.event_id)) {
                    continue;
                }
                planned.push((row_for(new, None, 1, now), new));
            }
            Change::Conversation { user, conversation, news } => {
                let key = (user.0, conversation.0);
                let old = current.get(&key);
                let stored = old.map(Stored::of);
                let read_seq = read_seqs.get(&key).copied().unwrap_or(0);
                if let Some(b) = bump(stored, read_seq, news) {
                    planned.push((row_for(b.newest, old.map(|m| (m.id, m.event_id)), b.count, now), b.newest));
                }
            }
        }
    }
    if planned.is_empty() {
        return Ok(Recorded::default());
    }
    let names: HashMap<Uuid, user::Model> = user::Entity::find()
        .filter(user::Column::Id.is_in(planned.iter().filter_map(|(_, n)| n.from.map(|(u, _)| u.0))))
        .all(txn)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let mut per_user: HashMap<Uuid, i64> = HashMap::new();
    for (row, _) in &planned {
        *per_user.entry(row.user_id).or_default() += 1;
    }

    // Every user's numbers in one statement (their counters exist and are locked):
    // last_n += how many changes that user has.
    let mut bump_by = CaseStatement::new();
    for (user, k) in &per_user {
        bump_by = bump_by.case(notification_counter::Column::UserId.eq(*user), Expr::val(*k));
    }
    let last: HashMap<Uuid, i64> = notification_counter::Entity::update_many()
        .col_expr(
            notification_counter::Column::LastN,
            Expr::col(notification_counter::Column::LastN).add(bump_by.finally(0i64)),
        )
        .filter(notification_counter::Column::UserId.is_in(per_user.keys().copied()))
        .exec_with_returning(txn)
        .await?
        .into_iter()
        .map(|c| (c.user_id, c.last_n))
        .collect();
    let mut next = HashMap::with_capacity(per_user.len());
    for (user, k) in &per_user {
        let Some(l) = last.get(user) else {
            return Err(DbErr::Custom(format!("no notification counter for {user} inside its transaction")));
        };
        next.insert(*user, l - k + 1);
    }
    let rows: Vec<notification::Model> = planned
        .into_iter()
        .map(|(mut row, new)| {
            let n = next.entry(row.user_id).or_default();
            row.n = *n;
            *n += 1;
            row.payload = new
                .payload_named(
                    new.from.and_then(|(u, _)| names.get(&u.0)).map(|u| (u.username.as_str(), u.display_name.as_str())),
                )
                .to_string();
            row
        })
        .collect();
    // New rows and updated ones in one statement (an update keeps its row's id).
    for chunk in rows.chunks(INSERT_ROWS) {
        notification::Entity::insert_many(chunk.iter().cloned().map(notification::ActiveModel::from))
            .on_conflict(
                OnConflict::column(notification::Column::Id)
                    .update_columns([
                        notification::Column::N,
                        notification::Column::Seq,
                        notification::Column::Payload,
                        notification::Column::ReadAt,
                        notification::Column::Count,
                        notification::Column::CreatedAt,
                    ])
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
    }
    let keep = keep as i64;
    let over = last.iter().filter(|(_, l)| **l > keep).fold(Condition::any(), |c, (user, l)| {
        c.add(Condition::all().add(notification::Column::UserId.eq(*user)).add(notification::Column::N.lte(l - keep)))
    });
    if !over.is_empty() {
        notification::Entity::delete_many().filter(over).exec(txn).await?;
    }
    let users: Vec<UserId> = per_user.keys().map(|u| UserId(*u)).collect();
    Ok(Recorded {
        stored: rows
            .into_iter()
            .filter(|r| last.get(&r.user_id).is_some_and(|l| r.n > l - keep))
            .map(|r| Ok((UserId(r.user_id), view(r)?)))
            .collect::<Result<_, DbErr>>()?,
        unread: unread_counts_in(txn, &users).await?,
    })
}

/// `(a = x AND b = y) OR …` for each `(x, y)` of `pairs` (empty: no pairs).
fn any_pair<A: ColumnTrait, B: ColumnTrait>(pairs: impl Iterator<Item = (Uuid, Uuid)>, a: A, b: B) -> Condition {
    pairs.fold(Condition::any(), |c, (x, y)| c.add(Condition::all().add(a.eq(x)).add(b.eq(y))))
}

/// `kind = 'message'` as a literal, so a cached PostgreSQL plan (and SQLite) can use the
/// partial index on (user, conversation) of message notifications.
fn message_kind() -> Expr {
    Expr::cust(format!("kind = '{}'", NotificationKind::Message))
}

/// Makes sure each of `users` has a notification counter and, on PostgreSQL, locks them
/// (in user order) for the rest of the transaction: a user's notifications then change
/// one transaction at a time, however many notify instances run, so a read marker and a
/// new message's first notification cannot pass each other, and every transaction takes
/// its locks counters first (no deadlock with the cap's delete). SQLite transactions hold
/// the database's write lock already.
async fn lock_counters(txn: &DatabaseTransaction, users: impl IntoIterator<Item = Uuid>) -> Result<(), DbErr> {
    let users: std::collections::BTreeSet<Uuid> = users.into_iter().collect();
    if users.is_empty() {
        return Ok(());
    }
    notification_counter::Entity::insert_many(
        users.iter().map(|u| notification_counter::ActiveModel { user_id: Set(*u), last_n: Set(0) }),
    )
    .on_conflict(OnConflict::column(notification_counter::Column::UserId).do_nothing().to_owned())
    .exec_without_returning(txn)
    .await?;
    if txn.get_database_backend() == sea_orm::DbBackend::Postgres {
        notification_counter::Entity::find()
            .filter(notification_counter::Column::UserId.is_in(users))
            .order_by_asc(notification_counter::Column::UserId)
            .lock_exclusive()
            .all(txn)
            .await?;
    }
    Ok(())
}

/// The row `new` makes (its number and named payload still to be filled in): a new one,
/// or the update of the message notification `existing` (its id and first event kept).
fn row_for(new: &NewNotification, existing: Option<(Uuid, Uuid)>, count: i64, now: i64) -> notification::Model {
    let (id, event_id) = existing.unwrap_or((Uuid::now_v7(), new.event_id));
    notification::Model {
        id,
        user_id: new.user.0,
        n: 0,
        event_id,
        kind: new.kind.to_string(),
        conversation_id: new.conversation_id.map(|c| c.0),
        seq: new.seq,
        payload: String::new(),
        read_at: (count == 0).then_some(now),
        count,
        created_at: now,
    }
}

/// What a batch of new notifications changes, in order: each contact notification (once
/// per (user, event)), and once per (user, conversation) the message notification with
/// every new message of the batch for it.
pub(crate) enum Change<'a> {
    Single(&'a NewNotification),
    Conversation { user: UserId, conversation: ConversationId, news: Vec<&'a NewNotification> },
}

/// Groups `news` into [`Change`]s, in the order each first appears.
pub(crate) fn changes(news: &[NewNotification]) -> Vec<Change<'_>> {
    let mut out: Vec<Change<'_>> = Vec::new();
    let mut conversations: HashMap<(UserId, ConversationId), usize> = HashMap::new();
    let mut singles: HashSet<(UserId, Uuid)> = HashSet::new();
    for new in news {
        match (new.kind, new.conversation_id, new.seq) {
            (NotificationKind::Message, Some(conversation), Some(_)) => {
                match conversations.get(&(new.user, conversation)) {
                    Some(&i) => {
                        if let Change::Conversation { news, .. } = &mut out[i] {
                            news.push(new);
                        }
                    }
                    None => {
                        conversations.insert((new.user, conversation), out.len());
                        out.push(Change::Conversation { user: new.user, conversation, news: vec![new] });
                    }
                }
            }
            _ => {
                if singles.insert((new.user, new.event_id)) {
                    out.push(Change::Single(new));
                }
            }
        }
    }
    out
}

/// A stored message notification, as [`bump`] needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stored {
    /// The newest message it stands for.
    pub seq: i64,
    pub count: i64,
    pub read: bool,
}

impl Stored {
    fn of(m: &notification::Model) -> Self {
        Stored { seq: m.seq.unwrap_or(0), count: m.count, read: m.read_at.is_some() }
    }
}

/// What a message notification becomes.
#[derive(Debug)]
pub(crate) struct Bump<'a> {
    /// The newest message (its seq, preview and sender go into the notification).
    pub newest: &'a NewNotification,
    /// Unread messages it stands for; 0: read.
    pub count: i64,
}

/// What is left unread of `stored` (unread, standing for messages up to `stored.seq`) once
/// its user has read up to `read_seq`: nothing at or past its newest message; otherwise at
/// most the messages after `read_seq`, never more than it counted. Exact unless the user's
/// own messages sit among those (they sent without reading): then an overcount by those,
/// until they read on. No query: a read costs the same however long the conversation.
pub(crate) fn unread_left(stored: Stored, read_seq: i64) -> i64 {
    if stored.read || read_seq >= stored.seq { 0 } else { Ord::min(stored.count, stored.seq - read_seq) }
}

/// The message notification of a conversation after `news` (new messages in it for its
/// user), given the stored one and the user's read marker: `None` when none is newer than
/// what it stands for (a redelivery). New messages after the read marker add to what is
/// left unread of the stored one; messages read on another device before their
/// notification was stored do not count.
pub(crate) fn bump<'a>(stored: Option<Stored>, read_seq: i64, news: &[&'a NewNotification]) -> Option<Bump<'a>> {
    let after = stored.map_or(i64::MIN, |s| s.seq);
    let mut fresh: Vec<(i64, &'a NewNotification)> =
        news.iter().filter_map(|n| n.seq.filter(|s| *s > after).map(|s| (s, *n))).collect();
    fresh.sort_by_key(|(s, _)| *s);
    fresh.dedup_by_key(|(s, _)| *s);
    let &(_, newest) = fresh.last()?;
    let left = stored.map_or(0, |s| unread_left(s, read_seq));
    let count = left + fresh.iter().filter(|(s, _)| *s > read_seq).count() as i64;
    Some(Bump { newest, count })
}

/// The unread count of the message notification `stored` after its user read up to
/// `read_seq` ([`unread_left`]); `None` if it does not change. 0: read.
pub(crate) fn after_read(stored: Stored, read_seq: i64) -> Option<i64> {
    let count = unread_left(stored, read_seq);
    (!stored.read && count != stored.count).then_some(count)
}

fn unavailable(e: DbErr) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl NotificationStore for NotificationRepo {
    async fn after(&self, user: UserId, after: i64, limit: u64) -> Result<Vec<NotificationView>, StoreError> {
        self.after_n(user, after, limit).await.map_err(unavailable)
    }

    async fn unread(&self, user: UserId) -> Result<Unread, StoreError> {
        self.unread_counts(user).await.map_err(unavailable)
    }
}

/// Marks `user`'s unread notifications that match `which` read (they no longer count),
/// inside `txn`, which holds the user's counter; returns how many changed.
async fn mark_unread_read(txn: &DatabaseTransaction, user: UserId, which: Condition, now: i64) -> Result<u64, DbErr> {
    let r = notification::Entity::update_many()
        .col_expr(notification::Column::ReadAt, Expr::value(now))
        .col_expr(notification::Column::Count, Expr::value(0i64))
        .filter(notification::Column::UserId.eq(user.0))
        .filter(notification::Column::ReadAt.is_null())
        .filter(which)
        .exec(txn)
        .await?;
    Ok(r.rows_affected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(user: UserId, conversation: ConversationId, seq: i64) -> NewNotification {
        NewNotification {
            user,
            event_id: Uuid::now_v7(),
            kind: NotificationKind::Message,
            conversation_id: Some(conversation),
            seq: Some(seq),
            payload: serde_json::json!({"seq": seq}),
            from: None,
        }
    }

    fn contact(user: UserId, event_id: Uuid) -> NewNotification {
        NewNotification {
            user,
            event_id,
            kind: NotificationKind::ContactRequest,
            conversation_id: None,
            seq: None,
            payload: Value::Null,
            from: None,
        }
    }

    #[test]
    fn a_batch_changes_each_conversation_once_and_each_contact_event_once() {
        let (a, b, c) = (UserId::new(), UserId::new(), ConversationId::new());
        let event = Uuid::now_v7();
        let news = vec![message(a, c, 1), contact(a, event), message(b, c, 1), message(a, c, 2), contact(a, event)];
        let got: Vec<(UserId, Vec<Option<i64>>)> = changes(&news)
            .iter()
            .map(|ch| match ch {
                Change::Single(n) => (n.user, vec![]),
                Change::Conversation { user, news, .. } => (*user, news.iter().map(|n| n.seq).collect()),
            })
            .collect();
        assert_eq!(got, vec![(a, vec![Some(1), Some(2)]), (a, vec![]), (b, vec![Some(1)])]);
    }

    #[test]
    fn new_messages_add_to_the_unread_count_and_redeliveries_change_nothing() {
        let (u, c) = (UserId::new(), ConversationId::new());
        let news: Vec<NewNotification> = (1..=3).map(|s| message(u, c, s)).collect();
        let refs: Vec<&NewNotification> = news.iter().collect();
        let first = bump(None, 0, &refs).expect("new");
        assert_eq!((first.newest.seq, first.count), (Some(3), 3));
        // Unread, standing for 1..=3: seq 2 again (redelivered) and 4 new, twice.
        let stored = Stored { seq: 3, count: 3, read: false };
        let more = [message(u, c, 2), message(u, c, 4), message(u, c, 4)];
        let b = bump(Some(stored), 0, &more.iter().collect::<Vec<_>>()).expect("one new");
        assert_eq!((b.newest.seq, b.count), (Some(4), 4));
        assert!(bump(Some(stored), 0, &[&news[1]]).is_none(), "a redelivery changes nothing");
        // Read before (by the marker or "mark all read"): counting starts again.
        let read = Stored { seq: 3, count: 0, read: true };
        assert_eq!(bump(Some(read), 0, &[&more[1]]).map(|b| b.count), Some(1));
        // Read on another device up to 3 before the event for 4 came: only 4 is unread;
        // up to 4: nothing is.
        assert_eq!(bump(Some(stored), 3, &[&more[1]]).map(|b| b.count), Some(1));
        assert_eq!(bump(Some(stored), 4, &[&more[1]]).map(|b| b.count), Some(0));
        assert_eq!(bump(None, 2, &refs).map(|b| b.count), Some(1), "only seq 3 is after the marker");
    }

    #[test]
    fn reading_part_of_a_notification_leaves_the_rest_unread_without_a_query() {
        let unread = Stored { seq: 10, count: 4, read: false };
        assert_eq!(after_read(unread, 10), Some(0), "read to its newest: read");
        assert_eq!(after_read(unread, 12), Some(0));
        assert_eq!(after_read(unread, 8), Some(2), "two messages left");
        assert_eq!(after_read(unread, 6), None, "a marker below what it counts changes nothing");
        assert_eq!(after_read(unread, 0), None);
        assert_eq!(after_read(Stored { read: true, count: 0, ..unread }, 12), None, "read already");
    }
}
