//! `login_sessions`: one row per login (the `jti` of its access tokens): listed, slid
//! while used, revoked.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "login_sessions")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub user_id: Uuid,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub user_agent: Option<String>,
    /// When the login was last used; `expires_at` slides with it.
    pub last_seen_at: i64,
    /// The client's address at login.
    pub client_addr: Option<String>,
    /// SHA-256 (hex) of the refresh secret that renews the login's access tokens.
    pub refresh_hash: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
