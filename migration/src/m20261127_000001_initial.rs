//! The initial schema. See the crate docs for the conventions (ms timestamps, UUID ids).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Tables in creation order; dropped in reverse.
const TABLES: &[&str] = &[
    "users",
    "login_sessions",
    "contacts",
    "blocks",
    "conversations",
    "messages",
    "receipts",
    "files",
    "transfers",
    "transfer_chunks",
    "notifications",
];

fn fk(from_table: &'static str, col: &'static str, to_table: &'static str) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(format!("fk_{from_table}_{col}"))
        .from(from_table, col)
        .to(to_table, "id")
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

fn index(table: &'static str, name: &str, cols: &[&'static str], unique: bool) -> IndexCreateStatement {
    let mut idx = Index::create();
    idx.name(format!("ix_{table}_{name}")).table(table);
    for c in cols {
        idx.col(*c);
    }
    if unique {
        idx.unique();
    }
    idx.to_owned()
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        // Accounts. `username` is stored lower-cased: uniqueness is case-insensitive by
        // construction, and prefix search can use the plain index.
        m.create_table(
            Table::create()
                .table("users")
                .col(pk_uuid("id"))
                .col(string_len_uniq("username", 32))
                .col(string_len("display_name", 64))
                .col(string_len("password_hash", 255))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("users", "display_name", &["display_name"], false)).await?;

        // One row per issued access token (`jti`): logout sets `revoked_at`, and every
        // service checks it, so a revoked token stops working at once everywhere.
        m.create_table(
            Table::create()
                .table("login_sessions")
                .col(pk_uuid("id"))
                .col(uuid("user_id"))
                .col(big_integer("created_at"))
                .col(big_integer("expires_at"))
                .col(big_integer_null("revoked_at"))
                .col(string_len_null("user_agent", 256))
                .foreign_key(&mut fk("login_sessions", "user_id", "users"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("login_sessions", "user", &["user_id"], false)).await?;
        m.create_index(index("login_sessions", "expires", &["expires_at"], false)).await?;

        // A contact relation between two users, one row per pair (user_low < user_high),
        // whose `state` moves through pending/accepted/declined/cancelled/removed and is
        // never deleted. `requester_id` says who asked last.
        m.create_table(
            Table::create()
                .table("contacts")
                .col(pk_uuid("id"))
                .col(uuid("user_low"))
                .col(uuid("user_high"))
                .col(uuid("requester_id"))
                .col(string_len("state", 16))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .foreign_key(&mut fk("contacts", "user_low", "users"))
                .foreign_key(&mut fk("contacts", "user_high", "users"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("contacts", "pair", &["user_low", "user_high"], true)).await?;
        m.create_index(index("contacts", "high", &["user_high"], false)).await?;

        m.create_table(
            Table::create()
                .table("blocks")
                .col(uuid("blocker_id"))
                .col(uuid("blocked_id"))
                .col(big_integer("created_at"))
                .primary_key(Index::create().col("blocker_id").col("blocked_id"))
                .foreign_key(&mut fk("blocks", "blocker_id", "users"))
                .foreign_key(&mut fk("blocks", "blocked_id", "users"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("blocks", "blocked", &["blocked_id"], false)).await?;

        // One conversation per pair of users. `last_seq` is the sequence counter: it is
        // bumped in the same transaction as the message insert, so sequences are gap-free
        // and two nodes can never hand out the same number.
        m.create_table(
            Table::create()
                .table("conversations")
                .col(pk_uuid("id"))
                .col(uuid("user_low"))
                .col(uuid("user_high"))
                .col(big_integer("last_seq").default(0))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .foreign_key(&mut fk("conversations", "user_low", "users"))
                .foreign_key(&mut fk("conversations", "user_high", "users"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("conversations", "pair", &["user_low", "user_high"], true)).await?;
        m.create_index(index("conversations", "high", &["user_high"], false)).await?;

        m.create_table(
            Table::create()
                .table("files")
                .col(pk_uuid("id"))
                .col(uuid("owner_id"))
                .col(uuid("conversation_id"))
                .col(string_len("name", 255))
                .col(string_len("mime", 127))
                .col(big_integer("size"))
                .col(string_len("sha256", 64))
                .col(big_integer("created_at"))
                .foreign_key(&mut fk("files", "owner_id", "users"))
                .foreign_key(&mut fk("files", "conversation_id", "conversations"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("files", "sha", &["sha256"], false)).await?;
        m.create_index(index("files", "owner", &["owner_id"], false)).await?;

        // Messages: (conversation_id, seq) is the order; (sender_id, client_msg_id) makes a
        // resend idempotent.
        m.create_table(
            Table::create()
                .table("messages")
                .col(pk_uuid("id"))
                .col(uuid("conversation_id"))
                .col(big_integer("seq"))
                .col(uuid("sender_id"))
                .col(string_len("client_msg_id", 64))
                .col(string_len("kind", 16))
                .col(text("body"))
                .col(uuid_null("file_id"))
                .col(big_integer("created_at"))
                .foreign_key(&mut fk("messages", "conversation_id", "conversations"))
                .foreign_key(&mut fk("messages", "sender_id", "users"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("messages", "conv_seq", &["conversation_id", "seq"], true)).await?;
        m.create_index(index("messages", "client", &["sender_id", "client_msg_id"], true)).await?;

        m.create_table(
            Table::create()
                .table("receipts")
                .col(uuid("conversation_id"))
                .col(uuid("user_id"))
                .col(big_integer("delivered_seq").default(0))
                .col(big_integer("read_seq").default(0))
                .col(big_integer("updated_at"))
                .primary_key(Index::create().col("conversation_id").col("user_id"))
                .foreign_key(&mut fk("receipts", "conversation_id", "conversations"))
                .foreign_key(&mut fk("receipts", "user_id", "users"))
                .to_owned(),
        )
        .await?;

        // An upload in progress. Chunks received are rows of `transfer_chunks`, so a
        // resumed upload (another tab, a restarted server) knows what is missing.
        m.create_table(
            Table::create()
                .table("transfers")
                .col(pk_uuid("id"))
                .col(uuid("uploader_id"))
                .col(uuid("conversation_id"))
                .col(string_len("name", 255))
                .col(string_len("mime", 127))
                .col(big_integer("size"))
                .col(string_len("sha256", 64))
                .col(integer("chunk_size"))
                .col(integer("chunk_count"))
                .col(string_len("state", 16))
                .col(uuid_null("file_id"))
                .col(big_integer("created_at"))
                .col(big_integer("updated_at"))
                .col(big_integer("expires_at"))
                .foreign_key(&mut fk("transfers", "uploader_id", "users"))
                .foreign_key(&mut fk("transfers", "conversation_id", "conversations"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("transfers", "uploader_state", &["uploader_id", "state"], false)).await?;
        m.create_index(index("transfers", "expires", &["state", "expires_at"], false)).await?;

        m.create_table(
            Table::create()
                .table("transfer_chunks")
                .col(uuid("transfer_id"))
                .col(integer("idx"))
                .col(string_len("sha256", 64))
                .col(integer("size"))
                .col(big_integer("created_at"))
                .primary_key(Index::create().col("transfer_id").col("idx"))
                .foreign_key(&mut fk("transfer_chunks", "transfer_id", "transfers"))
                .to_owned(),
        )
        .await?;

        // Notifications: (user_id, event_id) unique, so a redelivered bus event makes one
        // notification.
        m.create_table(
            Table::create()
                .table("notifications")
                .col(pk_uuid("id"))
                .col(uuid("user_id"))
                .col(uuid("event_id"))
                .col(string_len("kind", 32))
                .col(uuid_null("conversation_id"))
                .col(big_integer_null("seq"))
                .col(text("payload"))
                .col(big_integer_null("read_at"))
                .col(big_integer("created_at"))
                .foreign_key(&mut fk("notifications", "user_id", "users"))
                .to_owned(),
        )
        .await?;
        m.create_index(index("notifications", "event", &["user_id", "event_id"], true)).await?;
        m.create_index(index("notifications", "user_time", &["user_id", "created_at"], false)).await?;
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in TABLES.iter().rev() {
            m.drop_table(Table::drop().table(*t).if_exists().to_owned()).await?;
        }
        Ok(())
    }
}
