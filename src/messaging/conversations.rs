//! `/api/conversations`: the caller's conversations and their history, and muting them
//! (participants only).

use salvo::prelude::*;

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};

use crate::auth::routes::{caller, json_body, require_auth};
use crate::domain::{ConversationId, UserId};
use crate::error::{AppError, ErrorCode};
use crate::messaging::chat::{ConversationSummary, MessageOut};
use crate::web::openapi::errors;
use crate::web::{query_i64, query_limit, state};
use switchboard_actors::ports::ChatStore;

/// Largest page of history.
pub const MAX_PAGE: u64 = 500;
const DEFAULT_PAGE: u64 = 50;

#[derive(Serialize, ToSchema)]
struct ConversationList {
    conversations: Vec<ConversationSummary>,
}

#[derive(Serialize, ToSchema)]
struct MessagePage {
    messages: Vec<MessageOut>,
    last_seq: i64,
}

pub fn router() -> Router {
    Router::with_path("api/conversations")
        .hoop(require_auth)
        .get(list)
        .push(Router::with_path("{id}/messages").get(messages))
        .push(Router::with_path("{id}/mute").put(mute).delete(unmute))
}

/// Longest mute with an end: a year (longer is "until unmuted").
const MAX_MUTE_MS: i64 = 366 * 24 * 3600 * 1000;

/// How long to mute.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct MuteBody {
    /// When the mute ends (ms since the epoch, in the future, at most a year ahead);
    /// missing or `null`: until unmuted.
    #[serde(default)]
    until: Option<i64>,
}

/// A conversation's mute.
#[derive(Serialize, ToSchema)]
struct MuteOut {
    #[salvo(schema(value_type = String))]
    conversation_id: ConversationId,
    /// When it ends; `null`: when unmuted.
    until: Option<i64>,
}

/// The conversation `{id}` of the caller's, or 404.
async fn own_conversation(req: &Request, st: &crate::web::AppState, me: UserId) -> Result<ConversationId, AppError> {
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such conversation");
    let id = req.param::<String>("id").and_then(|s| ConversationId::parse(&s)).ok_or_else(not_found)?;
    let conv =
        st.repos.chat.conversation(id).await.map_err(|_| AppError::Unavailable("cannot read the conversation now"))?;
    conv.filter(|c| c.has(me)).map(|_| id).ok_or_else(not_found)
}

/// `PUT /api/conversations/{id}/mute {until}` → 200 `{conversation_id, until}`: the
/// conversation's messages still count as unread in it, but not in the notification
/// total, and raise no notification (no desktop notification, nothing in the bell),
/// until `until` or until unmuted. Replaces an earlier mute; every device of the caller
/// gets the new counts (a `notification` frame / `unread` event with `muted`).
#[endpoint(
    operation_id = "conversations.mute",
    tags("conversations"),
    parameters(("id" = String, Path, description = "UUID")),
    request_body = MuteBody,
    responses(
        (status_code = 200, description = "muted", body = MuteOut),
        (status_code = 400, description = "`until` past or more than a year ahead (`invalid_until`), or a malformed body", body = crate::error::ErrorBody),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn mute(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let body: MuteBody = json_body(req, depot).await?;
    let st = state(depot)?;
    crate::messaging::messages::limited(st, me)?;
    let now = crate::now_ms();
    if let Some(until) = body.until
        && (until <= now || until - now > MAX_MUTE_MS)
    {
        return Err(AppError::bad_request(
            ErrorCode::InvalidUntil,
            "until must be in the future and at most a year ahead (ms since the epoch), or null for until unmuted",
        ));
    }
    let id = own_conversation(req, st, me).await?;
    st.repos.notifications.mute(me, id, body.until).await?;
    st.notifier.publish_counts(me).await?;
    res.render(Json(MuteOut { conversation_id: id, until: body.until }));
    Ok(())
}

/// `DELETE /api/conversations/{id}/mute` → 204 (also when it was not muted); every device
/// of the caller gets the new counts.
#[endpoint(
    operation_id = "conversations.unmute",
    tags("conversations"),
    parameters(("id" = String, Path, description = "UUID")),
    responses(
        (status_code = 204, description = "not muted (any more)"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn unmute(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    crate::messaging::messages::limited(st, me)?;
    let id = own_conversation(req, st, me).await?;
    if st.repos.notifications.unmute(me, id).await? {
        st.notifier.publish_counts(me).await?;
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/conversations` → `{"conversations": [...]}`, most recent first.
#[endpoint(
    operation_id = "conversations.list",
    tags("conversations"),
    responses(
        (status_code = 200, description = "the caller's conversations, most recent first", body = ConversationList),
        errors::Unauthenticated,
        errors::Unavailable,
    ),
)]
async fn list(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let convs = state(depot)?.repos.chat.summaries(me, 500).await?;
    res.render(Json(ConversationList { conversations: convs }));
    Ok(())
}

/// `GET /api/conversations/{id}/messages?after_seq=&before_seq=&limit=` → `{"messages":
/// [...], "last_seq"}` oldest first. With `after_seq`, the page after it; otherwise the
/// newest page (before `before_seq` if given). 404 unless the caller takes part.
#[endpoint(
    operation_id = "conversations.messages",
    tags("conversations"),
    parameters(
        ("id" = String, Path, description = "UUID"),
        ("after_seq" = Option<i64>, Query, minimum = 0),
        ("before_seq" = Option<i64>, Query, minimum = 0),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 500, description = "1-500, default 50"),
    ),
    responses(
        (status_code = 200, description = "a page of history, oldest first", body = MessagePage),
        errors::BadInput,
        errors::Unauthenticated,
        errors::NotFound,
        errors::Unavailable,
    ),
)]
async fn messages(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such conversation");
    let id = req.param::<String>("id").and_then(|s| ConversationId::parse(&s)).ok_or_else(not_found)?;
    let after = query_i64(req, "after_seq")?;
    let before = query_i64(req, "before_seq")?;
    let limit = query_limit(req, DEFAULT_PAGE, MAX_PAGE)?;
    let (page, last_seq) = st.repos.chat.history_for(me, id, after, before, limit).await?.ok_or_else(not_found)?;
    res.render(Json(MessagePage { messages: page.into_iter().map(MessageOut::from).collect(), last_seq }));
    Ok(())
}
