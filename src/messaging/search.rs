//! `GET /api/search/messages`: full-text search over the caller's own conversations.
//!
//! - **SQLite**: an FTS5 table (migration `m20261207_000007_message_search`) whose rows
//!   carry the message's two participants as `owners` tokens (`u<uuid hex>`), so a query
//!   matches the words *and* the caller's token and never sees anyone else's messages. It
//!   is filled off the message path: the writer thread indexes the messages stored since
//!   it last did, in rowid order, at most every [`INDEX_EVERY`] inside a batch it commits
//!   anyway, or on its own when idle ([`index_pending`]); so a message is searchable
//!   within about half a second, and indexing costs no commit of its own under load. (In
//!   each append's transaction, through triggers, it cost 0.035 ms of CPU per message at
//!   1,000 msg/s, a fifth of the node's: docs/benchmarks.md.) Edits and deletions change
//!   an indexed row in their own transaction ([`reindex`]): a deleted message is gone
//!   from the index when the deletion commits.
//! - **PostgreSQL**: each message's stored `search_vector`, matched for the messages of
//!   the caller's conversations (their index first: the cost follows the caller's own
//!   messages), kept by the database in the statement that writes the row.
//!
//! Both join the conversation and check the caller takes part (the index is not the only
//! guard). Only text messages that are not deleted are searchable.
//!
//! A query is words (letters and digits; everything else separates them), all required,
//! each a whole word but the last, which matches as a prefix (it may still be typed);
//! ranked by relevance (FTS5 `bm25`, PostgreSQL `ts_rank`), newest first among equals.
//! Each result has a snippet around the first match as segments, the matched words
//! marked ([`snippet`]), so clients never parse markup.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use sea_orm::{DatabaseConnection, DbBackend, DbErr, FromQueryResult, Statement};
use serde::Serialize;
use switchboard_actors::ports::StoredMessage;

use crate::auth::routes::{caller, require_auth};
use crate::domain::{ConversationId, FileId, MessageId, UserId};
use crate::error::{AppError, ErrorCode};
use crate::messaging::chat::{MESSAGE_COLUMNS, MessageOut, message_at};
use crate::storage::readers::Readers;
use crate::storage::rows::uuid_at;
use crate::web::openapi::errors;
use crate::web::{query_limit, state};

/// Longest query, in characters.
pub const MAX_QUERY_CHARS: usize = 200;
/// Most words a query may hold.
pub const MAX_TERMS: usize = 8;
/// Deepest result a cursor may ask for (relevance paging past it is noise).
pub const MAX_OFFSET: u64 = 1000;
const DEFAULT_PAGE: u64 = 20;
const MAX_PAGE: u64 = 50;

/// The words of a query: runs of letters and digits, lowercased, at most [`MAX_TERMS`]
/// (longer words cut at 64 characters). `Err` says why the query is refused.
pub fn terms(q: &str) -> Result<Vec<String>, &'static str> {
    if q.chars().count() > MAX_QUERY_CHARS {
        return Err("q is longer than 200 characters");
    }
    let words: Vec<String> = q
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().take(64).collect::<String>().to_lowercase())
        .collect();
    if words.is_empty() {
        return Err("q needs at least one word (letters or digits)");
    }
    if words.len() > MAX_TERMS {
        return Err("q has more than 8 words");
    }
    Ok(words)
}

/// Whether `word`, number `i` of `n`, matches as a prefix: the last one (still being
/// typed), from two characters (the index holds prefixes of two and three). The others,
/// and a last word of one character, match whole words: a prefix that no index holds
/// makes the search merge every matching term of every user first (docs/benchmarks.md,
/// "Message search").
fn is_prefix(word: &str, i: usize, n: usize) -> bool {
    i + 1 == n && word.chars().nth(1).is_some()
}

/// The FTS5 query of `words` for `me`: the words (the last as a prefix) in the text, and
/// the caller's owner token. (Words are letters and digits only, quoted: no FTS5 syntax.)
fn fts5_query(me: UserId, words: &[String]) -> String {
    let n = words.len();
    let body: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| if is_prefix(w, i, n) { format!("\"{w}\"*") } else { format!("\"{w}\"") })
        .collect();
    format!("owners : \"u{}\" AND body : ({})", me.0.simple(), body.join(" AND "))
}

/// The PostgreSQL `to_tsquery('switchboard_search', …)` text of `words` (the last as a
/// prefix).
fn tsquery(words: &[String]) -> String {
    let n = words.len();
    words
        .iter()
        .enumerate()
        .map(|(i, w)| if is_prefix(w, i, n) { format!("{w}:*") } else { w.clone() })
        .collect::<Vec<_>>()
        .join(" & ")
}

