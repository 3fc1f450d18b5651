//! The web pages and the CSRF guard, over plain HTTP (the browser tests in
//! tests/browser drive the same pages in real Chromium).

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};

use crate::helpers::{Api, PASSWORD, TestApp, spawn_app};

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder().redirect(Policy::none()).build().unwrap()
}

/// The value of cookie `name` in a response's `Set-Cookie` headers.
fn set_cookie(r: &reqwest::Response, name: &str) -> Option<(String, String)> {
    r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        let (pair, attrs) = c.split_once(';').unwrap_or((c, ""));
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| (v.trim().to_owned(), attrs.to_owned()))
    })
}

/// Logs `username` in as a browser would: the session cookie, and the CSRF cookie and
/// token a page hands out. → (session cookie, csrf token)
async fn browser_login(app: &TestApp, username: &str) -> (String, String) {
    let r = app.login(username, PASSWORD).await;
    let (session, _) = set_cookie(&r, "sb_session").expect("session cookie");
    let page = no_redirects().get(app.url("/login")).send().await.unwrap();
    let (csrf, attrs) = set_cookie(&page, "sb_csrf").expect("csrf cookie");
    assert!(attrs.contains("HttpOnly") && attrs.contains("SameSite=Strict"), "{attrs}");
    let html = page.text().await.unwrap();
    assert!(
        html.contains(&format!("<meta name=\"csrf-token\" content=\"{csrf}\">")),
        "the page hands the token to its scripts"
    );
    (session, csrf)
}

#[tokio::test]
async fn pages_need_a_session_and_go_back_after_login() {
    let app = spawn_app().await;
    let http = no_redirects();
    for (path, to) in [("/", "/login"), ("/chat", "/login?next=/chat"), ("/contacts", "/login?next=/contacts")] {
        let r = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::SEE_OTHER, "{path}");
        assert_eq!(r.headers()["location"], to, "{path}");
    }
    for path in ["/login", "/register"] {
        let r = http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store");
    }
    app.signup("alice").await;
    let (session, _) = browser_login(&app, "alice").await;
    let r = http.get(app.url("/chat")).header("cookie", format!("sb_session={session}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let html = r.text().await.unwrap();
    assert!(html.contains("id=\"composer\"") && html.contains("/static/chat.js?v="), "the chat page");
}

#[tokio::test]
async fn login_next_is_escaped_and_stays_on_this_site() {
    let app = spawn_app().await;
    let http = no_redirects();
    let html = |next: &'static str| {
        let http = http.clone();
        let url = app.url("/login");
        async move { http.get(url).query(&[("next", next)]).send().await.unwrap().text().await.unwrap() }
    };
    let page = html("/x\"><script>alert(1)</script>").await;
    assert!(!page.contains("<script>alert(1)"), "the parameter is escaped");
    assert!(page.contains("data-next=\"/x&#34;&#62;&#60;script&#62;"), "{page}");
    for away in ["https://evil.example/", "//evil.example/", "/\\evil.example"] {
        assert!(html(away).await.contains("data-next=\"/chat\""), "{away} is not followed");
    }
}

