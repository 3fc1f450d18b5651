//! `/api/contacts*` and `/api/users` (search): the auth service's contact management.
//!
//! Every change is published on the bus to both users (`contact.requested`, `.accepted`,
//! `.declined`, `.cancelled`, `.removed`), for live sessions and the notify service.

use salvo::prelude::*;

#[allow(unused_imports)]
use crate::web::openapi::*;
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::ports::{ChatStore, Envelope, Event};
use switchboard_actors::states::{ContactChangeKind, ContactState};
use uuid::Uuid;

use crate::auth::routes::{caller, json_body, require_auth};
use crate::contacts::repo::{ContactError, ContactRequest, RequestOutcome};
use crate::domain::{UserId, Username};
use crate::error::{AppError, ErrorCode};
use crate::web::{AppState, state};

/// Largest page of search results.
pub const MAX_SEARCH_PAGE: u64 = 50;

pub fn router() -> Router {
    Router::new()
        .push(
            Router::with_path("api/contacts")
                .hoop(require_auth)
                .get(list)
                .push(
                    Router::with_path("requests")
                        .get(requests)
                        .post(send_request)
                        .push(Router::with_path("{id}").delete(cancel))
                        .push(Router::with_path("{id}/accept").post(accept))
                        .push(Router::with_path("{id}/decline").post(decline)),
                )
                .push(Router::with_path("blocked").get(blocked))
                .push(Router::with_path("{user_id}").delete(remove))
                .push(Router::with_path("{user_id}/block").post(block).delete(unblock)),
        )
        .push(Router::with_path("api/users").hoop(require_auth).get(search))
}

impl From<ContactError> for AppError {
    fn from(e: ContactError) -> Self {
        match e {
            ContactError::NotFound => AppError::not_found(ErrorCode::NotFound, "no such user or request"),
            ContactError::Forbidden(why) => AppError::Forbidden { code: ErrorCode::Forbidden, message: why.into() },
            ContactError::Conflict(why) => AppError::conflict(ErrorCode::Conflict, why),
            ContactError::Db(e) => e.into(),
        }
    }
}

/// Tells both users of a request that it changed (best effort: the database is the record).
async fn publish(st: &AppState, kind: ContactChangeKind, r: &ContactRequest) {
    if kind == ContactChangeKind::Accepted {
        // New contacts get their conversation now: files can be sent before a first
        // message, and each side's live sessions learn the other's presence.
        if let Err(e) = st.storage.chat.open_conversation(r.requester_id, r.addressee_id).await {
            tracing::warn!(error = %e, "conversation for new contacts not opened");
        }
    }
    for to in [r.requester_id, r.addressee_id] {
        let event = Envelope::new(Event::Contact { to, change: r.change(kind) });
        if let Err(e) = st.node.ctx.bus.publish(event).await {
            tracing::warn!(error = %e, "contact event not published");
        }
    }
}

fn path_uuid(req: &Request, key: &str) -> Result<Uuid, AppError> {
    req.param::<String>(key)
        .and_then(|s| Uuid::parse_str(&s).ok())
        .ok_or_else(|| AppError::not_found(ErrorCode::NotFound, "no such user or request"))
}

/// `GET /api/contacts` → `{"contacts": [{user, since}]}`.
#[endpoint(tags("contacts"), responses((status_code = 200, description = "accepted contacts", body = ContactList), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn list(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let contacts = state(depot)?.storage.contacts.contacts(me).await?;
    res.render(Json(json!({ "contacts": contacts })));
    Ok(())
}

/// `GET /api/contacts/blocked` → `{"blocked": [{user, since}]}`: the users the caller
/// blocked, newest first (so the UI can lift a block).
#[endpoint(tags("contacts"), responses((status_code = 200, description = "users you blocked", body = BlockedList), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn blocked(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let users = state(depot)?.storage.contacts.blocked(me).await?;
    res.render(Json(json!({ "blocked": users })));
    Ok(())
}

/// `GET /api/contacts/requests` → `{"incoming": [...], "outgoing": [...]}` (pending).
#[endpoint(tags("contacts"), responses((status_code = 200, description = "pending requests in and out", body = RequestLists), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn requests(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let (incoming, outgoing) = state(depot)?.storage.contacts.requests(me).await?;
    res.render(Json(json!({ "incoming": incoming, "outgoing": outgoing })));
    Ok(())
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
struct RequestBody {
    /// The user to ask.
    #[salvo(schema(max_length = 32))]
    username: String,
}

