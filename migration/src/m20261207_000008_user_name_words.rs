//! User search by any word of the display name (issue 20: "Becker" finds "Tom Becker").
//!
//! `user_name_words (word, user_id)`: each word of a user's display name after the first,
//! lower-cased (the first is matched by the prefix of `users.display_key` already), so a
//! word prefix is a range scan of an index like the others ("C" collation on PostgreSQL).
//! The application keeps it with the name ([`name_words`]); this fills it for existing
//! users.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Most words of one name that are indexed, and their longest length in characters.
pub const MAX_WORDS: usize = 10;
pub const MAX_WORD_CHARS: usize = 64;

/// The words of `display_name` after the first, lower-cased, each once: what search
/// matches as word starts. Words are runs of letters and digits.
pub fn name_words(display_name: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in display_name.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).skip(1) {
        let w: String = w.to_lowercase().chars().take(MAX_WORD_CHARS).collect();
        if !out.contains(&w) {
            out.push(w);
        }
        if out.len() == MAX_WORDS {
            break;
        }
    }
    out
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table("user_name_words")
                .col(ColumnDef::new("word").string_len(64).not_null())
                .col(ColumnDef::new("user_id").uuid().not_null())
                .primary_key(Index::create().col("word").col("user_id"))
                .foreign_key(
                    ForeignKey::create()
                        .from("user_name_words", "user_id")
                        .to("users", "id")
                        .on_delete(ForeignKeyAction::Cascade),
                )
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create().name("ix_user_name_words_user").table("user_name_words").col("user_id").to_owned(),
        )
        .await?;
        let db = m.get_connection();
        let backend = db.get_database_backend();
        if backend == DbBackend::Postgres {
            db.execute_unprepared(r#"CREATE INDEX ix_user_name_words_c ON user_name_words (word COLLATE "C")"#).await?;
        }
        let users = db
            .query_all_raw(Statement::from_string(
                backend,
                "SELECT id, display_name FROM users WHERE deleted_at IS NULL",
            ))
            .await?;
        for row in users {
            let id: sea_orm_migration::sea_orm::prelude::Uuid = row.try_get("", "id")?;
            let name: String = row.try_get("", "display_name")?;
            for word in name_words(&name) {
                let sql = match backend {
                    DbBackend::Postgres => "INSERT INTO user_name_words (word, user_id) VALUES ($1, $2)",
                    _ => "INSERT INTO user_name_words (word, user_id) VALUES (?, ?)",
                };
                db.execute_raw(Statement::from_sql_and_values(backend, sql, [Value::from(word), Value::from(id)]))
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table("user_name_words").to_owned()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_after_the_first_lower_cased_once() {
        assert_eq!(name_words("Tom Becker"), ["becker"]);
        assert_eq!(name_words("Anna-Lena  Müller-Lüdenscheidt (Berlin)"), ["lena", "müller", "lüdenscheidt", "berlin"]);
        assert_eq!(name_words("Solo"), Vec::<String>::new());
        assert_eq!(name_words("a b b B"), ["b"]);
        assert_eq!(name_words(&"x ".repeat(30)), ["x"]);
        assert_eq!(name_words(&(0..30).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ")).len(), MAX_WORDS);
    }
}
