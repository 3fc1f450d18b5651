//! Real-time messaging over real sockets and a real SQLite file: the delivery guarantee,
//! sync, access control, bad frames, and recovery from killed actors.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::SinkExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use switchboard::config::Config;
use switchboard_actors::faults::Fault;
use switchboard_actors::ids::UserId;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::helpers::{Api, Backend, TestApp, eventually, spawn_app, spawn_app_with};
use crate::ws_client::{Client, FRAME_TIMEOUT, alice_and_bob, connect_with, make_contacts, say, user};

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
    for dev in devices.iter_mut() {
        let c = conv.clone();
        dev.read_until("all messages", move |d| d.by_seq.get(&c).is_some_and(|s| s.len() as i64 == total)).await;
        dev.assert_complete(&conv, total);
        dev.assert_in_order();
        // Every ack names a message this device also received.
        for (id, _) in dev.acks.values() {
            assert!(dev.messages.contains_key(id), "acked message {id} not delivered");
        }
    }
    // Every first ack, by client_msg_id (unique per device prefix here).
    let first_acks: HashMap<String, (String, i64)> =
        devices.iter().flat_map(|d| d.acks.iter().map(|(k, v)| (k.clone(), v.clone()))).collect();
    assert_eq!(first_acks.len() as i64, total, "one ack per message");
    let Ok([mut a1, a2, b1, mut b2]) = <[Client; 4]>::try_from(devices) else { panic!("four devices") };

    // Resends after their acks arrived, on the same socket: each is acked again with the
    // first ack's id and seq (the Client fails on any other).
    resend_acked(&mut a1, &conv, &["a1-0", "a1-1", "a1-250", "a1-499"]).await;
    resend_acked(&mut b2, &conv, &["b2-7", "b2-498"]).await;
    // And after a reconnect: a2 and b1 close; each user's new socket resends messages of
    // both of the user's devices (a client_msg_id is unique per sender, not per socket).
    let mut fresh_devices = vec![];
    for (mut old, token, cids) in [
        (a2, &alice, ["a2-0", "a2-3", "a2-499", "a1-2", "a1-498"]),
        (b1, &bob, ["b1-0", "b1-10", "b1-499", "b2-0", "b2-1"]),
    ] {
        old.ws.close(None).await.expect("close");
        drop(old);
        let mut fresh = Client::connect(&app, token).await;
        // The new socket knows the first acks, so the Client compares the new ones to them.
        fresh.acks = first_acks.clone();
        resend_acked(&mut fresh, &conv, &cids).await;
        fresh_devices.push(fresh);
    }
    // Nothing was stored twice: a sync from scratch on a reconnected socket returns each
    // message once, in order...
    for fresh in fresh_devices.iter_mut() {
        fresh.send(json!({"type": "sync"})).await;
        assert_eq!(fresh.next_of("sync_done").await["messages"], total);
        fresh.assert_complete(&conv, total);
        let seqs: Vec<i64> = fresh.arrivals.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "each message once, in order");
    }
    // ...and the database holds each message once: 2,001 rows, seqs 1..=2001, each the
    // message its ack named.
    let mut stored: Vec<(i64, String)> = vec![];
    let mut after = 0;
    for page in 0.. {
        assert!(page <= total / 500 + 1, "history paging does not end (after_seq={after})");
        let page: Value =
            history(&app, &alice, &conv, &format!("?after_seq={after}&limit=500")).await.json().await.expect("json");
        let msgs = page["messages"].as_array().expect("messages").clone();
        if msgs.is_empty() {
            break;
        }
        for m in &msgs {
            stored.push((m["seq"].as_i64().expect("seq"), m["id"].as_str().expect("id").to_owned()));
        }
        after = stored.last().expect("a message").0;
    }
    let seqs: Vec<i64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>());
    let acked: HashMap<i64, &String> = first_acks.values().map(|(id, seq)| (*seq, id)).collect();
    for (seq, id) in &stored {
        assert_eq!(acked.get(seq).copied(), Some(id), "seq {seq} is the message its ack named");
    }
}

/// The body `send_many` gave `cid` (`<device>-<i>`): a resend carries the same.
fn body_of(cid: &str) -> String {
    match cid.split_once('-') {
        Some((prefix, i)) => format!("{prefix} says {i}"),
        None => format!("body of {cid}"),
    }
}