/// `POST /api/contacts/requests {username}` → 201 with a new request; 200 if it was
/// pending already, they are contacts already, or the other user had asked first (then
/// the request comes back `accepted`).
#[endpoint(tags("contacts"), request_body = RequestBody, responses((status_code = 201, description = "a new pending request", body = RequestOut), (status_code = 200, description = "already pending, already contacts, or made mutual (accepted)", body = RequestOut), (status_code = 400, description = "invalid JSON, fields or parameters", body = ErrorBody), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 403, description = "not allowed (or a cross-site / CSRF-less cookie request)", body = ErrorBody), (status_code = 404, description = "no such thing, or not yours", body = ErrorBody), (status_code = 409, description = "conflict with the current state", body = ErrorBody), (status_code = 413, description = "body over the limit", body = ErrorBody), (status_code = 415, description = "the body is not application/json", body = ErrorBody), (status_code = 429, description = "rate limited (Retry-After)", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn send_request(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let body: RequestBody = json_body(req, depot).await?;
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    st.contact_limiter.check(&me.to_string()).map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such user");
    let username = Username::parse(&body.username).map_err(|_| not_found())?;
    let target = st.storage.users.find_by_username(&username).await?.ok_or_else(not_found)?;
    let (request, outcome) = st.storage.contacts.request(me, target.id).await?;
    match outcome {
        RequestOutcome::Created => {
            publish(st, ContactChangeKind::Requested, &request).await;
            res.status_code(StatusCode::CREATED);
        }
        RequestOutcome::Accepted => publish(st, ContactChangeKind::Accepted, &request).await,
        RequestOutcome::Unchanged => {}
    }
    res.render(Json(request));
    Ok(())
}

async fn answer(req: &mut Request, depot: &mut Depot, res: &mut Response, yes: bool) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let id = path_uuid(req, "id")?;
    let st = state(depot)?;
    let (request, changed) = st.storage.contacts.answer(me, id, yes).await?;
    if changed {
        publish(st, if yes { ContactChangeKind::Accepted } else { ContactChangeKind::Declined }, &request).await;
    }
    res.render(Json(request));
    Ok(())
}

/// `POST /api/contacts/requests/{id}/accept` → the request, `accepted` (addressee only).
#[endpoint(tags("contacts"), parameters(("id" = String, Path, description = "UUID")), responses((status_code = 200, description = "the request, accepted", body = RequestOut), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 403, description = "not allowed (or a cross-site / CSRF-less cookie request)", body = ErrorBody), (status_code = 404, description = "no such thing, or not yours", body = ErrorBody), (status_code = 409, description = "conflict with the current state", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn accept(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    answer(req, depot, res, true).await
}

/// `POST /api/contacts/requests/{id}/decline` → the request, `declined` (addressee only).
#[endpoint(tags("contacts"), parameters(("id" = String, Path, description = "UUID")), responses((status_code = 200, description = "the request, declined", body = RequestOut), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 403, description = "not allowed (or a cross-site / CSRF-less cookie request)", body = ErrorBody), (status_code = 404, description = "no such thing, or not yours", body = ErrorBody), (status_code = 409, description = "conflict with the current state", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn decline(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    answer(req, depot, res, false).await
}

/// `DELETE /api/contacts/requests/{id}` → the request, `cancelled` (requester only).
#[endpoint(tags("contacts"), parameters(("id" = String, Path, description = "UUID")), responses((status_code = 200, description = "the request, cancelled", body = RequestOut), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 403, description = "not allowed (or a cross-site / CSRF-less cookie request)", body = ErrorBody), (status_code = 404, description = "no such thing, or not yours", body = ErrorBody), (status_code = 409, description = "conflict with the current state", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn cancel(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let id = path_uuid(req, "id")?;
    let st = state(depot)?;
    let (request, changed) = st.storage.contacts.cancel(me, id).await?;
    if changed {
        publish(st, ContactChangeKind::Cancelled, &request).await;
    }
    res.render(Json(request));
    Ok(())
}

