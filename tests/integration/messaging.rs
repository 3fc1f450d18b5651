//! Real-time messaging over real sockets and a real SQLite file: the delivery guarantee,
//! sync, access control, bad frames, and recovery from killed actors.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard_actors::faults::Fault;
use switchboard_actors::ids::UserId;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{Api, Backend, TestApp, spawn_app, spawn_app_with};
use crate::ws_client::{Client, FRAME_TIMEOUT, alice_and_bob, connect_with, make_contacts, user};

/// Opens the conversation from `a` to user `b_id` with one message; returns its id.
async fn open_conversation(a: &mut Client, b_id: &str, cid: &str) -> String {
    a.send_to_user(cid, b_id, "hello").await;
    let ack = a.next_of("ack").await;
    assert_eq!(ack["client_msg_id"], cid);
    assert_eq!(ack["seq"], 1);
    ack["conversation_id"].as_str().expect("conversation id").to_owned()
}

async fn history(app: &TestApp, token: &str, conv: &str, query: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/api/conversations/{conv}/messages{query}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("sent")
}

/// Sends `n` messages from `dev`, waiting for each ack; every 7th is sent twice with the
/// same client_msg_id (a resend). Returns the acked ids.
async fn send_many(dev: &mut Client, conv: &str, prefix: &str, n: usize) -> Vec<String> {
    let mut acked = vec![];
    for i in 0..n {
        let cid = format!("{prefix}-{i}");
        dev.send_to_conv(&cid, conv, &format!("{prefix} says {i}")).await;
        if i % 7 == 3 {
            dev.send_to_conv(&cid, conv, &format!("{prefix} says {i}")).await;
        }
        let c2 = cid.clone();
        dev.read_until("ack", move |c| c.acks.contains_key(&c2)).await;
        acked.push(dev.acks[&cid].0.clone());
    }
    acked
}

#[tokio::test]
async fn two_users_two_devices_each_get_every_message_exactly_once_in_order() {
    every_message_exactly_once(Backend::Sqlite).await
}

/// The same on PostgreSQL (a fresh database for the test).
#[tokio::test]
async fn postgres_two_users_two_devices_each_get_every_message_exactly_once_in_order() {
    every_message_exactly_once(Backend::Postgres).await
}

async fn every_message_exactly_once(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a1 = Client::connect(&app, &alice).await;
    let a2 = Client::connect(&app, &alice).await;
    let b1 = Client::connect(&app, &bob).await;
    let b2 = Client::connect(&app, &bob).await;
    // The opening message (seq 1) plus 1,000 each way: 500 from each device.
    let conv = open_conversation(&mut a1, &bob_id, "open").await;
    let per_device = 500;
    let total = 1 + 4 * per_device as i64;
    let mut tasks = vec![];
    for (name, mut dev) in [("a1", a1), ("a2", a2), ("b1", b1), ("b2", b2)] {
        let c = conv.clone();
        tasks.push(tokio::spawn(async move {
            send_many(&mut dev, &c, name, per_device).await;
            dev
        }));
    }
    let mut devices = vec![];
    for t in tasks {
        devices.push(t.await.expect("device task"));
    }
    for mut dev in devices {
        let c = conv.clone();
        dev.read_until("all messages", move |d| d.by_seq.get(&c).is_some_and(|s| s.len() as i64 == total)).await;
        dev.assert_complete(&conv, total);
        dev.assert_in_order();
        // Every ack names a message this device also received.
        for (id, _) in dev.acks.values() {
            assert!(dev.messages.contains_key(id), "acked message {id} not delivered");
        }
    }
    // The database holds each message once: 2,001 rows, seqs 1..=2001.
    let mut seqs = vec![];
    let mut after = 0;
    loop {
        let page: Value =
            history(&app, &alice, &conv, &format!("?after_seq={after}&limit=500")).await.json().await.expect("json");
        let msgs = page["messages"].as_array().expect("messages").clone();
        if msgs.is_empty() {
            break;
        }
        for m in &msgs {
            seqs.push(m["seq"].as_i64().expect("seq"));
        }
        after = *seqs.last().expect("seq");
    }
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
}

