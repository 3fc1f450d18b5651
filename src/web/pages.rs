//! Server-rendered pages (askama, auto-escaped) and the embedded static files.
//!
//! The pages are shells: layout, forms and `<template>` elements rendered here; the page
//! scripts (`static/*.js`) fill them from the REST API and the WebSocket, writing user
//! data only through `textContent`. Every page sets the CSRF cookie and hands its value
//! to the scripts in `<meta name="csrf-token">` (see [`crate::web::csrf`]). Pages that need a
//! signed-in user redirect to `/login` when there is no session cookie; the scripts check
//! the session itself (`GET /api/auth/me`) and go to `/login` on 401. The pages need no
//! database, so the gateway serves them as well as `switchboard all`.
//!
//! Static files are compiled into the binary, so a release binary runs from any
//! directory with no files beside it. Their URLs carry a hash of their contents
//! (`?v=`), so they are cached for a year and a new build is fetched at once.

use std::sync::LazyLock;

use askama::Template;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;
use sha2::{Digest, Sha256};

use crate::error::{AppError, ErrorCode};
use crate::web::csrf;

/// The pages and static files. `cookie_secure` marks the CSRF cookie `Secure`.
pub fn router(cookie_secure: bool) -> Router {
    Router::new()
        .hoop(PageSettings { cookie_secure })
        .push(Router::new().get(index))
        .push(Router::with_path("login").get(login))
        .push(Router::with_path("register").get(register))
        .push(Router::with_path("chat").get(chat))
        .push(Router::with_path("contacts").get(contacts))
        .push(Router::with_path("settings").get(settings))
        .push(Router::with_path("static/{file}").get(static_file))
}

#[derive(Clone, Copy, Debug)]
struct PageSettings {
    cookie_secure: bool,
}

#[async_trait]
impl Handler for PageSettings {
    async fn handle(&self, _req: &mut Request, depot: &mut Depot, _res: &mut Response, _ctrl: &mut FlowCtrl) {
        depot.insert_typed(*self);
    }
}

/// What every page's layout needs.
struct Layout {
    csrf: String,
    assets: &'static str,
    signed_in: bool,
    page: &'static str,
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    l: Layout,
    next: String,
}

#[derive(Template)]
#[template(path = "register.html")]
struct RegisterPage {
    l: Layout,
}

#[derive(Template)]
#[template(path = "chat.html")]
struct ChatPage {
    l: Layout,
}

#[derive(Template)]
#[template(path = "contacts.html")]
struct ContactsPage {
    l: Layout,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    l: Layout,
}

#[derive(Template)]
#[template(path = "not_found.html")]
struct NotFoundPage {
    l: Layout,
}

