//! Regression tests named after holes that chat servers of this design commonly ship
//! with. Each fails if its guard is removed. (More live beside the features they guard:
//! `messaging::outsiders_cannot_read_or_write_a_conversation`,
//! `auth::*::invalid_expired_and_foreign_tokens_are_refused`,
//! `auth::*::token_works_until_logout_revokes_it`,
//! `messaging::websocket_needs_a_valid_token_and_a_trusted_origin_for_cookies`,
//! `files::hole_path_traversal_through_file_names_and_other_bad_uploads`,
//! `files::hole_uploads_that_grow_memory_without_bound_200_mib_across_a_restart_and_a_killed_actor`,
//! `pages::hole_cross_site_request_forgery_with_the_session_cookie`,
//! `notifications::a_user_only_ever_sees_their_own_notifications`, and, in the browser
//! tests, `hole: stored XSS through message bodies and display names` with file names in
//! the file test.)

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use switchboard::auth::tokens::{Claims, TokenKeys};
use switchboard::config::Secret;

use crate::helpers::{Api, PASSWORD, TEST_JWT_SECRET, spawn_app, spawn_app_with};
use crate::notifications::SseReader;
use crate::ws_client::{Client, alice_and_bob, connect_with, user};

#[tokio::test]
async fn hole_identity_taken_from_a_client_sent_field() {
    let app = spawn_app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let alice_id = app.me(&alice).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let (mallory, _) = user(&app, "mallory").await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    let mut mallory_ws = Client::connect(&app, &mallory).await;
    // Mallory claims to be Alice in every field a careless server might trust.
    mallory_ws
        .send(json!({"type": "send", "client_msg_id": "spoof", "to_user_id": bob_id, "body": "I am Alice",
                     "sender_id": alice_id, "user_id": alice_id, "from": alice_id}))
        .await;
    let answer = loop {
        let f = mallory_ws.read_one(Duration::from_secs(10)).await.expect("an answer");
        if f["type"] == "error" || f["type"] == "ack" {
            break f;
        }
    };
    assert_eq!(
        (answer["type"].as_str(), answer["code"].as_str(), answer["ref"].as_str()),
        (Some("error"), Some("forbidden"), Some("spoof")),
        "refused: Mallory is not Bob's contact, whoever she claims to be: {answer}"
    );
    // And in the query string of the REST API.
    let me = app.get_json(&format!("/api/auth/me?user_id={alice_id}&sender_id={alice_id}"), &mallory).await;
    assert_eq!(me["username"], "mallory");
    let convs = app.get_json(&format!("/api/conversations?user_id={alice_id}"), &mallory).await;
    assert_eq!(convs["conversations"], json!([]));
    // Bob got nothing from "Alice". Sentinel: the real Alice messages Bob now. Had the
    // spoof been accepted, its message would have been published before Mallory got her
    // answer (a room publishes, then answers), so before the sentinel was even sent; and
    // on one node every event for Bob goes into his session's mailbox inside `publish`,
    // first in first out, and his session queues them to his socket in that order. So anything the spoof caused reaches Bob before the sentinel does.
    let mut alice_ws = Client::connect(&app, &alice).await;
    alice_ws.send_to_user("sentinel", &bob_id, "the real alice").await;
    alice_ws.read_until("the sentinel's ack", |c| c.acks.contains_key("sentinel")).await;
    let sentinel = alice_ws.acks["sentinel"].0.clone();
    bob_ws.read_until("the sentinel", |c| c.messages.contains_key(&sentinel)).await;
    assert_eq!(bob_ws.messages.keys().collect::<Vec<_>>(), [&sentinel], "bob got only the real alice's message");
}

#[tokio::test]
async fn hole_rpc_reply_delivered_to_the_wrong_requester() {
    let app = spawn_app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let alice_id = app.me(&alice).await.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    // Both use the same client_msg_ids at the same time: each ack goes to its own sender,
    // naming its own message.
    for i in 0..50 {
        alice_ws.send_to_user(&format!("same-{i}"), &bob_id, &format!("from alice {i}")).await;
        bob_ws.send_to_user(&format!("same-{i}"), &alice_id, &format!("from bob {i}")).await;
    }
    for c in [&mut alice_ws, &mut bob_ws] {
        c.read_until("50 acks and 100 messages", |c| c.acks.len() == 50 && c.messages.len() == 100).await;
    }
    let bodies = |c: &Client| c.acks.values().map(|(id, _)| id.clone()).collect::<std::collections::HashSet<String>>();
    let (a, b) = (bodies(&alice_ws), bodies(&bob_ws));
    assert!(a.is_disjoint(&b), "no ack names the other requester's message");
    let conv = alice_ws.by_seq.keys().next().unwrap();
    let history = app.get_json(&format!("/api/conversations/{conv}/messages?limit=500"), &alice).await;
    for m in history["messages"].as_array().unwrap() {
        let id = m["id"].as_str().unwrap();
        let mine = if m["sender_id"] == alice_id.as_str() { &a } else { &b };
        assert!(mine.contains(id), "message {id} was acked to its own sender");
    }
}