#[tokio::test]
async fn offline_user_syncs_exactly_what_they_missed() {
    offline_sync(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_offline_user_syncs_exactly_what_they_missed() {
    offline_sync(Backend::Postgres).await
}

async fn offline_sync(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let conv = open_conversation(&mut a, &bob_id, "m0").await;
    send_many(&mut a, &conv, "early", 4).await;
    let c = conv.clone();
    b.read_until("first five", move |d| d.by_seq.get(&c).is_some_and(|s| s.len() == 5)).await;
    b.ws.close(None).await.expect("close");
    drop(b);

    send_many(&mut a, &conv, "missed", 300).await;

    let mut b = Client::connect(&app, &bob).await;
    b.send(json!({"type": "sync", "since": {conv.clone(): 5}})).await;
    let done = b.next_of("sync_done").await;
    assert_eq!(done["messages"], 300);
    let seqs: Vec<i64> = b.arrivals.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (6..=305).collect::<Vec<_>>(), "exactly the missed 300, in order");
    // A sync with nothing missed returns nothing.
    b.send(json!({"type": "sync", "since": {conv.clone(): 305}})).await;
    assert_eq!(b.next_of("sync_done").await["messages"], 0);
    // A fresh device syncing from scratch gets the whole history.
    let mut fresh = Client::connect(&app, &bob).await;
    fresh.send(json!({"type": "sync"})).await;
    assert_eq!(fresh.next_of("sync_done").await["messages"], 305);
    fresh.assert_complete(&conv, 305);
}

#[tokio::test]
async fn outsiders_cannot_read_or_write_a_conversation() {
    let app = spawn_app().await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let (carol, _) = user(&app, "carol").await;
    let mut a = Client::connect(&app, &alice).await;
    let conv = open_conversation(&mut a, &bob_id, "secret").await;

    assert_eq!(history(&app, &alice, &conv, "").await.status(), StatusCode::OK);
    let r = history(&app, &carol, &conv, "").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(!r.text().await.expect("body").contains("hello"));
    assert_eq!(history(&app, &carol, "not-a-uuid", "").await.status(), StatusCode::NOT_FOUND);
    let r = app.client().get(app.url(&format!("/api/conversations/{conv}/messages"))).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let list: Value = app
        .client
        .get(app.url("/api/conversations"))
        .bearer_auth(&carol)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(list["conversations"], json!([]));

    let mut c = Client::connect(&app, &carol).await;
    c.send_to_conv("c1", &conv, "let me in").await;
    let e = c.next_of("error").await;
    assert_eq!((e["code"].as_str(), e["ref"].as_str()), (Some("not_found"), Some("c1")));
    c.send(json!({"type": "read", "conversation_id": conv, "seq": 1})).await;
    assert_eq!(c.next_of("error").await["code"], "not_found");
    c.send(json!({"type": "sync", "since": {conv.clone(): 0}})).await;
    assert_eq!(c.next_of("sync_done").await["messages"], 0);
    assert!(c.messages.is_empty(), "carol received {:?}", c.messages);
    // A user id in a frame is never taken as identity: a `sender_id` field is ignored.
    a.send(json!({"type": "send", "client_msg_id": "spoof", "conversation_id": conv, "body": "x", "sender_id": UserId::new()})).await;
    a.read_until("ack", |d| d.acks.contains_key("spoof")).await;
    let page: Value = history(&app, &alice, &conv, "?after_seq=1").await.json().await.expect("json");
    let me: Value = app.me(&alice).await.json().await.expect("json");
    assert_eq!(page["messages"][0]["sender_id"], me["id"]);
    // Nothing of carol's attempts was stored.
    let page: Value = history(&app, &alice, &conv, "").await.json().await.expect("json");
    assert_eq!(page["last_seq"], 2);
}

#[tokio::test]
async fn bad_frames_get_error_frames_and_the_socket_stays_open() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.messaging.max_violations = 20).await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let conv = open_conversation(&mut a, &bob_id, "ok").await;
    let big = "x".repeat(app.config.messaging.max_body_bytes + 1);
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        ("{not json".into(), "invalid_json", None),
        (r#"{"type":"teleport","id":"r1"}"#.into(), "unknown_type", Some("r1")),
        (r#"{"no_type":1}"#.into(), "invalid_frame", None),
        (r#"{"type":"send","client_msg_id":"w1","conversation_id":5,"body":"x"}"#.into(), "invalid_frame", Some("w1")),
        (json!({"type":"send","client_msg_id":"w2","body":"x"}).to_string(), "invalid_frame", Some("w2")),
        (
            json!({"type":"send","client_msg_id":"w3","conversation_id":conv,"body":"   "}).to_string(),
            "empty_body",
            Some("w3"),
        ),
        (
            json!({"type":"send","client_msg_id":"w4","conversation_id":conv,"body":big}).to_string(),
            "body_too_large",
            Some("w4"),
        ),
        (
            json!({"type":"send","client_msg_id":"x".repeat(65),"conversation_id":conv,"body":"x"}).to_string(),
            "invalid_client_msg_id",
            None,
        ),
        (
            json!({"type":"send","client_msg_id":"w5","to_user_id":UserId::new(),"body":"x"}).to_string(),
            "not_found",
            Some("w5"),
        ),
        (json!({"type":"read","conversation_id":conv,"seq":-1,"id":"r2"}).to_string(), "invalid_frame", Some("r2")),
        (format!("{}{}", "[".repeat(5000), "]".repeat(5000)), "invalid_json", None),
        (r#"{"type":"ping","n":1e999999}"#.into(), "invalid_json", None),
    ];
    for (frame, code, reference) in cases {
        a.send_raw(Message::text(frame.clone())).await;
        let e = a.next_of("error").await;
        assert_eq!(e["code"], code, "for {}", &frame[..frame.len().min(80)]);
        if let Some(r) = reference {
            assert_eq!(e["ref"], r);
        }
    }
    a.send_raw(Message::binary(vec![1u8, 2, 3])).await;
    assert_eq!(a.next_of("error").await["code"], "binary_not_supported");
    // Still open and working.
    a.send(json!({"type": "ping"})).await;
    a.next_of("pong").await;
    a.send_to_conv("after", &conv, "still here").await;
    a.read_until("ack", |d| d.acks.contains_key("after")).await;
    // A client that keeps breaking the protocol is disconnected.
    for _ in 0..30 {
        if a.closed.is_some() {
            break;
        }
        a.send_raw(Message::text("garbage")).await;
    }
    while a.read_one(FRAME_TIMEOUT).await.is_some() {}
    assert_eq!(a.closed.as_ref().map(|c| c.0), Some(1008), "closed for policy violation");
}

#[tokio::test]
async fn oversized_frames_close_the_socket_without_harming_others() {
    let app = spawn_app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let conv = open_conversation(&mut a, &bob_id, "o1").await;
    let mut evil = Client::connect(&app, &alice).await;
    let _ = evil.ws.send(Message::text("x".repeat(app.config.messaging.max_frame_bytes + 10))).await;
    while evil.read_one(FRAME_TIMEOUT).await.is_some() {}
    assert!(evil.closed.is_some());
    a.send_to_conv("o2", &conv, "fine").await;
    let c = conv.clone();
    b.read_until("message", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&2))).await;
}

