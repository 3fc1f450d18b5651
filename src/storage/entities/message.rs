//! `messages`: messages, ordered by (`conversation_id`, `seq`).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub seq: i64,
    pub sender_id: Uuid,
    pub client_msg_id: String,
    pub kind: String,
    #[sea_orm(column_type = "Text")]
    pub body: String,
    pub file_id: Option<Uuid>,
    pub created_at: i64,
    /// On an `edit` or `delete` entry: the message it changes.
    pub target_id: Option<Uuid>,
    pub edited_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
