//! Accounts and devices (issue 19): login sessions that slide and can be listed, and
//! accounts an operator can disable.
//!
//! - `login_sessions.last_seen_at`: when the login was last used (a request, a refresh,
//!   an open socket); `expires_at` now means "ends then unless used again" and slides
//!   with it, up to the absolute maximum after `created_at`.
//! - `login_sessions.client_addr`: the address the login came from, for the sessions list.
//! - `login_sessions.refresh_hash`: SHA-256 (hex) of the login's refresh secret, which
//!   renews its short-lived access tokens; the secret itself is never stored.
//! - `users.disabled_at`: set by `switchboard user disable`; a disabled user cannot log in.
//! - `users.last_seen_at`: when the user was last connected (their contacts see it).
//! - `users.deleted_at`: set when the account was deleted (the row stays, without name or
//!   password, for the messages the other participants keep).
//! - an index on `login_sessions.revoked_at`: nodes read recent revocations from it every
//!   few seconds (the revocation feed), so a revocation made where no bus reaches them
//!   (the operator's command line) still closes connections at once.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let add = |table: &'static str, col: &mut ColumnDef| Table::alter().table(table).add_column(col).to_owned();
        m.alter_table(add("login_sessions", ColumnDef::new("last_seen_at").big_integer().not_null().default(0)))
            .await?;
        m.alter_table(add("login_sessions", ColumnDef::new("client_addr").string_len(64).null())).await?;
        m.alter_table(add("login_sessions", ColumnDef::new("refresh_hash").string_len(64).null())).await?;
        m.alter_table(add("users", ColumnDef::new("disabled_at").big_integer().null())).await?;
        m.alter_table(add("users", ColumnDef::new("deleted_at").big_integer().null())).await?;
        m.alter_table(add("users", ColumnDef::new("last_seen_at").big_integer().null())).await?;
        m.create_index(
            Index::create().name("ix_login_sessions_revoked").table("login_sessions").col("revoked_at").to_owned(),
        )
        .await?;
        m.get_connection().execute_unprepared("UPDATE login_sessions SET last_seen_at = created_at").await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let drop = |table: &'static str, col: &'static str| Table::alter().table(table).drop_column(col).to_owned();
        m.drop_index(Index::drop().name("ix_login_sessions_revoked").table("login_sessions").to_owned()).await?;
        m.alter_table(drop("users", "last_seen_at")).await?;
        m.alter_table(drop("users", "deleted_at")).await?;
        m.alter_table(drop("users", "disabled_at")).await?;
        m.alter_table(drop("login_sessions", "refresh_hash")).await?;
        m.alter_table(drop("login_sessions", "client_addr")).await?;
        m.alter_table(drop("login_sessions", "last_seen_at")).await
    }
}