#[tokio::test]
async fn websocket_needs_a_valid_token_and_a_trusted_origin_for_cookies() {
    let app = spawn_app().await;
    let (alice, _) = user(&app, "alice").await;
    assert_eq!(connect_with(app.addr, |_| {}).await.err(), Some(401));
    let bad = HeaderValue::from_static("Bearer not-a-token");
    assert_eq!(
        connect_with(app.addr, |r| {
            r.headers_mut().insert("authorization", bad);
        })
        .await
        .err(),
        Some(401)
    );

    let cookie = HeaderValue::from_str(&format!("sb_session={alice}")).expect("header");
    let evil = HeaderValue::from_static("https://evil.example");
    let (c1, e1) = (cookie.clone(), evil.clone());
    let r = connect_with(app.addr, move |r| {
        r.headers_mut().insert("cookie", c1);
        r.headers_mut().insert("origin", e1);
    })
    .await;
    assert_eq!(r.err(), Some(403), "cookie from a foreign origin");
    let own = HeaderValue::from_str(&format!("http://{}", app.addr)).expect("header");
    let c2 = cookie.clone();
    let ws = connect_with(app.addr, move |r| {
        r.headers_mut().insert("cookie", c2);
        r.headers_mut().insert("origin", own);
    })
    .await
    .expect("own origin accepted");
    Client::from_ws(ws).next_of("hello").await;
    let bearer = HeaderValue::from_str(&format!("Bearer {alice}")).expect("header");
    let ws = connect_with(app.addr, move |r| {
        r.headers_mut().insert("authorization", bearer);
        r.headers_mut().insert("origin", evil);
    })
    .await
    .expect("bearer clients are not origin-checked");
    Client::from_ws(ws).next_of("hello").await;

    // After logout the same token cannot open a socket.
    assert_eq!(app.logout(&alice).await.status(), StatusCode::NO_CONTENT);
    let bearer = HeaderValue::from_str(&format!("Bearer {alice}")).expect("header");
    assert_eq!(
        connect_with(app.addr, |r| {
            r.headers_mut().insert("authorization", bearer);
        })
        .await
        .err(),
        Some(401)
    );
}