/// For a browser asking for a page that does not exist (a `GET` that accepts HTML, outside
/// `/api/`, `/ws` and `/static/`), writes an HTML "page not found" into `res` (its status
/// stays 404) and returns true; API clients keep the JSON error.
pub fn html_not_found(req: &Request, res: &mut Response) -> bool {
    let path = req.uri().path();
    let page_like = matches!(*req.method(), salvo::http::Method::GET)
        && !["/api/", "/ws", "/static/"].iter().any(|p| path.starts_with(p))
        && req.headers().get(header::ACCEPT).and_then(|a| a.to_str().ok()).is_some_and(|a| a.contains("text/html"));
    if !page_like {
        return false;
    }
    // No cookie is set here (the router's settings, such as `Secure`, are not known on
    // this path): the page reuses the browser's CSRF token if it has one.
    let csrf = req
        .cookie(csrf::CSRF_COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| v.len() >= 16 && v.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or_default();
    let l = Layout { csrf, assets: &ASSETS_VERSION, signed_in: has_session(req), page: "not-found" };
    render(res, NotFoundPage { l }).is_ok()
}

fn has_session(req: &Request) -> bool {
    crate::auth::routes::has_login_cookie(req)
}

fn layout(req: &Request, depot: &Depot, res: &mut Response, page: &'static str) -> Layout {
    let secure = depot.get_typed::<PageSettings>().map(|s| s.cookie_secure).unwrap_or(false);
    Layout { csrf: csrf::ensure_token(req, res, secure), assets: &ASSETS_VERSION, signed_in: has_session(req), page }
}

fn render(res: &mut Response, page: impl Template) -> Result<(), AppError> {
    let html = page.render().map_err(anyhow::Error::from)?;
    // Pages carry a per-browser CSRF token and the signed-in layout: never cache them.
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res.render(Text::Html(html));
    Ok(())
}

/// `GET /`: the chat when signed in, else the login page.
#[handler]
async fn index(req: &mut Request, res: &mut Response) {
    res.render(Redirect::other(if has_session(req) { "/chat" } else { "/login" }));
}

/// A same-site path to go to after logging in; anything else becomes `/chat`.
fn safe_next(raw: Option<String>) -> String {
    match raw {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.len() <= 512
                && !p.chars().any(|c| c.is_control()) =>
        {
            p
        }
        _ => "/chat".to_owned(),
    }
}

/// Whether the request is from a browser signed in with a login that is still good (its
/// cookies checked against the database, where this process has one: the gateway serving
/// pages alone has none and always shows the form). A revoked or expired login is not
/// signed in, so a page that sent it here to log in again is not sent back.
async fn signed_in(req: &Request, depot: &Depot, res: &mut Response) -> bool {
    match crate::web::state(depot) {
        Ok(st) if has_session(req) => crate::auth::routes::authenticate_request(req, res, st).await.is_ok(),
        _ => false,
    }
}

/// `GET /login?next=/path`: the form, or, signed in already, where `next` says.
#[handler]
async fn login(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let next = safe_next(req.query::<String>("next"));
    if signed_in(req, depot, res).await {
        res.render(Redirect::other(next));
        return Ok(());
    }
    let l = layout(req, depot, res, "login");
    render(res, LoginPage { l: Layout { signed_in: false, ..l }, next })
}

/// `GET /register`: the form, or, signed in already, the chat.
#[handler]
async fn register(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    if signed_in(req, depot, res).await {
        res.render(Redirect::other("/chat"));
        return Ok(());
    }
    let l = layout(req, depot, res, "register");
    render(res, RegisterPage { l: Layout { signed_in: false, ..l } })
}

/// Redirects to the login page (coming back here afterwards) when there is no session.
fn require_session(req: &Request, res: &mut Response, path: &str) -> bool {
    if has_session(req) {
        return true;
    }
    res.render(Redirect::other(format!("/login?next={path}")));
    false
}

/// `GET /chat`: contacts and conversations, the open conversation, the composer.
#[handler]
async fn chat(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    if !require_session(req, res, "/chat") {
        return Ok(());
    }
    let l = layout(req, depot, res, "chat");
    render(res, ChatPage { l })
}

/// `GET /contacts`: search, requests in and out, contacts.
#[handler]
async fn contacts(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    if !require_session(req, res, "/contacts") {
        return Ok(());
    }
    let l = layout(req, depot, res, "contacts");
    render(res, ContactsPage { l })
}

/// `GET /settings`: display name, password, logins, export, delete.
#[handler]
async fn settings(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    if !require_session(req, res, "/settings") {
        return Ok(());
    }
    let l = layout(req, depot, res, "settings");
    render(res, SettingsPage { l })
}

/// `(name, content type, bytes)` of every static file.
const STATIC_FILES: &[(&str, &str, &str)] = &[
    ("style.css", "text/css; charset=utf-8", include_str!("../../static/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../static/app.js")),
    ("auth.js", "text/javascript; charset=utf-8", include_str!("../../static/auth.js")),
    ("chat.js", "text/javascript; charset=utf-8", include_str!("../../static/chat.js")),
    ("contacts.js", "text/javascript; charset=utf-8", include_str!("../../static/contacts.js")),
    ("settings.js", "text/javascript; charset=utf-8", include_str!("../../static/settings.js")),
    ("noble-hashes.js", "text/javascript; charset=utf-8", include_str!("../../static/noble-hashes.js")),
    ("icon.svg", "image/svg+xml", include_str!("../../static/icon.svg")),
];

/// A hash of every static file: part of their URLs, so a new build busts the cache.
static ASSETS_VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut h = Sha256::new();
    for (name, _, body) in STATIC_FILES {
        h.update(name.as_bytes());
        h.update(body.as_bytes());
    }
    h.finalize().iter().take(6).map(|b| format!("{b:02x}")).collect()
});

