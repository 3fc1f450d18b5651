//! Full-text search over messages (issue 20).
//!
//! - SQLite: an FTS5 table `messages_fts` (contentless, with deletes: the text stays in
//!   `messages`), a row per searchable message (a text message not deleted) with its
//!   `body` and `owners`, the two participants as tokens `u<uuid hex>`: a search matches
//!   the words *and* the caller's token, so the index itself keeps users apart and a
//!   query reads only the caller's postings. Prefixes of two and three characters are
//!   indexed too (a query's last word matches as a prefix). The application fills it off
//!   the message path (`search_progress.indexed_upto`: the rowid of `messages` indexed up
//!   to), from the start: existing messages are indexed by the running server.
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

/// Whether message row `r` is searchable: a text message that is not deleted.
fn searchable(r: &str) -> String {
    format!("{r}.kind = 'text' AND {r}.deleted_at IS NULL")
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        let db = m.get_connection();
        match db.get_database_backend() {
            DbBackend::Sqlite => {
                db.execute_unprepared(
                    "CREATE VIRTUAL TABLE messages_fts USING fts5(body, owners, content='', contentless_delete=1, \
                     tokenize='unicode61 remove_diacritics 2', prefix='2 3')",
                )
                .await?;
                db.execute_unprepared(
                    "CREATE TABLE search_progress (id INTEGER PRIMARY KEY CHECK (id = 1), indexed_upto BIGINT NOT NULL)",
                )
                .await?;
                db.execute_unprepared("INSERT INTO search_progress (id, indexed_upto) VALUES (1, 0)").await?;
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
            for sql in ["DROP TABLE IF EXISTS search_progress", "DROP TABLE IF EXISTS messages_fts"] {
                db.execute_unprepared(sql).await?;
            }
        } else {
            db.execute_unprepared("ALTER TABLE messages DROP COLUMN IF EXISTS search_vector").await?;
            db.execute_unprepared("DROP TEXT SEARCH CONFIGURATION IF EXISTS switchboard_search").await?;
        }
        Ok(())
    }
}
