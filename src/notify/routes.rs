//! `/api/notifications`: the caller's notifications (never anyone else's), marking them
//! read, and the live stream (server-sent events).

use std::convert::Infallible;
use std::time::Duration;

use futures_util::StreamExt;
use salvo::prelude::*;

use salvo::oapi::ToSchema;
use salvo::sse::{SseEvent, SseKeepAlive};
use serde::Serialize;
use switchboard_actors::ids::ConversationId;
use switchboard_actors::notify_stream::StreamItem;
use switchboard_actors::ports::{NotificationView, Unread};
use switchboard_actors::states::NotificationKind;

use crate::auth::routes::{caller, require_auth};
use crate::error::{AppError, ErrorCode};
use crate::web::openapi::{ErrorBody, errors};
use crate::web::state;
use crate::web::{query_i64, query_limit};

/// Largest page of notifications.
pub const MAX_PAGE: u64 = 100;
const DEFAULT_PAGE: u64 = 50;
/// SSE comment lines sent this often keep proxies from closing an idle stream.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

// The actors' `NotificationView` with its OpenAPI schema (the actors crate knows no HTTP).
/// A notification: `message` ones stand for a conversation's unread messages.
#[derive(Serialize, ToSchema)]
struct NotificationOut {
    #[salvo(schema(value_type = String))]
    id: uuid::Uuid,
    /// The stream cursor: every change takes the next number.
    n: i64,
    /// `message` (one per conversation, updated by each new message), `contact_request`
    /// or `contact_accepted`.
    #[salvo(schema(value_type = String))]
    kind: NotificationKind,
    #[salvo(schema(value_type = Option<String>))]
    conversation_id: Option<ConversationId>,
    seq: Option<i64>,
    payload: serde_json::Value,
    read: bool,
    /// What it adds to the unread total while unread (unread messages of a message
    /// notification, 1 for the others); 0 once read.
    count: i64,
    /// When it last changed.
    created_at: i64,
}

impl From<NotificationView> for NotificationOut {
    fn from(v: NotificationView) -> Self {
        // Every field named: a field added to the view does not compile here until the API
        // says whether it shows it.
        let NotificationView { id, n, kind, conversation_id, seq, payload, read, count, created_at } = v;
        Self { id, n, kind, conversation_id, seq, payload, read, count, created_at }
    }
}

#[derive(Serialize, ToSchema)]
struct UnreadOut {
    /// Unread notifications in all: the unread messages of conversations not muted, and
    /// unread contact notifications.
    total: i64,
    /// Unread messages per conversation id (muted ones too).
    #[salvo(schema(value_type = std::collections::BTreeMap<String, i64>))]
    conversations: std::collections::BTreeMap<ConversationId, i64>,
    /// Muted conversations by id, with when each mute ends (ms since the epoch; `null`:
    /// when unmuted).
    #[salvo(schema(value_type = std::collections::BTreeMap<String, Option<i64>>))]
    muted: std::collections::BTreeMap<ConversationId, Option<i64>>,
}

impl From<Unread> for UnreadOut {
    fn from(u: Unread) -> Self {
        let Unread { total, conversations, muted } = u;
        Self { total, conversations, muted }
    }
}

#[derive(Serialize, ToSchema)]
struct NotificationPage {
    notifications: Vec<NotificationOut>,
    unread: UnreadOut,
    next_before: Option<i64>,
}

pub fn router() -> Router {
    Router::with_path("api/notifications")
        .hoop(require_auth)
        .get(list)
        .push(Router::with_path("read-all").post(read_all))
        .push(Router::with_path("stream").get(stream))
        .push(Router::with_path("{id}/read").post(read_one))
}

/// `GET /api/notifications?unread=true&before=N&limit=` → `{"notifications": [...],
/// "unread": {"total", "conversations"}, "next_before"}`, newest first; `next_before` is
/// the `before` of the next (older) page, or null after the last.
#[endpoint(
    operation_id = "notifications.list",
    tags("notifications"),
    parameters(
        ("unread" = Option<bool>, Query),
        ("before" = Option<i64>, Query, description = "next_before of the previous page"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "1-100, default 50"),
    ),
    responses(
        (status_code = 200, description = "the caller's notifications, newest first, and unread counts", body = NotificationPage),
        errors::BadInput,
        errors::Unauthenticated,
        errors::Unavailable,
    ),
)]
async fn list(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    let unread_only = match req.queries().get("unread").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(AppError::bad_request(ErrorCode::InvalidQuery, "unread must be true or false")),
    };
    let before = query_i64(req, "before")?;
    let limit = query_limit(req, DEFAULT_PAGE, MAX_PAGE)?;
    let page = st.repos.notifications.list(me, unread_only, before, limit).await?;
    let unread = st.repos.notifications.unread_counts(me).await?;
    let next_before = if page.len() as u64 == limit { page.last().map(|n| n.n) } else { None };
    res.render(Json(NotificationPage {
        notifications: page.into_iter().map(NotificationOut::from).collect(),
        unread: unread.into(),
        next_before,
    }));
    Ok(())
}