/// Resends already-acknowledged `cids` on `dev` and waits for an ack of each; the Client
/// fails if one names another message id or seq than the first ack (in `dev.acks`).
async fn resend_acked(dev: &mut Client, conv: &str, cids: &[&str]) {
    for cid in cids {
        assert!(dev.acks.contains_key(*cid), "{cid} was acked before");
        dev.send_to_conv(cid, conv, &body_of(cid)).await;
    }
    let mut waiting: HashSet<&str> = cids.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while !waiting.is_empty() {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = dev
            .read_one(left)
            .await
            .unwrap_or_else(|| panic!("no ack for the resends {waiting:?} (closed: {:?})", dev.closed));
        assert_ne!(f["type"], "error", "a resend of an acked message was refused: {f}");
        if f["type"] == "ack" {
            waiting.remove(f["client_msg_id"].as_str().expect("client_msg_id"));
        }
    }
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

/// A sync longer than the server's internal page (500 messages): a user who missed 1,234
/// messages gets exactly those, in seq order, then one `sync_done` that counts them.
#[tokio::test]
async fn a_sync_of_more_than_one_page_returns_exactly_what_was_missed() {
    let app = spawn_app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let conv = open_conversation(&mut a, &bob_id, "first").await;
    let c = conv.clone();
    b.read_until("the first message", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&1))).await;
    b.ws.close(None).await.expect("close");
    drop(b);

    // Bob is away while Alice sends 1,234 messages (seqs 2..=1235), 100 in flight at a time.
    let missed: i64 = 1234;
    for start in (0..missed).step_by(100) {
        let window: Vec<String> = (start..(start + 100).min(missed)).map(|i| format!("p{i}")).collect();
        for cid in &window {
            a.send_to_conv(cid, &conv, &format!("missed {cid}")).await;
        }
        a.read_until("the window's acks", |d| window.iter().all(|cid| d.acks.contains_key(cid))).await;
    }

    let mut b = Client::connect(&app, &bob).await;
    b.send(json!({"type": "sync", "since": {conv.clone(): 1}})).await;
    let done = b.next_of("sync_done").await;
    assert_eq!(done["messages"], missed);
    let seqs: Vec<i64> = b.arrivals.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (2..=missed + 1).collect::<Vec<_>>(), "exactly the missed messages, once each, in order");
    for i in 0..missed {
        let (id, seq) = &a.acks[&format!("p{i}")];
        assert_eq!(b.by_seq[&conv].get(seq), Some(id), "seq {seq} is the message its ack named");
    }
    // Nothing follows: a ping sent now is answered after anything else the session queued
    // for this connection (it handles the connection's frames one at a time, in order, and
    // the sync had finished), so once the pong is in, there was one sync_done and no
    // message beyond those.
    b.send(json!({"type": "ping"})).await;
    b.next_of("pong").await;
    assert_eq!(b.others.iter().filter(|f| f["type"] == "sync_done").count(), 1, "{:?}", b.others);
    assert_eq!(b.arrivals.len() as i64, missed);
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
    let list = app.get_json("/api/conversations", &carol).await;
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
            json!({"type":"send","client_msg_id":"w6","conversation_id":conv,"body":"a\u{0}b"}).to_string(),
            "invalid_body",
            Some("w6"),
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
    // Told why (RFC 6455: 1009, too large), not just dropped.
    assert_eq!(evil.closed.as_ref().map(|c| c.0), Some(1009), "{:?}", evil.closed);
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

/// A read that cannot move the marker (past the last message, again and again) is
/// answered to the reader but tells the peer nothing, and a flood of reads is rate
/// limited: each that gets through is a write and receipts.
#[tokio::test]
async fn reads_that_move_nothing_reach_no_one_else_and_floods_are_limited() {
    let app = spawn_app().await;
    let (alice, _) = user(&app, "alice").await;
    let (bob, bob_id) = user(&app, "bob").await;
    make_contacts(&app, &alice, &bob, "bob").await;
    let mut a = Client::connect(&app, &alice).await;
    let conv = open_conversation(&mut a, &bob_id, "r1").await;
    let mut b = Client::connect(&app, &bob).await;
    let past_the_end = json!({"type": "read", "conversation_id": conv, "seq": 1000});
    for _ in 0..10 {
        b.send(past_the_end.clone()).await;
    }
    for _ in 0..10 {
        let r = b.next_of("receipt").await;
        assert_eq!((r["user_id"].as_str(), r["read_seq"].as_i64()), (Some(bob_id.as_str()), Some(1)), "{r}");
    }
    // Then a real read of a new message: Alice heard the marker move to 1 once, and
    // maybe delivered markers, not ten receipts.
    a.send_to_conv("r2", &conv, "two").await;
    a.next_of("ack").await;
    b.read_until("message 2", |d| d.by_seq.get(&conv).is_some_and(|s| s.contains_key(&2))).await;
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 2})).await;
    let mut before = 0;
    loop {
        let r = a.next_of("receipt").await;
        if r["read_seq"] == 2 {
            break;
        }
        before += 1;
    }
    assert!(before <= 3, "{before} receipts for reads that moved nothing");
    // A flood: past the burst, reads are refused as too fast.
    for _ in 0..60 {
        b.send(past_the_end.clone()).await;
    }
    let err = b.next_of("error").await;
    assert_eq!(err["code"], "rate_limited", "{err}");
}

#[tokio::test]
async fn receipts_typing_and_presence_reach_the_other_side_sqlite() {
    receipts_typing_and_presence_reach_the_other_side(Backend::Sqlite).await;
}

/// On PostgreSQL a batch's delivered markers (raised with their messages) are merged
/// with its other receipts (`writer::write_in_txn`): the same behaviour.
#[tokio::test]
async fn receipts_typing_and_presence_reach_the_other_side_postgres() {
    receipts_typing_and_presence_reach_the_other_side(Backend::Postgres).await;
}

/// The peer's markers in the one conversation of `token`'s user, as their conversation
/// list has them (what a reloaded page shows): (delivered, read).
async fn peer_markers(app: &TestApp, token: &str) -> (Option<i64>, Option<i64>) {
    let list = app.get_json("/api/conversations", token).await;
    assert_eq!(list["conversations"].as_array().map(Vec::len), Some(1), "{list}");
    assert!(list["conversations"][0]["peer"]["username"].is_string(), "{list}");
    (list["conversations"][0]["peer_delivered_seq"].as_i64(), list["conversations"][0]["peer_read_seq"].as_i64())
}