#[tokio::test]
async fn hole_cross_site_request_forgery_with_the_session_cookie() {
    let app = spawn_app().await;
    app.signup("alice").await;
    app.signup("bob").await;
    let (session, csrf) = browser_login(&app, "alice").await;
    let request = |cookies: String, header: Option<&str>, origin: Option<&str>| {
        let mut r = app
            .client()
            .post(app.url("/api/contacts/requests"))
            .header("cookie", cookies)
            .json(&json!({"username": "bob"}));
        if let Some(h) = header {
            r = r.header("x-csrf-token", h);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let code = |r: reqwest::Response| async move {
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        (status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
    };
    let both = format!("sb_session={session}; sb_csrf={csrf}");

    // A form or fetch from another site carries the cookies but cannot know the token.
    let r = request(both.clone(), None, None).await.unwrap();
    assert_eq!(code(r).await, (StatusCode::FORBIDDEN, "csrf_token_invalid".into()));
    let r = request(both.clone(), Some("guessed-guessed-guessed-guessed!"), None).await.unwrap();
    assert_eq!(code(r).await, (StatusCode::FORBIDDEN, "csrf_token_invalid".into()));
    let r = request(format!("sb_session={session}"), Some(&csrf), None).await.unwrap();
    assert_eq!(code(r).await, (StatusCode::FORBIDDEN, "csrf_token_invalid".into()), "token without its cookie");
    // Another site's Origin is refused even with the token (and for logins: no login CSRF).
    let r = request(both.clone(), Some(&csrf), Some("https://evil.example")).await.unwrap();
    assert_eq!(code(r).await, (StatusCode::FORBIDDEN, "cross_site_request".into()));
    let r = app
        .client()
        .post(app.url("/api/auth/login"))
        .header("origin", "https://evil.example")
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await, (StatusCode::FORBIDDEN, "cross_site_request".into()));
    let bob =
        app.login("bob", PASSWORD).await.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let requests: Value = app.get_json("/api/contacts/requests", &bob).await;
    assert_eq!(requests["incoming"], json!([]), "nothing was done by the refused requests");

    // Our own page: same origin, the token from its meta tag.
    let own = format!("http://{}", app.addr);
    let r = request(both, Some(&csrf), Some(&own)).await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // Bearer clients have no ambient credentials: no token needed.
    let r = app
        .client()
        .post(app.url("/api/contacts/requests"))
        .bearer_auth(&bob)
        .json(&json!({"username": "alice"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "bob's request makes them contacts");
}

#[tokio::test]
async fn static_files_are_cached_by_content_version() {
    let app = spawn_app().await;
    let page = no_redirects().get(app.url("/login")).send().await.unwrap().text().await.unwrap();
    let version =
        page.split("/static/app.js?v=").nth(1).and_then(|r| r.split('"').next()).expect("versioned script").to_owned();
    let r = app.client().get(app.url(&format!("/static/app.js?v={version}"))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["cache-control"], "public, max-age=31536000, immutable");
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/javascript"));
    let r = app.client().get(app.url("/static/app.js?v=old")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-cache", "an old version is not cached for a year");
    for script in ["app.js", "chat.js", "contacts.js", "auth.js"] {
        let body = app.client().get(app.url(&format!("/static/{script}"))).send().await.unwrap().text().await.unwrap();
        assert!(!body.contains("innerHTML") && !body.contains("insertAdjacentHTML"), "{script} writes no HTML");
    }
}

/// Issue 20: an unknown page showed raw JSON in the browser. A browser now gets an HTML
/// page (still 404) with a way back; API clients keep the JSON error.
#[tokio::test]
async fn an_unknown_page_is_an_html_page_for_browsers_and_json_for_the_api() {
    let app = spawn_app().await;
    let get = |path: &str, accept: &str| app.client().get(app.url(path)).header("accept", accept.to_owned()).send();
    let r = get("/no-such-page", "text/html,application/xhtml+xml,*/*;q=0.8").await.expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    assert!(r.headers().get("set-cookie").is_none(), "no cookie from a 404 page");
    let html = r.text().await.unwrap();
    assert!(html.contains("Page not found") && html.contains("href=\"/\""), "{html}");
    for (path, accept) in
        [("/api/no-such-thing", "text/html"), ("/no-such-page", "application/json"), ("/static/nope.js", "text/html")]
    {
        let r = get(path, accept).await.expect("sent");
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = r.json().await.expect("a JSON error");
        assert_eq!(body["error"]["code"], "not_found", "{path}");
    }
}

#[tokio::test]
async fn the_login_and_register_pages_say_what_switchboard_is() {
    let app = spawn_app().await;
    for path in ["/login", "/register"] {
        let html = app.client().get(app.url(path)).send().await.unwrap().text().await.unwrap();
        assert!(html.contains("class=\"tagline\"") && html.contains("one-to-one chat"), "{path}");
    }
}
