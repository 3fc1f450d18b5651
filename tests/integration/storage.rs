//! The message committer on its own, on a real SQLite file and the local PostgreSQL: many
//! appends queued at once (so they share group commits) come back with gap-free numbers in
//! queue order, resends inside and across batches answer with the stored original, and the
//! messaging rule (contacts, no block) is enforced in the committing transaction.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::{ActiveValue::Set, EntityTrait};
use switchboard::contacts::repo::ContactRepo;
use switchboard::domain::{ConversationId, UserId};
use switchboard::messaging::chat::{ChatRepo, MessageWrites, RaiseReceipt};
use switchboard::storage::entities::block;
use switchboard::storage::seed::contact_pairs;
use switchboard::writer::Committer;
use switchboard_actors::ports::{Appended, ChatStore, NewMessage, NotificationView, StoreError};
use switchboard_actors::states::{MessageKind, NotificationKind};

use crate::helpers::{Backend, spawn_app_with};

fn text(conversation: ConversationId, sender: UserId, client_msg_id: &str) -> NewMessage {
    NewMessage {
        conversation_id: conversation,
        sender_id: sender,
        client_msg_id: client_msg_id.into(),
        kind: MessageKind::Text,
        body: format!("body of {client_msg_id}"),
        file_id: None,
        target_id: None,
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
    let committer = Arc::new(Committer::start(db.clone()));
    let repo = ChatRepo::new(db.clone(), committer.clone());
    // ab.a also talks to cd.a, through the real request/accept path.
    let contacts = ContactRepo::new(db.clone());
    let (request, _) = contacts.request(ab.a, cd.a).await.expect("request");
    contacts.answer(cd.a, request.id, true).await.expect("accept");
    let ax = repo.open_conversation(ab.a, cd.a).await.expect("conversation").id;

    // Queue everything before awaiting anything, so the committer takes many per batch.
    // cd's messages also raise cd.a's delivered marker (as when cd.a is connected), among
    // plain receipt writes to ab.b's marker: the two kinds of raise share the batches.
    let mut expect: Vec<(&str, Option<StoreError>)> = vec![];
    let mut pending = vec![];
    let mut receipts = vec![];
    for i in 0..300 {
        let id = format!("a{i}");
        pending.push(repo.queue_append(text(ab.conversation, ab.a, &id)).await);
        expect.push(("ab", None));
        if i % 3 == 0 {
            pending.push(repo.queue_append_delivered(text(cd.conversation, cd.b, &format!("d{i}")), cd.a).await);
            expect.push(("cd", None));
            let asked = i64::from(i) + 1;
            let raise = RaiseReceipt { conversation: ab.conversation, user: ab.b, delivered: Some(asked), read: None };
            receipts.push((asked, committer.raise_receipt(raise).await));
        }
        if i % 50 == 7 {
            // Resend of a message queued just before (the same batch, most likely), asking
            // for a delivered marker: a resend raises none.
            pending.push(repo.queue_append_delivered(text(ab.conversation, ab.a, &id), ab.b).await);
            expect.push(("dup", None));
            pending.push(repo.queue_append(text(ab.conversation, cd.a, "outsider")).await);
            expect.push(("outsider", Some(StoreError::NotFound)));
            pending.push(repo.queue_append(text(blocked.conversation, blocked.a, &format!("x{i}"))).await);
            expect.push(("blocked", Some(StoreError::Forbidden(switchboard::contacts::repo::NOT_A_CONTACT))));
            pending.push(repo.queue_append(text(block_only.conversation, block_only.b, &format!("y{i}"))).await);
            expect.push(("blocked", Some(StoreError::Forbidden(switchboard::contacts::repo::NOT_A_CONTACT))));
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
                assert_eq!(a.delivered, None, "a resend raises no delivered marker");
                assert_eq!(&first_by_id[&a.message.client_msg_id].message, &a.message, "with the original");
            }
            ("reused", None, r) => assert!(
                matches!(r, Err(StoreError::Forbidden(_))),
                "a client_msg_id reused for another conversation: {r:?}"
            ),
            (conv, None, Ok(a)) => {
                assert!(!a.duplicate);
                match a.delivered {
                    // At least to this message (a later one of the batch may have raised
                    // it further on PostgreSQL, which merges a batch's raises).
                    Some(r) => assert!(
                        conv == "cd" && r.user_id == cd.a && r.delivered_seq >= a.message.seq && r.read_seq == 0,
                        "{conv}: {r:?} for seq {}",
                        a.message.seq
                    ),
                    None => assert_eq!(conv, "ab", "a delivered append raised no marker"),
                }
                seqs.entry(conv).or_default().push(a.message.seq);
                first_by_id.insert(a.message.client_msg_id.clone(), a.clone());
            }
            (_, None, Err(e)) => panic!("{what} failed: {e}"),
        }
    }
    // The plain receipt writes were answered as they would be alone (never lowered, capped
    // at the last seq), whatever appends' raises shared their batches.
    for (asked, pending) in receipts {
        let r = pending.await.expect("receipt");
        assert_eq!((r.conversation_id, r.user_id), (ab.conversation, ab.b));
        assert!(r.delivered_seq >= asked && r.read_seq == 0, "{r:?} for {asked}");
    }
    let stored = |c, u| repo.update_receipt(c, u, None, None);
    assert_eq!(stored(cd.conversation, cd.a).await.expect("receipt").delivered_seq, 100, "cd.a has every cd message");
    assert_eq!(stored(ab.conversation, ab.b).await.expect("receipt").delivered_seq, 298, "ab.b as asked last");
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

/// The SQLite writer keeps what it has read (conversations, the contact rule, each user's
/// message notification and unread counts, receipts) from batch to batch, and must read
/// again once anything else has written the file: the services' pool (here a block and a
/// new contact), or another process's writer (here a second committer on the same file,
/// which has a connection of its own as another process would).
#[tokio::test]
async fn the_sqlite_writer_reads_again_after_a_write_beside_it() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let ab = contact_pairs(&db, 1, "kw").await.expect("seed")[0];
    let contacts = ContactRepo::new(db.clone());
    let repo = ChatRepo::new(db.clone(), Arc::new(Committer::start(db.clone()))).with_inline_notifications(100);
    let message = |id: &str| text(ab.conversation, ab.a, id);
    let unread =
        |a: &Appended| a.notification.as_ref().map(|n| (n.to, n.unread.total, n.view.as_ref().map(|v| v.count)));

    let first = repo.append(message("m1")).await.expect("m1");
    assert_eq!(unread(&first), Some((ab.b, 1, Some(1))));
    // A block written through the pool: the next message is refused.
    contacts.block(ab.b, ab.a).await.expect("block");
    assert_eq!(
        repo.append(message("m2")).await.err(),
        Some(StoreError::Forbidden(switchboard::contacts::repo::NOT_A_CONTACT))
    );
    // Unblocked and contacts again (through the pool): allowed again.
    contacts.unblock(ab.b, ab.a).await.expect("unblock");
    let (request, _) = contacts.request(ab.a, ab.b).await.expect("request");
    contacts.answer(ab.b, request.id, true).await.expect("accept");
    let third = repo.append(message("m3")).await.expect("m3");
    assert_eq!((third.message.seq, unread(&third)), (2, Some((ab.b, 2, Some(2)))));

    // Another writer on the file appends and notifies; then this one goes on from there.
    let other = ChatRepo::new(db.clone(), Arc::new(Committer::start(db.clone()))).with_inline_notifications(100);
    let fourth = other.append(message("m4")).await.expect("m4");
    assert_eq!((fourth.message.seq, unread(&fourth)), (3, Some((ab.b, 3, Some(3)))));
    let fifth = repo.append(message("m5")).await.expect("m5");
    assert_eq!((fifth.message.seq, unread(&fifth)), (4, Some((ab.b, 4, Some(4)))), "counts after the other writer's");
    // Read markers through this writer, the other, and this again: they only rise.
    let (conversation, reader) = (ab.conversation, ab.b);
    assert_eq!(repo.update_receipt(conversation, reader, None, Some(1)).await.expect("receipt").read_seq, 1);
    assert_eq!(other.update_receipt(conversation, reader, None, Some(3)).await.expect("receipt").read_seq, 3);
    let after = repo.update_receipt(conversation, reader, None, Some(2)).await.expect("receipt");
    assert_eq!((after.delivered_seq, after.read_seq), (3, 3), "a marker another writer raised is not lowered");
    // And the notification counts what is left after that read marker.
    let sixth = repo.append(message("m6")).await.expect("m6");
    assert_eq!(unread(&sixth), Some((ab.b, 2, Some(2))), "m5 and m6 unread");
    drop(app);
}

