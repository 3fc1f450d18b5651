//! Accounts and devices (issue 19): password change, the sessions list, renaming,
//! staying signed in (refresh and sliding logins), as a person on several devices would
//! check them.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Api, Backend, PASSWORD, TestApp, error_code, eventually, spawn_app_with};
use crate::notifications::SseReader;
use crate::ws_client::{Client, alice_and_bob, user};

/// A login's answer: `(access token, refresh token, login body)`.
async fn login_as(app: &TestApp, username: &str, password: &str, user_agent: &str) -> (String, String, Value) {
    let r = app
        .client()
        .post(app.url("/api/auth/login"))
        .header("user-agent", user_agent)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK, "login {username}");
    let body: Value = r.json().await.expect("json");
    let access = body["access_token"].as_str().expect("access").to_owned();
    let refresh = body["refresh_token"].as_str().expect("refresh").to_owned();
    (access, refresh, body)
}

async fn send_as(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> reqwest::Response {
    let mut r = app.client().request(method, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    r.send().await.expect("sent")
}

async fn acked(ws: &mut Client, cid: &str, to: &str) {
    ws.send_to_user(cid, to, cid).await;
    ws.read_until(&format!("the ack of {cid}"), |c| c.acks.contains_key(cid)).await;
}

#[tokio::test]
async fn changing_the_password_ends_every_other_login_and_its_connections() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (_, _bob, bob_id) = alice_and_bob(&app).await;
    let (phone, phone_refresh, _) = login_as(&app, "alice", PASSWORD, "phone").await;
    let (laptop, _, _) = login_as(&app, "alice", PASSWORD, "laptop").await;
    let mut ws_laptop = Client::connect(&app, &laptop).await;
    let mut stream_laptop = SseReader::open(&app, &laptop, None).await;
    let mut ws_phone = Client::connect(&app, &phone).await;
    let change = |current: &str, new: &str| {
        send_as(
            &app,
            reqwest::Method::POST,
            "/api/auth/password",
            &phone,
            Some(json!({"current_password": current, "new_password": new})),
        )
    };

    // Wrong current password: 401, nothing changes, every login lives on.
    let r = change("not my password", "a brand new password").await;
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "invalid_credentials");
    // A new password outside the rules: 400.
    assert_eq!(error_code(change(PASSWORD, "short").await, StatusCode::BAD_REQUEST).await, "invalid_password");
    assert_eq!(app.me(&laptop).await.status(), StatusCode::OK);

    let r = change(PASSWORD, "a brand new password").await;
    assert_eq!(r.status(), StatusCode::OK);
    // The phone's login gets a new refresh token: a copy of its old one, wherever it
    // leaked, is dead too.
    let new_refresh = r.json::<Value>().await.expect("json")["refresh_token"].as_str().expect("token").to_owned();
    assert_ne!(new_refresh, phone_refresh);
    let renew = |t: &str| {
        let body = json!({"refresh_token": t});
        let app = &app;
        async move { app.post_json("/api/auth/refresh", &body).await }
    };
    assert_eq!(renew(&phone_refresh).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(renew(&new_refresh).await.status(), StatusCode::OK);
    // The laptop's socket and stream end; its token is refused.
    assert_eq!(ws_laptop.closed_within(Duration::from_secs(10)).await, Some((4001, "logged out".to_owned())));
    assert!(stream_laptop.ends_within(Duration::from_secs(10)).await, "the laptop's stream ends");
    assert_eq!(app.me(&laptop).await.status(), StatusCode::UNAUTHORIZED);
    // The phone, which changed it, goes on.
    assert_eq!(app.me(&phone).await.status(), StatusCode::OK);
    acked(&mut ws_phone, "after-change", &bob_id).await;
    // Only the new password logs in.
    assert_eq!(app.login("alice", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("alice", "a brand new password").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_current_passwords_count_against_the_login_limit() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.auth.login_per_username_per_minute = 3).await;
    let (token, _) = user(&app, "alice").await;
    for _ in 0..3 {
        let r = send_as(
            &app,
            reqwest::Method::POST,
            "/api/auth/password",
            &token,
            Some(json!({"current_password": "a wrong guess", "new_password": "a brand new password"})),
        )
        .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // The next guess, and a login with the right password from the same address, wait.
    let r = send_as(
        &app,
        reqwest::Method::POST,
        "/api/auth/password",
        &token,
        Some(json!({"current_password": PASSWORD, "new_password": "a brand new password"})),
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.login("alice", PASSWORD).await.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_person_lists_their_logins_and_ends_them() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (_, _bob, _) = alice_and_bob(&app).await;
    let (phone, _, _) = login_as(&app, "alice", PASSWORD, "Phone/1.0").await;
    let (laptop, _, _) = login_as(&app, "alice", PASSWORD, "Laptop/2.0").await;
    let (tablet, _, _) = login_as(&app, "alice", PASSWORD, "Tablet/3.0").await;
    let (bobs, _, _) = login_as(&app, "bob", PASSWORD, "Bob's phone").await;

    let list = app.get_json("/api/auth/sessions", &phone).await;
    let list = list.as_array().expect("array");
    let agents: Vec<&str> = list.iter().filter_map(|s| s["user_agent"].as_str()).collect();
    for agent in ["Phone/1.0", "Laptop/2.0", "Tablet/3.0"] {
        assert!(agents.contains(&agent), "{agent} in {agents:?}");
    }
    assert!(!agents.contains(&"Bob's phone"), "only one's own logins: {agents:?}");
    let current: Vec<&Value> = list.iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0]["user_agent"], "Phone/1.0");
    for s in list {
        assert_eq!(s["client_addr"], "127.0.0.1");
        assert!(s["created_at"].as_i64().is_some() && s["last_seen_at"].as_i64().is_some());
        assert!(s["expires_at"].as_i64() > s["last_seen_at"].as_i64());
    }
    let id_of = |agent: &str| {
        list.iter().find(|s| s["user_agent"] == agent).expect("listed")["id"].as_str().expect("id").to_owned()
    };
    let laptop_id = id_of("Laptop/2.0");
    let tablet_id = id_of("Tablet/3.0");
    let bobs_id = app.get_json("/api/auth/sessions", &bobs).await[0]["id"].as_str().expect("id").to_owned();

    // Someone else's login, an unknown id, a malformed one: 404, and Bob's goes on.
    for id in [bobs_id.as_str(), "0190a1b2-0000-7000-8000-000000000000", "not-an-id"] {
        let r = send_as(&app, reqwest::Method::DELETE, &format!("/api/auth/sessions/{id}"), &phone, None).await;
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found", "{id}");
    }
    assert_eq!(app.me(&bobs).await.status(), StatusCode::OK);

    // "Log out" on the laptop's row: its socket closes, its token is refused.
    let mut ws_laptop = Client::connect(&app, &laptop).await;
    let r = send_as(&app, reqwest::Method::DELETE, &format!("/api/auth/sessions/{laptop_id}"), &phone, None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(ws_laptop.closed_within(Duration::from_secs(10)).await, Some((4001, "logged out".to_owned())));
    assert_eq!(app.me(&laptop).await.status(), StatusCode::UNAUTHORIZED);
    // Ended once: a second time is 404.
    let r = send_as(&app, reqwest::Method::DELETE, &format!("/api/auth/sessions/{laptop_id}"), &phone, None).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let left = app.get_json("/api/auth/sessions", &phone).await;
    assert!(left.as_array().expect("array").iter().all(|s| s["id"] != laptop_id.as_str()));

    // "Log out everywhere else": the tablet goes, the phone stays.
    let mut ws_tablet = Client::connect(&app, &tablet).await;
    let r = send_as(&app, reqwest::Method::DELETE, "/api/auth/sessions", &phone, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.json::<Value>().await.expect("json")["refresh_token"].as_str().is_some(), "a new refresh token");
    assert_eq!(ws_tablet.closed_within(Duration::from_secs(10)).await, Some((4001, "logged out".to_owned())));
    assert_eq!(app.me(&tablet).await.status(), StatusCode::UNAUTHORIZED);
    let left = app.get_json("/api/auth/sessions", &phone).await;
    assert_eq!(left.as_array().map(Vec::len), Some(1), "{left}");
    assert_eq!(left[0]["current"], true);
    assert!(left[0]["id"] != tablet_id.as_str());
    assert_eq!(app.me(&bobs).await.status(), StatusCode::OK, "other users are untouched");
}

#[tokio::test]
async fn a_new_display_name_reaches_contacts_live_and_in_lists() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, _) = alice_and_bob(&app).await;
    let (carol, _) = user(&app, "carol").await;
    let mut ws_bob = Client::connect(&app, &bob).await;
    let mut ws_alice_other = Client::connect(&app, &alice).await;
    let mut ws_carol = Client::connect(&app, &carol).await;
    let rename = |name: Value| {
        send_as(&app, reqwest::Method::PATCH, "/api/auth/me", &alice, Some(json!({"display_name": name})))
    };

    for (bad, why) in [
        (json!(""), "empty"),
        (json!("   "), "blank"),
        (json!("x".repeat(65)), "too long"),
        (json!("a\u{7}b"), "control"),
        (json!("deleted USER"), "the name deleted accounts show"),
    ] {
        assert_eq!(error_code(rename(bad).await, StatusCode::BAD_REQUEST).await, "invalid_display_name", "{why}");
    }
    let r = rename(json!("  Alice Liddell ")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let me: Value = r.json().await.expect("json");
    assert_eq!(me["display_name"], "Alice Liddell");
    assert_eq!(me["username"], "alice");

    let alice_id = me["id"].as_str().expect("id");
    let frame = ws_bob.next_of("profile").await;
    assert_eq!(frame["user_id"], alice_id);
    assert_eq!(frame["display_name"], "Alice Liddell");
    assert_eq!(ws_alice_other.next_of("profile").await["display_name"], "Alice Liddell", "her other devices");
    // Bob's contact list and search show it; Carol, not a contact, got no frame.
    let contacts = app.get_json("/api/contacts", &bob).await;
    assert!(contacts.to_string().contains("Alice Liddell"), "{contacts}");
    let found = app.get_json("/api/users?q=alice%20l", &carol).await;
    assert!(found.to_string().contains("Alice Liddell"), "{found}");
    ws_carol.send(json!({"type": "ping"})).await;
    ws_carol.next_of("pong").await;
    assert!(ws_carol.others.iter().all(|f| f["type"] != "profile"), "{:?}", ws_carol.others);
}

/// Staying signed in: the access token is short-lived, the login is not. An open socket
/// outlives its token; the refresh token renews access; a logout ends renewal.
#[tokio::test]
async fn a_login_outlives_its_access_tokens_and_sockets_stay_open() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.auth.token_ttl_secs = 2;
        c.messaging.heartbeat_secs = 1;
    })
    .await;
    let (_, _bob, bob_id) = alice_and_bob(&app).await;
    let (access, refresh, body) = login_as(&app, "alice", PASSWORD, "phone").await;
    let expires_at = body["expires_at"].as_i64().expect("expires_at");
    assert!(body["session_expires_at"].as_i64() > Some(expires_at), "{body}");
    let mut ws = Client::connect(&app, &access).await;
    // The access token runs out...
    eventually("the access token expires", async || {
        (app.me(&access).await.status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    // ...the socket it opened does not (several heartbeats later, it still sends).
    acked(&mut ws, "after-expiry", &bob_id).await;
    assert!(ws.closed.is_none());
    // The refresh token renews access for the same login.
    let app = &app;
    let renew = |t: &str| {
        let body = json!({"refresh_token": t});
        async move { app.post_json("/api/auth/refresh", &body).await }
    };
    let r = renew(&refresh).await;
    assert_eq!(r.status(), StatusCode::OK);
    let renewed: Value = r.json().await.expect("json");
    assert!(renewed.get("refresh_token").is_none(), "the refresh secret is only given at login");
    let fresh = renewed["access_token"].as_str().expect("token");
    assert_eq!(app.me(fresh).await.status(), StatusCode::OK);
    let sessions = app.get_json("/api/auth/sessions", fresh).await;
    let current: Vec<&Value> = sessions.as_array().expect("array").iter().filter(|s| s["current"] == true).collect();
    assert_eq!(current.len(), 1, "{sessions}");
    assert_eq!(current[0]["user_agent"], "phone", "the same login, not a new one: {sessions}");
    // Forged, truncated or someone else's refresh tokens: 401.
    let (_, bobs_refresh, _) = login_as(app, "bob", PASSWORD, "bob").await;
    let mut forged = refresh.clone();
    forged.replace_range(forged.len() - 4.., "0000");
    let other_login = format!("{}{}", &bobs_refresh[..33], &refresh[33..]);
    for bad in [forged.as_str(), &refresh[..refresh.len() - 1], "", "x.y", other_login.as_str(), access.as_str()] {
        assert_eq!(error_code(renew(bad).await, StatusCode::UNAUTHORIZED).await, "invalid_token", "{bad}");
    }
    // After logout, the refresh token is dead too, and the socket closes.
    assert_eq!(app.logout(fresh).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(renew(&refresh).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(ws.closed_within(Duration::from_secs(10)).await, Some((4001, "logged out".to_owned())));
}

/// A browser: its access cookie lapses and the next request renews it from the refresh
/// cookie, so a person mid-chat is never sent to the login page; the refresh cookie alone
/// still needs the CSRF header for a change.
#[tokio::test]
async fn a_browser_is_renewed_from_its_refresh_cookie() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.auth.token_ttl_secs = 2).await;
    user(&app, "alice").await;
    let r = app.login("alice", PASSWORD).await;
    let cookies: Vec<String> =
        r.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
    let refresh_cookie = cookies.iter().find(|c| c.starts_with("sb_refresh=")).expect("refresh cookie");
    for attr in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age="] {
        assert!(refresh_cookie.contains(attr), "{attr} missing in {refresh_cookie}");
    }
    let access_cookie = cookies.iter().find(|c| c.starts_with("sb_session=")).expect("access cookie");
    let pair = |c: &String| c.split(';').next().expect("pair").to_owned();
    let (access, refresh) = (pair(access_cookie), pair(refresh_cookie));
    let me = |cookie: String| app.client().get(app.url("/api/auth/me")).header("cookie", cookie).send();
    eventually("the access cookie's token expires", async || {
        (me(access.clone()).await.expect("sent").status() == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    // With the refresh cookie beside it: 200, and a new access cookie.
    let r = me(format!("{access}; {refresh}")).await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let renewed = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("sb_session="))
        .expect("a renewed access cookie")
        .to_owned();
    assert_eq!(me(pair(&renewed)).await.expect("sent").status(), StatusCode::OK);
    // The refresh cookie alone authenticates, so a change made with it needs the CSRF
    // header like any cookie request.
    let r =
        app.client().post(app.url("/api/auth/logout")).header("cookie", refresh.clone()).send().await.expect("sent");
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "csrf_token_invalid");
    // A page request renews too: the signed-in chat page, not the login page.
    let page = app.client().get(app.url("/chat")).header("cookie", refresh.clone()).send().await.expect("sent");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains("id=\"logout\""), "the signed-in layout");
}

/// A login not used for its idle lifetime ends: its token and refresh token are refused.
#[tokio::test]
async fn an_unused_login_expires_and_a_used_one_slides() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.auth.session_idle_secs = 3).await;
    user(&app, "alice").await;
    let (idle, idle_refresh, _) = login_as(&app, "alice", PASSWORD, "drawer").await;
    let (used, _, body) = login_as(&app, "alice", PASSWORD, "desk").await;
    let first_expiry = body["session_expires_at"].as_i64().expect("session_expires_at");
    // Keep one in use (each request a use) until the other, never used, has left the list.
    let expired_at = eventually("the unused login expires", async || {
        let list = app.get_json("/api/auth/sessions", &used).await;
        let agents =
            list.as_array().expect("array").iter().filter_map(|s| s["user_agent"].as_str()).collect::<Vec<_>>();
        assert!(agents.contains(&"desk"), "the used login stays: {list}");
        (!agents.contains(&"drawer")).then(chrono::Utc::now)
    })
    .await;
    assert!(expired_at.timestamp_millis() >= first_expiry - 100, "not before its idle lifetime");
    assert_eq!(app.me(&idle).await.status(), StatusCode::UNAUTHORIZED);
    let r = app.post_json("/api/auth/refresh", &json!({"refresh_token": idle_refresh})).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The used one slid past the expiry it started with.
    let list = app.get_json("/api/auth/sessions", &used).await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert!(list[0]["expires_at"].as_i64().expect("expires_at") > first_expiry, "{list}");
}

