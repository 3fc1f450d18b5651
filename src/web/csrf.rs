//! Cross-site request forgery guard, on every service's router.
//!
//! A browser sends the session cookie with any request to our origin, including one a
//! page on another site makes it send. So every state-changing request (any method but
//! GET, HEAD, OPTIONS):
//!
//! 1. is refused if it carries an `Origin` that is neither our own host nor one of
//!    `messaging.allowed_origins` (browsers send `Origin` on every cross-origin POST and
//!    on every `fetch`);
//! 2. when it is authenticated by the session cookie (no `Authorization` header), must
//!    carry the `X-CSRF-Token` header equal to the `sb_csrf` cookie (double submit: a
//!    page on another site can neither read our cookie nor set a custom header on a
//!    cross-site request without a CORS grant, which we never give).
//!
//! Bearer-token clients are not affected: their token is not ambient. The pages set the
//! `sb_csrf` cookie and put its value in `<meta name="csrf-token">` for the page scripts.
//!
//! Why not salvo's own `csrf` feature (salvo-csrf): it covers rule 2 only, a token from a
//! header, form or JSON body checked against a proof it keeps in a cookie or session, for
//! POST, PATCH, PUT and DELETE, with a skipper per request (bearer clients could be skipped
//! with one). It has no origin rule, so rule 1 would stay here anyway. It would also add a
//! cipher dependency (bcrypt, HMAC, AES-GCM or ChaCha20-Poly1305) and the code that
//! issues its tokens. Double submit needs only a random cookie value, compared in
//! constant time. Rule 2 here is about forty lines, with tests
//! (`tests/integration/pages.rs`), so it is kept.

use salvo::http::Method;
use salvo::http::cookie::{Cookie, SameSite};
use salvo::http::header;
use salvo::prelude::*;

use crate::config::Config;
use crate::error::{AppError, ErrorCode};
use crate::web::state;

/// The double-submit cookie (HttpOnly: the pages hand its value to their scripts).
pub const CSRF_COOKIE: &str = "sb_csrf";
/// The header a cookie-authenticated state-changing request must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Whether the request's `Origin` (if any) is our own host or an allowed origin. Requests
/// without `Origin` (non-browser clients, same-origin GETs) pass.
pub fn origin_allowed(req: &Request, config: &Config) -> bool {
    let Some(origin) = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return true;
    };
    if config.messaging.allowed_origins.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let origin_host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or_default();
    !host.is_empty() && origin_host.eq_ignore_ascii_case(host)
}

/// For the long-lived connections a page opens with its cookie (the chat socket, the
/// notification stream): 403 `origin_not_allowed` when the request carries the cookie
/// rather than a bearer token and comes from an origin that may not open `what`. A page
/// on another site must not read them, nor spend the user's budget of opens.
pub fn connection_origin(req: &Request, config: &Config, what: &str) -> Result<(), AppError> {
    let by_cookie = req.headers().get(header::AUTHORIZATION).is_none();
    if by_cookie && !origin_allowed(req, config) {
        return Err(AppError::Forbidden {
            code: ErrorCode::OriginNotAllowed,
            message: format!("this origin may not open the {what}"),
        });
    }
    Ok(())
}

/// Hoop: refuses cross-site and token-less cookie requests that change state (403).
#[handler]
pub async fn csrf_guard(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return;
    }
    let verdict = match state(depot) {
        Err(e) => Err(e),
        Ok(st) => check(req, &st.config),
    };
    if let Err(e) = verdict {
        e.write(req, depot, res).await;
        ctrl.skip_rest();
    }
}

fn check(req: &Request, config: &Config) -> Result<(), AppError> {
    if !origin_allowed(req, config) {
        return Err(AppError::forbidden(ErrorCode::CrossSiteRequest, "requests from another site are refused"));
    }
    if req.headers().contains_key(header::AUTHORIZATION) {
        return Ok(());
    }
    // Either login cookie authenticates a request (the refresh cookie renews the access
    // cookie in passing), so either one makes it a cookie request.
    if !crate::auth::routes::has_login_cookie(req) {
        return Ok(());
    }
    let expected = req.cookie(CSRF_COOKIE).map(|c| c.value()).unwrap_or_default();
    let given = req.headers().get(CSRF_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if expected.len() < 16 || !constant_time_eq(expected.as_bytes(), given.as_bytes()) {
        return Err(AppError::forbidden(
            ErrorCode::CsrfTokenInvalid,
            "missing or wrong X-CSRF-Token header (reload the page)",
        ));
    }
    Ok(())
}

/// Whether `a` and `b` are equal, in time that does not depend on where they differ.
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The request's CSRF token, or a new one set as a cookie on `res`. Pages call this and
/// put the value in their `<meta name="csrf-token">`.
pub fn ensure_token(req: &Request, res: &mut Response, secure: bool) -> String {
    if let Some(c) = req.cookie(CSRF_COOKIE)
        && c.value().len() >= 16
        && c.value().bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return c.value().to_owned();
    }
    let token = new_token();
    res.add_cookie(
        Cookie::build((CSRF_COOKIE, token.clone()))
            .http_only(true)
            .same_site(SameSite::Strict)
            .secure(secure)
            .path("/")
            .build(),
    );
    token
}

fn new_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..32).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_in_full() {
        assert!(constant_time_eq(b"abcdef", b"abcdef"));
        assert!(!constant_time_eq(b"abcdef", b"abcdeg"));
        assert!(!constant_time_eq(b"abcdef", b"abcde"));
        assert!(!constant_time_eq(b"", b"x"));
        let t = new_token();
        assert_eq!(t.len(), 32);
        assert_ne!(t, new_token());
    }
}
