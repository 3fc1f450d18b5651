//! Notifications: stored from bus events, counted, cleared by reading, streamed (SSE and
//! chat socket), private to their user, durable across a notify outage.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::cluster::connect;
use crate::cluster_support::Cluster;
use crate::helpers::{Api, TestApp, error_code, eventually, spawn_app_with};
use crate::ws_client::{Client, alice_and_bob, user};

async fn list(api: &impl Api, token: &str, query: &str) -> Value {
    api.get_json(&format!("/api/notifications{query}"), token).await
}

/// Every notification of the caller, newest first, following `next_before`.
async fn all_notifications(api: &impl Api, token: &str) -> Vec<Value> {
    let mut out = vec![];
    let mut query = "?limit=100".to_owned();
    loop {
        let page = list(api, token, &query).await;
        out.extend(page["notifications"].as_array().unwrap().iter().cloned());
        match page["next_before"].as_i64() {
            Some(b) => query = format!("?limit=100&before={b}"),
            None => return out,
        }
    }
}

/// One process: each message's notification is committed in the message's own
/// transaction, so after a crash in the middle of a stream of messages the notification
/// stands for exactly the messages stored. (Made by the notify consumer from the
/// in-process event feed, it lagged the messages and the newest were lost with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_stream_leaves_the_notification_matching_the_stored_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = crate::files::ServerProcess::start(dir.path(), None);
    let (alice, bob, bob_id) = alice_and_bob(&server).await;
    let (mut ws, _) = connect(server.addr, &alice).await.expect("alice connects");
    ws.send_to_user("m0", &bob_id, "message 0").await;
    let conv = ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    for i in 1..400 {
        ws.send_to_conv(&format!("m{i}"), &conv, &format!("message {i}")).await;
    }
    // Killed while the rest are being committed.
    let mut acked = 1;
    while acked < 100 {
        ws.next_of("ack").await;
        acked += 1;
    }
    let addr = server.addr;
    server.kill();
    let server = crate::files::ServerProcess::start(dir.path(), Some(addr));
    let convs = server.get_json("/api/conversations", &bob).await;
    let stored = convs["conversations"][0]["last_seq"].as_i64().unwrap_or_else(|| panic!("{convs}"));
    assert!(stored >= acked, "{stored} stored, {acked} acked");
    let page = list(&server, &bob, "?unread=true").await;
    assert_eq!(page["unread"]["total"], stored, "{page}");
    assert_eq!(page["unread"]["conversations"][&conv], stored, "{page}");
    let note = &page["notifications"][0];
    assert_eq!(
        (note["kind"].as_str(), note["count"].as_i64(), note["seq"].as_i64()),
        (Some("message"), Some(stored), Some(stored))
    );
    // The newest stored message (sends past the rate limit were refused, so not message
    // `stored - 1`).
    assert_eq!(note["payload"]["preview"], convs["conversations"][0]["last_message"]["body"], "{convs}");
}

async fn app() -> TestApp {
    spawn_app_with(crate::helpers::Backend::Sqlite, |c| c.fault_injection = true).await
}

/// One server-sent event: (event name, id, data).
type Sse = (String, Option<String>, Value);

/// A notification stream being read.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    pub async fn open(api: &impl Api, token: &str, last_event_id: Option<i64>) -> SseReader {
        let mut req = api.client().get(api.url("/api/notifications/stream")).bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        SseReader { resp: r, buf: String::new() }
    }

    /// True once the server has ended the stream; false if it is still open after
    /// `timeout` (events that come meanwhile are skipped).
    pub async fn ends_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Err(_) => return false,
                Ok(Ok(Some(_))) => continue,
                Ok(Ok(None) | Err(_)) => return true,
            }
        }
    }

    /// The next event; `None` when the stream ends (or nothing comes for 20 s).
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let (mut name, mut id, mut data) = (String::from("message"), None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Some((name, id, serde_json::from_str(&data).unwrap()));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(20), self.resp.chunk()).await.ok()?.ok()??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads until a notification that `done` accepts arrived; returns the notifications
    /// seen, checking that each event's id is its number.
    async fn notifications_until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut seen: Vec<Value> = vec![];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while !seen.last().is_some_and(&done) {
            assert!(tokio::time::Instant::now() < deadline, "the notification never came: {seen:?}");
            let (name, id, data) = self.next().await.unwrap_or_else(|| panic!("stream ended: {seen:?}"));
            if name == "notification" {
                assert_eq!(id.as_deref().map(|i| i.parse::<i64>().unwrap()), data["n"].as_i64());
                seen.push(data);
            }
        }
        seen
    }
}