#[tokio::test]
async fn deleting_an_account_keeps_the_peers_history_and_frees_the_name() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut ws_alice = Client::connect(&app, &alice).await;
    let mut ws_bob = Client::connect(&app, &bob).await;
    acked(&mut ws_alice, "hello-bob", &bob_id).await;
    let convs = app.get_json("/api/conversations", &alice).await;
    let conv = convs["conversations"][0]["id"].as_str().expect("their conversation").to_owned();
    let delete = |password: &str| {
        send_as(&app, reqwest::Method::DELETE, "/api/auth/me", &alice, Some(json!({"password": password})))
    };
    assert_eq!(error_code(delete("not my password").await, StatusCode::UNAUTHORIZED).await, "invalid_credentials");
    assert_eq!(app.me(&alice).await.status(), StatusCode::OK, "a wrong password deletes nothing");
    assert_eq!(delete(PASSWORD).await.status(), StatusCode::NO_CONTENT);

    // Alice is gone: her socket closed, her token and password refused.
    assert_eq!(ws_alice.closed_within(Duration::from_secs(10)).await, Some((4001, "logged out".to_owned())));
    assert_eq!(app.me(&alice).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("alice", PASSWORD).await.status(), StatusCode::UNAUTHORIZED);
    // Bob keeps the conversation and its messages, from "Deleted user", and is told.
    let frame = ws_bob.next_of("profile").await;
    assert_eq!(frame["display_name"], "Deleted user");
    let history = app.get_json(&format!("/api/conversations/{conv}/messages"), &bob).await;
    assert!(history.to_string().contains("hello-bob"), "{history}");
    let convs = app.get_json("/api/conversations", &bob).await;
    assert!(convs.to_string().contains("Deleted user"), "{convs}");
    assert!(!convs.to_string().contains("\"alice\""), "no trace of her username: {convs}");
    // No longer a contact, not findable, not messageable.
    let contacts = app.get_json("/api/contacts", &bob).await;
    assert_eq!(contacts["contacts"].as_array().map(Vec::len), Some(0), "{contacts}");
    // Bob's notifications about her keep what she wrote but not her names.
    let notes = app.get_json("/api/notifications", &bob).await;
    assert!(notes.to_string().contains("hello-bob"), "{notes}");
    assert!(!notes.to_string().contains("\"alice\""), "{notes}");
    let found = app.get_json("/api/users?q=alice", &bob).await;
    assert!(!found.to_string().contains("alice"), "{found}");
    let found = app.get_json("/api/users?q=deleted", &bob).await;
    assert!(!found.to_string().contains("Deleted user"), "{found}");
    ws_bob.send_to_conv("to-the-void", &conv, "anyone?").await;
    let err = ws_bob.next_of("error").await;
    assert_eq!(err["ref"], "to-the-void");
    assert_eq!(err["code"], "forbidden", "{err}");

    // The name is free again, for a new person with nothing of the old account.
    let (new_alice, new_id) = user(&app, "alice").await;
    assert_ne!(Some(new_id.as_str()), frame["user_id"].as_str());
    let convs = app.get_json("/api/conversations", &new_alice).await;
    assert_eq!(convs["conversations"].as_array().map(Vec::len), Some(0), "{convs}");
    let r = app.get_as(&format!("/api/conversations/{conv}/messages"), &new_alice).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_export_holds_a_persons_own_data_and_only_theirs() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let (carol, _) = user(&app, "carol").await;
    let mut ws_alice = Client::connect(&app, &alice).await;
    for i in 0..3 {
        acked(&mut ws_alice, &format!("note-{i}"), &bob_id).await;
    }
    let mut ws_carol = Client::connect(&app, &carol).await;
    crate::ws_client::make_contacts(&app, &carol, &bob, "bob").await;
    acked(&mut ws_carol, "carols-secret", &bob_id).await;

    let r = app.get_as("/api/auth/me/export", &alice).await;
    assert_eq!(r.status(), StatusCode::OK);
    let disposition = r.headers().get("content-disposition").and_then(|v| v.to_str().ok()).unwrap_or_default();
    assert!(disposition.starts_with("attachment"), "{disposition}");
    let text = r.text().await.expect("body");
    let doc: Value = serde_json::from_str(&text).expect("one JSON document");
    assert_eq!(doc["format"], "switchboard-export/1");
    assert_eq!(doc["user"]["username"], "alice");
    assert!(doc["contacts"].to_string().contains("bob"), "{}", doc["contacts"]);
    let convs = doc["conversations"].as_array().expect("conversations");
    assert_eq!(convs.len(), 1, "{text}");
    assert_eq!(convs[0]["peer"]["username"], "bob");
    let bodies: Vec<&str> =
        convs[0]["messages"].as_array().expect("messages").iter().filter_map(|m| m["body"].as_str()).collect();
    assert_eq!(bodies, ["note-0", "note-1", "note-2"]);
    assert!(!text.contains("carols-secret") && !text.contains("carol"), "nothing of others' conversations");
    assert!(!text.contains("argon2"), "no password hash");
    // Exports are limited per user.
    let mut limited = false;
    for _ in 0..3 {
        let r = app.get_as("/api/auth/me/export", &alice).await;
        if r.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = true;
            break;
        }
        r.text().await.expect("drained");
    }
    assert!(limited, "a third export within the minute waits");
}

