//! Switchboard's database schema as sea-orm migrations, run at start by every service.
//!
//! - [`m20261127_000001_initial`]: users, login sessions, contacts and blocks,
//!   conversations, messages, receipts, transfers and their chunks, files, notifications.
//! - [`m20261127_000002_user_search`]: `users.display_key` and prefix-search indexes.
//! - [`m20261127_000003_notification_order`]: per-user notification numbers (`n`).
//! - [`m20261206_000004_notification_per_conversation`]: one message notification per
//!   (user, conversation), updated in place, with the unread messages it stands for.
//! - [`m20261206_000005_accounts`]: sliding login sessions (last use, client address,
//!   refresh secret hash) and disabled accounts.
//! - [`m20261207_000006_message_changes`]: edits and deletions of messages (the target
//!   of a change entry, edited and deleted times).
//! - [`m20261207_000007_message_search`]: full-text search over messages (SQLite FTS5
//!   filled by the server; a stored tsvector column on PostgreSQL).
//! - [`m20261207_000008_user_name_words`]: the words of display names, for user search
//!   by any word's start.
//! - [`m20261207_000009_file_images`]: image dimensions of stored files (thumbnails).
//! - [`m20261207_000010_conversation_mutes`]: muted conversations.
//!
//! Rules: an applied migration is never edited; a change is a new file named
//! `mYYYYMMDD_NNNNNN_name.rs` (the name is the migration's identity). Times are stored as
//! `BIGINT` milliseconds since the Unix epoch, identical on SQLite and PostgreSQL, and ids
//! as UUIDs (v7, time-ordered, so inserts append to the index).

pub use sea_orm_migration::prelude::*;

pub mod m20261127_000001_initial;
pub mod m20261127_000002_user_search;
pub mod m20261127_000003_notification_order;
pub mod m20261206_000004_notification_per_conversation;
pub mod m20261206_000005_accounts;
pub mod m20261207_000006_message_changes;
pub mod m20261207_000007_message_search;
pub mod m20261207_000008_user_name_words;
pub mod m20261207_000009_file_images;
pub mod m20261207_000010_conversation_mutes;
pub mod m20261207_000011_bus_directory;

/// Every migration, in order.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_initial::Migration),
            Box::new(m20261127_000002_user_search::Migration),
            Box::new(m20261127_000003_notification_order::Migration),
            Box::new(m20261206_000004_notification_per_conversation::Migration),
            Box::new(m20261206_000005_accounts::Migration),
            Box::new(m20261207_000006_message_changes::Migration),
            Box::new(m20261207_000007_message_search::Migration),
            Box::new(m20261207_000008_user_name_words::Migration),
            Box::new(m20261207_000009_file_images::Migration),
            Box::new(m20261207_000010_conversation_mutes::Migration),
            Box::new(m20261207_000011_bus_directory::Migration),
        ]
    }
}
