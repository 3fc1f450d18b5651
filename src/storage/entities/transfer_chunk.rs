//! `transfer_chunks`: chunks received for a transfer.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "transfer_chunks")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub transfer_id: Uuid,
    #[sea_orm(primary_key, auto_increment = false)]
    pub idx: i32,
    pub sha256: String,
    pub size: i32,
    pub created_at: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