#[tokio::test]
async fn receipts_typing_and_presence_reach_the_other_side() {
    let app = spawn_app().await;
    let (alice, alice_id) = user(&app, "alice").await;
    let (bob, bob_id) = user(&app, "bob").await;
    make_contacts(&app, &alice, &bob, "bob").await;
    let mut a = Client::connect(&app, &alice).await;
    let conv = open_conversation(&mut a, &bob_id, "r1").await;
    let mut b = Client::connect(&app, &bob).await;
    // Bob's new connection is told Alice is online; Alice is told Bob came online.
    let p = b.next_of("presence").await;
    assert_eq!((p["user_id"].as_str(), p["online"].as_bool()), (Some(alice_id.as_str()), Some(true)));
    let p = a.next_of("presence").await;
    assert_eq!((p["user_id"].as_str(), p["online"].as_bool()), (Some(bob_id.as_str()), Some(true)));

    a.send_to_conv("r2", &conv, "are you there?").await;
    let c = conv.clone();
    b.read_until("message 2", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&2))).await;
    // Delivered to Bob's device → Alice sees delivered_seq 2.
    loop {
        let r = a.next_of("receipt").await;
        if r["user_id"] == bob_id.as_str() && r["delivered_seq"] == 2 {
            break;
        }
    }
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 2})).await;
    loop {
        let r = a.next_of("receipt").await;
        if r["user_id"] == bob_id.as_str() && r["read_seq"] == 2 {
            break;
        }
    }
    // Reading past the end is capped at the last seq.
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 99})).await;
    loop {
        let r = b.next_of("receipt").await;
        if r["read_seq"] == 2 {
            break;
        }
        assert!(r["read_seq"].as_i64() <= Some(2));
    }
    let list: Value = app
        .client
        .get(app.url("/api/conversations"))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(list["conversations"][0]["unread"], 0);
    assert_eq!(list["conversations"][0]["last_message"]["body"], "are you there?");
    let list: Value = app
        .client
        .get(app.url("/api/conversations"))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("json");
    assert_eq!(list["conversations"][0]["peer"]["username"], "bob");
    // What a reloaded page needs to mark Alice's messages read.
    assert_eq!(
        (list["conversations"][0]["peer_delivered_seq"].as_i64(), list["conversations"][0]["peer_read_seq"].as_i64()),
        (Some(2), Some(2))
    );

    b.send(json!({"type": "typing", "conversation_id": conv, "active": true})).await;
    let t = a.next_of("typing").await;
    assert_eq!((t["user_id"].as_str(), t["active"].as_bool()), (Some(bob_id.as_str()), Some(true)));

    b.ws.close(None).await.expect("close");
    loop {
        let p = a.next_of("presence").await;
        if p["user_id"] == bob_id.as_str() && p["online"] == false {
            break;
        }
    }
}

/// Sends `n` messages, resending any not acked within a short time (as a client must),
/// while `chaos` runs; returns the set of acked client_msg_ids.
async fn send_with_resends(dev: &mut Client, conv: &str, n: usize) -> HashSet<String> {
    for i in 0..n {
        let cid = format!("m{i}");
        loop {
            dev.send_to_conv(&cid, conv, &format!("message {i}")).await;
            let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
            let mut acked = false;
            while tokio::time::Instant::now() < deadline {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                match dev.read_one(left).await {
                    Some(v) if v["type"] == "ack" && v["client_msg_id"] == cid.as_str() => {
                        acked = true;
                        break;
                    }
                    Some(v) if v["type"] == "error" && v["ref"] == cid.as_str() => break, // resend
                    Some(_) => {}
                    None => assert!(dev.closed.is_none(), "socket closed: {:?}", dev.closed),
                }
            }
            if acked {
                break;
            }
        }
    }
    dev.acks.keys().cloned().collect()
}

