//! `GET /api/search/messages`: full-text search over the caller's own conversations.
//!
//! The index is the database's (migration `m20261207_000007_message_search`): on SQLite an
//! FTS5 table fed by triggers, whose rows carry their two participants as `owners` tokens,
//! so a query matches the words *and* the caller's token and never sees anyone else's
//! messages; on PostgreSQL each message's stored `search_vector`, matched for the messages
//! of the caller's conversations (their index first: the cost follows the caller's own
//! messages). Both join the conversation and check the caller takes part (the index is
//! not the only guard). Only text messages that are not deleted are searchable: an edit
//! re-indexes the new text, a deletion removes it, in the change's transaction.
//!
//! A query is words (letters and digits; everything else separates them), all required,
//! each a whole word but the last, which matches as a prefix (it may still be typed);
//! ranked by relevance (FTS5 `bm25`, PostgreSQL `ts_rank`), newest first among equals.
//! Each result has a snippet around the matches as segments, the matched words marked, so
//! clients never parse markup.

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

/// Marks around a matched word in the database's snippet (private-use characters).
const HIT_START: char = '\u{E000}';
const HIT_END: char = '\u{E001}';

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

/// Whether word `i` of `n` matches as a prefix: the last one (still being typed). The
/// others match whole words: a prefix of every word made common words cost a scan of
/// every matching term (docs/benchmarks.md, "Message search").
fn is_prefix(i: usize, n: usize) -> bool {
    i + 1 == n
}

/// The FTS5 query of `words` for `me`: the words (the last as a prefix) in the text, and
/// the caller's owner token. (Words are letters and digits only, quoted: no FTS5 syntax.)
fn fts5_query(me: UserId, words: &[String]) -> String {
    let n = words.len();
    let body: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, w)| if is_prefix(i, n) { format!("\"{w}\"*") } else { format!("\"{w}\"") })
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
        .map(|(i, w)| if is_prefix(i, n) { format!("{w}:*") } else { w.clone() })
        .collect::<Vec<_>>()
        .join(" & ")
}

/// A piece of a snippet: text, and whether it is a matched word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Segment {
    pub text: String,
    pub hit: bool,
}

/// The database's snippet, its matches between [`HIT_START`] and [`HIT_END`], as segments.
pub fn segments(snippet: &str) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let (mut text, mut hit) = (String::new(), false);
    let mut flush = |text: &mut String, hit: bool| {
        if !text.is_empty() {
            out.push(Segment { text: std::mem::take(text), hit });
        }
    };
    for c in snippet.chars() {
        match c {
            HIT_START => {
                flush(&mut text, hit);
                hit = true;
            }
            HIT_END => {
                flush(&mut text, hit);
                hit = false;
            }
            c => text.push(c),
        }
    }
    flush(&mut text, hit);
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

/// Searches on a SQLite reader connection.
fn search_sqlite(c: &rusqlite::Connection, q: &Query<'_>) -> rusqlite::Result<Vec<(StoredMessage, String)>> {
    let columns = MESSAGE_COLUMNS.split(", ").map(|col| format!("m.{col}")).collect::<Vec<_>>().join(", ");
    let sql = format!(
        "SELECT {columns}, snippet(messages_fts, 0, char(57344), char(57345), '…', 16) \
         FROM messages_fts JOIN messages m ON m.rowid = messages_fts.rowid \
         JOIN conversations c ON c.id = m.conversation_id AND (c.user_low = ?1 OR c.user_high = ?1) \
         WHERE messages_fts MATCH ?2 AND (?3 IS NULL OR m.conversation_id = ?3) \
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
        |r| Ok((message_at(r)?, r.get::<_, String>(12)?)),
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
    snippet: String,
}

/// Searches on PostgreSQL.
async fn search_postgres(db: &DatabaseConnection, q: &Query<'_>) -> Result<Vec<(StoredMessage, String)>, DbErr> {
    let options = format!("StartSel={HIT_START}, StopSel={HIT_END}, MaxWords=24, MinWords=8, MaxFragments=1");
    let sql = "SELECT m.id, m.conversation_id, m.seq, m.sender_id, m.client_msg_id, m.body, m.file_id, m.created_at, \
               m.edited_at, ts_headline('switchboard_search', m.body, q.q, $6) AS snippet \
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
            options.into(),
        ],
    );
    let hits = PgHit::find_by_statement(stmt).all(db).await?;
    Ok(hits
        .into_iter()
        .map(|h| {
            let message = StoredMessage {
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
            };
            (message, h.snippet)
        })
        .collect())
}

/// Runs `q` where the messages are: a SQLite reader (no thread hand-off), or PostgreSQL.
pub async fn search(
    db: &DatabaseConnection,
    readers: Option<&Readers>,
    q: &Query<'_>,
) -> Result<Vec<SearchHit>, AppError> {
    let found = match (readers, db.get_database_backend()) {
        (Some(readers), _) => {
            readers.read(|c| search_sqlite(c, q)).map_err(|e| AppError::Internal(anyhow::anyhow!(e)))?
        }
        (None, DbBackend::Postgres) => search_postgres(db, q).await?,
        (None, _) => return Err(AppError::Unavailable("message search needs a SQLite file or PostgreSQL")),
    };
    Ok(found
        .into_iter()
        .map(|(m, snippet)| SearchHit { message: MessageOut::from(m), snippet: segments(&snippet) })
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
    }

    #[test]
    fn snippets_become_segments() {
        let s = format!("…we {HIT_START}meet{HIT_END} at the {HIT_START}cafe{HIT_END}");
        let seg = |t: &str, hit| Segment { text: t.into(), hit };
        assert_eq!(segments(&s), [seg("…we ", false), seg("meet", true), seg(" at the ", false), seg("cafe", true)]);
        assert_eq!(segments("plain"), [seg("plain", false)]);
        assert!(segments("").is_empty());
    }
}