/// A piece of a snippet: text, and whether it is a matched word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Segment {
    pub text: String,
    pub hit: bool,
}

/// `c` lowercased, with the accents of Latin letters taken off (what the indexes fold).
fn fold(c: char) -> impl Iterator<Item = char> {
    c.to_lowercase().map(|c| match c {
        'à'..='å' | 'ā' | 'ă' | 'ą' => 'a',
        'ç' | 'ć' | 'č' => 'c',
        'è'..='ë' | 'ē' | 'ė' | 'ę' | 'ě' => 'e',
        'ì'..='ï' | 'ī' | 'į' => 'i',
        'ñ' | 'ń' | 'ň' => 'n',
        'ò'..='ö' | 'ø' | 'ō' | 'ő' => 'o',
        'ù'..='ü' | 'ū' | 'ů' | 'ű' => 'u',
        'ý' | 'ÿ' => 'y',
        'ś' | 'š' => 's',
        'ź' | 'ż' | 'ž' => 'z',
        'ł' => 'l',
        'ř' => 'r',
        c => c,
    })
}

fn folded(word: &str) -> String {
    word.chars().flat_map(fold).collect()
}

/// Words shown around the first match.
const SNIPPET_BEFORE: usize = 6;
const SNIPPET_WORDS: usize = 18;
const SNIPPET_RUN: usize = 40;

/// The text of `body` around its first word that matches `words` (as a query matches
/// them: whole words, the last as a prefix), as segments: the matched words `hit`, an
/// ellipsis where text was cut. The whole start when no word matches visibly.
pub fn snippet(body: &str, words: &[String]) -> Vec<Segment> {
    let terms: Vec<String> = words.iter().map(|w| folded(w)).collect();
    let matches = |word: &str| {
        let word = folded(word);
        terms
            .iter()
            .enumerate()
            .any(|(i, t)| if is_prefix(t, i, terms.len()) { word.starts_with(t.as_str()) } else { word == *t })
    };
    // The body as alternating runs: (text, is a word).
    let mut runs: Vec<(&str, bool)> = Vec::new();
    let mut start = 0;
    let mut in_word = None;
    for (i, c) in body.char_indices() {
        let w = c.is_alphanumeric();
        if in_word != Some(w) {
            if i > start {
                runs.push((&body[start..i], in_word.unwrap_or(false)));
            }
            start = i;
            in_word = Some(w);
        }
    }
    if start < body.len() {
        runs.push((&body[start..], in_word.unwrap_or(false)));
    }
    let word_at: Vec<usize> = runs.iter().enumerate().filter(|(_, r)| r.1).map(|(i, _)| i).collect();
    let first = word_at.iter().position(|&i| matches(runs[i].0)).unwrap_or(0);
    let from = word_at.get(first.saturating_sub(SNIPPET_BEFORE)).copied().unwrap_or(0);
    let to = word_at.get(first.saturating_sub(SNIPPET_BEFORE) + SNIPPET_WORDS).copied().unwrap_or(runs.len());
    let mut out: Vec<Segment> = Vec::new();
    let mut push = |text: &str, hit: bool| match out.last_mut() {
        Some(last) if last.hit == hit && !hit => last.text.push_str(text),
        _ => out.push(Segment { text: text.to_owned(), hit }),
    };
    if from > 0 {
        push("…", false);
    }
    // A cut end stops at a word, not at the space after it.
    let end = if to < runs.len() && to > from && !runs[to - 1].1 { to - 1 } else { to };
    // Each run at most SNIPPET_RUN characters (a 16 KiB "word" is not a snippet).
    for &(text, word) in &runs[from..end] {
        let cut: String = text.chars().take(SNIPPET_RUN).collect();
        let hit = word && matches(text);
        if cut.len() < text.len() {
            push(&cut, hit);
            push("…", false);
        } else {
            push(text, hit);
        }
    }
    if to < runs.len() {
        push("…", false);
    }
    out
}

/// One search result.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SearchHit {
    /// The message as it is now.
    pub message: MessageOut,
    /// Text around the matches, in order; the matched words have `hit: true`.
    pub snippet: Vec<Segment>,
}

#[derive(Serialize, ToSchema)]
struct SearchPage {
    results: Vec<SearchHit>,
    /// Pass as `cursor` for the next page; `null` on the last.
    next_cursor: Option<String>,
}