async fn receipts_typing_and_presence_reach_the_other_side(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (alice, alice_id) = user(&app, "alice").await;
    let (bob, bob_id) = user(&app, "bob").await;
    make_contacts(&app, &alice, &bob, "bob").await;
    let mut a = Client::connect(&app, &alice).await;
    let conv = open_conversation(&mut a, &bob_id, "r1").await;
    // Bob has no connection: nothing was delivered to him.
    assert_eq!(peer_markers(&app, &alice).await, (Some(0), Some(0)), "delivered while offline");
    let mut b = Client::connect(&app, &bob).await;
    // Bob's new connection is told Alice is online; Alice is told Bob came online.
    let p = b.next_of("presence").await;
    assert_eq!((p["user_id"].as_str(), p["online"].as_bool()), (Some(alice_id.as_str()), Some(true)));
    let p = a.next_of("presence").await;
    assert_eq!((p["user_id"].as_str(), p["online"].as_bool()), (Some(bob_id.as_str()), Some(true)));

    a.send_to_conv("r2", &conv, "are you there?").await;
    let c = conv.clone();
    b.read_until("message 2", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&2))).await;
    // Delivered to Bob's device → Alice sees delivered_seq 2, and it is stored.
    loop {
        let r = a.next_of("receipt").await;
        if r["user_id"] == bob_id.as_str() && r["delivered_seq"] == 2 {
            assert_eq!(r["read_seq"], 0, "{r}");
            break;
        }
    }
    assert_eq!(peer_markers(&app, &alice).await, (Some(2), Some(0)), "the delivered marker as stored");
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 2})).await;
    loop {
        let r = a.next_of("receipt").await;
        if r["user_id"] == bob_id.as_str() && r["read_seq"] == 2 {
            break;
        }
    }
    // Bob's own devices get his read marker too: take that one first, so the next receipt
    // Bob gets is the answer to the read below (nothing else sends him receipts here).
    let r = b.next_of("receipt").await;
    assert_eq!((r["user_id"].as_str(), r["read_seq"].as_i64()), (Some(bob_id.as_str()), Some(2)), "{r}");
    // Reading past the end is capped at the last seq: exactly 2, not 99 (and present).
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 99})).await;
    let r = b.next_of("receipt").await;
    assert_eq!(
        (r["conversation_id"].as_str(), r["user_id"].as_str(), r["read_seq"].as_i64()),
        (Some(conv.as_str()), Some(bob_id.as_str()), Some(2)),
        "{r}"
    );
    let list = app.get_json("/api/conversations", &bob).await;
    assert_eq!(list["conversations"][0]["unread"], 0);
    assert_eq!(list["conversations"][0]["last_message"]["body"], "are you there?");
    // What a reloaded page needs to mark Alice's messages read.
    assert_eq!(peer_markers(&app, &alice).await, (Some(2), Some(2)));

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

/// How long a sender waits for an answer before resending (a failed session actor loses
/// the frames in its mailbox: they get no answer at all).
const RESEND_AFTER: Duration = Duration::from_millis(1500);

/// Waits until every client_msg_id in `unacked` (→ when it was last sent) is acknowledged,
/// resending it with the same client_msg_id and body as a real client does: after an
/// `error` that says "resend" (`not_acknowledged`, `unavailable`), after [`RESEND_AFTER`]
/// without an answer, and all of them after a reconnect if the server closed the socket.
/// Fails after 60 s. Returns how many times it reconnected.
async fn until_acked(
    app: &TestApp,
    token: &str,
    dev: &mut Client,
    conv: &str,
    unacked: &mut HashMap<String, tokio::time::Instant>,
) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut reconnects = 0;
    while !unacked.is_empty() {
        let mut waiting: Vec<&String> = unacked.keys().collect();
        waiting.sort();
        assert!(tokio::time::Instant::now() < deadline, "not acknowledged within 60 s, resends and all: {waiting:?}");
        if dev.closed.is_some() {
            let mut fresh = Client::connect(app, token).await;
            fresh.acks = std::mem::take(&mut dev.acks); // later acks must match the earlier ones
            *dev = fresh;
            reconnects += 1;
            for (cid, at) in unacked.iter_mut() {
                dev.send_to_conv(cid, conv, &body_of(cid)).await;
                *at = tokio::time::Instant::now();
            }
            continue;
        }
        let oldest = unacked.values().min().copied().expect("something unacked");
        let wait = (oldest + RESEND_AFTER).saturating_duration_since(tokio::time::Instant::now());
        match dev.read_one(wait).await {
            Some(f) if f["type"] == "ack" => {
                unacked.remove(f["client_msg_id"].as_str().expect("client_msg_id"));
            }
            Some(f) if f["type"] == "error" => {
                // Only "resend later" may answer a well-formed send between contacts.
                assert!(matches!(f["code"].as_str(), Some("not_acknowledged" | "unavailable")), "{f}");
                let cid = f["ref"].as_str().expect("the error names the send");
                if let Some(at) = unacked.get_mut(cid) {
                    dev.send_to_conv(cid, conv, &body_of(cid)).await;
                    *at = tokio::time::Instant::now();
                }
            }
            Some(_) => {}
            None if dev.closed.is_some() => {} // reconnect above
            None => {
                for (cid, at) in unacked.iter_mut() {
                    if at.elapsed() >= RESEND_AFTER {
                        dev.send_to_conv(cid, conv, &body_of(cid)).await;
                        *at = tokio::time::Instant::now();
                    }
                }
            }
        }
    }
    reconnects
}

