//! `notifications`: per-user notifications, numbered `n` = 1, 2, ... per user (unique),
//! and unique per (`user_id`, `event_id`).

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
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