/// What to search for.
pub struct Query<'a> {
    pub me: UserId,
    pub words: &'a [String],
    pub conversation: Option<ConversationId>,
    pub limit: u64,
    pub offset: u64,
}

/// How often the SQLite writer indexes what was stored since (at most; at once when idle
/// after that long).
pub const INDEX_EVERY: std::time::Duration = std::time::Duration::from_millis(500);
/// Most messages one indexing step takes.
pub const INDEX_STEP: i64 = 5000;
/// Most text one indexing step takes inside a batch the writer commits for others (its
/// acks wait for it): whatever senders write, indexing delays a batch by a bounded amount;
/// a backlog is indexed by idle steps, [`INDEX_IDLE_BYTES`] each.
pub const INDEX_BATCH_BYTES: usize = 64 * 1024;
pub const INDEX_IDLE_BYTES: usize = 4 * 1024 * 1024;

/// The owner tokens of a conversation between `low` and `high`.
fn owners(low: uuid::Uuid, high: uuid::Uuid) -> String {
    format!("u{} u{}", low.simple(), high.simple())
}

/// Indexes the messages stored since the last step (by rowid, which follows insertion),
/// up to [`INDEX_STEP`] messages or about `max_bytes` of text (at least one message),
/// inside the caller's write transaction on a SQLite file: text messages not deleted go
/// into `messages_fts` with their owners; the progress mark moves past the rows looked at.
/// Returns whether more are waiting. Safe with several writers (processes) on one file:
/// the mark is read and moved under the write lock.
pub fn index_pending(db: &rusqlite::Connection, max_bytes: usize) -> rusqlite::Result<bool> {
    use rusqlite::OptionalExtension;
    let upto: i64 = db
        .prepare_cached("SELECT indexed_upto FROM search_progress WHERE id = 1")?
        .query_row([], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let mut read = db.prepare_cached(
        "SELECT m.rowid, m.kind = 'text' AND m.deleted_at IS NULL, m.body, c.user_low, c.user_high \
         FROM messages m JOIN conversations c ON c.id = m.conversation_id \
         WHERE m.rowid > ?1 ORDER BY m.rowid LIMIT ?2",
    )?;
    let mut insert = db.prepare_cached("INSERT INTO messages_fts (rowid, body, owners) VALUES (?1, ?2, ?3)")?;
    let mut rows = read.query(rusqlite::params![upto, INDEX_STEP])?;
    let (mut last, mut seen, mut bytes) = (upto, 0i64, 0usize);
    while let Some(r) = rows.next()? {
        if bytes >= max_bytes {
            break;
        }
        last = r.get(0)?;
        seen += 1;
        if r.get::<_, bool>(1)? {
            let body = r.get_ref(2)?.as_str()?;
            bytes += body.len();
            insert.execute(rusqlite::params![last, body, owners(uuid_at(r, 3)?, uuid_at(r, 4)?)])?;
        }
    }
    drop(rows);
    if last == upto {
        return Ok(false);
    }
    db.prepare_cached("INSERT OR REPLACE INTO search_progress (id, indexed_upto) VALUES (1, ?1)")?.execute([last])?;
    Ok(seen == INDEX_STEP || bytes >= max_bytes)
}

/// Keeps the index in step with a change of the message at `rowid` (between `low` and
/// `high`), in the change's transaction: its entry goes, and with `Some(text)` (an edit)
/// the new text comes in, if the indexer has reached the row (it indexes later rows as
/// they are when it gets to them).
pub fn reindex(
    db: &rusqlite::Connection,
    rowid: i64,
    text: Option<&str>,
    (low, high): (uuid::Uuid, uuid::Uuid),
) -> rusqlite::Result<()> {
    db.prepare_cached("DELETE FROM messages_fts WHERE rowid = ?1")?.execute([rowid])?;
    if let Some(text) = text {
        db.prepare_cached(
            "INSERT INTO messages_fts (rowid, body, owners) SELECT ?1, ?2, ?3 \
             WHERE ?1 <= (SELECT indexed_upto FROM search_progress WHERE id = 1)",
        )?
        .execute(rusqlite::params![rowid, text, owners(low, high)])?;
    }
    Ok(())
}

/// Searches on a SQLite reader connection.
fn search_sqlite(c: &rusqlite::Connection, q: &Query<'_>) -> rusqlite::Result<Vec<StoredMessage>> {
    let columns = MESSAGE_COLUMNS.split(", ").map(|col| format!("m.{col}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {columns} FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid \
         JOIN conversations c ON c.id = m.conversation_id AND (c.user_low = ?1 OR c.user_high = ?1) \
         WHERE messages_fts MATCH ?2 AND (?3 IS NULL OR m.conversation_id = ?3) \
         AND m.kind = 'text' AND m.deleted_at IS NULL \
         ORDER BY bm25(messages_fts, 1.0, 0.0), m.rowid DESC LIMIT ?4 OFFSET ?5"
    );
    let mut stmt = c.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        rusqlite::params![
            q.me.0.as_bytes(),
            fts5_query(q.me, q.words),
            q.conversation.map(|c| *c.0.as_bytes()),
            q.limit as i64,
            q.offset as i64,
        ],
        message_at,
    )?;
    rows.collect()
}

#[derive(FromQueryResult)]
struct PgHit {
    id: uuid::Uuid,
    conversation_id: uuid::Uuid,
    seq: i64,
    sender_id: uuid::Uuid,
    client_msg_id: String,
    body: String,
    file_id: Option<uuid::Uuid>,
    created_at: i64,
    edited_at: Option<i64>,
}

/// Searches on PostgreSQL.
async fn search_postgres(db: &DatabaseConnection, q: &Query<'_>) -> Result<Vec<StoredMessage>, DbErr> {
    let sql = "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.body, m.file_id, m.created_at, \
               m.edited_at \
               FROM messages m JOIN conversations c ON c.id = m.conversation_id, \
               (SELECT to_tsquery('switchboard_search', $2) AS q) q \
               WHERE (c.user_low = $1 OR c.user_high = $1) \
               AND m.search_vector @@ q.q AND ($3::uuid IS NULL OR m.conversation_id = $3) \
               ORDER BY ts_rank(m.search_vector, q.q) DESC, m.created_at DESC, m.id DESC \
               LIMIT $4 OFFSET $5";
    let stmt = Statement::from_sql_and_values(
        DbBackend::Postgres,
        sql,
        [
            q.me.0.into(),
            tsquery(q.words).into(),
            q.conversation.map(|c| c.0).into(),
            (q.limit as i64).into(),
            (q.offset as i64).into(),
        ],
    );
    let hits = PgHit::find_by_statement(stmt).all(db).await?;
    Ok(hits
        .into_iter()
        .map(|h| StoredMessage {
            id: MessageId(h.id),
            conversation_id: ConversationId(h.conversation_id),
            seq: h.seq,
            sender_id: UserId(h.sender_id),
            client_msg_id: h.client_msg_id,
            kind: switchboard_actors::states::MessageKind::Text,
            body: h.body,
            file_id: h.file_id.map(FileId),
            created_at: h.created_at,
            target_id: None,
            edited_at: h.edited_at,
            deleted: false,
        })
        .collect())
}

/// Runs `q` where the messages are: a SQLite reader (no thread hand-off), or PostgreSQL.
pub async fn search(
    db: &DatabaseConnection,
    readers: Option<std::sync::Arc<Readers>>,
    q: &Query<'_>,
) -> Result<Vec<SearchHit>, AppError> {
    let found = match (readers, db.get_database_backend()) {
        (Some(readers), _) => {
            // Off the async workers: a query's cost depends on what it matches (up to tens
            // of milliseconds for common words at a million messages), and on a small
            // machine one worker serves everything else meanwhile.
            let (me, words, conversation, limit, offset) = (q.me, q.words.to_vec(), q.conversation, q.limit, q.offset);
            tokio::task::spawn_blocking(move || {
                let q = Query { me, words: &words, conversation, limit, offset };
                readers.read(|c| search_sqlite(c, &q))
            })
            .await
            .map_err(|e| AppError::Internal(anyhow::anyhow!(e)))?
            .map_err(|e| AppError::Internal(anyhow::anyhow!(e)))?
        }
        (None, DbBackend::Postgres) => search_postgres(db, q).await?,
        (None, _) => return Err(AppError::Unavailable("message search needs a SQLite file or PostgreSQL")),
    };
    Ok(found
        .into_iter()
        .map(|m| SearchHit { snippet: snippet(&m.body, q.words), message: MessageOut::from(m) })
        .collect())
}

pub fn router() -> Router {
    Router::with_path("api/search/messages").hoop(require_auth).get(search_messages)
}

/// `GET /api/search/messages?q=&conversation_id=&limit=&cursor=` → `{"results": [{message,
/// snippet}], "next_cursor"}`, most relevant first, from the caller's conversations only.
#[endpoint(
    operation_id = "search.messages",
    tags("conversations"),
    parameters(
        ("q" = String, Query, description = "words to find (1-8 words, at most 200 characters); the last also matches as a prefix"),
        ("conversation_id" = Option<String>, Query, description = "only in this conversation (UUID)"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 50, description = "1-50, default 20"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status_code = 200, description = "a page of results, most relevant first", body = SearchPage),
        errors::BadInput,
        errors::Unauthenticated,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn search_messages(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    let bad = |why: &str| AppError::bad_request(ErrorCode::InvalidQuery, why);
    let q = req.queries().get("q").map(String::as_str).unwrap_or("");
    let words = terms(q).map_err(bad)?;
    let conversation = match req.queries().get("conversation_id") {
        None => None,
        Some(c) => Some(ConversationId::parse(c).ok_or_else(|| bad("conversation_id must be a UUID"))?),
    };
    let limit = query_limit(req, DEFAULT_PAGE, MAX_PAGE)?;
    let offset = match req.queries().get("cursor") {
        None => 0,
        Some(c) => {
            c.parse::<u64>().ok().filter(|o| *o <= MAX_OFFSET).ok_or_else(|| bad("cursor is not one this API gave"))?
        }
    };
    st.search_limiter
        .check(&format!("messages:{me}"))
        .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
    let query = Query { me, words: &words, conversation, limit, offset };
    let results = search(&st.repos.db, st.repos.chat.readers(), &query).await?;
    let next = offset + limit;
    let next_cursor = (results.len() as u64 == limit && next <= MAX_OFFSET).then(|| next.to_string());
    res.render(Json(SearchPage { results, next_cursor }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_become_words_and_nothing_else() {
        assert_eq!(terms("  Meet at the CAFÉ!  ").unwrap(), ["meet", "at", "the", "café"]);
        assert_eq!(terms("\"x\" OR owners:u1 NEAR(a b)*").unwrap(), ["x", "or", "owners", "u1", "near", "a", "b"]);
        assert!(terms("   ").is_err());
        assert!(terms("!!! ???").is_err());
        assert!(terms(&"a ".repeat(9)).is_err());
        assert!(terms(&"x".repeat(201)).is_err());
        let me = UserId(uuid::Uuid::nil());
        assert_eq!(
            fts5_query(me, &["meet".into(), "café".into()]),
            "owners : \"u00000000000000000000000000000000\" AND body : (\"meet\" AND \"café\"*)"
        );
        assert_eq!(tsquery(&["meet".into(), "at".into()]), "meet & at:*");
        // A last word of one letter is a whole word: no index holds one-letter prefixes.
        assert_eq!(tsquery(&["meet".into(), "a".into()]), "meet & a");
        assert!(fts5_query(me, &["e".into()]).ends_with("body : (\"e\")"));
    }

    #[test]
    fn snippets_mark_the_matches_around_the_first() {
        let seg = |t: &str, hit| Segment { text: t.into(), hit };
        let words = |q: &str| terms(q).unwrap();
        assert_eq!(
            snippet("Shall we meet at the Café Central?", &words("cafe centr")),
            [
                seg("Shall we meet at the ", false),
                seg("Café", true),
                seg(" ", false),
                seg("Central", true),
                seg("?", false)
            ]
        );
        // Whole words but the last: "meet" is not a prefix match of "meeting".
        assert_eq!(snippet("meeting at noon", &words("meet noon")), [seg("meeting at ", false), seg("noon", true)]);
        let long = (0..40).map(|i| format!("w{i}")).collect::<Vec<_>>().join(" ");
        let s = snippet(&long, &words("w20"));
        assert!(s.first().is_some_and(|f| f.text.starts_with("…w14 ")), "{s:?}");
        assert!(s.last().is_some_and(|l| l.text.ends_with("w31…")), "{s:?}");
        assert_eq!(s.iter().filter(|x| x.hit).map(|x| x.text.as_str()).collect::<Vec<_>>(), ["w20"]);
        assert!(s.iter().any(|x| x.text.contains("w14")) && !s.iter().any(|x| x.text.contains("w13 ")));
        assert_eq!(snippet("", &words("x")), []);
        let huge = format!("see {}", "x".repeat(16 * 1024));
        let s = snippet(&huge, &words("see"));
        assert!(s.iter().map(|x| x.text.len()).sum::<usize>() < 100, "a long word is cut: {s:?}");
        assert_eq!(snippet("no match here", &words("zzz")), [seg("no match here", false)]);
    }
}
