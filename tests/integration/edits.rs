//! Edits and deletions of messages (issue 20): each is an entry of the conversation's seq
//! stream, so it reaches every device exactly once, live or through `sync`; history shows
//! each message as it is now; only the sender may change a message, within the rules.

use reqwest::StatusCode;
use sea_orm::{ConnectionTrait, Statement};
use serde_json::{Value, json};

use crate::helpers::{Api, Backend, TestApp, error_code, eventually, spawn_app_with};
use crate::ws_client::{Client, alice_and_bob, say};

async fn patch(app: &TestApp, token: &str, id: &str, body: Value) -> reqwest::Response {
    app.client.patch(app.url(&format!("/api/messages/{id}"))).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn delete(app: &TestApp, token: &str, id: &str) -> reqwest::Response {
    app.client.delete(app.url(&format!("/api/messages/{id}"))).bearer_auth(token).send().await.unwrap()
}

/// The message frames of `kind` `dev` got so far.
fn changes<'a>(dev: &'a Client, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    dev.message_frames.iter().filter(move |f| f["kind"] == kind)
}

/// Rows of the database `app` uses whose text holds `needle` (messages and notifications).
async fn stored_anywhere(app: &TestApp, needle: &str) -> i64 {
    let (messages, notifications) = stored_in(app, needle).await;
    messages + notifications
}

/// Rows whose text holds `needle`: (in `messages`, in `notifications`).
async fn stored_in(app: &TestApp, needle: &str) -> (i64, i64) {
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("db");
    let backend = db.get_database_backend();
    let like = format!("%{needle}%");
    let mut n = [0i64; 2];
    for (i, sql) in [
        "SELECT COUNT(*) AS n FROM messages WHERE body LIKE $1",
        "SELECT COUNT(*) AS n FROM notifications WHERE payload LIKE $1",
    ]
    .into_iter()
    .enumerate()
    {
        let row = db
            .query_one_raw(Statement::from_sql_and_values(backend, sql, [like.clone().into()]))
            .await
            .expect("query")
            .expect("a row");
        n[i] = row.try_get::<i64>("", "n").expect("count");
    }
    (n[0], n[1])
}

