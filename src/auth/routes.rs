//! `/api/auth/*`: register, login, refresh, logout, the caller's account (name,
//! password) and logins (list, end); and the [`require_auth`] hoop.

use salvo::http::cookie::{Cookie, SameSite};
use salvo::http::header;
use salvo::prelude::*;

use serde::Deserialize;

use crate::auth::service::LoginOutcome;
use crate::auth::sessions::LoginInfo;
use crate::auth::users::User;
use crate::auth::{AuthUser, REFRESH_COOKIE, SESSION_COOKIE};
use crate::error::{AppError, ErrorCode};
use crate::web::openapi::{ErrorBody, errors};
use crate::web::state;

pub fn router() -> Router {
    Router::with_path("api/auth")
        .push(Router::with_path("register").post(register))
        .push(Router::with_path("login").post(login))
        .push(Router::with_path("refresh").post(refresh))
        .push(Router::with_path("logout").hoop(require_auth).post(logout))
        .push(
            Router::with_path("me")
                .hoop(require_auth)
                .get(me)
                .patch(update_me)
                .delete(delete_me)
                .push(Router::with_path("export").get(export_me)),
        )
        .push(Router::with_path("password").hoop(require_auth).post(change_password))
        .push(
            Router::with_path("sessions")
                .hoop(require_auth)
                .get(sessions)
                .delete(end_other_sessions)
                .push(Router::with_path("{id}").delete(end_session)),
        )
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
struct RegisterBody {
    /// 3-32 of `a-z 0-9 _ . -`, case-insensitive.
    #[salvo(schema(min_length = 3, max_length = 32, pattern = r"^[A-Za-z0-9_.\-]{3,32}$"))]
    username: String,
    /// 8-1024 bytes.
    #[salvo(schema(min_length = 8, max_length = 1024))]
    password: String,
    /// 1-64 characters after trimming, no control characters; defaults to the username.
    #[serde(default)]
    #[salvo(schema(min_length = 1, max_length = 64))]
    display_name: Option<String>,
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
struct RefreshBody {
    /// The login's `refresh_token`; browsers leave it out and send their refresh cookie.
    #[serde(default)]
    #[salvo(schema(max_length = 128))]
    refresh_token: Option<String>,
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
struct PasswordBody {
    #[salvo(schema(max_length = 1024))]
    current_password: String,
    /// 8-1024 bytes.
    #[salvo(schema(min_length = 8, max_length = 1024))]
    new_password: String,
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
struct DeleteAccountBody {
    /// The account's password, as proof.
    #[salvo(schema(max_length = 1024))]
    password: String,
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
struct ProfileBody {
    /// 1-64 characters after trimming, no control characters.
    #[salvo(schema(min_length = 1, max_length = 64))]
    display_name: String,
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
struct LoginBody {
    #[salvo(schema(max_length = 32))]
    username: String,
    #[salvo(schema(max_length = 1024))]
    password: String,
}

/// Parses a JSON body within the configured size limit.
pub async fn json_body<T: serde::de::DeserializeOwned>(req: &mut Request, depot: &Depot) -> Result<T, AppError> {
    let limit = state(depot)?.config.limits.max_json_body_bytes;
    req.parse_json_with_max_size::<T>(limit).await.map_err(|e| AppError::from_parse(e, limit))
}

/// The client's address: the peer's, or, when the peer is a trusted proxy (the gateway,
/// and any proxy in front of it), the right-most address in `X-Forwarded-For` that no
/// trusted proxy wrote (see [`crate::net`]).
pub fn client_ip(req: &Request, config: &crate::config::Config) -> Option<std::net::IpAddr> {
    let peer = req.remote_addr().ip()?;
    let forwarded = crate::net::forwarded_header(req.headers());
    Some(crate::net::client_addr(peer, forwarded.as_deref(), &config.trusted_proxies))
}

/// `POST /api/auth/register` → 201 with the new user.
#[endpoint(
    operation_id = "auth.register",
    tags("auth"),
    request_body = RegisterBody,
    responses(
        (status_code = 201, description = "the new user", body = User),
        errors::BadInput,
        errors::NotAllowed,
        (status_code = 409, description = "username taken", body = ErrorBody),
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn register(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let body: RegisterBody = json_body(req, depot).await?;
    let ip = client_ip(req, &state(depot)?.config);
    let user = state(depot)?.auth.register(ip, &body.username, body.password, body.display_name.as_deref()).await?;
    res.status_code(StatusCode::CREATED);
    res.render(Json(user));
    Ok(())
}

/// `POST /api/auth/login` → 200 `{access_token, expires_at, user}` and the session cookie.
#[endpoint(
    operation_id = "auth.login",
    tags("auth"),
    request_body = LoginBody,
    responses(
        (status_code = 200, description = "token, expiry and user; also the session cookie", body = LoginOutcome),
        errors::BadInput,
        (status_code = 401, description = "wrong username or password", body = ErrorBody),
        errors::NotAllowed,
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn login(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let body: LoginBody = json_body(req, depot).await?;
    let ip = client_ip(req, &state(depot)?.config);
    let ua = req.header::<String>(header::USER_AGENT);
    let st = state(depot)?;
    let out = st.auth.login(ip, &body.username, body.password, ua).await?;
    let secure = st.config.auth.cookie_secure;
    set_access_cookie(res, &out, secure);
    if let Some(secret) = &out.refresh_token {
        let max_age = st.auth.login_max_secs();
        res.add_cookie(auth_cookie(REFRESH_COOKIE, secret.clone(), max_age, secure));
    }
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    res.render(Json(out));
    Ok(())
}

/// `POST /api/auth/refresh` → 200 `{access_token, expires_at, session_expires_at, user}`
/// and a new access cookie: a fresh access token for the same login, while it lasts.
#[endpoint(
    operation_id = "auth.refresh",
    tags("auth"),
    request_body = RefreshBody,
    responses(
        (status_code = 200, description = "a new access token for the same login", body = LoginOutcome),
        errors::BadInput,
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::TooLarge,
        errors::NotJson,
        errors::Unavailable,
    ),
)]
async fn refresh(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let body: RefreshBody = json_body(req, depot).await?;
    let token = body
        .refresh_token
        .or_else(|| req.cookie(REFRESH_COOKIE).map(|c| c.value().to_owned()))
        .ok_or_else(|| AppError::unauthorized(ErrorCode::InvalidToken, "refresh_token required"))?;
    let st = state(depot)?;
    let (_, out) = st.auth.refresh(&token).await?;
    set_access_cookie(res, &out, st.config.auth.cookie_secure);
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    res.render(Json(out));
    Ok(())
}

/// `POST /api/auth/logout` → 204; the token is revoked and the cookie cleared.
#[endpoint(
    operation_id = "auth.logout",
    tags("auth"),
    responses(
        (status_code = 204, description = "revoked"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::Unavailable,
    ),
)]
async fn logout(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let st = state(depot)?;
    st.auth.logout(who).await?;
    clear_cookies(res, st.config.auth.cookie_secure);
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

fn clear_cookies(res: &mut Response, secure: bool) {
    res.add_cookie(auth_cookie(SESSION_COOKIE, String::new(), 0, secure));
    res.add_cookie(auth_cookie(REFRESH_COOKIE, String::new(), 0, secure));
}

/// `PATCH /api/auth/me {display_name}` → 200 with the user; contacts see the new name.
#[endpoint(
    operation_id = "auth.update_me",
    tags("auth"),
    request_body = ProfileBody,
    responses(
        (status_code = 200, description = "the caller, renamed", body = User),
        errors::BadInput,
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn update_me(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let body: ProfileBody = json_body(req, depot).await?;
    let st = state(depot)?;
    let user = st.auth.set_display_name(who, &body.display_name).await?;
    st.contacts.announce_profile(who.user_id, &user.display_name).await;
    res.render(Json(user));
    Ok(())
}

/// `DELETE /api/auth/me {password}` → 204: the account is deleted (docs/api.md says what
/// stays), every login ends and the cookies are cleared.
#[endpoint(
    operation_id = "auth.delete_me",
    tags("auth"),
    request_body = DeleteAccountBody,
    responses(
        (status_code = 204, description = "deleted"),
        errors::BadInput,
        (status_code = 401, description = "wrong password, or not authenticated", body = ErrorBody),
        errors::NotAllowed,
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn delete_me(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let body: DeleteAccountBody = json_body(req, depot).await?;
    let st = state(depot)?;
    let ip = client_ip(req, &st.config);
    st.auth.check_password(who, ip, body.password).await?;
    st.accounts().delete(who.user_id).await?;
    clear_cookies(res, st.config.auth.cookie_secure);
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/auth/me/export` → the caller's data as one JSON document, streamed.
#[endpoint(
    operation_id = "auth.export_me",
    tags("auth"),
    responses(
        (status_code = 200, description = "profile, contacts, blocks, conversations with their messages (JSON, streamed)"),
        errors::Unauthenticated,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn export_me(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let st = state(depot)?;
    st.export_limiter
        .check(&who.user_id.to_string())
        .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
    let rx = st.accounts().export(who.user_id);
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) });
    let headers = res.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
    headers.insert(
        header::CONTENT_DISPOSITION,
        header::HeaderValue::from_static("attachment; filename=\"switchboard-export.json\""),
    );
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    res.stream(chunks);
    Ok(())
}

/// `POST /api/auth/password {current_password, new_password}` → every other login of the
/// caller ends, and this one gets a new refresh token ([`new_refresh_token`]).
#[endpoint(
    operation_id = "auth.change_password",
    tags("auth"),
    request_body = PasswordBody,
    responses(
        (status_code = 200, description = "changed; the caller's other logins ended; a bearer client's new refresh token", body = RefreshOut),
        (status_code = 204, description = "changed; the caller's other logins ended; a browser's new refresh cookie"),
        errors::BadInput,
        (status_code = 401, description = "wrong current password, or not authenticated", body = ErrorBody),
        errors::NotAllowed,
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn change_password(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let body: PasswordBody = json_body(req, depot).await?;
    let st = state(depot)?;
    let ip = client_ip(req, &st.config);
    st.auth.change_password(who, ip, body.current_password, body.new_password).await?;
    new_refresh_token(req, res, st, who).await
}

/// A new refresh secret for the caller's login (the old one stops working), after a change
/// that must shut out whoever else holds a copy of it. A browser gets it as its refresh
/// cookie (204: its scripts never see it); a bearer client in the body (200).
async fn new_refresh_token(
    req: &Request,
    res: &mut Response,
    st: &crate::web::AppState,
    who: AuthUser,
) -> Result<(), AppError> {
    let token = st.auth.rotate_refresh(who).await?;
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    if req.headers().contains_key(header::AUTHORIZATION) {
        res.render(Json(RefreshOut { refresh_token: token }));
    } else {
        let max_age = st.auth.login_max_secs();
        res.add_cookie(auth_cookie(REFRESH_COOKIE, token, max_age, st.config.auth.cookie_secure));
        res.status_code(StatusCode::NO_CONTENT);
    }
    Ok(())
}

/// The calling login's new refresh token.
#[derive(Debug, serde::Serialize, salvo::oapi::ToSchema)]
struct RefreshOut {
    refresh_token: String,
}

/// `GET /api/auth/sessions` → the caller's valid logins, most recently used first.
#[endpoint(
    operation_id = "auth.sessions",
    tags("auth"),
    responses(
        (status_code = 200, description = "the caller's logins", body = Vec<LoginInfo>),
        errors::Unauthenticated,
        errors::Unavailable,
    ),
)]
async fn sessions(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let list = state(depot)?.auth.sessions(who).await?;
    res.headers_mut().insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    res.render(Json(list));
    Ok(())
}

/// `DELETE /api/auth/sessions/{id}` → 204: that login ends (404 unless it is the caller's).
#[endpoint(
    operation_id = "auth.end_session",
    tags("auth"),
    parameters(("id" = String, Path, description = "the login's id")),
    responses(
        (status_code = 204, description = "ended: its sockets and streams are closed"),
        errors::BadInput,
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Unavailable,
    ),
)]
async fn end_session(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let id = req
        .param::<String>("id")
        .and_then(|s| uuid::Uuid::try_parse(&s).ok())
        .ok_or_else(|| AppError::not_found(ErrorCode::NotFound, "no such session"))?;
    let st = state(depot)?;
    st.auth.end_session(who, crate::domain::SessionId(id)).await?;
    if id == who.session_id.0 {
        clear_cookies(res, st.config.auth.cookie_secure);
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `DELETE /api/auth/sessions`: every login of the caller but this one ends, and this one
/// gets a new refresh token ([`new_refresh_token`]).
#[endpoint(
    operation_id = "auth.end_other_sessions",
    tags("auth"),
    responses(
        (status_code = 200, description = "every other login ended; a bearer client's new refresh token", body = RefreshOut),
        (status_code = 204, description = "every other login ended; a browser's new refresh cookie"),
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::Unavailable,
    ),
)]
async fn end_other_sessions(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let st = state(depot)?;
    st.auth.end_logins(who.user_id, Some(who.session_id)).await?;
    new_refresh_token(req, res, st, who).await
}

/// `GET /api/auth/me` → the caller.
#[endpoint(
    operation_id = "auth.me",
    tags("auth"),
    responses(
        (status_code = 200, description = "the caller", body = User),
        errors::Unauthenticated,
        errors::Unavailable,
    ),
)]
async fn me(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let who = caller(depot)?;
    let user = state(depot)?.auth.me(who).await?;
    res.render(Json(user));
    Ok(())
}

/// The access cookie, living as long as its token.
fn set_access_cookie(res: &mut Response, out: &LoginOutcome, secure: bool) {
    let max_age = (out.expires_at - crate::now_ms()) / 1000;
    res.add_cookie(auth_cookie(SESSION_COOKIE, out.access_token.clone(), max_age, secure));
}

fn auth_cookie(name: &'static str, value: String, max_age_secs: i64, secure: bool) -> Cookie<'static> {
    Cookie::build((name, value))
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(secure)
        .path("/")
        .max_age(salvo::http::cookie::time::Duration::seconds(max_age_secs.max(0)))
        .build()
}

/// The token a request carries: `Authorization: Bearer …` first, else the session cookie.
pub fn request_token(req: &Request) -> Option<String> {
    if let Some(value) = req.headers().get(header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned());
    }
    req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()).filter(|v| !v.is_empty())
}

/// The authenticated caller, put in the depot by [`require_auth`].
pub fn caller(depot: &Depot) -> Result<AuthUser, AppError> {
    depot
        .get_typed::<AuthUser>()
        .copied()
        .map_err(|_| AppError::unauthorized(ErrorCode::InvalidToken, "authentication required"))
}

/// Hoop: 401 unless the request carries a valid, unrevoked token; otherwise the caller
/// goes in the depot as an [`AuthUser`]. A browser whose access cookie has expired is
/// renewed here from its refresh cookie ([`authenticate_request`]).
#[handler]
pub async fn require_auth(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let result = match state(depot) {
        Err(e) => Err(e),
        Ok(st) => authenticate_request(req, res, st).await,
    };
    match result {
        Ok(who) => {
            depot.insert_typed(who);
        }
        Err(e) => {
            e.write(req, depot, res).await;
            ctrl.skip_rest();
        }
    }
}

/// The caller of `req`: by its bearer token if it has one (never renewed here: bearer
/// clients renew with `POST /api/auth/refresh`); else by the access cookie, or, when that
/// is missing or no longer valid, by the refresh cookie, which sets a new access cookie
/// on `res`. So an active browser is never logged out while its login lasts.
pub async fn authenticate_request(
    req: &Request,
    res: &mut Response,
    st: &crate::web::AppState,
) -> Result<AuthUser, AppError> {
    if req.headers().contains_key(header::AUTHORIZATION) {
        let token = request_token(req)
            .ok_or_else(|| AppError::unauthorized(ErrorCode::InvalidToken, "authentication required"))?;
        return st.auth.authenticate(&token).await;
    }
    let access = req.cookie(SESSION_COOKIE).map(|c| c.value().to_owned()).filter(|v| !v.is_empty());
    let secret = req.cookie(REFRESH_COOKIE).map(|c| c.value().to_owned()).filter(|v| !v.is_empty());
    let denied = match access {
        Some(token) => match st.auth.authenticate(&token).await {
            Ok(who) => return Ok(who),
            Err(e) => e,
        },
        None => AppError::unauthorized(ErrorCode::InvalidToken, "authentication required"),
    };
    let Some(secret) = secret else { return Err(denied) };
    match st.auth.refresh(&secret).await {
        Ok((who, out)) => {
            set_access_cookie(res, &out, st.config.auth.cookie_secure);
            Ok(who)
        }
        Err(AppError::Unauthorized { .. }) => Err(denied),
        Err(e) => Err(e),
    }
}

/// Whether the request carries any login cookie (a page shows the signed-in layout).
pub fn has_login_cookie(req: &Request) -> bool {
    [SESSION_COOKIE, REFRESH_COOKIE].iter().any(|n| req.cookie(*n).is_some_and(|c| !c.value().is_empty()))
}
