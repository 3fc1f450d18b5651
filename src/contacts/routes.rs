//! `/api/contacts*` and `/api/users` (search): parse, call [`super::service`], shape.
//! [`ContactError`] becomes an HTTP error here, in one place.

use salvo::prelude::*;

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::routes::{caller, json_body, require_auth};
use crate::contacts::repo::{ContactError, ContactRequest, ContactView, RequestOutcome, RequestView, SearchHit};
use crate::domain::UserId;
use crate::error::{AppError, ErrorCode};
use crate::web::openapi::errors;
use crate::web::state;

#[derive(Serialize, ToSchema)]
struct ContactList {
    contacts: Vec<ContactView>,
}

#[derive(Serialize, ToSchema)]
struct BlockedList {
    /// `since`: when the block was made.
    blocked: Vec<ContactView>,
}

#[derive(Serialize, ToSchema)]
struct RequestLists {
    incoming: Vec<RequestView>,
    outgoing: Vec<RequestView>,
}

#[derive(Serialize, ToSchema)]
struct SearchPage {
    users: Vec<SearchHit>,
    next_cursor: Option<String>,
}

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

fn path_uuid(req: &Request, key: &str) -> Result<Uuid, AppError> {
    req.param::<String>(key)
        .and_then(|s| Uuid::parse_str(&s).ok())
        .ok_or_else(|| AppError::not_found(ErrorCode::NotFound, "no such user or request"))
}

/// `GET /api/contacts` → `{"contacts": [{user, since}]}`.
#[endpoint(
    operation_id = "contacts.list",
    tags("contacts"),
    responses(
        (status_code = 200, description = "accepted contacts", body = ContactList),
        errors::Unauthenticated,
        errors::Unavailable,
    ),
)]
async fn list(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let contacts = state(depot)?.contacts.contacts(me).await?;
    res.render(Json(ContactList { contacts }));
    Ok(())
}

/// `GET /api/contacts/blocked` → `{"blocked": [{user, since}]}`: the users the caller
/// blocked, newest first (so the UI can lift a block).
#[endpoint(
    operation_id = "contacts.blocked",
    tags("contacts"),
    responses(
        (status_code = 200, description = "users you blocked", body = BlockedList),
        errors::Unauthenticated,
        errors::Unavailable,
    ),
)]
async fn blocked(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let users = state(depot)?.contacts.blocked(me).await?;
    res.render(Json(BlockedList { blocked: users }));
    Ok(())
}

/// `GET /api/contacts/requests` → `{"incoming": [...], "outgoing": [...]}` (pending).
#[endpoint(
    operation_id = "contacts.requests",
    tags("contacts"),
    responses(
        (status_code = 200, description = "pending requests in and out", body = RequestLists),
        errors::Unauthenticated,
        errors::Unavailable,
    ),
)]
async fn requests(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let (incoming, outgoing) = state(depot)?.contacts.requests(me).await?;
    res.render(Json(RequestLists { incoming, outgoing }));
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
#[endpoint(
    operation_id = "contacts.send_request",
    tags("contacts"),
    request_body = RequestBody,
    responses(
        (status_code = 201, description = "a new pending request", body = ContactRequest),
        (status_code = 200, description = "already pending, already contacts, or made mutual (accepted)", body = ContactRequest),
        errors::BadInput,
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Conflict,
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn send_request(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let body: RequestBody = json_body(req, depot).await?;
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    st.contact_limiter.check(&me.to_string()).map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
    let (request, outcome) = st.contacts.request(me, &body.username).await.map_err(|e| match e {
        ContactError::NotFound => AppError::not_found(ErrorCode::NotFound, "no such user"),
        e => e.into(),
    })?;
    if outcome == RequestOutcome::Created {
        res.status_code(StatusCode::CREATED);
    }
    res.render(Json(request));
    Ok(())
}

async fn answer(req: &mut Request, depot: &mut Depot, res: &mut Response, yes: bool) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let id = path_uuid(req, "id")?;
    let request = state(depot)?.contacts.answer(me, id, yes).await?;
    res.render(Json(request));
    Ok(())
}

/// `POST /api/contacts/requests/{id}/accept` → the request, `accepted` (addressee only).
#[endpoint(
    operation_id = "contacts.accept",
    tags("contacts"),
    parameters(
        ("id" = String, Path, description = "UUID"),
    ),
    responses(
        (status_code = 200, description = "the request, accepted", body = ContactRequest),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Conflict,
        errors::Unavailable,
    ),
)]
async fn accept(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    answer(req, depot, res, true).await
}