#[tokio::test]
async fn edits_and_deletions_reach_every_device_once_and_history_shows_messages_as_they_are() {
    edits_and_deletions(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_edits_and_deletions_reach_every_device_once_and_history_shows_messages_as_they_are() {
    edits_and_deletions(Backend::Postgres).await
}

async fn edits_and_deletions(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let (m1, conv) = say(&mut a, "m1", "", &bob_id, "see you at teh station").await;
    let (m2, _) = say(&mut a, "m2", &conv, "", "the secret plan: meet at 42").await;
    // Bob's phone has both messages, then goes offline.
    let mut phone = Client::connect(&app, &bob).await;
    phone.send(json!({"type": "sync"})).await;
    assert_eq!(phone.next_of("sync_done").await["messages"], 2);
    drop(phone);

    // Alice corrects her typo: the answer is the message as it is now.
    let r = patch(&app, &alice, &m1, json!({"body": "see you at the station"})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let edited: Value = r.json().await.unwrap();
    assert_eq!((edited["id"].as_str(), edited["seq"].as_i64()), (Some(m1.as_str()), Some(1)));
    assert_eq!(edited["body"], "see you at the station");
    assert!(edited["edited_at"].as_i64().is_some(), "{edited}");
    assert_eq!(edited["deleted"], false);
    // Both users' open devices get it as the next entry of the stream.
    let c = conv.clone();
    b.read_until("the edit", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&3))).await;
    let e = changes(&b, "edit").next().expect("an edit frame").clone();
    assert_eq!((e["target_id"].as_str(), e["seq"].as_i64()), (Some(m1.as_str()), Some(3)));
    assert_eq!(e["body"], "see you at the station");
    let c = conv.clone();
    a.read_until("her own edit", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&3))).await;

    // Only the sender changes a message; to anyone else it is not there.
    let r = patch(&app, &bob, &m1, json!({"body": "hijacked"})).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    assert_eq!(error_code(delete(&app, &bob, &m1).await, StatusCode::NOT_FOUND).await, "not_found");
    let (carol, _) = crate::ws_client::user(&app, "carol").await;
    assert_eq!(error_code(delete(&app, &carol, &m1).await, StatusCode::NOT_FOUND).await, "not_found");
    let nobody = uuid::Uuid::now_v7().to_string();
    assert_eq!(error_code(delete(&app, &alice, &nobody).await, StatusCode::NOT_FOUND).await, "not_found");
    assert_eq!(error_code(delete(&app, &alice, "not-a-uuid").await, StatusCode::NOT_FOUND).await, "not_found");
    // An edit entry is not a message of its own.
    let edit_entry = e["id"].as_str().unwrap().to_owned();
    assert_eq!(error_code(delete(&app, &alice, &edit_entry).await, StatusCode::NOT_FOUND).await, "not_found");
    // Bad text is refused as a sent message's would be.
    for (body, code) in [
        (json!({"body": "   "}), "empty_body"),
        (json!({"body": "a\u{0}b"}), "invalid_body"),
        (json!({"body": "x".repeat(16 * 1024 + 1)}), "body_too_large"),
    ] {
        assert_eq!(error_code(patch(&app, &alice, &m1, body).await, StatusCode::BAD_REQUEST).await, code);
    }
    let r = patch(&app, &alice, &m1, json!({"body": "ok", "sender_id": bob_id})).await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST, "unknown fields are refused");

    // Bob's notification shows the newest message, until it is deleted.
    let before = eventually("Bob's notification of the second message", async || {
        let n = app.get_json("/api/notifications", &bob).await;
        let item = n["notifications"].as_array()?.iter().find(|i| i["kind"] == "message")?.clone();
        (item["payload"]["message_id"] == m2.as_str()).then_some(item)
    })
    .await;
    // Alice deletes the other message, twice (the second is done already).
    assert_eq!(delete(&app, &alice, &m2).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(delete(&app, &alice, &m2).await.status(), StatusCode::NO_CONTENT);
    let r = patch(&app, &alice, &m2, json!({"body": "back"})).await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "conflict");
    let c = conv.clone();
    b.read_until("the deletion", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&4))).await;
    let d = changes(&b, "delete").next().expect("a delete frame").clone();
    assert_eq!(
        (d["target_id"].as_str(), d["seq"].as_i64(), d["body"].as_str()),
        (Some(m2.as_str()), Some(4), Some(""))
    );

    // History shows each message as it is now, without the change entries.
    let page = app.get_json(&format!("/api/conversations/{conv}/messages"), &bob).await;
    assert_eq!(page["last_seq"], 4);
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{page}");
    assert_eq!((msgs[0]["body"].as_str(), msgs[0]["deleted"].as_bool()), (Some("see you at the station"), Some(false)));
    assert!(msgs[0]["edited_at"].as_i64().is_some());
    assert_eq!(
        (msgs[1]["id"].as_str(), msgs[1]["body"].as_str(), msgs[1]["deleted"].as_bool()),
        (Some(m2.as_str()), Some(""), Some(true))
    );
    let list = app.get_json("/api/conversations", &bob).await;
    let last = &list["conversations"][0]["last_message"];
    assert_eq!((last["id"].as_str(), last["deleted"].as_bool()), (Some(m2.as_str()), Some(true)), "{list}");

    // The phone comes back: exactly the two changes, in order; a fresh device gets it all.
    let mut phone = Client::connect(&app, &bob).await;
    phone.send(json!({"type": "sync", "since": {conv.clone(): 2}})).await;
    assert_eq!(phone.next_of("sync_done").await["messages"], 2);
    let kinds: Vec<(&str, i64)> =
        phone.message_frames.iter().map(|f| (f["kind"].as_str().unwrap(), f["seq"].as_i64().unwrap())).collect();
    assert_eq!(kinds, [("edit", 3), ("delete", 4)]);
    let mut fresh = Client::connect(&app, &bob).await;
    fresh.send(json!({"type": "sync"})).await;
    assert_eq!(fresh.next_of("sync_done").await["messages"], 4);
    fresh.assert_complete(&conv, 4);
    let first = &fresh.message_frames[0];
    assert_eq!((first["body"].as_str(), first["edited_at"].is_i64()), (Some("see you at the station"), true));
    assert_eq!(fresh.message_frames[1]["deleted"], true);
    // Every device got each entry once.
    for dev in [&b, &fresh] {
        dev.assert_in_order();
        assert_eq!(dev.arrivals.len(), 4);
    }

    // The deleted text is kept nowhere: not in the message, not in Bob's notification.
    let notified = eventually("Bob's notification follows the deletion", async || {
        let n = app.get_json("/api/notifications", &bob).await;
        let item = n["notifications"].as_array()?.iter().find(|i| i["kind"] == "message")?.clone();
        (item["payload"]["deleted"] == true).then_some(item)
    })
    .await;
    assert_eq!(notified["payload"]["preview"], "");
    assert!(notified["n"].as_i64() > before["n"].as_i64(), "the change has a new number, so streams resume with it");
    let after = app.get_json(&format!("/api/notifications?after={}", before["n"]), &bob).await;
    assert_eq!(after["notifications"][0]["payload"]["deleted"], true, "{after}");
    assert_eq!(stored_anywhere(&app, "secret plan").await, 0);
    assert_eq!(stored_anywhere(&app, "see you at the station").await, 2, "the message and its edit entry");
}