/// `POST /api/notifications/{id}/read` → 204; 404 unless it is one of the caller's.
#[endpoint(
    operation_id = "notifications.read_one",
    tags("notifications"),
    parameters(
        ("id" = String, Path, description = "UUID"),
    ),
    responses(
        (status_code = 204, description = "marked read"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Unavailable,
    ),
)]
async fn read_one(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such notification");
    let id = req.param::<String>("id").and_then(|s| uuid::Uuid::parse_str(&s).ok()).ok_or_else(not_found)?;
    if !state(depot)?.notifier.mark_read(me, id).await? {
        return Err(not_found());
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `POST /api/notifications/read-all` → 204.
#[endpoint(
    operation_id = "notifications.read_all",
    tags("notifications"),
    responses(
        (status_code = 204, description = "all marked read"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::Unavailable,
    ),
)]
async fn read_all(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    state(depot)?.notifier.mark_all_read(me).await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/notifications/stream` (SSE). Resumes after the `Last-Event-ID` header (or
/// `?after=N`): first the stored notifications after it, then live ones, each as an
/// `event: notification` with `id: <n>`, and the unread counts as `event: unread`.
#[endpoint(
    operation_id = "notifications.stream",
    tags("notifications"),
    parameters(
        ("after" = Option<i64>, Query, description = "resume after this notification number"),
        ("last-event-id" = Option<String>, Header),
    ),
    responses(
        (status_code = 200, description = "server-sent events: notification and unread", body = serde_json::Value, content_type = "text/event-stream"),
        errors::BadInput,
        errors::Unauthenticated,
        (status_code = 403, description = "cookie-authenticated from an origin that may not open it (origin_not_allowed)", body = ErrorBody),
        (status_code = 429, description = "too many streams open (messaging.max_connections_per_user: too_many_connections), or too many opened this minute (messaging.opens_per_minute: rate_limited, with Retry-After)", body = ErrorBody),
        errors::Unavailable,
    ),
)]
async fn stream(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let me = who.user_id;
    let header = req.headers().get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let after = match header {
        Some(h) => h.trim().parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            AppError::bad_request(ErrorCode::InvalidHeader, "Last-Event-ID must be a notification number")
        })?,
        None => query_i64(req, "after")?.unwrap_or(0),
    };
    let st = state(depot)?;
    // As for the chat socket: a page on another site (it carries the cookie to a stream
    // too) neither reads the stream nor spends the user's budget of opens.
    crate::web::csrf::connection_origin(req, &st.config, "notification stream")?;
    // Streams hold memory and a task each: one user gets as many as chat sockets.
    let limit = st.config.messaging.max_connections_per_user;
    let slot = st.streams.acquire(me, limit).ok_or(AppError::TooManyConnections { limit })?;
    // Opening one costs a stream actor and reads: as rate-limited as chat sockets.
    st.count_open(me)?;
    let rx = st.node.open_notification_stream(me, who.session_id.0, after).await.map_err(|e| {
        tracing::warn!(user = %me, error = %e, "cannot open a notification stream");
        AppError::Unavailable("notification streams")
    })?;
    // The slot lives in the stream's state: it is given back when the response ends.
    let events = futures_util::stream::unfold((rx, slot), |(mut rx, slot)| async move {
        let item = rx.recv().await?;
        let event = match item {
            StreamItem::Notification(n) => SseEvent::default()
                .name("notification")
                .id(n.n.to_string())
                .text(serde_json::to_string(&n).unwrap_or_default()),
            StreamItem::Unread(u) => {
                SseEvent::default().name("unread").text(serde_json::to_string(&u).unwrap_or_default())
            }
        };
        Some((Ok::<_, Infallible>(event), (rx, slot)))
    });
    // The stream ends when its token expires (the client reconnects with a fresh one)
    // or, through the stream actor, when its login is revoked.
    let expires_in = Duration::from_millis(u64::try_from(who.expires_at - crate::now_ms()).unwrap_or(0));
    let events = events.take_until(tokio::time::sleep(expires_in));
    res.headers_mut().insert("x-accel-buffering", salvo::http::HeaderValue::from_static("no"));
    SseKeepAlive::new(events).max_interval(KEEP_ALIVE).stream(res);
    Ok(())
}
