//! `/api/auth/*`: register, login, logout, me; and the [`require_auth`] hoop.

use salvo::http::cookie::{Cookie, SameSite};
use salvo::http::header;
use salvo::prelude::*;

use serde::Deserialize;

use crate::auth::service::LoginOutcome;
use crate::auth::users::User;
use crate::auth::{AuthUser, SESSION_COOKIE};
use crate::error::{AppError, ErrorCode};
use crate::web::openapi::{ErrorBody, errors};
use crate::web::state;

pub fn router() -> Router {
    Router::with_path("api/auth")
        .push(Router::with_path("register").post(register))
        .push(Router::with_path("login").post(login))
        .push(Router::with_path("logout").hoop(require_auth).post(logout))
        .push(Router::with_path("me").hoop(require_auth).get(me))
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
    let max_age = (out.expires_at - crate::now_ms()) / 1000;
    res.add_cookie(session_cookie(out.access_token.clone(), max_age, st.config.auth.cookie_secure));
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
    res.add_cookie(session_cookie(String::new(), 0, st.config.auth.cookie_secure));
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
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

fn session_cookie(value: String, max_age_secs: i64, secure: bool) -> Cookie<'static> {
    Cookie::build((SESSION_COOKIE, value))
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
/// goes in the depot as an [`AuthUser`].
#[handler]
pub async fn require_auth(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    let result = match (request_token(req), state(depot)) {
        (_, Err(e)) => Err(e),
        (None, _) => Err(AppError::unauthorized(ErrorCode::InvalidToken, "authentication required")),
        (Some(token), Ok(st)) => st.auth.authenticate(&token).await,
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
