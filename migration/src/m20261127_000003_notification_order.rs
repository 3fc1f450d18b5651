//! Notifications get a per-user number `n` (1, 2, 3, ... gap-free, assigned in the
//! inserting transaction from `notification_counters`), the cursor of the live stream
//! (`Last-Event-ID`) and of paging: a stream that resumes after `n` misses nothing and
//! repeats nothing, however many notify instances insert. The table held no rows before
//! this migration (nothing wrote it), so it is recreated with the column.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("notifications").if_exists().to_owned()).await?;
        m.create_table(
            Table::create()
                .table("notifications")
                .col(pk_uuid("id"))
                .col(uuid("user_id"))
                .col(big_integer("n"))
                .col(uuid("event_id"))
                .col(string_len("kind", 32))
                .col(uuid_null("conversation_id"))
                .col(big_integer_null("seq"))
                .col(text("payload"))
                .col(big_integer_null("read_at"))
                .col(big_integer("created_at"))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_notifications_user_id")
                        .from("notifications", "user_id")
                        .to("users", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        for (name, cols, unique) in [
            ("ix_notifications_user_n", &["user_id", "n"][..], true),
            ("ix_notifications_user_event", &["user_id", "event_id"][..], true),
            ("ix_notifications_unread", &["user_id", "read_at", "conversation_id"][..], false),
            ("ix_notifications_created", &["created_at"][..], false),
        ] {
            let mut idx = Index::create();
            idx.name(name).table("notifications");
            for c in cols {
                idx.col(*c);
            }
            if unique {
                idx.unique();
            }
            m.create_index(idx.to_owned()).await?;
        }
        m.create_table(
            Table::create()
                .table("notification_counters")
                .col(pk_uuid("user_id"))
                .col(big_integer("last_n"))
                .foreign_key(
                    ForeignKey::create()
                        .name("fk_notification_counters_user_id")
                        .from("notification_counters", "user_id")
                        .to("users", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("notification_counters").if_exists().to_owned()).await?;
        Ok(())
    }
}
