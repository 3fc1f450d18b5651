//! Health endpoints, the JSON error shape for unknown routes, headers on every response,
//! and the login rate limits.

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Api, Backend, PASSWORD, error_code, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let r = app.client().get(app.url("/healthz")).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["status"], "ok");
    let r = app.client().get(app.url("/readyz")).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.expect("json")["database"], "ok");
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let r = app.client().get(app.url("/api/no/such/thing")).send().await.expect("sent");
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = app.client().get(app.url("/api/auth/login")).send().await.expect("sent");
    assert_eq!(error_code(r, StatusCode::METHOD_NOT_ALLOWED).await, "method_not_allowed");
    let r = app.client().get(app.url("/static/..%2fCargo.toml")).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_are_served_with_security_headers() {
    let app = spawn_app().await;
    let r = app.client().get(app.url("/login")).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let h = r.headers().clone();
    assert!(h["content-type"].to_str().expect("ascii").starts_with("text/html"));
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["x-frame-options"], "DENY");
    let csp = h["content-security-policy"].to_str().expect("ascii");
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
    assert!(r.text().await.expect("body").contains("Switchboard"));
    let r = app.client().get(app.url("/static/style.css")).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["content-type"].to_str().expect("ascii").starts_with("text/css"));
}

#[tokio::test]
async fn static_files_go_gzipped_to_clients_that_accept_it_and_plain_to_others() {
    let app = spawn_app().await;
    for file in ["chat.js", "style.css"] {
        let plain = app.client().get(app.url(&format!("/static/{file}"))).send().await.expect("sent");
        assert_eq!(plain.status(), StatusCode::OK);
        assert!(plain.headers().get("content-encoding").is_none(), "no Accept-Encoding: sent as is");
        assert_eq!(plain.headers()["vary"], "accept-encoding");
        let plain = plain.bytes().await.expect("body");
        let gz = app
            .client()
            .get(app.url(&format!("/static/{file}")))
            .header("accept-encoding", "br;q=1, gzip;q=0.8")
            .send()
            .await
            .expect("sent");
        assert_eq!(gz.headers()["content-encoding"], "gzip");
        let gz = gz.bytes().await.expect("body");
        assert!(gz.len() * 2 < plain.len(), "{file}: {} bytes gzipped, {} plain", gz.len(), plain.len());
        let mut unzipped = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut unzipped).expect("valid gzip");
        assert_eq!(unzipped, plain, "{file}: the same bytes");
        let refused =
            app.client().get(app.url(&format!("/static/{file}"))).header("accept-encoding", "gzip;q=0").send().await;
        assert!(refused.expect("sent").headers().get("content-encoding").is_none(), "q=0 refuses gzip");
    }
}

#[tokio::test]
async fn login_is_rate_limited_per_username_and_per_address() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.auth.login_per_username_per_minute = 3;
        c.auth.login_per_ip_per_minute = 6;
    })
    .await;
    app.register("henry", PASSWORD).await;
    for _ in 0..3 {
        assert_eq!(app.login("henry", "wrong password").await.status(), StatusCode::UNAUTHORIZED);
    }
    // The fourth try for this name is refused even with the right password.
    let r = app.login("henry", PASSWORD).await;
    let retry: u64 = r.headers()["retry-after"].to_str().expect("ascii").parse().expect("seconds");
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(error_code(r, StatusCode::TOO_MANY_REQUESTS).await, "rate_limited");
    // Other names from the same address pass until the per-address budget (6) is spent.
    assert_eq!(app.login("ivan", "wrong password").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("judy", "wrong password").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("kim", "wrong password").await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn registration_is_rate_limited_per_address() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.auth.register_per_ip_per_minute = 2).await;
    assert_eq!(app.register("user1", PASSWORD).await.status(), StatusCode::CREATED);
    assert_eq!(app.register("user2", PASSWORD).await.status(), StatusCode::CREATED);
    assert_eq!(app.register("user3", PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

/// The HTTP layer's own limits: oversized or too many headers get 431 and the connection
/// is closed; a deeply nested JSON body gets 400; the server answers the next request.
#[tokio::test]
async fn oversized_headers_and_deep_json_are_refused_without_harm() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Backend::Sqlite, |c| c.limits.max_header_bytes = 16 * 1024).await;
    let ask = |extra: Vec<u8>| async move {
        let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
        let mut req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
        req.extend(extra);
        req.extend(b"\r\n");
        s.write_all(&req).await.unwrap();
        let mut buf = vec![0; 64];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let header = |n: usize| [b"X-Big: ".to_vec(), vec![b'a'; n], b"\r\n".to_vec()].concat();
    assert!(ask(header(8 * 1024)).await.starts_with("HTTP/1.1 200"), "under limits.max_header_bytes");
    assert!(ask(header(20 * 1024)).await.starts_with("HTTP/1.1 431"), "over limits.max_header_bytes");
    let many: Vec<u8> = (0..500).flat_map(|i| format!("X-{i}: a\r\n").into_bytes()).collect();
    assert!(ask(many).await.starts_with("HTTP/1.1 431"));
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let r = app
        .client()
        .post(app.url("/api/auth/login"))
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_json");
    assert!(ask(vec![]).await.starts_with("HTTP/1.1 200"));
}