#[tokio::test]
async fn hole_cors_that_accepts_any_site_with_cookies() {
    let app = spawn_app().await;
    let (alice, _, _) = alice_and_bob(&app).await;
    for (method, path) in [("GET", "/api/auth/me"), ("OPTIONS", "/api/auth/me"), ("GET", "/api/contacts")] {
        let r = app
            .client()
            .request(method.parse().unwrap(), app.url(path))
            .bearer_auth(&alice)
            .header("origin", "https://evil.example")
            .header("access-control-request-method", "GET")
            .send()
            .await
            .unwrap();
        for h in ["access-control-allow-origin", "access-control-allow-credentials"] {
            assert!(r.headers().get(h).is_none(), "{method} {path} answered {h} to another site");
        }
    }
}

#[tokio::test]
async fn hole_token_without_expiry() {
    let app = spawn_app().await;
    let (alice, _, _) = alice_and_bob(&app).await;
    // Alice's own valid token, re-signed with the server's key but without `exp`.
    let payload = alice.split('.').nth(1).unwrap();
    let mut claims: Value = serde_json::from_slice(&base64url(payload)).unwrap();
    claims.as_object_mut().unwrap().remove("exp");
    let key = jsonwebtoken::EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes());
    let forever = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap();
    let r = app.me(&forever).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "a token without expiry is refused");
    assert_eq!(app.me(&alice).await.status(), StatusCode::OK, "the same claims with exp pass");
}

/// Decodes unpadded base64url (a JWT segment).
fn base64url(s: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => panic!("not base64url: {c}"),
    };
    let mut out = vec![];
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        acc = (acc << 6) | u32::from(value(c));
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[tokio::test]
async fn hole_unbounded_connections_per_user() {
    let app =
        crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |c| c.messaging.max_connections_per_user = 2)
            .await;
    let (alice, _) = user(&app, "alice").await;
    let (bob, _) = user(&app, "bob").await;
    let mut first = Client::connect(&app, &alice).await;
    let _second = Client::connect(&app, &alice).await;
    let bearer = |t: &str| {
        let h = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
        move |r: &mut tokio_tungstenite::tungstenite::handshake::client::Request| {
            r.headers_mut().insert("authorization", h);
        }
    };
    let third = crate::ws_client::connect_with(app.addr, bearer(&alice)).await;
    assert_eq!(third.err(), Some(429), "a third socket of the same user is refused");
    // Other users are not affected, and a closed socket frees its place.
    let _bob = Client::connect(&app, &bob).await;
    first.ws.close(None).await.unwrap();
    drop(first);
    crate::helpers::eventually("the place of the closed socket to be free again", async || {
        crate::ws_client::connect_with(app.addr, bearer(&alice)).await.ok()
    })
    .await;
}