/// Sends messages `m<k>` for each k in `ks` to `conv` and resends until every one is
/// acked (see [`until_acked`]); with `kill`, that actor is killed once half are sent.
/// Returns how many times the client reconnected.
async fn send_acked(
    app: &TestApp,
    token: &str,
    dev: &mut Client,
    conv: &str,
    ks: std::ops::Range<usize>,
    kill: Option<(&str, &str, &str)>,
) -> u32 {
    let half = ks.start + ks.len() / 2;
    let mut unacked = HashMap::new();
    for k in ks {
        if k == half
            && let Some(victim) = kill
        {
            inject(app, token, victim, "kill").await;
        }
        let cid = format!("m{k}");
        dev.send_to_conv(&cid, conv, &body_of(&cid)).await;
        unacked.insert(cid, tokio::time::Instant::now());
    }
    until_acked(app, token, dev, conv, &mut unacked).await
}

/// Reads `dev` until it holds seqs 1..=`upto` of `conv`. If the server closed the socket,
/// this client does what a real one does: reconnects and syncs (from scratch, so its new
/// arrivals are the whole conversation in order); the old socket's live arrivals are
/// checked for order first. Returns how many times it reconnected.
async fn read_all(app: &TestApp, token: &str, dev: &mut Client, conv: &str, upto: i64) -> u32 {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    let mut reconnects = 0;
    loop {
        let have = dev.by_seq.get(conv).map_or(0, |s| s.len() as i64);
        if have >= upto {
            break;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "{have} of {upto} messages arrived within {FRAME_TIMEOUT:?}");
        if dev.read_one(left).await.is_none() && dev.closed.is_some() {
            dev.assert_in_order();
            let mut fresh = Client::connect(app, token).await;
            fresh.send(json!({"type": "sync"})).await;
            fresh.next_of("sync_done").await;
            *dev = fresh;
            reconnects += 1;
        }
    }
    reconnects
}

/// The protocol's promise for live delivery on one connection: in seq order and gap-free.
/// A message may come again after a server-side restart (at-least-once; the Client checks
/// a repeat has the same id), but a seq never comes before every seq below it did.
fn assert_gap_free(dev: &Client, conv: &str) {
    let mut highest = 0;
    for (_, seq) in dev.arrivals.iter().filter(|(c, _)| c == conv) {
        assert!(*seq <= highest + 1, "seq {seq} arrived when the highest so far was {highest}: a gap");
        highest = highest.max(*seq);
    }
}

/// The registry name of the one session actor of `user`, once it is running.
async fn session_of(node: &switchboard_actors::node::Node, user: UserId) -> String {
    eventually("one running session actor", async || match node.ctx.connections_of(user).as_slice() {
        [conn] => {
            let name = node.ctx.name("session", conn.id);
            ractor::registry::where_is(name.clone())
                .is_some_and(|cell| cell.get_status() == ractor::ActorStatus::Running)
                .then_some(name)
        }
        _ => None,
    })
    .await
}

