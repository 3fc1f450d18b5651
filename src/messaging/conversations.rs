//! `/api/conversations`: the caller's conversations and their history (participants only).

use salvo::prelude::*;

use salvo::oapi::ToSchema;
use serde::Serialize;

use crate::auth::routes::{caller, require_auth};
use crate::domain::ConversationId;
use crate::error::{AppError, ErrorCode};
use crate::messaging::chat::{ConversationSummary, MessageOut};
use crate::web::openapi::errors;
use crate::web::{query_i64, query_limit, state};

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