/// Every thing Alice and Bob own, tried by Mallory by id: 404 (existence not revealed) or
/// 403, never their data.
#[tokio::test]
async fn hole_reading_another_users_data_by_id() {
    use sha2::{Digest, Sha256};
    let app = spawn_app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let (mallory, _) = user(&app, "mallory").await;
    let mut a = Client::connect(&app, &alice).await;
    a.send_to_user("secret", &bob_id, "for bob only").await;
    let conv = a.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    // A finished file and a pending upload in their conversation.
    let data = b"private bytes".to_vec();
    let sha: String = Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect();
    let create = |name: &str| {
        app.client()
            .post(app.url("/api/transfers"))
            .bearer_auth(&alice)
            .json(&json!({"conversation_id": conv, "name": name, "size": data.len(), "sha256": sha}))
            .send()
    };
    let done: Value = create("a.txt").await.unwrap().json().await.unwrap();
    let pending: Value = create("b.txt").await.unwrap().json().await.unwrap();
    let done_id = done["id"].as_str().unwrap();
    let r = app
        .client()
        .put(app.url(&format!("/api/transfers/{done_id}/chunks/0")))
        .bearer_auth(&alice)
        .header("x-chunk-sha256", &sha)
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let file_id = crate::helpers::eventually("the file to be stored", async || {
        let t = app.get_json(&format!("/api/transfers/{done_id}"), &alice).await;
        t["file_id"].as_str().map(str::to_owned)
    })
    .await;
    // A notification of Bob's, and a request of Mallory's own to use as a control.
    // (An unread one: the contact request Bob answered is read already.)
    let note_id = crate::helpers::eventually("an unread notification of bob's", || async {
        let notes = app.get_json("/api/notifications?unread=true", &bob).await;
        notes["notifications"][0]["id"].as_str().map(str::to_owned)
    })
    .await;
    let carol = app.signup("carol").await;
    let req: Value = app
        .client()
        .post(app.url("/api/contacts/requests"))
        .bearer_auth(&carol)
        .json(&json!({"username": "bob"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let req_id = req["id"].as_str().unwrap();

    let gets = [
        format!("/api/conversations/{conv}/messages"),
        format!("/api/transfers/{done_id}"),
        format!("/api/transfers/{}", pending["id"].as_str().unwrap()),
        format!("/api/files/{file_id}"),
    ];
    for path in &gets {
        let r = app.get_as(path, &mallory).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "GET {path}");
        assert!(!r.text().await.unwrap().contains("for bob only"));
    }
    let posts = [
        format!("/api/notifications/{note_id}/read"),
        format!("/api/contacts/requests/{req_id}/accept"),
        format!("/api/contacts/requests/{req_id}/decline"),
    ];
    for path in &posts {
        let r = app.client().post(app.url(path)).bearer_auth(&mallory).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "POST {path}");
    }
    let r = app
        .client()
        .delete(app.url(&format!("/api/contacts/requests/{req_id}")))
        .bearer_auth(&mallory)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // Mallory's own lists hold nothing of theirs; Bob's notification is still unread and
    // Carol's request still pending.
    for path in ["/api/conversations", "/api/contacts", "/api/contacts/requests", "/api/notifications"] {
        let body = app.get_json(path, &mallory).await.to_string();
        assert!(!body.contains(&conv) && !body.contains(&note_id) && !body.contains(req_id), "{path}: {body}");
    }
    let bob_notes = app.get_json("/api/notifications", &bob).await;
    let target = bob_notes["notifications"].as_array().unwrap().iter().find(|n| n["id"] == note_id.as_str());
    assert_eq!(target.map(|n| &n["read"]), Some(&Value::Bool(false)), "{bob_notes}");
    let bob_requests = app.get_json("/api/contacts/requests", &bob).await;
    assert_eq!(bob_requests["incoming"][0]["state"], "pending");
    // The owners themselves can (the 404s above are about who asks).
    assert_eq!(app.get_as(&format!("/api/files/{file_id}"), &bob).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn hole_logout_that_does_not_revoke() {
    let app = spawn_app().await;
    let token = app.signup("alice").await;
    let other: Value = app.login("alice", crate::helpers::PASSWORD).await.json().await.unwrap();
    let other = other["access_token"].as_str().unwrap().to_owned();
    let r = app.client().post(app.url("/api/auth/logout")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.me(&token).await.status(), StatusCode::UNAUTHORIZED, "REST refuses the token at once");
    let bearer = format!("Bearer {token}");
    let ws = crate::ws_client::connect_with(app.addr, |r| {
        r.headers_mut().insert("authorization", bearer.parse().unwrap());
    })
    .await;
    assert_eq!(ws.err(), Some(401), "so does the WebSocket");
    assert_eq!(app.me(&other).await.status(), StatusCode::OK, "the user's other session lives on");
}

/// There is no way to set a password without the current one: no reset endpoint that
/// trusts a user id, username or e-mail, and nothing under /api/users changes passwords.
#[tokio::test]
async fn hole_password_reset_without_proof() {
    let app = spawn_app().await;
    let (alice, alice_id) = user(&app, "alice").await;
    let (mallory, _) = user(&app, "mallory").await;
    let attempt = json!({"username": "alice", "user_id": alice_id, "password": "mallory-chose-this", "new_password": "mallory-chose-this"});
    for path in [
        "/api/auth/reset",
        "/api/auth/password-reset",
        "/api/auth/password",
        "/api/users/password",
        &format!("/api/users/{alice_id}"),
    ] {
        for method in ["POST", "PUT", "PATCH"] {
            let r = app
                .client()
                .request(method.parse().unwrap(), app.url(path))
                .bearer_auth(&mallory)
                .json(&attempt)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_client_error(), "{method} {path}: {}", r.status());
        }
    }
    assert_eq!(app.login("alice", "mallory-chose-this").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("alice", crate::helpers::PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(app.me(&alice).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn hole_crash_on_a_malformed_id_or_an_empty_conversation() {
    let app = spawn_app().await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    // Accepting made their conversation; it has no messages yet.
    let convs = app.get_json("/api/conversations", &alice).await;
    let conv = convs["conversations"][0]["id"].as_str().expect("the new contacts' conversation").to_owned();
    assert_eq!(convs["conversations"][0]["last_message"], Value::Null);
    let page = app.get_json(&format!("/api/conversations/{conv}/messages"), &alice).await;
    assert_eq!((page["messages"].clone(), page["last_seq"].clone()), (json!([]), json!(0)));
    let page = app.get_json(&format!("/api/conversations/{conv}/messages?before_seq=1&limit=1"), &alice).await;
    assert_eq!(page["messages"], json!([]));
    for id in ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "%00", "..%2f..%2fetc", &"9".repeat(5000), "😀"]
    {
        for path in [
            format!("/api/conversations/{id}/messages"),
            format!("/api/transfers/{id}"),
            format!("/api/files/{id}"),
            format!("/api/contacts/{id}/block"),
        ] {
            let r = app.get_as(&path, &alice).await;
            assert!(r.status().is_client_error(), "GET {path}: {}", r.status());
        }
        for path in [format!("/api/notifications/{id}/read"), format!("/api/contacts/requests/{id}/accept")] {
            let r = app.client().post(app.url(&path)).bearer_auth(&alice).send().await.unwrap();
            assert!(r.status().is_client_error(), "POST {path}: {}", r.status());
        }
    }
    // And over the socket: an error frame each (a malformed id is a malformed frame; a
    // well-formed id of no conversation is not found), then chat as usual. A sync naming
    // such a conversation is malformed, or names a conversation the caller is not in
    // (ignored: nothing to send).
    let mut a = Client::connect(&app, &alice).await;
    for (i, (bad, send_code, sync_code)) in [
        ("not-a-uuid", "invalid_frame", Some("invalid_frame")),
        ("00000000-0000-0000-0000-000000000000", "not_found", None),
        ("", "invalid_frame", Some("invalid_frame")),
    ]
    .into_iter()
    .enumerate()
    {
        let cid = format!("bad{i}");
        a.send(json!({"type": "send", "client_msg_id": cid, "conversation_id": bad, "body": "x"})).await;
        let e = a.next_of("error").await;
        assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some(send_code), Some(cid.as_str())), "{bad:?}: {e}");
        a.others.clear();
        a.send(json!({"type": "sync", "id": format!("sync{i}"), "since": {bad: 0}})).await;
        a.read_until("an answer to the sync", |c| {
            c.others.iter().any(|f| f["type"] == "sync_done" || f["type"] == "error")
        })
        .await;
        let answer = a.others.iter().find(|f| f["type"] == "sync_done" || f["type"] == "error").unwrap();
        match sync_code {
            Some(code) => assert_eq!(
                (answer["code"].as_str(), answer["ref"].as_str()),
                (Some(code), Some(format!("sync{i}").as_str())),
                "{bad:?}: {answer}"
            ),
            None => assert_eq!((answer["type"].as_str(), answer["messages"].as_u64()), (Some("sync_done"), Some(0))),
        }
        a.others.clear();
    }
    a.send_to_user("ok", &bob_id, "still here").await;
    assert_eq!(a.next_of("ack").await["seq"], 1);
    let health = app.client().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// A fresh access token of `username` (another login session: another device).
pub async fn login_token(api: &impl Api, username: &str) -> String {
    let r = api.login(username, PASSWORD).await;
    assert_eq!(r.status(), StatusCode::OK, "login {username}");
    r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned()
}

/// Sends one message and waits for its ack (the socket serves its user).
async fn acked(ws: &mut Client, cid: &str, to: &str) {
    ws.send_to_user(cid, to, cid).await;
    ws.read_until(&format!("the ack of {cid}"), |c| c.acks.contains_key(cid)).await;
}

/// Issue 16, hole 2: a WebSocket or notification stream opened before logout kept
/// working after it (a send was acked, the stream carried the next notification).
#[tokio::test]
async fn hole_logout_leaves_open_sockets_and_streams_working() {
    let app = spawn_app().await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let laptop = login_token(&app, "alice").await;
    let mut ws = Client::connect(&app, &alice).await;
    let mut ws_laptop = Client::connect(&app, &laptop).await;
    let mut stream = SseReader::open(&app, &alice, None).await;
    let mut stream_laptop = SseReader::open(&app, &laptop, None).await;
    // Attached once the first `unread` (sent after the stored notifications) is in.
    for s in [&mut stream, &mut stream_laptop] {
        while s.next().await.expect("the stream is attached").0 != "unread" {}
    }
    acked(&mut ws, "before", &bob_id).await;

    assert_eq!(app.logout(&alice).await.status(), StatusCode::NO_CONTENT);
    let closed = ws.closed_within(Duration::from_secs(10)).await;
    assert_eq!(closed, Some((4001, "logged out".to_owned())), "the socket closes with the logout code");
    assert!(
        ws.others.iter().any(|f| f["type"] == "error" && f["code"] == "session_revoked"),
        "the client is told why: {:?}",
        ws.others
    );
    assert!(stream.ends_within(Duration::from_secs(10)).await, "the notification stream ends");
    // Reconnecting with the revoked token is refused, on both doors.
    let auth = format!("Bearer {alice}");
    let refused = connect_with(app.addr, |r| {
        r.headers_mut().insert("authorization", auth.parse().unwrap());
    })
    .await;
    assert_eq!(refused.err(), Some(401));
    let r = app.get_as("/api/notifications/stream", &alice).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The other login (the laptop) is untouched: its socket still sends, its stream still
    // carries notifications.
    acked(&mut ws_laptop, "after", &bob_id).await;
    assert!(ws_laptop.closed.is_none());
    assert!(!stream_laptop.ends_within(Duration::from_millis(500)).await, "the laptop's stream stays open");
}

/// Issue 16, hole 2 (expiry): a connection outlived its token's `exp`. Since issue 19 a
/// connection outlives its short-lived access token on purpose (renewal must not drop the
/// chat, `accounts::a_login_outlives_its_access_tokens_and_sockets_stay_open`), but never
/// its login: at the login's absolute end the socket closes with 4002 and the stream ends.
#[tokio::test]
async fn hole_connections_outlive_their_token() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| {
        c.messaging.heartbeat_secs = 1;
        c.messaging.idle_timeout_secs = 60;
        c.auth.session_idle_secs = 4;
        c.auth.session_max_secs = 4;
    })
    .await;
    let (_, _bob, bob_id) = alice_and_bob(&app).await;
    let short = login_token(&app, "alice").await;
    let mut ws = Client::connect(&app, &short).await;
    let mut stream = SseReader::open(&app, &short, None).await;
    acked(&mut ws, "while-valid", &bob_id).await;
    let closed = ws.closed_within(Duration::from_secs(15)).await;
    assert_eq!(closed, Some((4002, "login expired".to_owned())));
    assert!(stream.ends_within(Duration::from_secs(10)).await, "the stream ends with its login");
    // The login is over: its token no longer opens anything.
    let refused = connect_with(app.addr, |r| {
        r.headers_mut().insert("authorization", format!("Bearer {short}").parse().unwrap());
    })
    .await;
    assert_eq!(refused.err(), Some(401));
    // A new login connects.
    let fresh = login_token(&app, "alice").await;
    let mut again = Client::connect(&app, &fresh).await;
    acked(&mut again, "fresh", &bob_id).await;
}

/// Starts an in-process gateway in front of `app` with `tweak` applied; returns its
/// address (it stops with the test's runtime).
async fn gateway_for(
    app: &crate::helpers::TestApp,
    tweak: impl FnOnce(&mut switchboard::config::Config),
) -> std::net::SocketAddr {
    let upstream = vec![format!("http://{}", app.addr)];
    let mut config = switchboard::config::Config { listen: "127.0.0.1:0".parse().unwrap(), ..app.config.clone() };
    config.gateway.auth = upstream.clone();
    config.gateway.messaging = upstream.clone();
    config.gateway.notify = upstream;
    tweak(&mut config);
    let gateway = switchboard::gateway::Gateway::build(config).await.expect("gateway builds");
    let addr = gateway.local_addr();
    tokio::spawn(gateway.run_until_stopped(std::future::pending()));
    addr
}

/// A login through `gateway` from the client address `from` (set by a stand-in TLS
/// proxy on 127.0.0.1 in `X-Forwarded-For`).
async fn login_from(gateway: std::net::SocketAddr, from: &str, username: &str, password: &str) -> StatusCode {
    reqwest::Client::new()
        .post(format!("http://{gateway}/api/auth/login"))
        .header("x-forwarded-for", from)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Issue 16, hole 3: behind a TLS proxy every client is the proxy's one address, so one
/// client's failed logins (or requests) used up everyone's budget.
#[tokio::test]
async fn hole_one_client_behind_a_tls_proxy_blocks_logins_for_everyone() {
    let local: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| {
        c.auth.login_per_ip_per_minute = 3;
        c.trusted_proxies = vec![local]; // the gateway
    })
    .await;
    user(&app, "alice").await;
    // The stand-in TLS proxy is 127.0.0.1, trusted by the gateway.
    let gateway = gateway_for(&app, |c| {
        c.gateway.trusted_proxies = vec![local];
        c.gateway.requests_per_ip_per_minute = 10;
    })
    .await;
    // Mallory, at 203.0.113.66, guesses until she is held back...
    let mut statuses = vec![];
    for _ in 0..4 {
        statuses.push(login_from(gateway, "203.0.113.66", "alice", "wrong password!").await);
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
    // ...and Alice, at another address behind the same proxy, logs in.
    assert_eq!(login_from(gateway, "198.51.100.7", "alice", PASSWORD).await, StatusCode::OK);
    // A spoofed address left of the real one changes nothing for Mallory.
    assert_eq!(
        login_from(gateway, "198.51.100.99, 203.0.113.66", "alice", "wrong password!").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The edge limit is per client too: Mallory uses up hers, Alice's is untouched.
    let health = |from: &'static str| async move {
        reqwest::Client::new()
            .get(format!("http://{gateway}/healthz"))
            .header("x-forwarded-for", from)
            .send()
            .await
            .unwrap()
            .status()
    };
    let mut last = StatusCode::OK;
    for _ in 0..10 {
        last = health("203.0.113.66").await;
    }
    assert_eq!(last, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(health("198.51.100.7").await, StatusCode::OK);

    // A gateway that does not trust its peer ignores the header: a client cannot pick a
    // fresh address per request to escape the limit.
    let strict = gateway_for(&app, |c| c.gateway.requests_per_ip_per_minute = 3).await;
    let mut statuses = vec![];
    for i in 0..5 {
        let r = reqwest::Client::new()
            .get(format!("http://{strict}/healthz"))
            .header("x-forwarded-for", format!("192.0.2.{i}"))
            .send()
            .await
            .unwrap();
        statuses.push(r.status());
    }
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
}

/// Issue 16, hole 6: alternating `active: true/false` was never throttled: 600 frames
/// became 600 `typing` frames at the peer (each a permission check and a publish).
#[tokio::test]
async fn hole_alternating_typing_frames_pass_the_throttle() {
    let app = spawn_app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    alice_ws.send_to_user("open", &bob_id, "open").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    bob_ws.next_of("message").await;
    let started = std::time::Instant::now();
    for i in 0..600 {
        alice_ws.send(json!({"type": "typing", "conversation_id": conv, "active": i % 2 == 0})).await;
    }
    for _ in 0..100 {
        alice_ws.send(json!({"type": "typing", "conversation_id": conv, "active": true})).await;
    }
    // A message sent after the typing frames reaches Bob after every typing event they
    // caused (same session, same mailbox, in order): then count.
    alice_ws.send_to_conv("after", &conv, "after").await;
    bob_ws.read_until("the message after the typing frames", |c| c.messages.len() == 2).await;
    let secs = started.elapsed().as_secs() + 1;
    let typing: Vec<&Value> = bob_ws.others.iter().filter(|f| f["type"] == "typing").collect();
    assert!(!typing.is_empty(), "typing still reaches the peer");
    assert_eq!(typing[0]["active"], true);
    // At most one "started" and one "stopped" per second per conversation.
    assert!(typing.len() as u64 <= 2 * secs, "{} typing frames in {secs} s reached Bob", typing.len());
    // Only changes of state: never the same state twice in a row, except "started" again
    // after a second.
    for pair in typing.windows(2) {
        assert!(pair[0]["active"] != pair[1]["active"] || pair[1]["active"] == true, "{pair:?}");
    }
}

/// A login to `app` from the client address `from` (the app trusts loopback as its proxy).
async fn login_direct_from(app: &crate::helpers::TestApp, from: &str, password: &str) -> StatusCode {
    app.client()
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", from)
        .json(&json!({"username": "alice", "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Issue 16, hole 7: the per-username login limit counted everyone's attempts, so ten
/// wrong logins for a name locked its owner out (429 on the correct password).
#[tokio::test]
async fn hole_anyone_can_lock_a_chosen_user_out() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| {
        c.auth.login_per_username_per_minute = 3;
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    user(&app, "alice").await;
    // Mallory fails from one address until she is held back...
    let mut statuses = vec![];
    for _ in 0..5 {
        statuses.push(login_direct_from(&app, "203.0.113.5", "wrong password!").await);
    }
    assert_eq!(statuses[..3], [StatusCode::UNAUTHORIZED; 3], "{statuses:?}");
    assert_eq!(statuses[3..], [StatusCode::TOO_MANY_REQUESTS; 2], "{statuses:?}");
    // ...and from 30 more (the per-username ceiling is 10 x 3 failures).
    for i in 0..30 {
        login_direct_from(&app, &format!("192.0.2.{i}"), "wrong password!").await;
    }
    // Concurrent guesses from a fresh address cannot all pass one check: each attempt
    // holds its place before the (slow) password hash.
    let guesses = (0..20).map(|_| login_direct_from(&app, "203.0.113.200", "wrong password!"));
    let statuses = futures_util::future::join_all(guesses).await;
    let tried = statuses.iter().filter(|s| **s == StatusCode::UNAUTHORIZED).count();
    assert!(tried <= 1, "only one guess from a fresh address past the ceiling: {statuses:?}");
    // An address that has failed is now held back at once, even with one failure...
    assert_eq!(login_direct_from(&app, "192.0.2.0", "wrong password!").await, StatusCode::TOO_MANY_REQUESTS);
    // ...while Alice, from an address that has not failed, logs in.
    assert_eq!(login_direct_from(&app, "198.51.100.7", PASSWORD).await, StatusCode::OK);
}

/// Issue 16, hole 8: notification streams per user were unbounded (200 concurrent SSE
/// streams accepted; chat sockets are capped at 32). They share the cap now.
#[tokio::test]
async fn hole_unbounded_notification_streams_per_user() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| c.messaging.max_connections_per_user = 4).await;
    let (alice, _) = user(&app, "alice").await;
    let mut open = vec![];
    for _ in 0..4 {
        open.push(SseReader::open(&app, &alice, None).await);
    }
    let r = app.get_as("/api/notifications/stream", &alice).await;
    assert_eq!(crate::helpers::error_code(r, StatusCode::TOO_MANY_REQUESTS).await, "too_many_connections");
    // Another user is not affected, and a closed stream gives its place back.
    let (bob, _) = user(&app, "bob").await;
    let _bob_stream = SseReader::open(&app, &bob, None).await;
    drop(open.pop());
    let reopened = crate::helpers::eventually("a closed stream's place to be given back", || async {
        let r = app.get_as("/api/notifications/stream", &alice).await;
        (r.status() == StatusCode::OK).then_some(r)
    })
    .await;
    drop(reopened);
}

/// Issue 18 review: a user could open and drop chat sockets in a loop (1,925 in 10 s on
/// one node), each a session start with its reads and a bus directory write. Opens are
/// rate-limited per user: past the burst the handshake is refused (429 `rate_limited`,
/// with `Retry-After`), and notification streams count against the same budget. Other
/// users are not affected.
#[tokio::test]
async fn hole_sockets_opened_in_a_loop() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| c.messaging.opens_per_minute = 3).await;
    let (alice, _) = user(&app, "alice").await;
    for _ in 0..2 {
        // Each opens, greets and closes: what a reconnect loop does.
        let mut ws = Client::connect(&app, &alice).await;
        ws.send(json!({"type": "ping"})).await;
        assert_eq!(ws.next_of("pong").await["type"], "pong");
    }
    let _stream = SseReader::open(&app, &alice, None).await;
    // The fourth open in the minute: a socket, then a stream, both refused.
    let header = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(&format!("Bearer {alice}")).unwrap();
    let fourth = crate::ws_client::connect_with(app.addr, |r| {
        r.headers_mut().insert("authorization", header);
    })
    .await;
    assert_eq!(fourth.err(), Some(429), "a socket past the burst is refused");
    let r = app.get_as("/api/notifications/stream", &alice).await;
    let retry_after: u64 = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a Retry-After header");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    assert_eq!(crate::helpers::error_code(r, StatusCode::TOO_MANY_REQUESTS).await, "rate_limited");
    // A page on another site, with Bob's cookie, neither opens his stream nor spends his
    // budget; his own pages and bearer clients do.
    let (bob, _) = user(&app, "bob").await;
    for _ in 0..5 {
        let r = app
            .client()
            .get(app.url("/api/notifications/stream"))
            .header("cookie", format!("sb_session={bob}"))
            .header("origin", "https://evil.example")
            .send()
            .await
            .expect("sent");
        assert_eq!(crate::helpers::error_code(r, StatusCode::FORBIDDEN).await, "origin_not_allowed");
    }
    let mut ws = Client::connect(&app, &bob).await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_of("pong").await["type"], "pong");
}

/// Issue 16, hole 9: the data directory was world-readable (0755, and the database, with
/// password hashes and every message, and the stored files 0644).
#[cfg(unix)]
#[tokio::test]
async fn hole_the_data_directory_is_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    // A data directory the server creates itself (a temporary directory is 0700 already).
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| c.data_dir = c.data_dir.join("data")).await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let mut ws = Client::connect(&app, &alice).await;
    ws.send_to_user("hello", &bob_id, "hello").await;
    let conv_id = ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = app.config.data_dir.as_path();
    assert_eq!(mode(dir), 0o700, "the data directory");
    let mut checked = 0;
    for name in ["switchboard.db", "switchboard.db-wal", "switchboard.db-shm", "jwt.key"] {
        let p = dir.join(name);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{name}");
            checked += 1;
        }
    }
    assert!(checked >= 2, "the database and its WAL exist");
    // A stored file's bytes.
    let size = 10u64;
    let data = vec![7u8; 10];
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(&data).iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let r = app
        .client()
        .post(app.url("/api/transfers"))
        .bearer_auth(&alice)
        .json(&json!({"conversation_id": conv_id, "name": "f.bin", "size": size, "sha256": sha}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned();
    let r = app
        .client()
        .put(app.url(&format!("/api/transfers/{id}/chunks/0")))
        .bearer_auth(&alice)
        .header("x-chunk-sha256", &sha)
        .body(data)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let blob = dir.join("files/blobs").join(&sha[..2]).join(&sha);
    crate::helpers::eventually("the file to be stored", || async { blob.exists().then_some(()) }).await;
    assert_eq!(mode(&blob), 0o600, "a stored file");
}

/// Issue 16, hole 10: `sync` frames were not rate-limited, and each can replay a user's
/// whole history from the database.
#[tokio::test]
async fn hole_sync_frames_are_not_rate_limited() {
    let app = spawn_app().await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let mut ws = Client::connect(&app, &alice).await;
    acked(&mut ws, "one", &bob_id).await;
    let started = std::time::Instant::now();
    for i in 0..40 {
        ws.send(json!({"type": "sync", "id": format!("s{i}"), "since": {}})).await;
    }
    let (mut done, mut limited) = (0u64, 0u64);
    while done + limited < 40 {
        let f = ws.read_one(crate::ws_client::FRAME_TIMEOUT).await.expect("an answer to every sync");
        match f["type"].as_str() {
            Some("sync_done") => done += 1,
            Some("error") => {
                assert_eq!(
                    (f["code"].as_str(), f["ref"].as_str().map(|r| r.starts_with('s'))),
                    (Some("rate_limited"), Some(true)),
                    "{f}"
                );
                limited += 1;
            }
            _ => {}
        }
    }
    // A burst of 10, then one a second.
    let allowed = 10 + started.elapsed().as_secs() + 1;
    assert!(done >= 1 && done <= allowed, "{done} syncs served ({limited} refused)");
    assert!(limited >= 40 - allowed, "{limited} refused");
}

/// Issue 16, hole 11: names accepted Unicode format characters (bidi overrides such as
/// U+202E, zero-width characters): `invoice\u{202E}fdp.exe` shows as `invoiceexe.pdf`.
#[tokio::test]
async fn hole_names_with_bidi_overrides_and_invisible_characters() {
    let app = spawn_app().await;
    for (i, name) in ["invoice\u{202E}fdp.exe", "ad\u{200B}min", "\u{2067}x\u{2069}", "a\u{FEFF}"].iter().enumerate() {
        let r = app
            .post_json(
                "/api/auth/register",
                &json!({"username": format!("u{i}x"), "password": PASSWORD, "display_name": name}),
            )
            .await;
        assert_eq!(crate::helpers::error_code(r, StatusCode::BAD_REQUEST).await, "invalid_display_name", "{name:?}");
    }
    // Joiners that real names and emoji need still pass.
    let r = app
        .post_json(
            "/api/auth/register",
            &json!({"username": "dev", "password": PASSWORD, "display_name": "👩\u{200D}💻 Dev"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    // File names.
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let mut ws = Client::connect(&app, &alice).await;
    ws.send_to_user("hello", &bob_id, "hello").await;
    let conv = ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    for name in ["invoice\u{202E}fdp.exe", "a\u{2060}.txt", "x\u{E0041}.png"] {
        let r = app
            .client()
            .post(app.url("/api/transfers"))
            .bearer_auth(&alice)
            .json(&json!({"conversation_id": conv, "name": name, "size": 1, "sha256": "ab".repeat(32)}))
            .send()
            .await
            .unwrap();
        assert_eq!(crate::helpers::error_code(r, StatusCode::BAD_REQUEST).await, "invalid_name", "{name:?}");
    }
}

/// Issue 16, hole 2 (review): a revocation event can be missed (the publisher's broker
/// link was down). When a node's link comes back it re-checks the logins of its sockets
/// and streams against the database, and closes the revoked ones.
#[tokio::test]
async fn hole_a_missed_revocation_leaves_connections_open() {
    let app = spawn_app().await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let mut ws = Client::connect(&app, &alice).await;
    let mut stream = SseReader::open(&app, &alice, None).await;
    while stream.next().await.expect("the stream is attached").0 != "unread" {}
    acked(&mut ws, "before", &bob_id).await;
    // Revoked in the database only: no event reaches the node.
    let keys = TokenKeys::new(&Secret::new(TEST_JWT_SECRET));
    let claims: Claims = keys.verify(&alice).expect("our own token");
    let db = switchboard::storage::connect(&app.config.database_url()).await.unwrap();
    switchboard::auth::sessions::SessionRepo::new(db)
        .revoke(claims.jti, chrono::Utc::now().timestamp_millis())
        .await
        .unwrap();
    acked(&mut ws, "unnoticed", &bob_id).await; // nothing told the socket yet
    // The node's broker link "comes back": it re-checks.
    switchboard_actors::bridge::resync_sessions(&app.node.ctx.node_id);
    assert_eq!(ws.closed_within(Duration::from_secs(10)).await, Some((4001, "logged out".to_owned())));
    assert!(stream.ends_within(Duration::from_secs(10)).await, "the stream ends too");
}

/// Issue 16, hole 9 (review): a database URL in the `sqlite:path` form (no `//`) was
/// created world-readable.
#[cfg(unix)]
#[tokio::test]
async fn hole_a_database_named_without_slashes_is_world_readable() {
    use std::os::unix::fs::PermissionsExt;
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| {
        let path = c.data_dir.join("elsewhere.db");
        c.database_url = Some(Secret::new(format!("sqlite:{}?mode=rwc", path.display())));
    })
    .await;
    user(&app, "alice").await;
    let db = app.config.data_dir.join("elsewhere.db");
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
}