/// Injects `fault` (`kill`, or `panic` in its next message's handler) into the running
/// actor `name` (of `kind`, with `id`) through the operator endpoint. Waits first until the
/// actor runs (past `pre_start`): a kill then tests a restart, not a failed start.
pub(crate) async fn inject(app: &TestApp, token: &str, (kind, id, name): (&str, &str, &str), fault: &str) {
    let n = name.to_owned();
    eventually("the victim running", async || {
        ractor::registry::where_is(n.clone())
            .is_some_and(|c| c.get_status() == ractor::ActorStatus::Running)
            .then_some(())
    })
    .await;
    let r = app
        .client
        .post(app.url("/api/debug/faults"))
        .bearer_auth(token)
        .json(&json!({"kind": kind, "id": id, "fault": fault}))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "{fault} {name}");
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
    let (alice_uid, bob_uid) = (UserId::parse(&alice_id).expect("uuid"), UserId::parse(&bob_id).expect("uuid"));

    // Rounds: Alice sends a batch of messages and the room, Alice's session or Bob's
    // session (in turn) fails with work in flight. Either it is killed once half the batch
    // is sent and none acked (the kill goes out while the server works on those), or it is
    // armed to panic in its next message's handler, which is then one of this batch's (a
    // send for the room and Alice's session, its event for Bob's): that one is lost inside
    // the actor, with its mailbox. Alice resends whatever is not acked (same
    // client_msg_id) until all is. Between rounds, both clients have everything acked so
    // far, and the next victim runs again: one failure at a time.
    let (rounds, batch) = (24usize, 10usize);
    let mut faults: HashMap<String, u64> = HashMap::new();
    let (mut a_reconnects, mut b_reconnects) = (0, 0);
    for round in 0..rounds {
        let (kind, id, name) = match round % 3 {
            0 => ("room", conv.clone(), room_name.clone()),
            r => {
                let name = session_of(&node, if r == 1 { alice_uid } else { bob_uid }).await;
                let id = name.rsplit_once("session:").expect("a session's name").1.to_owned();
                ("session", id, name)
            }
        };
        let victim = (kind, id.as_str(), name.as_str());
        let fault = if round / 3 % 2 == 0 { "kill" } else { "panic" };
        *faults.entry(name.clone()).or_default() += 1;
        if fault == "panic" {
            inject(&app, &alice, victim, fault).await;
        }
        let kill = (fault == "kill").then_some(victim);
        a_reconnects += send_acked(&app, &alice, &mut a, &conv, round * batch..(round + 1) * batch, kill).await;
        let upto = 1 + ((round + 1) * batch) as i64;
        b_reconnects += read_all(&app, &bob, &mut b, &conv, upto).await;
        if a_reconnects == 0 {
            read_all(&app, &alice, &mut a, &conv, upto).await;
        }
    }
    let total = 1 + (rounds * batch) as i64;

    // Every message was acknowledged, each with its own seq: 1..=total (a resend's ack
    // named the first ack's id and seq, or the Client would have failed).
    assert_eq!(a.acks.len() as i64, total, "every message was eventually acknowledged");
    let mut acked: Vec<(i64, String)> = a.acks.values().map(|(id, seq)| (*seq, id.clone())).collect();
    acked.sort();
    assert_eq!(acked.iter().map(|(s, _)| *s).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
    // Bob, a live reader all along, got every acked message exactly once, as acked, in
    // order and without gaps (live delivery on one connection promises that across actor
    // restarts: the restarted session resumes after the last seq it queued to the socket).
    // Were his socket closed, his reconnected client synced everything in order instead.
    b.assert_complete(&conv, total);
    b.assert_in_order();
    let seqs: Vec<i64> = b.arrivals.iter().map(|(_, s)| *s).collect();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "each message once, in order ({b_reconnects} reconnects)");
    for (seq, id) in &acked {
        assert_eq!(b.by_seq[&conv].get(seq), Some(id), "acked seq {seq} reached bob as the acked message");
    }
    // Alice's own socket got them all too, in order and gap-free (a message may come
    // twice there: her session also fails, and a failure while it catches her up from
    // the database repeats what it had queued).
    if a_reconnects == 0 {
        a.assert_complete(&conv, total);
        assert_gap_free(&a, &conv);
    }
    // Stored once each.
    let page: Value = history(&app, &alice, &conv, "?limit=500").await.json().await.expect("json");
    assert_eq!(page["last_seq"], total, "no duplicates in the database");
    let stored: Vec<(i64, String)> = page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| (m["seq"].as_i64().expect("seq"), m["id"].as_str().expect("id").to_owned()))
        .collect();
    assert_eq!(stored, acked, "the database holds exactly the acked messages");

    // Every failure was followed by one restart by the right supervisor.
    assert_eq!(faults.values().sum::<u64>(), rounds as u64);
    for (name, k) in &faults {
        let which = if name == &room_name { "rooms" } else { "sessions" };
        let (n, name, k) = (node.clone(), name.clone(), *k);
        eventually(&format!("{k} restarts of {name}"), move || {
            let (n, name) = (n.clone(), name.clone());
            async move {
                let stats = n.stats(which).await?;
                (stats.restarts_by_key.get(&name).copied().unwrap_or(0) == k).then_some(())
            }
        })
        .await;
    }
}

/// Sessions idle for a second hibernate (checked every second).
fn hibernate_fast(c: &mut Config) {
    c.messaging.hibernate_secs = 1;
    c.messaging.heartbeat_secs = 1;
}

/// [`hibernate_fast`], with fault injection on.
fn hibernate_fast_with_faults(c: &mut Config) {
    hibernate_fast(c);
    c.fault_injection = true;
}