/// Each static file gzipped (best compression, once, on first use), or `None` where that
/// does not make it smaller. The scripts and the style sheet shrink to about a quarter.
/// (`Bytes`: a response shares the buffer instead of copying it.)
static GZIPPED: LazyLock<Vec<Option<hyper::body::Bytes>>> = LazyLock::new(|| {
    STATIC_FILES
        .iter()
        .map(|(_, _, body)| {
            use std::io::Write;
            let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            z.write_all(body.as_bytes()).ok()?;
            z.finish().ok().filter(|gz| gz.len() < body.len()).map(hyper::body::Bytes::from)
        })
        .collect()
});

/// Whether the request's `Accept-Encoding` allows gzip (RFC 9110, 12.5.3): gzip's own
/// weight if the header names it, else the weight of `*`; weight 0 refuses. No header, or
/// one that names neither, means the content as it is.
fn accepts_gzip(req: &Request) -> bool {
    let (mut gzip, mut any) = (None, None);
    let items = req.headers().get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok());
    for item in items.flat_map(|v| v.split(',')) {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let weight = parts
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
            .map_or(1.0, |(_, q)| q.trim().parse::<f32>().unwrap_or(0.0));
        if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(weight);
        } else if coding == "*" {
            any = Some(weight);
        }
    }
    gzip.or(any).is_some_and(|q| q > 0.0)
}

/// `GET /static/{file}`: one of the embedded files, gzipped when the client accepts it;
/// 404 for any other name (names are looked up, never joined to a path).
#[handler]
async fn static_file(req: &mut Request, res: &mut Response) -> Result<(), AppError> {
    let name = req.param::<String>("file").unwrap_or_default();
    let Some(i) = STATIC_FILES.iter().position(|(n, _, _)| *n == name) else {
        return Err(AppError::not_found(ErrorCode::NotFound, "no such file"));
    };
    let (_, ctype, body) = STATIC_FILES[i];
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    let versioned = req.query::<String>("v").is_some_and(|v| v == *ASSETS_VERSION);
    let cache = if versioned { "public, max-age=31536000, immutable" } else { "no-cache" };
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    res.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    let written = match GZIPPED.get(i).and_then(Option::as_ref) {
        Some(gz) if accepts_gzip(req) => {
            res.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            res.write_body(gz.clone())
        }
        _ => res.write_body(body),
    };
    written.map_err(|e| AppError::Internal(anyhow::anyhow!("write body: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{accepts_gzip, safe_next};

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/contacts".into())), "/contacts");
        assert_eq!(safe_next(Some("//evil.example/x".into())), "/chat");
        assert_eq!(safe_next(Some("/\\evil.example".into())), "/chat");
        assert_eq!(safe_next(Some("https://evil.example".into())), "/chat");
        assert_eq!(safe_next(Some("/x\ny".into())), "/chat");
        assert_eq!(safe_next(None), "/chat");
    }

    #[test]
    fn gzip_only_when_the_client_takes_it() {
        let with = |v: &str| {
            let mut req = salvo::Request::new();
            req.headers_mut().insert(salvo::http::header::ACCEPT_ENCODING, v.parse().expect("header"));
            accepts_gzip(&req)
        };
        assert!(with("gzip"));
        assert!(with("br, gzip;q=0.5"));
        assert!(with("GZIP"));
        assert!(with("*"));
        assert!(!with("gzip;q=0"));
        assert!(!with("gzip;Q=0"), "the weight's name is case-insensitive");
        assert!(!with("gzip;q=0, *"), "* covers only codings not named");
        assert!(!with("*, gzip;q=0"));
        assert!(with("identity;q=0.5, *;q=0.1"));
        assert!(!with("*;q=0"));
        assert!(with("x-gzip"));
        assert!(!with("br, deflate"));
        assert!(!with("identity"));
        assert!(!accepts_gzip(&salvo::Request::new()));
    }
}
