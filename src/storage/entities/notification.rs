//! `notifications`: per-user notifications, numbered `n` per user (unique; a change takes
//! the next number), unique per (`user_id`, `event_id`), and one of kind `message` per
//! (`user_id`, `conversation_id`), updated in place by each new message.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notifications")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub n: i64,
    pub event_id: Uuid,
    pub kind: String,
    pub conversation_id: Option<Uuid>,
    pub seq: Option<i64>,
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    pub read_at: Option<i64>,
    /// What it adds to the unread total while unread: the unread messages of a message
    /// notification, 1 for the others; 0 once read.
    pub count: i64,
    /// When it last changed (a message notification: its newest message's arrival).
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