#[tokio::test]
async fn killed_room_and_session_actors_lose_nothing_acknowledged() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.fault_injection = true).await;
    let (alice, alice_id) = user(&app, "alice").await;
    let (bob, bob_id) = user(&app, "bob").await;
    make_contacts(&app, &alice, &bob, "bob").await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let conv = open_conversation(&mut a, &bob_id, "start").await;
    let node = app.node.clone();
    let room_name = node.ctx.name("room", &conv);
    let session_names = |user: &str| -> Vec<String> {
        let id = UserId::parse(user).expect("uuid");
        node.ctx.sessions_of(id).iter().filter_map(|c| c.get_name()).collect()
    };
    let (alice_sessions, bob_sessions) = (session_names(&alice_id), session_names(&bob_id));
    assert_eq!((alice_sessions.len(), bob_sessions.len()), (1, 1));

    // The chaos task kills, in turn, the room and each user's session actor, waiting
    // between kills until the victim has been restarted (its name is registered again)
    // so that every kill hits a running actor.
    let stop = tokio_util::sync::CancellationToken::new();
    let chaos = {
        let node = node.clone();
        let stop = stop.clone();
        let victims = [room_name.clone(), alice_sessions[0].clone(), bob_sessions[0].clone()];
        tokio::spawn(async move {
            let mut kills: std::collections::HashMap<String, u64> = Default::default();
            let mut i = 0;
            while !stop.is_cancelled() {
                let victim = &victims[i % victims.len()];
                i += 1;
                // ~7 kills per second per supervisor: under its limit of 100 restarts in 10 s.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if ractor::registry::where_is(victim.clone()).is_some() && node.ctx.faults.inject(victim, Fault::Kill) {
                    *kills.entry(victim.clone()).or_default() += 1;
                    // Wait for the restart before the next kill.
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    while ractor::registry::where_is(victim.clone()).is_none() && tokio::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
            }
            kills
        })
    };
    let n = 500;
    let sender = async {
        let acked = send_with_resends(&mut a, &conv, n).await;
        (a, acked)
    };
    let (a, acked) = sender.await;
    // Bob, a live reader all along, ends with every message exactly once.
    let c = conv.clone();
    b.read_until("all 501", move |d| d.by_seq.get(&c).is_some_and(|s| s.len() == n + 1)).await;
    stop.cancel();
    let kills = chaos.await.expect("chaos task");

    assert_eq!(acked.len(), n + 1, "every message was eventually acknowledged");
    for (cid, (id, _)) in &a.acks {
        assert!(b.messages.contains_key(id), "acked {cid} never reached bob");
    }
    b.assert_complete(&conv, n as i64 + 1);
    let page: Value = history(&app, &alice, &conv, "?limit=1").await.json().await.expect("json");
    assert_eq!(page["last_seq"], n as i64 + 1, "stored once each: no duplicates in the database");

    // Each kill was followed by a restart by the right supervisor.
    let rooms = node.stats("rooms").await.expect("rooms supervisor");
    let sessions = node.stats("sessions").await.expect("sessions supervisor");
    let room_kills = kills.get(&room_name).copied().unwrap_or(0);
    assert!(room_kills >= 3, "room killed {room_kills} times");
    assert_eq!(rooms.restarts_by_key.get(&room_name).copied().unwrap_or(0), room_kills);
    for name in [&alice_sessions[0], &bob_sessions[0]] {
        let k = kills.get(name).copied().unwrap_or(0);
        assert!(k >= 3, "{name} killed {k} times");
        assert_eq!(sessions.restarts_by_key.get(name).copied().unwrap_or(0), k, "{name}");
    }
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.messaging.outbound_queue = 16).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let b = Client::connect(&app, &bob).await;
    let conv = open_conversation(&mut a, &bob_id, "s0").await;
    // Bob stops reading. Alice sends big messages until the server gives up on Bob: the
    // kernel buffers fill, then the 16-frame queue, then the connection is closed.
    let body = "y".repeat(16 * 1024);
    let node = app.node.clone();
    let bob_uid = UserId::parse(&bob_id).expect("uuid");
    let mut sent = 0;
    while !node.ctx.sessions_of(bob_uid).is_empty() {
        assert!(sent < 5000, "bob was never disconnected");
        let cid = format!("s{}", sent + 1);
        a.send_to_conv(&cid, &conv, &body).await;
        let c2 = cid.clone();
        a.read_until("ack", move |d| d.acks.contains_key(&c2)).await;
        sent += 1;
    }
    // Alice is unaffected.
    a.send_to_conv("after", &conv, "still fine").await;
    a.read_until("ack", |d| d.acks.contains_key("after")).await;
    // The server lets go of Bob's socket although Bob still reads nothing: a write stuck
    // on his full socket must not hold it (and its memory) for ever.
    let bob_port = match b.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().expect("local addr").port(),
        _ => unreachable!("plain TCP in tests"),
    };
    let mut released = false;
    for _ in 0..300 {
        if !crate::helpers::tcp_established(app.addr.port(), bob_port) {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(released, "the server still holds the socket of a client that stopped reading");
}

#[tokio::test]
async fn a_killed_supervisor_is_restarted_by_the_node_and_chat_goes_on() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.fault_injection = true).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let conv = open_conversation(&mut a, &bob_id, "k0").await;
    let rooms = app.node.ctx.supervisor_name("rooms");
    // Through the operator endpoint, as in a drill.
    let r = app
        .client
        .post(app.url("/api/debug/faults"))
        .bearer_auth(&alice)
        .json(&json!({"kind": "sup", "id": "rooms", "fault": "kill"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let node = app.node.clone();
    let mut restarted = false;
    for _ in 0..500 {
        if node.stats("node").await.is_some_and(|s| s.restarts_by_key.get(&rooms) == Some(&1)) {
            restarted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(restarted, "node supervisor restarted the rooms supervisor");
    // Rooms come back on demand under the new supervisor.
    a.send_to_conv("k1", &conv, "after the drill").await;
    a.read_until("ack", |d| d.acks.contains_key("k1")).await;
    let mut b = Client::connect(&app, &bob).await;
    b.send(json!({"type": "sync"})).await;
    assert_eq!(b.next_of("sync_done").await["messages"], 2);
    // Unknown actors and bad requests are refused; without the flag there is no endpoint.
    let r = app
        .client
        .post(app.url("/api/debug/faults"))
        .bearer_auth(&alice)
        .json(&json!({"kind": "room", "id": "nope", "fault": "kill"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let plain = spawn_app().await;
    let (t, _) = user(&plain, "carol").await;
    let r = plain
        .client
        .post(plain.url("/api/debug/faults"))
        .bearer_auth(&t)
        .json(&json!({"kind": "sup", "id": "rooms", "fault": "kill"}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "fault injection is off by default");
}

/// Polls `cond` every 20 ms for up to 15 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..750 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_silent_connection_is_closed_by_the_heartbeat() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.messaging.heartbeat_secs = 1;
        c.messaging.idle_timeout_secs = 2;
    })
    .await;
    let (alice, alice_id) = user(&app, "alice").await;
    let uid = UserId::parse(&alice_id).expect("uuid");
    // A client that reads (and so answers pings) stays connected past the timeout...
    let mut live = Client::connect(&app, &alice).await;
    // ...one that never reads again does not.
    let silent = Client::connect(&app, &alice).await;
    let node = app.node.clone();
    eventually("two sessions", || node.ctx.sessions_of(uid).len() == 2).await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        live.send(json!({"type": "ping"})).await;
        live.next_of("pong").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("the silent one closed", || node.ctx.sessions_of(uid).len() == 1).await;
    live.send(json!({"type": "ping"})).await;
    live.next_of("pong").await;
    drop(silent);
}

#[tokio::test]
async fn an_idle_room_stops_and_comes_back_on_demand() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.messaging.room_idle_secs = 1).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let conv = open_conversation(&mut a, &bob_id, "i0").await;
    let room = app.node.ctx.name("room", &conv);
    let r = room.clone();
    eventually("room running", move || ractor::registry::where_is(r.clone()).is_some()).await;
    let r = room.clone();
    eventually("idle room stopped", move || ractor::registry::where_is(r.clone()).is_none()).await;
    a.send_to_conv("i1", &conv, "wake up").await;
    a.read_until("ack", |d| d.acks.contains_key("i1")).await;
    assert_eq!(a.acks["i1"].1, 2, "the sequence continues from the database");
    let stats = app.node.stats("rooms").await.expect("stats");
    assert_eq!(stats.restarts, 0, "stopping when idle is not a failure");
    let mut b = Client::connect(&app, &bob).await;
    b.send(json!({"type": "sync"})).await;
    assert_eq!(b.next_of("sync_done").await["messages"], 2);
}