/// The edit window (here: a message sent 25 hours ago), file messages, and contacts: an
/// edit needs what a send needs, a deletion does not (people can always take back what
/// they said).
#[tokio::test]
async fn edits_keep_to_the_window_and_deletions_need_no_contact() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let (old, conv) = say(&mut a, "old", "", &bob_id, "yesterday's news").await;
    let (fresh, _) = say(&mut a, "fresh", &conv, "", "today's news").await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("db");
    let backend = db.get_database_backend();
    let id = uuid::Uuid::parse_str(&old).unwrap();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        "UPDATE messages SET created_at = created_at - $1 WHERE id = $2",
        [(25 * 3_600_000i64).into(), id.into()],
    ))
    .await
    .expect("backdated");
    let r = patch(&app, &alice, &old, json!({"body": "fixed"})).await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "conflict");
    assert_eq!(delete(&app, &alice, &old).await.status(), StatusCode::NO_CONTENT, "no window for deleting");

    // Bob removes Alice from his contacts: she can no longer edit, but can still delete.
    let contacts = app.get_json("/api/contacts", &bob).await;
    assert_eq!(contacts["contacts"].as_array().map(Vec::len), Some(1));
    let r = app
        .client
        .delete(app.url(&format!("/api/contacts/{}", a_id(&app, &alice).await)))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let r = patch(&app, &alice, &fresh, json!({"body": "today's news, corrected"})).await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden");
    assert_eq!(delete(&app, &alice, &fresh).await.status(), StatusCode::NO_CONTENT);
    let page = app.get_json(&format!("/api/conversations/{conv}/messages"), &alice).await;
    assert!(page["messages"].as_array().unwrap().iter().all(|m| m["deleted"] == true), "{page}");
}

async fn a_id(app: &TestApp, token: &str) -> String {
    app.get_json("/api/auth/me", token).await["id"].as_str().unwrap().to_owned()
}

/// The room actor is killed again and again while Alice corrects a message many times
/// (each edit retried until it is acknowledged, as a client would): Bob's device, online
/// throughout, gets every committed entry once and in order, and the message ends as the
/// last acknowledged edit left it.
#[tokio::test]
async fn killing_the_room_while_edits_fly_loses_and_repeats_nothing() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.fault_injection = true;
        c.messaging.changes_per_minute = 10_000;
    })
    .await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let (m1, conv) = say(&mut a, "m1", "", &bob_id, "draft 0").await;
    let room = app.node.ctx.name("room", &conv);
    let edits = 150;
    let editor = {
        let (client, url, token) = (app.client.clone(), app.url(&format!("/api/messages/{m1}")), alice.clone());
        tokio::spawn(async move {
            let mut statuses = std::collections::BTreeMap::<u16, u32>::new();
            for i in 1..=edits {
                loop {
                    let r = client
                        .patch(&url)
                        .bearer_auth(&token)
                        .json(&json!({"body": format!("draft {i}")}))
                        .send()
                        .await
                        .unwrap();
                    *statuses.entry(r.status().as_u16()).or_default() += 1;
                    if r.status() == StatusCode::OK {
                        break;
                    }
                    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "an edit fails only as unavailable");
                }
            }
            statuses
        })
    };
    // Kill the room again and again while the edits go on (at least once; at most 8).
    let mut kills = 0;
    loop {
        crate::messaging::inject(&app, &alice, ("room", &conv, &room), "kill").await;
        kills += 1;
        if editor.is_finished() || kills == 8 {
            break;
        }
    }
    let statuses = editor.await.unwrap();
    let page = app.get_json(&format!("/api/conversations/{conv}/messages"), &bob).await;
    assert_eq!(page["messages"][0]["body"], format!("draft {edits}"), "{statuses:?}");
    let last_seq = page["last_seq"].as_i64().unwrap();
    assert!(last_seq > edits, "every acknowledged edit is an entry ({last_seq})");
    let c = conv.clone();
    b.read_until("every entry", move |d| d.by_seq.get(&c).is_some_and(|s| s.len() as i64 == last_seq)).await;
    b.assert_complete(&conv, last_seq);
    b.assert_in_order();
    assert_eq!(b.arrivals.len() as i64, last_seq, "each entry once");
    let newest = b.message_frames.iter().filter(|f| f["kind"] == "edit").map(|f| f["body"].clone()).collect::<Vec<_>>();
    assert_eq!(newest.last().and_then(Value::as_str), Some(format!("draft {edits}").as_str()));
    // Text edited over is kept nowhere: only the message, its newest edit entry and Bob's
    // notification (its preview) hold a draft; a fresh device gets the older entries
    // empty and marked deleted.
    eventually("Bob's notification shows the last draft", async || {
        let n = app.get_json("/api/notifications", &bob).await;
        (n["notifications"][0]["payload"]["preview"] == format!("draft {edits}")).then_some(())
    })
    .await;
    assert_eq!(stored_anywhere(&app, "draft ").await, 3);
    let mut fresh = Client::connect(&app, &bob).await;
    fresh.send(json!({"type": "sync"})).await;
    fresh.next_of("sync_done").await;
    let edits_seen: Vec<&Value> = fresh.message_frames.iter().filter(|f| f["kind"] == "edit").collect();
    let (last, older) = edits_seen.split_last().unwrap();
    assert_eq!(
        (last["body"].as_str(), last["deleted"].as_bool()),
        (Some(format!("draft {edits}").as_str()), Some(false))
    );
    assert!(older.iter().all(|f| f["body"] == "" && f["deleted"] == true));
}

