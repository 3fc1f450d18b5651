//! Messages people can correct and delete (issue 20).
//!
//! - `messages.target_id`: on an `edit` or `delete` entry (a message of kind `edit` or
//!   `delete` in the conversation's seq stream), the message it changes.
//! - `messages.edited_at`: when a message was last edited.
//! - `messages.deleted_at`: when a message was deleted; its body is erased and its file
//!   link removed in the same transaction, the row stays as a tombstone.
//! - a partial index on `target_id` (only change entries have one): a deletion erases the
//!   text of the target's edit entries too.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one thing at a time.
        let add = |col: &mut ColumnDef| Table::alter().table("messages").add_column(col).to_owned();
        m.alter_table(add(ColumnDef::new("target_id").uuid().null())).await?;
        m.alter_table(add(ColumnDef::new("edited_at").big_integer().null())).await?;
        m.alter_table(add(ColumnDef::new("deleted_at").big_integer().null())).await?;
        // Partial (SQLite and PostgreSQL both): plain messages, nearly all rows, stay out.
        m.get_connection()
            .execute_unprepared("CREATE INDEX ix_messages_target ON messages (target_id) WHERE target_id IS NOT NULL")
            .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let drop = |col: &'static str| Table::alter().table("messages").drop_column(col).to_owned();
        m.drop_index(Index::drop().name("ix_messages_target").table("messages").to_owned()).await?;
        m.alter_table(drop("deleted_at")).await?;
        m.alter_table(drop("edited_at")).await?;
        m.alter_table(drop("target_id")).await
    }
}
