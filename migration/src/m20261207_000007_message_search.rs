//! Full-text search over messages (issue 20), kept in step with every insert, edit and
//! deletion by the database itself, whichever process writes.
//!
//! - SQLite: an FTS5 table `messages_fts` over the view `messages_searchable` (the text
//!   messages not deleted, with `owners`: the two participants as tokens `u<uuid hex>`),
//!   fed by triggers on `messages`. A search matches the words *and* the caller's owner
//!   token, so the index itself keeps users apart and a query touches only the caller's
//!   messages' postings; `snippet()` reads the text back through the view. Prefixes of two
//!   and three characters are indexed too (a query's last word matches as a prefix).
//! - PostgreSQL: the text search configuration `switchboard_search` (`simple` with
//!   `unaccent` first, where the `unaccent` extension can be created; otherwise plain
//!   `simple`, and searches are accent-sensitive there) and a stored generated column
//!   `messages.search_vector` (the text's `tsvector`, for the same rows; null for the
//!   rest). Queries start from the caller's conversations (their index) and match each of
//!   their messages' stored vector: the cost follows the caller's own messages, not the
//!   table. (A GIN index over all users' vectors made the planner scan every user's
//!   matches for common words: 180 ms at a million messages, against 3-5 ms this way;
//!   docs/benchmarks.md.)
//!
//! Both: no stemming (any language), case- and diacritics-folded.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// The owner tokens of a conversation row `c` (lowercase hex, as Rust's `Uuid::simple`).
const OWNERS: &str = "'u' || lower(hex(c.user_low)) || ' u' || lower(hex(c.user_high))";

/// Whether message row `r` is searchable: a text message that is not deleted.
fn searchable(r: &str) -> String {
    format!("{r}.kind = 'text' AND {r}.deleted_at IS NULL")
}

/// The index entry of message row `r` (`new` or `old`), for an INSERT INTO messages_fts:
/// `command` is `''` to add it or `'delete', ` to remove it.
fn entry(r: &str, delete: bool) -> String {
    let (cols, vals) = if delete { ("messages_fts, ", "'delete', ") } else { ("", "") };
    format!(
        "INSERT INTO messages_fts ({cols}rowid, body, owners) SELECT {vals}{r}.rowid, {r}.body, {OWNERS} \
         FROM conversations c WHERE c.id = {r}.conversation_id AND {};",
        searchable(r)
    )
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match db.get_database_backend() {
            DbBackend::Sqlite => {
                db.execute_unprepared(&format!(
                    "CREATE VIEW messages_searchable AS SELECT m.rowid AS msg_rowid, m.body AS body, {OWNERS} AS owners \
                     FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE {}",
                    searchable("m")
                ))
                .await?;
                db.execute_unprepared(
                    "CREATE VIRTUAL TABLE messages_fts USING fts5(body, owners, content='messages_searchable', \
                     content_rowid='msg_rowid', tokenize='unicode61 remove_diacritics 2', prefix='2 3')",
                )
                .await?;
                let insert = entry("new", false);
                let remove = entry("old", true);
                db.execute_unprepared(&format!(
                    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN {insert} END"
                ))
                .await?;
                db.execute_unprepared(&format!(
                    "CREATE TRIGGER messages_fts_update AFTER UPDATE OF body, deleted_at, kind ON messages \
                     BEGIN {remove} {insert} END"
                ))
                .await?;
                db.execute_unprepared(&format!(
                    "CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN {remove} END"
                ))
                .await?;
                db.execute_unprepared("INSERT INTO messages_fts (messages_fts) VALUES ('rebuild')").await?;
            }
            DbBackend::Postgres => {
                // unaccent is a contrib extension: used where it can be created (it needs the
                // CREATE privilege on the database), left out otherwise.
                db.execute_unprepared(
                    "DO $$ BEGIN CREATE EXTENSION IF NOT EXISTS unaccent; \
                     EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'no unaccent: search is accent-sensitive'; END $$",
                )
                .await?;
                db.execute_unprepared(
                    "DO $$ BEGIN CREATE TEXT SEARCH CONFIGURATION switchboard_search (COPY = simple); \
                     IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'unaccent') THEN \
                     ALTER TEXT SEARCH CONFIGURATION switchboard_search \
                     ALTER MAPPING FOR hword, hword_part, word WITH unaccent, simple; END IF; END $$",
                )
                .await?;
                db.execute_unprepared(&format!(
                    "ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS \
                     (CASE WHEN {} THEN to_tsvector('switchboard_search', body) END) STORED",
                    searchable("messages")
                ))
                .await?;
            }
            other => return Err(DbErr::Migration(format!("message search is not built for {other:?}"))),
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        if db.get_database_backend() == DbBackend::Sqlite {
            for sql in [
                "DROP TRIGGER IF EXISTS messages_fts_delete",
                "DROP TRIGGER IF EXISTS messages_fts_update",
                "DROP TRIGGER IF EXISTS messages_fts_insert",
                "DROP TABLE IF EXISTS messages_fts",
                "DROP VIEW IF EXISTS messages_searchable",
            ] {
                db.execute_unprepared(sql).await?;
            }
        } else {
            db.execute_unprepared("ALTER TABLE messages DROP COLUMN IF EXISTS search_vector").await?;
            db.execute_unprepared("DROP TEXT SEARCH CONFIGURATION IF EXISTS switchboard_search").await?;
        }
        Ok(())
    }
}
