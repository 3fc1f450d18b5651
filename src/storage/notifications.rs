//! Notifications: stored per user, numbered `n` = 1, 2, 3, ... (gap-free, assigned in the
//! inserting transaction), deduplicated by bus event id, capped per user.

use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use serde_json::Value;
use switchboard_actors::ids::{ConversationId, UserId};
use switchboard_actors::notify_stream::NotificationStore;
use switchboard_actors::ports::{NotificationView, StoreError, Unread};
use uuid::Uuid;

use super::entities::{notification, notification_counter};
use super::is_unique_violation;

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
}

#[derive(Clone, Debug)]
pub struct NotificationRepo {
    db: DatabaseConnection,
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
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Stores `new` unless this event was stored for this user before (then `None`), and
    /// deletes the user's notifications older than the newest `keep`.
    pub async fn record(&self, new: NewNotification, keep: u64, now: i64) -> Result<Option<NotificationView>, DbErr> {
        let user = new.user.0;
        let dup = notification::Entity::find()
            .filter(notification::Column::UserId.eq(user))
            .filter(notification::Column::EventId.eq(new.event_id))
            .one(&self.db)
            .await?;
        if dup.is_some() {
            return Ok(None);
        }
        let txn = self.db.begin().await?;
        let counter = notification_counter::Entity::insert(notification_counter::ActiveModel {
            user_id: Set(user),
            last_n: Set(1),
        })
        .on_conflict(
            OnConflict::column(notification_counter::Column::UserId)
                .value(notification_counter::Column::LastN, Expr::col(notification_counter::Column::LastN).add(1))
                .to_owned(),
        )
        .exec_with_returning(&txn)
        .await?;
        let n = counter.last_n;
        let row = notification::ActiveModel {
            id: Set(Uuid::now_v7()),
            user_id: Set(user),
            n: Set(n),
            event_id: Set(new.event_id),
            kind: Set(new.kind.to_owned()),
            conversation_id: Set(new.conversation_id.map(|c| c.0)),
            seq: Set(new.seq),
            payload: Set(new.payload.to_string()),
            read_at: Set(None),
            created_at: Set(now),
        };
        let model = match notification::Entity::insert(row).exec_with_returning(&txn).await {
            Ok(m) => m,
            // Another instance stored the same event meanwhile.
            Err(e) if is_unique_violation(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if n > keep as i64 {
            notification::Entity::delete_many()
                .filter(notification::Column::UserId.eq(user))
                .filter(notification::Column::N.lte(n - keep as i64))
                .exec(&txn)
                .await?;
        }
        txn.commit().await?;
        Ok(Some(view(model)))
    }

    /// Marks `user`'s message notifications of `conversation` up to `seq` read; returns
    /// how many changed.
    pub async fn read_conversation(
        &self,
        user: UserId,
        conversation: ConversationId,
        seq: i64,
        now: i64,
    ) -> Result<u64, DbErr> {
        let r = notification::Entity::update_many()
            .col_expr(notification::Column::ReadAt, Expr::value(now))
            .filter(notification::Column::UserId.eq(user.0))
            .filter(notification::Column::ConversationId.eq(conversation.0))
            .filter(notification::Column::Seq.lte(seq))
            .filter(notification::Column::ReadAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected)
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
        let rows: Vec<(Option<Uuid>, i64)> = notification::Entity::find()
            .select_only()
            .column(notification::Column::ConversationId)
            .column_as(notification::Column::Id.count(), "count")
            .filter(notification::Column::UserId.eq(user.0))
            .filter(notification::Column::ReadAt.is_null())
            .group_by(notification::Column::ConversationId)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut unread = Unread::default();
        for (conv, count) in rows {
            unread.total += count;
            if let Some(c) = conv {
                unread.conversations.insert(ConversationId(c), count);
            }
        }
        Ok(unread)
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