/// Runs `switchboard user …` against `app`'s database, with `stdin` on standard input.
async fn cli(app: &TestApp, args: &[&str], stdin: Option<&str>) -> (i32, String, String) {
    let mut all: Vec<String> = vec!["user".into()];
    all.extend(args.iter().map(|s| s.to_string()));
    all.extend(["--data-dir".into(), app.config.data_dir.display().to_string()]);
    all.extend(["--database-url".into(), app.config.database_url()]);
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(&all)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("the binary runs");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("it ends");
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
    })
    .await
    .expect("joined")
}

macro_rules! cli_tests {
    ($backend:expr) => {
        #[tokio::test]
        async fn the_operator_manages_accounts_from_the_command_line() {
            super::the_operator_manages_accounts_from_the_command_line($backend).await
        }
    };
}

mod cli_sqlite {
    cli_tests!(crate::helpers::Backend::Sqlite);
}

mod cli_postgres {
    cli_tests!(crate::helpers::Backend::Postgres);
}

async fn the_operator_manages_accounts_from_the_command_line(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (code, out, err) = cli(
        &app,
        &["create", "Dora", "--display-name", "Dora M.", "--password-stdin"],
        Some("dora's first password\n"),
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("created dora"), "{out}");
    assert!(!out.contains("first password") && !err.contains("first password"), "a password is never echoed");
    assert_eq!(app.login("dora", "dora's first password").await.status(), StatusCode::OK);
    let (code, _, err) = cli(&app, &["create", "dora", "--password-stdin"], Some("another password\n")).await;
    assert_eq!(code, 1);
    assert!(err.contains("taken"), "{err}");
    let (code, out, _) = cli(&app, &["list", "--query", "_"], None).await;
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "a query is text, not a pattern: only the header: {out}");
    let (code, out, _) = cli(&app, &["list", "--query", "DO"], None).await;
    assert_eq!(code, 0);
    let line = out.lines().find(|l| l.starts_with("dora\t")).expect("listed");
    assert!(line.contains("\tDora M.\t") && line.contains("\tactive\t"), "{line}");

    // Disabled: the open socket closes at once (the revocation feed), logins are refused.
    let (token, _, _) = login_as(&app, "dora", "dora's first password", "dora").await;
    let mut ws = Client::connect(&app, &token).await;
    let (code, out, err) = cli(&app, &["disable", "dora"], None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(ws.closed_within(Duration::from_secs(15)).await, Some((4001, "logged out".to_owned())));
    assert_eq!(app.me(&token).await.status(), StatusCode::UNAUTHORIZED);
    let r = app.login("dora", "dora's first password").await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "account_disabled");
    let (_, out, _) = cli(&app, &["list"], None).await;
    assert!(out.lines().any(|l| l.starts_with("dora\t") && l.contains("\tdisabled\t")), "{out}");
    let (code, _, _) = cli(&app, &["enable", "dora"], None).await;
    assert_eq!(code, 0);
    let (token, _, _) = login_as(&app, "dora", "dora's first password", "dora").await;

    // A reset without stdin generates a password, prints it once, and ends every login.
    let (code, out, _) = cli(&app, &["reset-password", "dora"], None).await;
    assert_eq!(code, 0);
    let new_password = out.lines().find_map(|l| l.strip_prefix("password: ")).expect("printed").to_owned();
    assert_eq!(app.me(&token).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("dora", "dora's first password").await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(app.login("dora", &new_password).await.status(), StatusCode::OK);

    // Deleted: gone from the list, no login; unknown names are an error.
    let (code, out, err) = cli(&app, &["delete", "dora"], None).await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(app.login("dora", &new_password).await.status(), StatusCode::UNAUTHORIZED);
    let (_, out, _) = cli(&app, &["list"], None).await;
    assert!(!out.contains("dora") && !out.contains('~'), "{out}");
    for action in ["disable", "enable", "delete", "reset-password"] {
        let (code, _, err) = cli(&app, &[action, "nobody"], Some("whatever password\n")).await;
        assert_eq!(code, 1, "{action}");
        assert!(err.contains("no account named"), "{action}: {err}");
    }
}

/// The revocation feed pages by (time, id): a revocation of many logins at one instant is
/// read whole, page after page, never re-read for ever (review of issue 19).
#[tokio::test]
async fn the_revocation_feed_pages_past_logins_revoked_at_the_same_instant() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (token, _) = user(&app, "alice").await;
    for i in 0..6 {
        login_as(&app, "alice", PASSWORD, &format!("device {i}")).await;
    }
    let before = chrono::Utc::now().timestamp_millis() - 1;
    let r = send_as(&app, reqwest::Method::DELETE, "/api/auth/sessions", &token, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("db");
    let sessions = switchboard::auth::sessions::SessionRepo::new(db);
    let (mut after, mut seen) = ((before, None), std::collections::HashSet::new());
    for _ in 0..10 {
        let page = sessions.revoked_after(after, 4).await.expect("page");
        for (id, _, _) in &page {
            assert!(seen.insert(*id), "{id} read twice");
        }
        match page.last() {
            Some((id, _, at)) if page.len() == 4 => after = (*at, Some(*id)),
            _ => break,
        }
    }
    assert_eq!(seen.len(), 6, "the six other logins, each once");
}
