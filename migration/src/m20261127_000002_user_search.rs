//! User search: a lower-cased display name to match prefixes case-insensitively, and
//! indexes that serve prefix range scans (`col >= 'abc' AND col < 'abd'`).
//!
//! On PostgreSQL the indexes use the "C" collation, whose order is byte order, so that a
//! prefix is a contiguous range (under a locale collation `a_b` sorts next to `ab`).
//! SQLite's default BINARY collation is byte order already.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("users")
                .add_column(ColumnDef::new("display_key").string_len(64).not_null().default(""))
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        db.execute_unprepared("UPDATE users SET display_key = LOWER(display_name)").await?;
        match m.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(r#"CREATE INDEX ix_users_username_c ON users (username COLLATE "C")"#).await?;
                db.execute_unprepared(r#"CREATE INDEX ix_users_display_key_c ON users (display_key COLLATE "C")"#)
                    .await?;
            }
            _ => {
                db.execute_unprepared("CREATE INDEX ix_users_display_key ON users (display_key)").await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        for ix in ["ix_users_username_c", "ix_users_display_key_c", "ix_users_display_key"] {
            db.execute_unprepared(&format!("DROP INDEX IF EXISTS {ix}")).await?;
        }
        m.alter_table(Table::alter().table("users").drop_column("display_key").to_owned()).await
    }
}
