//! Notifications: stored per user, numbered `n` = 1, 2, 3, ... (gap-free, assigned in the
//! inserting transaction), deduplicated by bus event id, capped per user.

use std::collections::{HashMap, HashSet};

use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect,
};
use serde_json::Value;
use switchboard_actors::ids::{ConversationId, UserId};
use switchboard_actors::notify_stream::NotificationStore;
use switchboard_actors::ports::{NotificationView, StoreError, Unread};
use uuid::Uuid;

use super::committer::{Committer, Write, Written};
use super::entities::{notification, notification_counter, user};

/// Rows per multi-row `INSERT` (10 parameters each).
const INSERT_ROWS: usize = 1000;

/// A notification to store.
#[derive(Debug, Clone)]
pub struct NewNotification {
    pub user: UserId,
    /// The bus event it comes from: one notification per (user, event).
    pub event_id: Uuid,
    pub kind: &'static str,
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
    pub(super) fn payload_named(&self, names: Option<(&str, &str)>) -> Value {
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

#[derive(Clone, Debug)]
pub struct NotificationRepo {
    db: DatabaseConnection,
    committer: Committer,
}

fn view(m: notification::Model) -> NotificationView {
    NotificationView {
        id: m.id,
        n: m.n,
        kind: m.kind,
        conversation_id: m.conversation_id.map(ConversationId),
        seq: m.seq,
        payload: serde_json::from_str(&m.payload).unwrap_or(Value::Null),
        read: m.read_at.is_some(),
        created_at: m.created_at,
    }
}

impl NotificationRepo {
    /// Notifications are written through `committer` (the process's one busy writer).
    pub fn new(db: DatabaseConnection, committer: Committer) -> Self {
        Self { db, committer }
    }

    /// Stores `news` (through the process's committer, in its next group transaction),
    /// skipping events stored for their user before (a redelivery) and repeats within
    /// `news`, numbers each user's new ones in order, and deletes each user's
    /// notifications older than their newest `keep`. Returns what was stored and kept, in
    /// order, with its user.
    pub async fn record_batch(&self, news: Vec<NewNotification>, keep: u64) -> Result<Recorded, DbErr> {
        if news.is_empty() {
            return Ok(Recorded::default());
        }
        match self.committer.queue(Write::Notifications { news, keep }).await.await {
            Ok(Written::Notifications(recorded)) => Ok(recorded),
            Ok(_) => Err(DbErr::Custom("committer answered the wrong write".into())),
            Err(e) => Err(DbErr::Custom(e.to_string())),
        }
    }

    /// Marks `user`'s message notifications of `conversation` up to `seq` read (through
    /// the committer: a read marker per message read is as frequent as the messages).
    /// When that changed any, returns the user's unread counts after it.
    pub async fn read_conversation(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: i64,
    ) -> Result<Option<Unread>, DbErr> {
        match self.committer.queue(Write::ReadNotifications { user, conversation, seq }).await.await {
            Ok(Written::Read(unread)) => Ok(unread),
            Ok(_) => Err(DbErr::Custom("committer answered the wrong write".into())),
            Err(e) => Err(DbErr::Custom(e.to_string())),
        }
    }

    /// Marks one of `user`'s notifications read. `false` if `user` has none with this id
    /// (another user's id is "not found", never "forbidden").
    pub async fn mark_read(&self, user: UserId, id: Uuid, now: i64) -> Result<bool, DbErr> {
        let found = notification::Entity::find_by_id(id)
            .filter(notification::Column::UserId.eq(user.0))
            .one(&self.db)
            .await?
            .is_some();
        if found {
            notification::Entity::update_many()
                .col_expr(notification::Column::ReadAt, Expr::value(now))
                .filter(notification::Column::Id.eq(id))
                .filter(notification::Column::UserId.eq(user.0))
                .filter(notification::Column::ReadAt.is_null())
                .exec(&self.db)
                .await?;
        }
        Ok(found)
    }

    /// Marks all of `user`'s notifications read; returns how many changed.
    pub async fn mark_all_read(&self, user: UserId, now: i64) -> Result<u64, DbErr> {
        let r = notification::Entity::update_many()
            .col_expr(notification::Column::ReadAt, Expr::value(now))
            .filter(notification::Column::UserId.eq(user.0))
            .filter(notification::Column::ReadAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
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
        Ok(rows.into_iter().map(view).collect())
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
        Ok(rows.into_iter().map(view).collect())
    }
}

/// The unread counts of each of `users`, on `db` (a connection or a transaction).
async fn unread_counts_in<C: ConnectionTrait>(db: &C, users: &[UserId]) -> Result<HashMap<UserId, Unread>, DbErr> {
    let rows: Vec<(Uuid, Option<Uuid>, i64)> = notification::Entity::find()
        .select_only()
        .column(notification::Column::UserId)
        .column(notification::Column::ConversationId)
        .column_as(notification::Column::Id.count(), "count")
        .filter(notification::Column::UserId.is_in(users.iter().map(|u| u.0)))
        .filter(notification::Column::ReadAt.is_null())
        .group_by(notification::Column::UserId)
        .group_by(notification::Column::ConversationId)
        .into_tuple()
        .all(db)
        .await?;
    let mut out: HashMap<UserId, Unread> = users.iter().map(|u| (*u, Unread::default())).collect();
    for (user, conv, count) in rows {
        add_unread(out.entry(UserId(user)).or_default(), conv.map(ConversationId), count);
    }
    Ok(out)
}

/// Counts `count` unread notifications of `conversation` (`None`: not of a conversation).
pub(super) fn add_unread(unread: &mut Unread, conversation: Option<ConversationId>, count: i64) {
    unread.total += count;
    if let Some(c) = conversation {
        unread.conversations.insert(c, count);
    }
}

/// [`NotificationRepo::read_conversation`] inside the committer's transaction.
pub(super) async fn read_conversation_in_txn(
    txn: &DatabaseTransaction,
    user: UserId,
    conversation: ConversationId,
    seq: i64,
    now: i64,
) -> Result<Option<Unread>, DbErr> {
    let r = notification::Entity::update_many()
        .col_expr(notification::Column::ReadAt, Expr::value(now))
        .filter(notification::Column::UserId.eq(user.0))
        .filter(notification::Column::ConversationId.eq(conversation.0))
        .filter(notification::Column::Seq.lte(seq))
        .filter(notification::Column::ReadAt.is_null())
        .exec(txn)
        .await?;
    if r.rows_affected == 0 {
        return Ok(None);
    }
    Ok(unread_counts_in(txn, &[user]).await?.remove(&user))
}

/// [`NotificationRepo::record_batch`] inside the committer's transaction: a fixed number
/// of statements however large the batch (dedupe lookup, counter upsert, one `UPDATE …
/// CASE … RETURNING` for every user's numbers, multi-row insert, one cap delete).
pub(super) async fn record_in_txn(
    txn: &DatabaseTransaction,
    news: &[NewNotification],
    keep: u64,
    now: i64,
) -> Result<Recorded, DbErr> {
    if news.is_empty() {
        return Ok(Recorded::default());
    }
    let stored_before = news.iter().fold(Condition::any(), |c, n| {
        c.add(
            Condition::all()
                .add(notification::Column::UserId.eq(n.user.0))
                .add(notification::Column::EventId.eq(n.event_id)),
        )
    });
    let mut seen: HashSet<(Uuid, Uuid)> = notification::Entity::find()
        .select_only()
        .column(notification::Column::UserId)
        .column(notification::Column::EventId)
        .filter(stored_before)
        .into_tuple()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    let fresh: Vec<&NewNotification> = news.iter().filter(|n| seen.insert((n.user.0, n.event_id))).collect();
    if fresh.is_empty() {
        return Ok(Recorded::default());
    }
    let names: HashMap<Uuid, user::Model> = user::Entity::find()
        .filter(user::Column::Id.is_in(fresh.iter().filter_map(|n| n.from.map(|(u, _)| u.0))))
        .all(txn)
        .await?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let mut per_user: HashMap<Uuid, i64> = HashMap::new();
    for n in &fresh {
        *per_user.entry(n.user.0).or_default() += 1;
    }

    // Every user's numbers in two statements: make sure a counter exists, then
    // last_n += how many are new for that user.
    notification_counter::Entity::insert_many(
        per_user.keys().map(|u| notification_counter::ActiveModel { user_id: Set(*u), last_n: Set(0) }),
    )
    .on_conflict(OnConflict::column(notification_counter::Column::UserId).do_nothing().to_owned())
    .exec_without_returning(txn)
    .await?;
    let mut bump = CaseStatement::new();
    for (user, k) in &per_user {
        bump = bump.case(notification_counter::Column::UserId.eq(*user), Expr::val(*k));
    }
    let last: HashMap<Uuid, i64> = notification_counter::Entity::update_many()
        .col_expr(
            notification_counter::Column::LastN,
            Expr::col(notification_counter::Column::LastN).add(bump.finally(0i64)),
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
    let rows: Vec<notification::Model> = fresh
        .iter()
        .map(|new| {
            let n = next.entry(new.user.0).or_default();
            *n += 1;
            notification::Model {
                id: Uuid::now_v7(),
                user_id: new.user.0,
                n: *n - 1,
                event_id: new.event_id,
                kind: new.kind.to_owned(),
                conversation_id: new.conversation_id.map(|c| c.0),
                seq: new.seq,
                payload: new
                    .payload_named(
                        new.from
                            .and_then(|(u, _)| names.get(&u.0))
                            .map(|u| (u.username.as_str(), u.display_name.as_str())),
                    )
                    .to_string(),
                read_at: None,
                created_at: now,
            }
        })
        .collect();
    for chunk in rows.chunks(INSERT_ROWS) {
        notification::Entity::insert_many(chunk.iter().cloned().map(notification::ActiveModel::from))
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
            .map(|r| (UserId(r.user_id), view(r)))
            .collect(),
        unread: unread_counts_in(txn, &users).await?,
    })
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
