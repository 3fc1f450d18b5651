//! Muted conversations (issue 20): `conversation_mutes(user_id, conversation_id, until)`,
//! one row per user and conversation while muted; `until` is when the mute ends (ms since
//! the epoch), null for "until unmuted". A muted conversation still counts its unread
//! messages, but they are not in the user's notification total and raise nothing.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

fn fk(col: &'static str, to_table: &'static str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_conversation_mutes_{col}"))
        .from("conversation_mutes", col)
        .to(to_table, "id")
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("conversation_mutes")
                .col(ColumnDef::new("user_id").uuid().not_null())
                .col(ColumnDef::new("conversation_id").uuid().not_null())
                .col(ColumnDef::new("until").big_integer().null())
                .primary_key(Index::create().col("user_id").col("conversation_id"))
                .foreign_key(&mut fk("user_id", "users"))
                .foreign_key(&mut fk("conversation_id", "conversations"))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("conversation_mutes").to_owned()).await
    }
}