#[tokio::test]
async fn notifications_in_a_batch_are_numbered_once_per_change_and_capped() {
    notifications_are_numbered_once_per_change_and_capped(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_notifications_in_a_batch_are_numbered_once_per_change_and_capped() {
    notifications_are_numbered_once_per_change_and_capped(Backend::Postgres).await;
}

/// (n, kind, seq, count) of each of `user`'s notifications in `stored`.
fn summary(stored: &[(UserId, NotificationView)], user: UserId) -> Vec<(i64, String, Option<i64>, i64)> {
    stored.iter().filter(|(u, _)| *u == user).map(|(_, n)| (n.n, n.kind.to_string(), n.seq, n.count)).collect()
}

async fn notifications_are_numbered_once_per_change_and_capped(backend: Backend) {
    use switchboard::notify::repo::{NewNotification, NotificationRepo};
    let app = spawn_app_with(backend, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let p = contact_pairs(&db, 2, "nb").await.expect("seed");
    let committer = Arc::new(Committer::start(db.clone()));
    let repo = NotificationRepo::new(db.clone(), committer.clone());
    let chat = ChatRepo::new(db.clone(), committer);
    let (b, other, c0, c1) = (p[0].b, p[1].a, p[0].conversation, p[1].conversation);
    // Six messages from a to b, so reads have something to count.
    for i in 1..=6 {
        chat.append(text(c0, p[0].a, &format!("n{i}"))).await.expect("append");
    }
    let message = |user: UserId, conversation: ConversationId, seq: i64| NewNotification {
        user,
        event_id: uuid::Uuid::now_v7(),
        kind: NotificationKind::Message,
        conversation_id: Some(conversation),
        seq: Some(seq),
        payload: serde_json::json!({"seq": seq}),
        from: None,
    };
    let contact = |user: UserId, event_id: uuid::Uuid| NewNotification {
        user,
        event_id,
        kind: NotificationKind::ContactRequest,
        conversation_id: None,
        seq: None,
        payload: serde_json::json!({}),
        from: None,
    };
    let kind = |k: &str| k.to_owned();
    // A contact request (delivered twice in the run), five messages of one conversation
    // (the third twice), one of another, and one for another user.
    let request = uuid::Uuid::now_v7();
    let mut batch = vec![contact(b, request)];
    batch.extend((1..=5).map(|s| message(b, c0, s)));
    batch.insert(4, message(b, c0, 3));
    batch.extend([contact(b, request), message(b, c1, 1), message(other, c0, 1)]);
    let recorded = repo.record_batch(batch.clone(), 10).await.expect("first batch");
    assert_eq!(
        summary(&recorded.stored, b),
        vec![(1, kind("contact_request"), None, 1), (2, kind("message"), Some(5), 5), (3, kind("message"), Some(1), 1)],
        "one notification per conversation, counting its messages once each"
    );
    assert_eq!(summary(&recorded.stored, other), vec![(1, kind("message"), Some(1), 1)]);
    let counts = &recorded.unread[&b];
    assert_eq!((counts.total, counts.conversations[&c0], counts.conversations[&c1]), (7, 5, 1));
    let c0_id = recorded.stored[1].1.id;

    // Redelivered (the whole run again, as after a crash before the ack) plus a new
    // message: only that conversation's notification changes, in place, to the top.
    let mut again = batch.clone();
    again.push(message(b, c0, 6));
    let recorded = repo.record_batch(again, 10).await.expect("second batch");
    assert_eq!(summary(&recorded.stored, b), vec![(4, kind("message"), Some(6), 6)]);
    assert_eq!(recorded.stored[0].1.id, c0_id, "the same notification, updated");
    assert_eq!(recorded.stored[0].1.payload["seq"], 6, "showing the newest message");
    let listed: Vec<i64> = repo.after_n(b, 0, 100).await.expect("list").iter().map(|n| n.n).collect();
    assert_eq!(listed, vec![1, 3, 4], "the numbers it had before are gone");

    // Read up to seq 4: two of a's messages left; again: no change; up to 6: read.
    let unread = repo.read_conversation(b, c0, 4).await.expect("read").expect("changed");
    assert_eq!((unread.total, unread.conversations[&c0]), (4, 2));
    assert!(repo.read_conversation(b, c0, 4).await.expect("read").is_none());
    let unread = repo.read_conversation(b, c0, 6).await.expect("read").expect("changed");
    assert_eq!(unread.total, 2);
    assert!(!unread.conversations.contains_key(&c0));
    let c0_now = repo.after_n(b, 3, 10).await.expect("list");
    assert!(c0_now[0].read && c0_now[0].count == 0, "{c0_now:?}");

    // A message read on another device before its notification is stored is not unread.
    chat.append(text(c0, p[0].a, "n7")).await.expect("append");
    chat.update_receipt(c0, b, None, Some(7)).await.expect("read marker");
    let recorded = repo.record_batch(vec![message(b, c0, 7)], 10).await.expect("read already");
    assert_eq!(summary(&recorded.stored, b), vec![(5, kind("message"), Some(7), 0)]);
    assert!(recorded.stored[0].1.read);
    assert_eq!(recorded.unread[&b].total, 2);

    // Past the cap: three new changes with 4 kept keep numbers 5..=8.
    let more: Vec<_> = (0..3).map(|_| contact(b, uuid::Uuid::now_v7())).collect();
    let recorded = repo.record_batch(more, 4).await.expect("third batch");
    let ns: Vec<i64> = recorded.stored.iter().map(|(_, n)| n.n).collect();
    assert_eq!(ns, vec![6, 7, 8]);
    assert_eq!(recorded.unread[&b].total, 3, "the counts come with the batch, after the cap");
    let kept: Vec<i64> = repo.after_n(b, 0, 100).await.expect("list").iter().map(|n| n.n).collect();
    assert_eq!(kept, vec![5, 6, 7, 8]);
    assert_eq!(repo.unread_counts(b).await.expect("counts").total, 3);

    // The sender's names go into the payload when stored; an unknown sender's are null.
    let named = |from: UserId| NewNotification {
        from: Some((from, "sender_")),
        payload: serde_json::json!({"i": 9}),
        ..contact(b, uuid::Uuid::now_v7())
    };
    let recorded = repo.record_batch(vec![named(p[0].a), named(UserId::new())], 10).await.expect("named");
    let payloads: Vec<_> = recorded.stored.iter().map(|(_, n)| n.payload.clone()).collect();
    assert!(payloads[0]["sender_username"].as_str().is_some_and(|u| !u.is_empty()), "{payloads:?}");
    assert!(payloads[0]["sender_display_name"].is_string(), "{payloads:?}");
    assert!(payloads[1]["sender_username"].is_null() && payloads[1]["sender_display_name"].is_null(), "{payloads:?}");
    assert_eq!(payloads[0]["i"], 9, "the rest of the payload is kept");
    let listed = repo.after_n(b, 8, 10).await.expect("list");
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
    let repo = ChatRepo::new(db.clone(), Arc::new(Committer::start(db.clone())));
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
    crate::helpers::eventually("the checkpoints to copy the messages into the database file", async || {
        (std::fs::metadata(&file).expect("database file").len() >= before + 24_000_000).then_some(())
    })
    .await;
}

/// A write the database refuses for what it holds (PostgreSQL refuses NUL in text) fails
/// alone: the other writes committed with it in one batch are retried without it.
#[tokio::test]
async fn postgres_a_write_the_database_refuses_does_not_fail_its_batch() {
    let app = spawn_app_with(Backend::Postgres, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let p = contact_pairs(&db, 1, "bad").await.expect("seed");
    let repo = ChatRepo::new(db.clone(), Arc::new(Committer::start(db.clone())));
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

/// Upgrading a database with one notification per message: each conversation's are folded
/// into its newest, which counts the unread ones it replaces; contact notifications stay.
#[tokio::test]
async fn upgrading_folds_message_notifications_into_one_per_conversation() {
    use migration::{Migrator, MigratorTrait};
    use sea_orm::{ActiveValue::NotSet, Database};
    use switchboard::storage::entities::{notification, user};
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let db = Database::connect(&url).await.expect("database");
    Migrator::up(&db, Some(3)).await.expect("the schema before notifications per conversation");
    let (bob, alice, carol) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    for (id, name) in [(bob, "bob"), (alice, "alice"), (carol, "carol")] {
        user::Entity::insert(user::ActiveModel {
            id: Set(id),
            username: Set(name.into()),
            display_name: Set(name.into()),
            display_key: Set(name.into()),
            password_hash: Set(String::new()),
            created_at: Set(0),
            updated_at: Set(0),
            // Not in the schema of that time: left out of the insert.
            ..Default::default()
        })
        .exec_without_returning(&db)
        .await
        .expect("user");
    }
    let (with_alice, with_carol) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    // n: 1 contact request; 2..=5 alice's messages 1..=4 (1 and 2 read); 6, 7 carol's
    // messages 1, 2 (both read).
    let rows = [
        (1, "contact_request", None, None, false),
        (2, "message", Some(with_alice), Some(1), true),
        (3, "message", Some(with_alice), Some(2), true),
        (4, "message", Some(with_alice), Some(3), false),
        (5, "message", Some(with_alice), Some(4), false),
        (6, "message", Some(with_carol), Some(1), true),
        (7, "message", Some(with_carol), Some(2), true),
    ];
    for (n, kind, conversation, seq, read) in rows {
        notification::Entity::insert(notification::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            user_id: Set(bob),
            n: Set(n),
            event_id: Set(uuid::Uuid::now_v7()),
            kind: Set(kind.into()),
            conversation_id: Set(conversation),
            seq: Set(seq),
            payload: Set(format!("{{\"seq\": {}}}", seq.unwrap_or(0))),
            read_at: Set(read.then_some(1)),
            count: NotSet,
            created_at: Set(n),
        })
        .exec_without_returning(&db)
        .await
        .expect("old notification");
    }
    Migrator::up(&db, None).await.expect("upgrade");
    let repo = switchboard::notify::repo::NotificationRepo::new(db.clone(), Arc::new(Committer::start(db.clone())));
    let kept: Vec<(i64, String, Option<i64>, bool, i64)> = repo
        .after_n(UserId(bob), 0, 100)
        .await
        .expect("list")
        .into_iter()
        .map(|v| (v.n, v.kind.to_string(), v.seq, v.read, v.count))
        .collect();
    assert_eq!(
        kept,
        vec![
            (1, "contact_request".into(), None, false, 1),
            (5, "message".into(), Some(4), false, 2),
            (7, "message".into(), Some(2), true, 0),
        ]
    );
    let unread = repo.unread_counts(UserId(bob)).await.expect("counts");
    assert_eq!((unread.total, unread.conversations.get(&ConversationId(with_alice))), (3, Some(&2)));
}

/// The bus directory on both databases: rows follow the changes a node writes, each node
/// sees the others' users (not its own), a node that stops its heartbeats is swept with
/// its rows and only then, and a node swept by mistake finds out and writes its rows back.
async fn the_bus_directory_keeps_who_is_where(backend: Backend) {
    use switchboard::bus::directory::Directory;
    let app = spawn_app_with(backend, |_| {}).await;
    let db = switchboard::storage::connect(&app.config.database_url()).await.expect("database");
    let (n1, n2) = (Directory::new(db.clone(), "n1"), Directory::new(db.clone(), "n2"));
    let (a, b, c) = (UserId::new(), UserId::new(), UserId::new());
    n1.rejoin(&[], 1_000).await.expect("n1 joins");
    n2.rejoin(&[], 1_000).await.expect("n2 joins");
    n1.apply(&[(a, true), (b, true)]).await.expect("n1 has a and b");
    n2.apply(&[(b, true), (c, true)]).await.expect("n2 has b and c");
    n1.apply(&[(a, true)]).await.expect("writing a row twice is no error");
    let seen = n1.lookup(&[a, b, c]).await.expect("lookup");
    assert_eq!(seen.get(&a), None, "n1's own users are not listed to n1");
    assert_eq!(seen.get(&b), Some(&vec!["n2".to_owned()]));
    assert_eq!(seen.get(&c), Some(&vec!["n2".to_owned()]));
    let seen = n2.lookup(&[a, b, c]).await.expect("lookup");
    assert_eq!(
        (seen.get(&a), seen.get(&b), seen.get(&c)),
        (Some(&vec!["n1".to_owned()]), Some(&vec!["n1".to_owned()]), None)
    );
    n2.apply(&[(c, false), (b, false)]).await.expect("n2's sessions closed");
    assert!(n1.lookup(&[b, c]).await.expect("lookup").is_empty());

    // n2 keeps its heartbeat; n1 stops at 1,000. Swept only once past the TTL.
    n2.apply(&[(c, true)]).await.expect("c back on n2");
    assert!(n2.heartbeat(5_000).await.expect("heartbeat"), "n2's row is there");
    assert_eq!(n2.sweep(5_000, 10_000, true).await.expect("sweep"), 0, "within the TTL");
    assert_eq!(n2.sweep(12_000, 10_000, true).await.expect("sweep"), 1, "n1 is past it");
    assert!(n2.lookup(&[a, b]).await.expect("lookup").is_empty(), "n1's rows went with it");
    assert_eq!(n1.lookup(&[c]).await.expect("lookup").get(&c), Some(&vec!["n2".to_owned()]), "n2's stayed");
    // n1 was alive after all: its heartbeat finds its row gone, and it writes its rows back.
    assert!(!n1.heartbeat(12_500).await.expect("heartbeat"), "n1 learns it was swept");
    n1.rejoin(&[a, b], 12_500).await.expect("rejoin");
    assert_eq!(n2.lookup(&[a]).await.expect("lookup").get(&a), Some(&vec!["n1".to_owned()]));
    // Rejoining replaces the node's rows: a user no longer there loses theirs.
    n1.rejoin(&[a], 12_600).await.expect("rejoin");
    assert_eq!(n2.lookup(&[a, b]).await.expect("lookup").keys().collect::<Vec<_>>(), vec![&a]);
    n1.apply(&[(b, true)]).await.expect("b back");
    // A node leaving cleanly takes its rows along; the other's stay.
    n1.leave().await.expect("leave");
    assert!(n2.lookup(&[a, b]).await.expect("lookup").is_empty());
    assert_eq!(n1.lookup(&[c]).await.expect("lookup").len(), 1);
    // A storm's worth of users in one write, past one statement's slice.
    let many: Vec<(UserId, bool)> = (0..1_200).map(|_| (UserId::new(), true)).collect();
    n1.rejoin(&[], 13_000).await.expect("n1 back");
    n1.apply(&many).await.expect("many rows");
    let users: Vec<UserId> = many.iter().map(|(u, _)| *u).collect();
    assert_eq!(n2.lookup(&users).await.expect("lookup").len(), 1_200);
}

#[tokio::test]
async fn the_bus_directory_keeps_who_is_where_on_sqlite() {
    the_bus_directory_keeps_who_is_where(Backend::Sqlite).await;
}

#[tokio::test]
async fn postgres_the_bus_directory_keeps_who_is_where() {
    the_bus_directory_keeps_who_is_where(Backend::Postgres).await;
}