/// Waits until every connection of `users` on the node hibernates (no session actor).
async fn until_parked(node: &switchboard_actors::node::Node, users: &[UserId]) {
    eventually("the sessions hibernating", async || {
        users
            .iter()
            .all(|u| {
                let conns = node.ctx.connections_of(*u);
                !conns.is_empty() && conns.iter().all(|c| c.is_parked())
            })
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_hibernating_session_gets_frames_without_waking_and_wakes_for_messages() {
    let app = spawn_app_with(Backend::Sqlite, hibernate_fast).await;
    let Contacts { alice, alice_id, alice_uid, bob, bob_id, bob_uid } = contacts(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let conv = open_conversation(&mut a, &bob_id, "m0").await;
    b.read_until("the first message", |d| d.by_seq.get(&conv).is_some_and(|s| s.len() == 1)).await;
    let node = app.node.clone();
    until_parked(&node, &[alice_uid, bob_uid]).await;
    // Parked means no actor: the sessions supervisor has no children left.
    assert_eq!(node.stats("sessions").await.expect("stats").children, 0, "no session actor while parked");

    // Alice types: her session wakes for her frame; Bob's hibernating one passes the
    // typing event to his socket without an actor.
    a.send(json!({"type": "typing", "conversation_id": conv, "active": true})).await;
    let typing = b.next_of("typing").await;
    assert_eq!(typing["user_id"], alice_id.as_str());
    assert!(
        node.ctx.connections_of(bob_uid).iter().all(|c| c.is_parked()),
        "a typing event does not wake Bob's session"
    );

    // Messages wake it: every one arrives, in order, once; each is acknowledged.
    for k in 1..=20 {
        let cid = format!("m{k}");
        a.send_to_conv(&cid, &conv, &body_of(&cid)).await;
    }
    a.read_until("21 acks", |d| d.acks.len() == 21).await;
    b.read_until("21 messages", |d| d.by_seq.get(&conv).is_some_and(|s| s.len() == 21)).await;
    b.assert_complete(&conv, 21);
    b.assert_in_order();
    // ...and Alice hears they were delivered (Bob's woken session wrote the marker).
    let receipt = |field: &'static str| {
        let bob_id = bob_id.clone();
        move |d: &Client| {
            d.others.iter().any(|f| f["type"] == "receipt" && f["user_id"] == bob_id.as_str() && f[field] == 21)
        }
    };
    a.read_until("the delivered receipt", receipt("delivered_seq")).await;

    // Asleep again: Alice stops typing; her woken session forwards that, although it
    // does not remember having forwarded "typing" before it slept.
    until_parked(&node, &[alice_uid, bob_uid]).await;
    a.send(json!({"type": "typing", "conversation_id": conv, "active": false})).await;
    assert_eq!(b.next_of("typing").await["active"], false, "the stop reaches Bob");

    // Asleep again, then a sync (a frame) and a read wake Bob's session and are served.
    until_parked(&node, &[alice_uid, bob_uid]).await;
    b.send(json!({"type": "read", "conversation_id": conv, "seq": 21})).await;
    a.read_until("the read receipt", receipt("read_seq")).await;
    until_parked(&node, &[alice_uid, bob_uid]).await;
    let mut b2 = Client::connect(&app, &bob).await;
    b2.send(json!({"type": "sync"})).await;
    b2.next_of("sync_done").await;
    b2.assert_complete(&conv, 21);
    // A closed parked connection is taken back: the other one stays.
    until_parked(&node, &[bob_uid]).await;
    drop(b2);
    eventually("one connection of Bob", async || (node.ctx.connections_here(bob_uid) == 1).then_some(())).await;
    a.send_to_conv("m22", &conv, &body_of("m22")).await;
    b.read_until("22 messages", |d| d.by_seq.get(&conv).is_some_and(|s| s.len() == 22)).await;
}

/// Alice and Bob, contacts: their tokens and ids.
struct Contacts {
    alice: String,
    alice_id: String,
    alice_uid: UserId,
    bob: String,
    bob_id: String,
    bob_uid: UserId,
}

async fn contacts(app: &TestApp) -> Contacts {
    let (alice, alice_id) = user(app, "alice").await;
    let (bob, bob_id) = user(app, "bob").await;
    make_contacts(app, &alice, &bob, "bob").await;
    let (alice_uid, bob_uid) = (UserId::parse(&alice_id).expect("uuid"), UserId::parse(&bob_id).expect("uuid"));
    Contacts { alice, alice_id, alice_uid, bob, bob_id, bob_uid }
}

/// Alice and Bob, contacts, each with one socket, both sessions hibernating; Bob has seen
/// Alice online.
async fn parked_pair(app: &TestApp) -> (Client, Client, UserId, String) {
    let Contacts { alice, alice_id, alice_uid, bob, bob_uid, .. } = contacts(app).await;
    let mut b = Client::connect(app, &bob).await;
    let a = Client::connect(app, &alice).await;
    b.read_until("Alice online", |d| {
        d.others.iter().any(|f| f["type"] == "presence" && f["user_id"] == alice_id.as_str() && f["online"] == true)
    })
    .await;
    until_parked(&app.node, &[alice_uid, bob_uid]).await;
    (a, b, alice_uid, alice_id)
}

/// Until Alice's socket is closed with 1013 ("try again later"), Bob hears she went
/// offline, and her connection and session are gone.
async fn until_taken_back(app: &TestApp, a: &mut Client, b: &mut Client, alice_uid: UserId, alice_id: &str) {
    let closed = a.closed_within(FRAME_TIMEOUT).await.expect("closed");
    assert_eq!(closed.0, 1013, "{closed:?}");
    b.read_until("Alice offline", |d| {
        d.others.iter().any(|f| f["type"] == "presence" && f["user_id"] == alice_id && f["online"] == false)
    })
    .await;
    let node = app.node.clone();
    eventually("Alice's connection taken back", async || {
        (node.ctx.connections_here(alice_uid) == 0 && node.stats("sessions").await?.children == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_flood_at_a_waking_session_closes_it_and_takes_it_back() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        hibernate_fast(c);
        c.messaging.outbound_queue = 16;
    })
    .await;
    let (mut a, mut b, alice_uid, alice_id) = parked_pair(&app).await;
    // Far more frames at once than a waking session may have queued (the reader lets 32
    // be in flight, the queue holds 16): the socket closes (1013), and the close, queued
    // past the bound, still takes the connection back.
    for _ in 0..400 {
        a.ws.feed(Message::text(json!({"type": "ping"}).to_string())).await.expect("queued");
    }
    a.ws.flush().await.expect("written");
    until_taken_back(&app, &mut a, &mut b, alice_uid, &alice_id).await;
}

#[tokio::test]
async fn a_session_that_cannot_wake_is_closed_and_taken_back() {
    let app = spawn_app_with(Backend::Sqlite, hibernate_fast_with_faults).await;
    let (mut a, mut b, alice_uid, alice_id) = parked_pair(&app).await;
    // The sessions supervisor fails on its next message, the start of Alice's woken
    // session: the socket closes, and the user is unbound and offline, not left online
    // with a queue nobody takes.
    let sup = app.node.ctx.supervisor_name("sessions");
    assert!(app.node.ctx.faults.arm(&sup, Fault::Panic), "armed");
    a.send(json!({"type": "ping"})).await;
    until_taken_back(&app, &mut a, &mut b, alice_uid, &alice_id).await;
}

/// The server's close frame reaches a client that writes while it is in flight: the
/// server reads on until the client's close reply instead of dropping the socket, which
/// the kernel would answer with a reset, and the client, owing a pong for a ping read
/// before the close, would see 1006 instead of 1013 (a flake of the test above).
#[tokio::test]
async fn a_close_frame_survives_a_client_writing_while_it_is_in_flight() {
    let app = spawn_app_with(Backend::Sqlite, hibernate_fast_with_faults).await;
    let (mut a, mut b, alice_uid, alice_id) = parked_pair(&app).await;
    assert!(app.node.ctx.faults.arm(&app.node.ctx.supervisor_name("sessions"), Fault::Panic), "armed");
    a.send(json!({"type": "ping"})).await;
    // Unread in Alice's socket: the heartbeat's pings, then the close frame with 1013.
    eventually("the close frame waiting in Alice's socket", async || {
        let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = a.ws.get_ref() else { return None };
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_millis(50), tcp.peek(&mut buf)).await.ok()?.ok()?;
        buf[..n].windows(4).any(|w| w[0] == 0x88 && w[2..] == [0x03, 0xF5]).then_some(())
    })
    .await;
    a.send(json!({"type": "ping"})).await;
    until_taken_back(&app, &mut a, &mut b, alice_uid, &alice_id).await;
}

#[tokio::test]
async fn hibernating_sessions_woken_and_killed_lose_nothing_acknowledged() {
    let app = spawn_app_with(Backend::Sqlite, hibernate_fast_with_faults).await;
    let Contacts { alice, alice_uid, bob, bob_id, bob_uid, .. } = contacts(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let conv = open_conversation(&mut a, &bob_id, "start").await;
    let node = app.node.clone();

    // Rounds: both sessions hibernate; then the one woken by a message (Alice's by her
    // send, Bob's by its event) fails: armed while asleep, it panics on the very message
    // that woke it (lost with its mailbox), or it is killed once half the batch is sent.
    // Alice resends whatever is not acked until all is; Bob reads everything.
    let (rounds, batch) = (8usize, 10usize);
    let (mut a_reconnects, mut b_reconnects) = (0, 0);
    for round in 0..rounds {
        if a_reconnects + b_reconnects == 0 {
            until_parked(&node, &[alice_uid, bob_uid]).await;
        }
        let victim = if round % 2 == 0 { alice_uid } else { bob_uid };
        let conn = node.ctx.connections_of(victim).pop().expect("a connection");
        let name = node.ctx.name("session", conn.id);
        let id = name.rsplit_once("session:").expect("a session's name").1.to_owned();
        let kill = round / 2 % 2 == 1;
        if !kill {
            assert!(node.ctx.faults.arm(&name, Fault::Panic), "armed");
        }
        let victim = kill.then_some(("session", id.as_str(), name.as_str()));
        a_reconnects += send_acked(&app, &alice, &mut a, &conv, round * batch..(round + 1) * batch, victim).await;
        let upto = 1 + ((round + 1) * batch) as i64;
        b_reconnects += read_all(&app, &bob, &mut b, &conv, upto).await;
    }
    let total = 1 + (rounds * batch) as i64;
    assert_eq!(a.acks.len() as i64, total, "every message was eventually acknowledged");
    let mut seqs: Vec<i64> = a.acks.values().map(|(_, seq)| *seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=total).collect::<Vec<_>>(), "each acked message has its own seq");
    b.assert_complete(&conv, total);
    b.assert_in_order();
    if b_reconnects == 0 {
        assert_gap_free(&b, &conv);
    }
    let page: Value = history(&app, &alice, &conv, "?limit=500").await.json().await.expect("json");
    assert_eq!(page["last_seq"], total, "no duplicates in the database");
    // Each failure was a restart of a woken session by its supervisor.
    let stats = node.stats("sessions").await.expect("stats");
    assert!(stats.restarts >= rounds as u64, "{} restarts for {rounds} failures", stats.restarts);
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
    while node.ctx.connections_here(bob_uid) > 0 {
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
    eventually("the server to let go of the socket of a client that stopped reading", async || {
        (!crate::helpers::tcp_established(app.addr.port(), bob_port)).then_some(())
    })
    .await;
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
    eventually("the node supervisor to restart the rooms supervisor", async || {
        node.stats("node").await.is_some_and(|s| s.restarts_by_key.get(&rooms) == Some(&1)).then_some(())
    })
    .await;
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
    eventually("two sessions", async || (node.ctx.connections_here(uid) == 2).then_some(())).await;
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        live.send(json!({"type": "ping"})).await;
        live.next_of("pong").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eventually("the silent one closed", async || (node.ctx.connections_here(uid) == 1).then_some(())).await;
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
    eventually("room running", async || ractor::registry::where_is(r.clone()).map(|_| ())).await;
    let r = room.clone();
    eventually("idle room stopped", async || ractor::registry::where_is(r.clone()).is_none().then_some(())).await;
    a.send_to_conv("i1", &conv, "wake up").await;
    a.read_until("ack", |d| d.acks.contains_key("i1")).await;
    assert_eq!(a.acks["i1"].1, 2, "the sequence continues from the database");
    let stats = app.node.stats("rooms").await.expect("stats");
    assert_eq!(stats.restarts, 0, "stopping when idle is not a failure");
    let mut b = Client::connect(&app, &bob).await;
    b.send(json!({"type": "sync"})).await;
    assert_eq!(b.next_of("sync_done").await["messages"], 2);
}

/// Issue 20: "last seen". When a contact's last connection closes, the others are told
/// when (a `presence` frame with `last_seen_at`), and the contacts list keeps it for
/// later; someone who is not a contact learns nothing.
#[tokio::test]
async fn contacts_see_when_someone_was_last_online() {
    let app = spawn_app().await;
    let (alice, _) = user(&app, "alice").await;
    let (bob, bob_id) = user(&app, "bob").await;
    make_contacts(&app, &alice, &bob, "bob").await;
    let mut a = Client::connect(&app, &alice).await;
    let b = Client::connect(&app, &bob).await;
    let p = a.next_of("presence").await;
    assert_eq!((p["user_id"].as_str(), p["online"].as_bool()), (Some(bob_id.as_str()), Some(true)));
    assert!(p.get("last_seen_at").is_none(), "online: no last seen");
    let before = chrono::Utc::now().timestamp_millis();
    drop(b);
    let p = a.next_of("presence").await;
    assert_eq!((p["user_id"].as_str(), p["online"].as_bool()), (Some(bob_id.as_str()), Some(false)));
    let seen = p["last_seen_at"].as_i64().expect("last_seen_at with the offline presence");
    assert!(seen >= before - 1000 && seen <= chrono::Utc::now().timestamp_millis(), "{seen}");
    let listed = eventually("the contacts list keeps it", async || {
        let contacts = app.get_json("/api/contacts", &alice).await;
        contacts["contacts"][0]["last_seen_at"].as_i64()
    })
    .await;
    assert_eq!(listed, seen);
    // Bob's own view of Alice (she never left) has none yet.
    let contacts = app.get_json("/api/contacts", &bob).await;
    assert!(contacts["contacts"][0]["last_seen_at"].is_null(), "{contacts}");
}

/// The per-user send, sync and read budgets are kept only while in use: the process's
/// housekeeping forgets a user whose budget is full again, so a node that runs for months
/// does not keep an entry for everyone who ever connected.
#[tokio::test]
async fn rate_budgets_of_idle_users_are_forgotten() {
    let app = spawn_app().await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    say(&mut a, "m1", "", &bob_id, "hello").await;
    // A sync takes one of a budget that refills at one a second.
    a.send(json!({"type": "sync"})).await;
    a.next_of("sync_done").await;
    assert!(app.node.ctx.prune_limiters() >= 1, "a budget in use is kept");
    eventually("the full budgets forgotten", async || (app.node.ctx.prune_limiters() == 0).then_some(())).await;
}

/// A sessions supervisor that fails is restarted empty: the sessions it ran died with it,
/// and nothing restarts them. Their sockets are closed at once (1011), also those of
/// clients that only listen, and taken back (unregistered, the users offline), so the
/// clients reconnect and sync instead of hearing nothing until their next frame. On the
/// multi-threaded runtime, where a socket's reader may run before the dying actors have
/// handled their kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_sessions_supervisor_closes_the_sockets_of_its_dead_sessions() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.fault_injection = true).await;
    let Contacts { alice, alice_uid, bob, bob_id, bob_uid, .. } = contacts(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let (_, conv) = say(&mut a, "m1", "", &bob_id, "hello").await;
    let c = conv.clone();
    b.read_until("m1", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&1))).await;
    // The supervisor fails on its next message (a question for its counters).
    let sup = app.node.ctx.supervisor_name("sessions");
    assert!(app.node.ctx.faults.arm(&sup, Fault::Panic), "armed");
    assert_eq!(app.node.stats("sessions").await, None, "the supervisor failed instead of answering");
    for dev in [&mut a, &mut b] {
        let closed = dev.closed_within(FRAME_TIMEOUT).await.expect("the socket closed");
        assert_eq!(closed.0, 1011, "{closed:?}");
    }
    let node = app.node.clone();
    eventually("both connections taken back", async || {
        (node.ctx.connections_here(alice_uid) + node.ctx.connections_here(bob_uid) == 0).then_some(())
    })
    .await;
    // The restarted supervisor serves the reconnections; what came meanwhile is synced.
    let mut a = Client::connect(&app, &alice).await;
    let (_, _) = say(&mut a, "m2", &conv, "", "still there?").await;
    let mut b = Client::connect(&app, &bob).await;
    b.send(json!({"type": "sync", "since": {conv.clone(): 1}})).await;
    let c = conv.clone();
    b.read_until("m2", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&2))).await;
    assert_eq!(node.stats("sessions").await.map(|s| s.children), Some(2), "one session each, under the new supervisor");
}