/// `POST /api/contacts/requests/{id}/decline` → the request, `declined` (addressee only).
#[endpoint(
    operation_id = "contacts.decline",
    tags("contacts"),
    parameters(
        ("id" = String, Path, description = "UUID"),
    ),
    responses(
        (status_code = 200, description = "the request, declined", body = ContactRequest),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Conflict,
        errors::Unavailable,
    ),
)]
async fn decline(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    answer(req, depot, res, false).await
}

/// `DELETE /api/contacts/requests/{id}` → the request, `cancelled` (requester only).
#[endpoint(
    operation_id = "contacts.cancel",
    tags("contacts"),
    parameters(
        ("id" = String, Path, description = "UUID"),
    ),
    responses(
        (status_code = 200, description = "the request, cancelled", body = ContactRequest),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Conflict,
        errors::Unavailable,
    ),
)]
async fn cancel(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let id = path_uuid(req, "id")?;
    let request = state(depot)?.contacts.cancel(me, id).await?;
    res.render(Json(request));
    Ok(())
}

/// `DELETE /api/contacts/{user_id}` → 204; the contact is removed (history stays).
#[endpoint(
    operation_id = "contacts.remove",
    tags("contacts"),
    parameters(
        ("user_id" = String, Path, description = "the other user's UUID"),
    ),
    responses(
        (status_code = 204, description = "removed"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Unavailable,
    ),
)]
async fn remove(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let other = UserId(path_uuid(req, "user_id")?);
    state(depot)?.contacts.remove(me, other).await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `POST /api/contacts/{user_id}/block` → 204.
#[endpoint(
    operation_id = "contacts.block",
    tags("contacts"),
    parameters(
        ("user_id" = String, Path, description = "the other user's UUID"),
    ),
    responses(
        (status_code = 204, description = "blocked"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Conflict,
        errors::Unavailable,
    ),
)]
async fn block(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let other = UserId(path_uuid(req, "user_id")?);
    state(depot)?.contacts.block(me, other).await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `DELETE /api/contacts/{user_id}/block` → 204.
#[endpoint(
    operation_id = "contacts.unblock",
    tags("contacts"),
    parameters(
        ("user_id" = String, Path, description = "the other user's UUID"),
    ),
    responses(
        (status_code = 204, description = "unblocked"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Unavailable,
    ),
)]
async fn unblock(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let other = UserId(path_uuid(req, "user_id")?);
    state(depot)?.contacts.unblock(me, other).await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/users?q=&limit=&cursor=` → `{"users": [{id, username, display_name,
/// relation}], "next_cursor"}`: username or display-name prefix, case-insensitive.
#[endpoint(
    operation_id = "contacts.search",
    tags("contacts"),
    parameters(
        ("q" = String, Query, min_length = 1, max_length = 64, description = "1-64 characters"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 50, description = "1-50, default 20"),
        ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
    ),
    responses(
        (status_code = 200, description = "users whose username or display name starts with q", body = SearchPage),
        errors::BadInput,
        errors::Unauthenticated,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
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
    let (users, next) = st.contacts.search(me, &q, limit, cursor).await?;
    res.render(Json(SearchPage { users, next_cursor: next }));
    Ok(())
}
