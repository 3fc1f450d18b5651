//! `users`: accounts; `username` is lower-cased and unique.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "users")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(unique)]
    pub username: String,
    pub display_name: String,
    /// `display_name` lower-cased, for case-insensitive prefix search.
    pub display_key: String,
    pub password_hash: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set while an operator has disabled the account.
    pub disabled_at: Option<i64>,
    /// Set when the account was deleted: the row keeps only its id (for the messages
    /// others keep), under a freed username.
    pub deleted_at: Option<i64>,
    /// When the user's last connection closed (shown to contacts as "last seen").
    pub last_seen_at: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