/// `DELETE /api/contacts/{user_id}` → 204; the contact is removed (history stays).
#[endpoint(tags("contacts"), parameters(("user_id" = String, Path, description = "the other user's UUID")), responses((status_code = 204, description = "removed"), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 403, description = "not allowed (or a cross-site / CSRF-less cookie request)", body = ErrorBody), (status_code = 404, description = "no such thing, or not yours", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn remove(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let other = UserId(path_uuid(req, "user_id")?);
    let st = state(depot)?;
    let (request, changed) = st.storage.contacts.remove(me, other).await?;
    if changed {
        publish(st, ContactChangeKind::Removed, &request).await;
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `POST /api/contacts/{user_id}/block` → 204.
#[endpoint(tags("contacts"), parameters(("user_id" = String, Path, description = "the other user's UUID")), responses((status_code = 204, description = "blocked"), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 403, description = "not allowed (or a cross-site / CSRF-less cookie request)", body = ErrorBody), (status_code = 404, description = "no such thing, or not yours", body = ErrorBody), (status_code = 409, description = "conflict with the current state", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn block(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let other = UserId(path_uuid(req, "user_id")?);
    let st = state(depot)?;
    if let Some(ended) = st.storage.contacts.block(me, other).await? {
        let kind = match ended.state {
            ContactState::Cancelled => ContactChangeKind::Cancelled,
            ContactState::Declined => ContactChangeKind::Declined,
            _ => ContactChangeKind::Removed,
        };
        publish(st, kind, &ended).await;
    }
    // Uploads under way between the two stop here: the blocked user could otherwise keep
    // putting `transfer` frames (with a name of their choosing) in front of the blocker.
    for t in st.files.fail_between(me, other).await? {
        let event = Event::Transfer { to: t.uploader, progress: (&t).into() };
        if let Err(e) = st.node.ctx.bus.publish(Envelope::new(event)).await {
            tracing::warn!(error = %e, "cannot tell the uploader their upload failed");
        }
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `DELETE /api/contacts/{user_id}/block` → 204.
#[endpoint(tags("contacts"), parameters(("user_id" = String, Path, description = "the other user's UUID")), responses((status_code = 204, description = "unblocked"), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 403, description = "not allowed (or a cross-site / CSRF-less cookie request)", body = ErrorBody), (status_code = 404, description = "no such thing, or not yours", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn unblock(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let other = UserId(path_uuid(req, "user_id")?);
    state(depot)?.storage.contacts.unblock(me, other).await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/users?q=&limit=&cursor=` → `{"users": [{id, username, display_name,
/// relation}], "next_cursor"}`: username or display-name prefix, case-insensitive.
#[endpoint(tags("contacts"), parameters(("q" = String, Query, min_length = 1, max_length = 64, description = "1-64 characters"), ("limit" = Option<u32>, Query, minimum = 1, maximum = 50, description = "1-50, default 20"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page")), responses((status_code = 200, description = "users whose username or display name starts with q", body = SearchPage), (status_code = 400, description = "invalid JSON, fields or parameters", body = ErrorBody), (status_code = 401, description = "no valid session", body = ErrorBody), (status_code = 429, description = "rate limited (Retry-After)", body = ErrorBody), (status_code = 503, description = "storage or a dependency unavailable", body = ErrorBody)))]
async fn search(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    st.search_limiter.check(&me.to_string()).map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
    let q = req.queries().get("q").map(|s| s.trim().to_lowercase()).unwrap_or_default();
    if q.is_empty() || q.chars().count() > 64 || q.chars().any(char::is_control) {
        return Err(AppError::bad_request(ErrorCode::InvalidQuery, "q must be 1 to 64 characters"));
    }
    let limit = match req.queries().get("limit") {
        None => 20,
        Some(v) => v.parse::<u64>().ok().filter(|n| (1..=MAX_SEARCH_PAGE).contains(n)).ok_or_else(|| {
            AppError::bad_request(ErrorCode::InvalidQuery, format!("limit must be 1 to {MAX_SEARCH_PAGE}"))
        })?,
    };
    let cursor = req.queries().get("cursor").map(String::as_str);
    if cursor.is_some_and(|c| c.len() > 64) {
        return Err(AppError::bad_request(ErrorCode::InvalidQuery, "bad cursor"));
    }
    let (users, next) = st.storage.contacts.search(me, &q, limit, cursor).await?;
    res.render(Json(json!({ "users": users, "next_cursor": next })));
    Ok(())
}
