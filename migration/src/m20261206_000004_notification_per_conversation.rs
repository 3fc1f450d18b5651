//! One message notification per (user, conversation), updated in place: a new message
//! moves it to the top (a new `n`), replaces its preview and adds to its `count`, the
//! unread messages it stands for. So a message costs an update of one row instead of a
//! new row with its five index entries, and unread counts are a sum over a user's unread
//! rows instead of a count of one row per message (issue 17).
//!
//! Existing message notifications are folded into the newest of each (user,
//! conversation), which keeps that one's `n` and counts the unread ones it replaces.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::ConnectionTrait;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table("notifications")
                .add_column(ColumnDef::new("count").big_integer().not_null().default(1))
                .to_owned(),
        )
        .await?;
        let db = m.get_connection();
        // Same SQL on SQLite and PostgreSQL: correlated subqueries over the old rows.
        db.execute_unprepared(
            "UPDATE notifications SET count = CASE WHEN read_at IS NOT NULL THEN 0 \
             WHEN kind <> 'message' THEN 1 \
             ELSE (SELECT COUNT(*) FROM notifications o WHERE o.user_id = notifications.user_id \
             AND o.conversation_id = notifications.conversation_id AND o.kind = 'message' \
             AND o.read_at IS NULL) END",
        )
        .await?;
        db.execute_unprepared(
            "DELETE FROM notifications WHERE kind = 'message' AND n < (SELECT MAX(o.n) FROM notifications o \
             WHERE o.user_id = notifications.user_id AND o.conversation_id = notifications.conversation_id \
             AND o.kind = 'message')",
        )
        .await?;
        db.execute_unprepared(
            "CREATE UNIQUE INDEX ix_notifications_conversation ON notifications (user_id, conversation_id) \
             WHERE kind = 'message'",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.get_connection().execute_unprepared("DROP INDEX IF EXISTS ix_notifications_conversation").await?;
        m.alter_table(Table::alter().table("notifications").drop_column("count").to_owned()).await
    }
}
