//! The message committer on its own, on a real SQLite file and the local PostgreSQL: many
//! appends queued at once (so they share group commits) come back with gap-free numbers in
//! queue order, resends inside and across batches answer with the stored original, and the
//! messaging rule (contacts, no block) is enforced in the committing transaction.

use std::collections::HashMap;

use sea_orm::{ActiveValue::Set, EntityTrait};
use switchboard::domain::{ConversationId, UserId};
use switchboard::storage::chat::ChatRepo;
use switchboard::storage::committer::Committer;
use switchboard::storage::contacts::ContactRepo;
use switchboard::storage::entities::block;
use switchboard::storage::seed::contact_pairs;
use switchboard_actors::ports::{Appended, ChatStore, NewMessage, StoreError};

use crate::helpers::{Backend, spawn_app_with};

fn text(conversation: ConversationId, sender: UserId, client_msg_id: &str) -> NewMessage {
    NewMessage {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: client_msg_id.into(),
        kind: "text".into(),
        body: format!("body of {client_msg_id}"),
        file_id: None,
    }
}

async fn batch_appends_number_without_gaps_and_enforce_the_rules(backend: Backend) {
    // The app gives the test its own database (and drops a PostgreSQL one afterwards).
    let app = spawn_app_with(backend, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let p = contact_pairs(&db, 4, "st").await.expect("seed");
    let (ab, cd, blocked, block_only) = (p[0], p[1], p[2], p[3]);
    // A real block (ends the contact) and a block row beside a still-accepted contact:
    // either refuses messages both ways.
    ContactRepo::new(db.clone()).block(blocked.b, blocked.a).await.expect("block");
    block::Entity::insert(block::ActiveModel {
        blocker_id: Set(block_only.a.0),
        blocked_id: Set(block_only.b.0),
        created_at: Set(0),
    })
    .exec_without_returning(&db)
    .await
    .expect("block row");
    let repo = ChatRepo::new(db.clone(), Committer::start(db.clone()));
    // ab.a also talks to cd.a, through the real request/accept path.
    let contacts = ContactRepo::new(db.clone());
    let (request, _) = contacts.request(ab.a, cd.a).await.expect("request");
    contacts.answer(cd.a, request.id, true).await.expect("accept");
    let ax = repo.open_conversation(ab.a, cd.a).await.expect("conversation").id;

    // Queue everything before awaiting anything, so the committer takes many per batch.
    let mut expect: Vec<(&str, Option<StoreError>)> = vec![];
    let mut pending = vec![];
    for i in 0..300 {
        let id = format!("a{i}");
        pending.push(repo.queue_append(text(ab.conversation, ab.a, &id)).await);
        expect.push(("ab", None));
        if i % 3 == 0 {
            pending.push(repo.queue_append(text(cd.conversation, cd.b, &format!("d{i}"))).await);
            expect.push(("cd", None));
        }
        if i % 50 == 7 {
            // Resend of a message queued just before (the same batch, most likely).
            pending.push(repo.queue_append(text(ab.conversation, ab.a, &id)).await);
            expect.push(("dup", None));
            pending.push(repo.queue_append(text(ab.conversation, cd.a, "outsider")).await);
            expect.push(("outsider", Some(StoreError::NotFound)));
            pending.push(repo.queue_append(text(blocked.conversation, blocked.a, &format!("x{i}"))).await);
            expect.push(("blocked", Some(StoreError::Forbidden(switchboard::storage::contacts::NOT_A_CONTACT))));
            pending.push(repo.queue_append(text(block_only.conversation, block_only.b, &format!("y{i}"))).await);
            expect.push(("blocked", Some(StoreError::Forbidden(switchboard::storage::contacts::NOT_A_CONTACT))));
            pending.push(repo.queue_append(text(ConversationId::new(), ab.a, &format!("z{i}"))).await);
            expect.push(("nowhere", Some(StoreError::NotFound)));
        }
    }
    // One client id used in two conversations: the second is refused, wherever it lands.
    pending.push(repo.queue_append(text(ax, ab.a, "a0")).await);
    expect.push(("reused", None));

    let mut results: Vec<Result<Appended, StoreError>> = vec![];
    for p in pending {
        results.push(p.await);
    }
    let mut seqs: HashMap<&str, Vec<i64>> = HashMap::new();
    let mut first_by_id: HashMap<String, Appended> = HashMap::new();
    for ((what, error), result) in expect.iter().zip(&results) {
        match (*what, error, result) {
            (_, Some(e), r) => assert_eq!(r.as_ref().err(), Some(e), "{what}"),
            ("dup", None, Ok(a)) => {
                assert!(a.duplicate, "a resend is answered as a duplicate");
                assert_eq!(&first_by_id[&a.message.client_msg_id].message, &a.message, "with the original");
            }
            ("reused", None, r) => assert!(
                matches!(r, Err(StoreError::Forbidden(_))),
                "a client_msg_id reused for another conversation: {r:?}"
            ),
            (conv, None, Ok(a)) => {
                assert!(!a.duplicate);
                seqs.entry(conv).or_default().push(a.message.seq);
                first_by_id.insert(a.message.client_msg_id.clone(), a.clone());
            }
            (_, None, Err(e)) => panic!("{what} failed: {e}"),
        }
    }
    assert_eq!(seqs["ab"], (1..=300).collect::<Vec<i64>>(), "numbered in queue order, no gaps");
    assert_eq!(seqs["cd"], (1..=100).collect::<Vec<i64>>());

    // What is stored is exactly what was acknowledged, and a later resend finds it.
    let stored = repo.messages_after(ab.conversation, 0, 1000).await.expect("history");
    assert_eq!(stored.len(), 300);
    for m in &stored {
        assert_eq!(&first_by_id[&m.client_msg_id].message, m);
    }
    assert_eq!(repo.conversation(ab.conversation).await.expect("read").expect("exists").last_seq, 300);
    assert!(repo.messages_after(blocked.conversation, 0, 10).await.expect("history").is_empty());
    assert!(repo.messages_after(ax, 0, 10).await.expect("history").is_empty());
    let again = repo.append(text(ab.conversation, ab.a, "a0")).await.expect("resend");
    assert!(again.duplicate);
    assert_eq!(again.message.seq, 1);
    drop(app);
}

#[tokio::test]
async fn batch_appends_number_without_gaps_and_enforce_the_rules_on_sqlite() {
    batch_appends_number_without_gaps_and_enforce_the_rules(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_batch_appends_number_without_gaps_and_enforce_the_rules() {
    batch_appends_number_without_gaps_and_enforce_the_rules(Backend::Postgres).await;
}

#[tokio::test]
async fn notifications_in_a_batch_are_numbered_once_per_event_and_capped() {
    notifications_are_numbered_once_per_event_and_capped(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_notifications_in_a_batch_are_numbered_once_per_event_and_capped() {
    notifications_are_numbered_once_per_event_and_capped(Backend::Postgres).await;
}

async fn notifications_are_numbered_once_per_event_and_capped(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let p = contact_pairs(&db, 2, "nb").await.expect("seed");
    let repo = switchboard::storage::notifications::NotificationRepo::new(db.clone(), Committer::start(db.clone()));
    let new = |user: UserId, event: uuid::Uuid, i: i64| switchboard::storage::notifications::NewNotification {
        user,
        event_id: event,
        kind: "message",
        conversation_id: Some(p[0].conversation),
        seq: Some(i),
        payload: serde_json::json!({"i": i}),
        from: None,
    };
    let events: Vec<uuid::Uuid> = (0..6).map(|_| uuid::Uuid::now_v7()).collect();
    let (b, other) = (p[0].b, p[1].a);
    // Five events for b (the third delivered twice in the run) and one for someone else.
    let mut batch: Vec<_> = (0..5).map(|i| new(b, events[i], i as i64)).collect();
    batch.insert(3, new(b, events[2], 2));
    batch.push(new(other, events[0], 0));
    let stored = repo.record_batch(batch.clone(), 10).await.expect("first batch").stored;
    let ns = |v: &[(UserId, switchboard_actors::ports::NotificationView)], u: UserId| {
        v.iter().filter(|(w, _)| *w == u).map(|(_, n)| (n.n, n.seq)).collect::<Vec<_>>()
    };
    assert_eq!(ns(&stored, b), (1..=5).map(|n| (n, Some(n - 1))).collect::<Vec<_>>(), "numbered once per event");
    assert_eq!(ns(&stored, other), vec![(1, Some(0))], "the same event for another user is theirs");

    // Redelivered (the whole run again, as after a crash before the ack) plus one new event.
    let mut again = batch.clone();
    again.push(new(b, events[5], 5));
    let stored = repo.record_batch(again, 10).await.expect("second batch").stored;
    assert_eq!(ns(&stored, b), vec![(6, Some(5))], "only the new event is stored");

    // Past the cap, only the newest are kept.
    let more: Vec<_> = (6..9).map(|i| new(b, uuid::Uuid::now_v7(), i)).collect();
    let recorded = repo.record_batch(more, 4).await.expect("third batch");
    assert_eq!(ns(&recorded.stored, b), vec![(7, Some(6)), (8, Some(7)), (9, Some(8))]);
    assert_eq!(recorded.unread.get(&b).map(|u| u.total), Some(4), "the counts come with the batch, after the cap");
    let kept: Vec<i64> = repo.after_n(b, 0, 100).await.expect("list").iter().map(|n| n.n).collect();
    assert_eq!(kept, vec![6, 7, 8, 9]);
    assert_eq!(repo.unread_counts(b).await.expect("counts").total, 4);

    // The sender's names go into the payload when stored; an unknown sender's are null.
    let named = |from: UserId| switchboard::storage::notifications::NewNotification {
        from: Some((from, "sender_")),
        ..new(b, uuid::Uuid::now_v7(), 9)
    };
    let recorded = repo.record_batch(vec![named(p[0].a), named(UserId::new())], 10).await.expect("named");
    let payloads: Vec<_> = recorded.stored.iter().map(|(_, n)| n.payload.clone()).collect();
    assert!(payloads[0]["sender_username"].as_str().is_some_and(|u| !u.is_empty()), "{payloads:?}");
    assert!(payloads[0]["sender_display_name"].is_string(), "{payloads:?}");
    assert!(payloads[1]["sender_username"].is_null() && payloads[1]["sender_display_name"].is_null(), "{payloads:?}");
    assert_eq!(payloads[0]["i"], 9, "the rest of the payload is kept");
    let listed = repo.after_n(b, 9, 10).await.expect("list");
    assert_eq!(listed[0].payload, payloads[0], "stored as delivered");
}

/// Committed messages reach the database file, and the write-ahead log stays bounded: the
/// writer leaves checkpoints to a thread of their own (if it did nothing the file would stay
/// empty), and a checkpoint beside a busy writer never restarts the log by itself (if the
/// writer's backstop were missing the log would grow with every write).
#[tokio::test]
async fn committed_messages_are_checkpointed_and_the_log_stays_bounded() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let p = contact_pairs(&db, 1, "ck").await.expect("seed");
    let file = app.data_dir.path().join("switchboard.db");
    let wal = app.data_dir.path().join("switchboard.db-wal");
    let before = std::fs::metadata(&file).expect("database file").len();
    let repo = ChatRepo::new(db.clone(), Committer::start(db.clone()));
    // About 24 MiB of messages, steadily: 6,000 pages, three times the writer's backstop.
    let body = "x".repeat(4000);
    let mut wal_peak = 0;
    for round in 0..12 {
        let mut pending = Vec::new();
        for i in 0..500 {
            pending.push(
                repo.queue_append(NewMessage {
                    body: body.clone(),
                    ..text(p[0].conversation, p[0].a, &format!("ck{round}-{i}"))
                })
                .await,
            );
        }
        for a in pending {
            a.await.expect("committed");
        }
        wal_peak = wal_peak.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    assert!(wal_peak <= 16 * 1024 * 1024, "the write-ahead log grew to {wal_peak} bytes for 24 MiB written");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let size = std::fs::metadata(&file).expect("database file").len();
        if size >= before + 24_000_000 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the database file stayed at {size} bytes (was {before})");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A write the database refuses for what it holds (PostgreSQL refuses NUL in text) fails
/// alone: the other writes committed with it in one batch are retried without it.
#[tokio::test]
async fn postgres_a_write_the_database_refuses_does_not_fail_its_batch() {
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let p = contact_pairs(&db, 1, "bad").await.expect("seed");
    let repo = ChatRepo::new(db.clone(), Committer::start(db.clone()));
    let message =
        |i: usize, body: &str| NewMessage { body: body.into(), ..text(p[0].conversation, p[0].a, &format!("b{i}")) };
    // Queued back to back, so they share batches with the bad one.
    let mut pending = Vec::new();
    for i in 0..41 {
        let body = if i == 20 { "nul \0 inside" } else { "fine" };
        pending.push(repo.queue_append(message(i, body)).await);
    }
    let mut ok = 0;
    for (i, a) in pending.into_iter().enumerate() {
        match a.await {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(i, 20, "write {i} failed with the bad one: {e}"),
        }
    }
    assert_eq!(ok, 40, "every other write committed");
    let history = repo.history(p[0].conversation, None, None, 100).await.expect("history");
    assert_eq!(history.len(), 40);
    assert_eq!(history.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=40).collect::<Vec<_>>(), "no gap");
}