/// Two nodes on one PostgreSQL database: edits and deletions of the same messages race
/// from both. Whatever wins, a deleted message keeps no text, in its row or in its edit
/// entries (each node's check of the target happens under the conversation's row lock).
#[tokio::test]
async fn postgres_edits_racing_deletions_on_two_nodes_leave_no_deleted_text() {
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    let other = app.beside().await;
    let (alice, _bob, bob_id) = alice_and_bob(&app).await;
    let mut a = Client::connect(&app, &alice).await;
    let (_, conv) = say(&mut a, "first", "", &bob_id, "hello").await;
    let mut racers = Vec::new();
    for round in 0..12 {
        let (id, _) = say(&mut a, &format!("r{round}"), &conv, "", "racing text").await;
        for i in 0..6 {
            let (node, token, id) = (if i % 2 == 0 { app.url("") } else { other.url("") }, alice.clone(), id.clone());
            let client = app.client.clone();
            racers.push(tokio::spawn(async move {
                let url = format!("{node}/api/messages/{id}");
                let r = if i < 4 {
                    client.patch(&url).bearer_auth(&token).json(&json!({"body": format!("LEAK {i}")})).send().await
                } else {
                    client.delete(&url).bearer_auth(&token).send().await
                };
                r.unwrap().status()
            }));
        }
    }
    for r in racers {
        let status = r.await.unwrap();
        assert!(matches!(status.as_u16(), 200 | 204 | 409), "{status}");
    }
    // The messages at once (each change committed before its answer); the notifications
    // once both nodes' notify consumers have followed the changes, in whatever order.
    assert_eq!(stored_in(&app, "LEAK").await.0, 0, "a deleted message or its edits kept text");
    eventually("no notification keeps a deleted text", async || (stored_in(&app, "LEAK").await.1 == 0).then_some(()))
        .await;
    drop(other);
}

/// A deletion needs no contact (a blocked sender may still erase their own words), so it
/// must tell its sender nothing of the peer who blocked them: it raises no delivered
/// marker and sends no receipt (messages raise the marker; changes do not).
#[tokio::test]
async fn a_deletion_after_a_block_raises_no_marker_and_sends_no_receipt() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let alice_id = app.get_json("/api/auth/me", &alice).await["id"].as_str().expect("id").to_owned();
    let mut a = Client::connect(&app, &alice).await;
    let mut b = Client::connect(&app, &bob).await;
    let (m1, conv) = say(&mut a, "m1", "", &bob_id, "hello").await;
    let delivered = |seq: i64| {
        let bob_id = bob_id.clone();
        move |f: &Value| f["type"] == "receipt" && f["user_id"] == bob_id.as_str() && f["delivered_seq"] == seq
    };
    let first = delivered(1);
    a.read_until("the delivered receipt", move |d| d.others.iter().any(&first)).await;
    let r =
        app.client.post(app.url(&format!("/api/contacts/{alice_id}/block"))).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(delete(&app, &alice, &m1).await.status(), StatusCode::NO_CONTENT);
    let c = conv.clone();
    b.read_until("the deletion", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&2))).await;
    // Bob's session has handled the deletion once it answers a ping sent after it...
    b.send(json!({"type": "ping"})).await;
    b.next_of("pong").await;
    // ...and Alice's has every event published with her own copy once it answers one.
    let c = conv.clone();
    a.read_until("her own deletion", move |d| d.by_seq.get(&c).is_some_and(|s| s.contains_key(&2))).await;
    a.send(json!({"type": "ping"})).await;
    a.next_of("pong").await;
    let second = delivered(2);
    assert!(!a.others.iter().any(second), "a receipt of the blocker reached the deleter: {:?}", a.others);
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("db");
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            db.get_database_backend(),
            "SELECT delivered_seq FROM receipts WHERE user_id = $1",
            [uuid::Uuid::parse_str(&bob_id).expect("uuid").into()],
        ))
        .await
        .expect("query")
        .expect("Bob's receipt");
    assert_eq!(row.try_get::<i64>("", "delivered_seq").expect("seq"), 1, "the deletion moved Bob's marker");
}