/// The next `notification` frame on `ws` whose notification previews `preview`.
async fn notified_of(ws: &mut crate::ws_client::Client, preview: &str) -> Value {
    loop {
        let f = ws.next_of("notification").await;
        if f["notification"]["payload"]["preview"] == preview {
            return f;
        }
    }
}

/// The numbers of `notifications`.
fn numbers(notifications: &[Value]) -> Vec<i64> {
    notifications.iter().map(|n| n["n"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn messages_and_contact_requests_notify_and_reading_clears_them_sqlite() {
    messages_and_contact_requests_notify_and_reading_clears_them(crate::helpers::Backend::Sqlite).await;
}

/// On PostgreSQL in one process a batch's message notifications are recorded together
/// (`writer::record_inline`): the same behaviour.
#[tokio::test]
async fn messages_and_contact_requests_notify_and_reading_clears_them_postgres() {
    messages_and_contact_requests_notify_and_reading_clears_them(crate::helpers::Backend::Postgres).await;
}

async fn messages_and_contact_requests_notify_and_reading_clears_them(backend: crate::helpers::Backend) {
    let app = spawn_app_with(backend, |c| c.fault_injection = true).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    // Bob was asked, Alice was accepted.
    let n = eventually("contact notifications", || async {
        let b = list(&app, &bob, "").await;
        let a = list(&app, &alice, "").await;
        // Bob answered the request (accepted it): once that is handled, its notification
        // is read (issue 20).
        let done = b["notifications"].as_array()?.len() == 1 && b["notifications"][0]["read"] == true;
        (done && a["notifications"].as_array()?.len() == 1).then_some((a, b))
    })
    .await;
    assert_eq!(n.1["notifications"][0]["kind"], "contact_request");
    assert_eq!(n.1["notifications"][0]["payload"]["username"], "alice");
    assert_eq!(n.0["notifications"][0]["kind"], "contact_accepted");
    assert_eq!(n.0["notifications"][0]["payload"]["username"], "bob");

    let mut bob_ws = Client::connect(&app, &bob).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    alice_ws.send_to_user("m1", &bob_id, "hi <b>bob</b>").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    alice_ws.send_to_conv("m2", &conv, "second").await;
    alice_ws.next_of("ack").await;
    // The chat socket carries the notification and the counts.
    let frame = loop {
        let f = bob_ws.next_of("notification").await;
        if f["unread"]["conversations"][&conv] == 2 {
            break f;
        }
    };
    assert_eq!(frame["notification"]["kind"], "message");
    assert_eq!(frame["notification"]["payload"]["preview"], "second");
    // Who it is from, as the notification list shows it (names filled in when stored).
    assert_eq!(frame["notification"]["payload"]["sender_username"], "alice");
    assert!(frame["notification"]["payload"]["sender_display_name"].is_string(), "{frame}");
    assert_eq!(frame["unread"]["total"], 2);

    let page = list(&app, &bob, "?unread=true").await;
    assert_eq!(page["unread"]["total"], 2);
    // One notification for the conversation, standing for both messages, above the
    // (answered, so read) contact request (number 1).
    assert_eq!(page["notifications"].as_array().unwrap().len(), 1, "{page}");
    let page = list(&app, &bob, "").await;
    let notes = page["notifications"].as_array().unwrap();
    assert_eq!(notes.len(), 2, "{page}");
    assert_eq!((notes[0]["kind"].as_str(), notes[0]["count"].as_i64()), (Some("message"), Some(2)));
    assert_eq!((notes[0]["seq"].as_i64(), notes[0]["payload"]["preview"].as_str()), (Some(2), Some("second")));
    assert_eq!((notes[1]["kind"].as_str(), notes[1]["n"].as_i64()), (Some("contact_request"), Some(1)));
    assert!(notes[0]["n"].as_i64() > Some(1));

    // Reading up to seq 1 leaves one unread; a third message adds to it.
    bob_ws.send(json!({"type": "read", "conversation_id": conv, "seq": 1})).await;
    loop {
        let f = bob_ws.next_of("notification").await;
        if f["notification"].is_null() && f["unread"]["conversations"][&conv] == 1 {
            assert_eq!(f["unread"]["total"], 1);
            break;
        }
    }
    alice_ws.send_to_conv("m3", &conv, "third").await;
    alice_ws.next_of("ack").await;
    let f = notified_of(&mut bob_ws, "third").await;
    assert_eq!((f["notification"]["count"].as_i64(), f["unread"]["conversations"][&conv].as_i64()), (Some(2), Some(2)));
    assert_eq!(f["notification"]["id"], notes[0]["id"], "the same notification, updated");

    // Replying is not reading: Alice's next message makes three unread, and Alice does
    // not see Bob's read marker move.
    bob_ws.send_to_conv("b1", &conv, "reply").await;
    assert_eq!(bob_ws.next_of("ack").await["seq"], 4);
    alice_ws.send_to_conv("m4", &conv, "fourth").await;
    let f = notified_of(&mut bob_ws, "fourth").await;
    assert_eq!((f["notification"]["count"].as_i64(), f["unread"]["conversations"][&conv].as_i64()), (Some(3), Some(3)));
    assert_eq!(f["unread"]["total"], 3, "those three");
    let convs = app.get_json("/api/conversations", &alice).await;
    assert_eq!(convs["conversations"][0]["peer_read_seq"], 1, "{convs}");

    // Reading the conversation up to its last message clears its notification.
    bob_ws.send(json!({"type": "read", "conversation_id": conv, "seq": 5})).await;
    loop {
        let f = bob_ws.next_of("notification").await;
        if f["notification"].is_null() && f["unread"]["total"] == 0 {
            assert!(f["unread"]["conversations"].get(&conv).is_none());
            break;
        }
    }
    let page = list(&app, &bob, "?unread=true").await;
    assert_eq!(page["notifications"].as_array().unwrap().len(), 0, "{page}");
    // A message after that makes the read notification unread again, counting one.
    alice_ws.send_to_conv("m5", &conv, "fifth").await;
    alice_ws.next_of("ack").await;
    let f = notified_of(&mut bob_ws, "fifth").await;
    assert_eq!((f["notification"]["count"].as_i64(), f["notification"]["read"].as_bool()), (Some(1), Some(false)));
    let page = list(&app, &bob, "?unread=true").await;
    assert_eq!(page["notifications"][0]["payload"]["preview"], "fifth", "{page}");
    assert_eq!(page["unread"]["total"], 1, "{page}");

    let r = app.client().post(app.url("/api/notifications/read-all")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(list(&app, &bob, "").await["unread"]["total"], 0);
}

#[tokio::test]
async fn a_user_only_ever_sees_their_own_notifications() {
    let app = app().await;
    let (alice, bob, _) = alice_and_bob(&app).await;
    let (carol, _) = user(&app, "carol").await;
    let alices = eventually("alice's notification", || async {
        list(&app, &alice, "").await["notifications"].as_array().filter(|a| !a.is_empty()).cloned()
    })
    .await;
    let alice_notification = alices[0]["id"].as_str().unwrap().to_owned();
    // Bob and Carol cannot mark it, or see it.
    for token in [&bob, &carol] {
        let r = app
            .client()
            .post(app.url(&format!("/api/notifications/{alice_notification}/read")))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
        let mine = all_notifications(&app, token).await;
        assert!(mine.iter().all(|n| n["id"] != alice_notification.as_str()));
    }
    assert!(all_notifications(&app, &carol).await.is_empty());
    // It is still unread for Alice; garbage ids are 404, not 500.
    assert_eq!(list(&app, &alice, "?unread=true").await["unread"]["total"], 1);
    for bad in ["not-a-uuid", "00000000-0000-0000-0000-000000000000", "%00"] {
        let r = app
            .client()
            .post(app.url(&format!("/api/notifications/{bad}/read")))
            .bearer_auth(&bob)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{bad}");
    }
    for bad in ["?limit=0", "?limit=101", "?before=-1", "?unread=maybe"] {
        let r = app.client().get(app.url(&format!("/api/notifications{bad}"))).bearer_auth(&bob).send().await.unwrap();
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_query", "{bad}");
    }
    // Without a token: nothing.
    let r = app.client().get(app.url("/api/notifications/stream")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // A stream with someone else's Last-Event-ID still carries only the caller's own.
    let mut carol_stream = SseReader::open(&app, &carol, Some(0)).await;
    let (name, _, data) = carol_stream.next().await.unwrap();
    assert_eq!((name.as_str(), data["total"].as_i64()), ("unread", Some(0)));
}

#[tokio::test]
async fn a_killed_stream_actor_restarts_and_the_stream_resumes_in_order_without_repeats() {
    let app = app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut stream = SseReader::open(&app, &bob, None).await;
    // n = 1 is Alice's contact request.
    let mut seen = stream.notifications_until(|n| n["kind"] == "contact_request").await;
    let of_seq = |seq: i64| move |n: &Value| n["seq"] == seq;
    alice_ws.send_to_user("m0", &bob_id, "0").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    for i in 1..5 {
        alice_ws.send_to_conv(&format!("m{i}"), &conv, &format!("{i}")).await;
    }
    seen.extend(stream.notifications_until(of_seq(5)).await);

    let kill = app
        .client()
        .post(app.url("/api/debug/faults"))
        .bearer_auth(&bob)
        .json(&json!({"kind": "nstream", "id": bob_id, "fault": "kill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(kill.status(), StatusCode::NO_CONTENT);
    // The stream ends with its actor; messages keep coming meanwhile.
    for i in 5..10 {
        alice_ws.send_to_conv(&format!("m{i}"), &conv, &format!("{i}")).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some((name, _, data)) = stream.next().await {
        assert!(tokio::time::Instant::now() < deadline, "the stream did not end with its actor");
        if name == "notification" {
            seen.push(data);
        }
    }
    let restarts = eventually("the supervisor to restart the stream actor", || async {
        let v: Value = app
            .client()
            .get(app.url("/api/debug/supervisors"))
            .bearer_auth(&bob)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (v["notifications"]["restarts"].as_u64()? >= 1).then_some(())
    });
    restarts.await;
    // The browser reconnects with the last id it got: it gets the conversation's
    // notification as it is now (the messages sent while it was away), then live ones.
    let last = *numbers(&seen).last().unwrap();
    let mut stream = SseReader::open(&app, &bob, Some(last)).await;
    let caught_up = stream.notifications_until(|n| n["seq"].as_i64() >= Some(10)).await;
    assert!(caught_up.iter().all(|n| n["n"].as_i64() > Some(last)), "nothing from before the resume point");
    seen.extend(caught_up);
    for i in 10..15 {
        alice_ws.send_to_conv(&format!("m{i}"), &conv, &format!("{i}")).await;
    }
    seen.extend(stream.notifications_until(of_seq(15)).await);
    let ns = numbers(&seen);
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "in order, none twice: {ns:?}");
    let newest = seen.last().unwrap();
    assert_eq!((newest["count"].as_i64(), newest["payload"]["preview"].as_str()), (Some(15), Some("14")));
    let seqs: Vec<i64> = seen.iter().filter_map(|n| n["seq"].as_i64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "each change newer than the last: {seqs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_catches_up_after_an_outage_with_no_loss_and_no_duplicates() {
    let mut cluster = Cluster::start(1);
    let (alice, bob, bob_id) = alice_and_bob(&cluster).await;
    eventually("bob's contact request notification (answered, so read)", || async {
        let page = list(&cluster, &bob, "").await;
        (page["notifications"].as_array()?.len() == 1 && page["unread"]["total"] == 0).then_some(())
    })
    .await;
    cluster.kill("notify");
    let r = cluster.client().get(cluster.url("/api/notifications")).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::SERVICE_UNAVAILABLE).await, "service_unavailable");

    // Bob is offline; Alice sends 200 messages and five people ask Bob to be contacts.
    let (mut alice_ws, _) = connect(cluster.gateway(), &alice).await.expect("alice connects");
    alice_ws.send_to_user("m0", &bob_id, "0").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    for i in 1..200 {
        alice_ws.send_to_conv(&format!("m{i}"), &conv, &format!("message {i}")).await;
    }
    alice_ws.read_until("200 acks", |c| c.acks.len() == 200).await;
    let acked: HashSet<String> = alice_ws.acks.values().map(|(id, _)| id.clone()).collect();
    for k in 0..5 {
        let (t, _) = user(&cluster, &format!("fan{k}")).await;
        let r = cluster
            .client()
            .post(cluster.url("/api/contacts/requests"))
            .bearer_auth(&t)
            .json(&json!({"username": "bob"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
    }

    cluster.restart("notify");
    let all = eventually("bob's notifications to catch up", || async {
        let r =
            cluster.client().get(cluster.url("/api/notifications?unread=true")).bearer_auth(&bob).send().await.ok()?;
        let v: Value = r.json().await.ok()?;
        (v["unread"]["total"].as_i64()? >= 205).then_some(())
    });
    all.await;
    let notes = all_notifications(&cluster, &bob).await;
    let messages: Vec<&Value> = notes.iter().filter(|n| n["kind"] == "message").collect();
    let requests = notes.iter().filter(|n| n["kind"] == "contact_request").count();
    assert_eq!(messages.len(), 1, "one notification for the conversation");
    assert_eq!(requests, 6, "alice's and the five new requests");
    let last_acked = alice_ws.acks.values().find(|(_, seq)| *seq == 200).expect("seq 200 acked");
    assert_eq!(messages[0]["count"], 200, "standing for every acknowledged message once");
    assert_eq!(
        (messages[0]["seq"].as_i64(), messages[0]["payload"]["message_id"].as_str()),
        (Some(200), Some(last_acked.0.as_str()))
    );
    assert_eq!(acked.len(), 200);
    let ns: BTreeSet<i64> = notes.iter().map(|n| n["n"].as_i64().unwrap()).collect();
    assert_eq!(ns.len(), 7, "numbered without repeats");
    let page = list(&cluster, &bob, "").await;
    assert_eq!(page["unread"]["total"], 205, "200 messages and the five new requests");
    assert_eq!(page["unread"]["conversations"][&conv], 200);

    // Live again: a new message reaches Bob's socket as a notification frame.
    let (mut bob_ws, _) = connect(cluster.gateway(), &bob).await.expect("bob connects");
    alice_ws.send_to_conv("late", &conv, "are you back?").await;
    let f = loop {
        let f = bob_ws.next_of("notification").await;
        if f["notification"]["payload"]["preview"] == "are you back?" {
            break f;
        }
    };
    assert_eq!(f["unread"]["conversations"][&conv], 201);
}

#[tokio::test]
async fn only_the_newest_notifications_are_kept_per_user() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |c| c.notify.max_per_user = 10).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    alice_ws.send_to_user("m0", &bob_id, "0").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    // One message at a time, each a change of the conversation's notification (a number).
    for i in 1..15 {
        alice_ws.send_to_conv(&format!("m{i}"), &conv, &format!("{i}")).await;
        while bob_ws.next_of("notification").await["notification"]["seq"] != i + 1 {}
    }
    // The contact request (n = 1) has not changed within the newest 10 numbers: deleted.
    let notes = all_notifications(&app, &bob).await;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert_eq!((notes[0]["kind"].as_str(), notes[0]["count"].as_i64()), (Some("message"), Some(15)));
    assert!(notes[0]["n"].as_i64() >= Some(15), "{notes:?}");
    assert_eq!(list(&app, &bob, "").await["unread"]["total"], 15, "counts follow what is kept");
}

/// Issue 20: a contact request answered or withdrawn elsewhere stayed unread until "Mark
/// all read". Acting on it now clears its notification, on every device.
#[tokio::test]
async fn answering_or_withdrawing_a_request_clears_its_notification() {
    let app = app().await;
    let (alice, _) = user(&app, "alice").await;
    let (bob, _) = user(&app, "bob").await;
    let (carol, _) = user(&app, "carol").await;
    let request = |from: String, to: &'static str| {
        let app = &app;
        async move {
            let r = app
                .client()
                .post(app.url("/api/contacts/requests"))
                .bearer_auth(&from)
                .json(&serde_json::json!({"username": to}))
                .send()
                .await
                .expect("sent");
            assert_eq!(r.status(), StatusCode::CREATED);
            r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned()
        }
    };
    let unread = |token: String| {
        let app = &app;
        async move { list(app, &token, "?unread=true").await["unread"]["total"].as_i64() }
    };
    let from_alice = request(alice.clone(), "bob").await;
    let from_carol = request(carol.clone(), "bob").await;
    eventually("both requests notified", async || (unread(bob.clone()).await == Some(2)).then_some(())).await;
    // Bob declines Alice's on one device: that notification is read.
    let r = app
        .client()
        .post(app.url(&format!("/api/contacts/requests/{from_alice}/decline")))
        .bearer_auth(&bob)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    eventually("the declined request's notification is read", async || {
        (unread(bob.clone()).await == Some(1)).then_some(())
    })
    .await;
    // Carol withdraws hers: nothing is left unread.
    let r = app
        .client()
        .delete(app.url(&format!("/api/contacts/requests/{from_carol}")))
        .bearer_auth(&carol)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    eventually("the withdrawn request's notification is read", async || {
        (unread(bob.clone()).await == Some(0)).then_some(())
    })
    .await;
    let all = all_notifications(&app, &bob).await;
    assert_eq!(all.len(), 2, "kept, read: {all:?}");
    assert!(all.iter().all(|n| n["read"] == true), "{all:?}");
}

async fn put_mute(app: &TestApp, token: &str, conv: &str, body: Value) -> reqwest::Response {
    app.client
        .put(app.url(&format!("/api/conversations/{conv}/mute")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Reads `notification` frames until one's counts say `until` of them.
async fn counts_until(ws: &mut Client, mut until: impl FnMut(&Value) -> bool) -> Value {
    loop {
        let f = ws.next_of("notification").await;
        if until(&f["unread"]) {
            return f;
        }
    }
}

async fn a_muted_conversation_counts_unread_but_not_in_the_total(backend: crate::helpers::Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    alice_ws.send_to_user("m1", &bob_id, "first").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    counts_until(&mut bob_ws, |u| u["total"] == 1).await;

    // Bob mutes it: every device of his hears the counts, the conversation out of the total.
    let r = put_mute(&app, &bob, &conv, json!({"until": null})).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"conversation_id": conv, "until": null}));
    let f = counts_until(&mut bob_ws, |u| u["muted"].get(&conv).is_some()).await;
    assert_eq!(f["unread"]["total"], 0);
    assert_eq!(f["unread"]["conversations"][&conv], 1);

    // A new message counts in the conversation, not in the total.
    alice_ws.send_to_conv("m2", &conv, "second").await;
    let f = counts_until(&mut bob_ws, |u| u["conversations"][&conv] == 2).await;
    assert_eq!(f["unread"]["total"], 0, "muted: {f}");
    assert_eq!(f["unread"]["muted"], json!({&conv: null}));
    let listed = list(&app, &bob, "").await;
    assert_eq!(
        (listed["unread"]["total"].as_i64(), listed["unread"]["conversations"][&conv].as_i64()),
        (Some(0), Some(2))
    );
    let convs = app.get_json("/api/conversations", &bob).await;
    let c = &convs["conversations"][0];
    assert_eq!((c["muted"].as_bool(), c["muted_until"].as_i64(), c["unread"].as_u64()), (Some(true), None, Some(2)));
    // Alice's view is hers: not muted.
    let theirs = app.get_json("/api/conversations", &alice).await;
    assert_eq!(theirs["conversations"][0]["muted"], false);

    // Other notifications still count: a contact request from Carol.
    let (carol, _) = user(&app, "carol").await;
    let r = app
        .client
        .post(app.url("/api/contacts/requests"))
        .bearer_auth(&carol)
        .json(&json!({"username": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    counts_until(&mut bob_ws, |u| u["total"] == 1).await;

    // Unmuted: the two messages are back in the total.
    let r =
        app.client.delete(app.url(&format!("/api/conversations/{conv}/mute"))).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let f = counts_until(&mut bob_ws, |u| u["total"] == 3).await;
    assert_eq!(f["unread"]["muted"], json!({}));
    assert_eq!(app.get_json("/api/conversations", &bob).await["conversations"][0]["muted"], false);

    // A mute with an end: counted again once it ends (the counts are read at that time).
    let until = chrono_now_ms() + 1500;
    let r = put_mute(&app, &bob, &conv, json!({"until": until})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let convs = app.get_json("/api/conversations", &bob).await;
    assert_eq!(convs["conversations"][0]["muted_until"], until);
    assert_eq!(list(&app, &bob, "").await["unread"]["total"], 1);
    eventually("the mute to end", async || (list(&app, &bob, "").await["unread"]["total"] == 3).then_some(())).await;
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[tokio::test]
async fn a_muted_conversation_counts_unread_but_not_in_the_total_sqlite() {
    a_muted_conversation_counts_unread_but_not_in_the_total(crate::helpers::Backend::Sqlite).await;
}

#[tokio::test]
async fn a_muted_conversation_counts_unread_but_not_in_the_total_postgres() {
    a_muted_conversation_counts_unread_but_not_in_the_total(crate::helpers::Backend::Postgres).await;
}

#[tokio::test]
async fn only_a_participant_mutes_and_only_within_a_year() {
    let app = spawn_app_with(crate::helpers::Backend::Sqlite, |_| {}).await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let (carol, _) = user(&app, "carol").await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    alice_ws.send_to_user("m1", &bob_id, "hi").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();
    let now = chrono_now_ms();
    for until in [json!(now - 1000), json!(now + 367 * 86_400_000i64)] {
        let r = put_mute(&app, &alice, &conv, json!({"until": until})).await;
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_until", "until {until}");
    }
    for body in [json!({"until": "tomorrow"}), json!({"until": null, "forever": true}), json!({"until": 1.5})] {
        let r = put_mute(&app, &alice, &conv, body).await;
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_json");
    }
    // Carol is no participant: there is no such conversation for her.
    let r = put_mute(&app, &carol, &conv, json!({})).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = app
        .client
        .delete(app.url(&format!("/api/conversations/{conv}/mute")))
        .bearer_auth(&carol)
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    let r = put_mute(&app, &alice, "not-a-uuid", json!({})).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    // Nothing was muted by any of that.
    assert_eq!(app.get_json("/api/conversations", &alice).await["conversations"][0]["muted"], false);
    // `{}` mutes until unmuted; unmuting twice is fine.
    assert_eq!(put_mute(&app, &alice, &conv, json!({})).await.status(), StatusCode::OK);
    assert_eq!(app.get_json("/api/conversations", &alice).await["conversations"][0]["muted"], true);
    for _ in 0..2 {
        let r = app
            .client
            .delete(app.url(&format!("/api/conversations/{conv}/mute")))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
}
