//! The distributed system: separate processes (auth, messaging nodes, gateway) joined by
//! the real RabbitMQ, clients through the gateway. See `cluster_support` for the harness.
//! The core (two nodes exchanging through the gateway, a node killed, the broker
//! restarted) runs on SQLite and again on PostgreSQL (`postgres_*`), the database of a
//! cluster past one host.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::cluster_support::{Cluster, PrivateBroker, SHARED_AMQP};
use crate::helpers::{Api, Backend, PASSWORD, error_code, eventually, tcp_established};
use crate::ws_client::{Client, FRAME_TIMEOUT, alice_and_bob};

/// How long a test waits for a whole exchange to arrive.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(180);

/// Opens the chat socket through `addr` with a bearer token; `(client, node id)` after
/// `hello`, or `None` if the connection or upgrade failed.
pub async fn connect(addr: SocketAddr, token: &str) -> Option<(Client, String)> {
    let mut req = format!("ws://{addr}/ws").into_client_request().ok()?;
    req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).ok()?);
    let (ws, _) = tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(req)).await.ok()?.ok()?;
    let mut c = Client::from_ws(ws);
    let hello = c.read_one(FRAME_TIMEOUT).await?;
    (hello["type"] == "hello").then(|| (c, hello["node"].as_str().unwrap_or_default().to_owned()))
}

/// Reconnects `client` through `addr` (retrying until a node takes it), keeping what it
/// has received; returns the node now serving it.
async fn reconnect(client: &mut Client, addr: SocketAddr, token: &str) -> String {
    let (fresh, node) = eventually("a live node to take the reconnect", || connect(addr, token)).await;
    client.ws = fresh.ws;
    client.closed = None;
    node
}

/// Reads whatever frames are already waiting (for at most `FRAME_TIMEOUT`: a server that
/// never stops sending fails the test instead of hanging it).
async fn drain(c: &mut Client) {
    let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
    while c.closed.is_none() && c.read_one(Duration::from_millis(1)).await.is_some() {
        assert!(tokio::time::Instant::now() < deadline, "frames kept coming for {FRAME_TIMEOUT:?} while draining");
    }
}

/// Sends every `(client_msg_id, body)` of `sends` to `conv` and reads until each is acked,
/// resending (same id, same body) what the server answers with a retryable error, as a
/// real client does. Panics on any other error, on close, or after `EXCHANGE_TIMEOUT`.
async fn send_until_acked(c: &mut Client, conv: &str, sends: &[(String, String)]) {
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    for (cid, body) in sends {
        c.send_to_conv(cid, conv, body).await;
    }
    let mut seen = c.others.len();
    while let Some((cid, _)) = sends.iter().find(|(cid, _)| !c.acks.contains_key(cid)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "{cid} (and maybe more) never acked within {EXCHANGE_TIMEOUT:?}");
        if c.read_one(left.min(FRAME_TIMEOUT)).await.is_none() {
            panic!("socket closed or silent ({:?}) waiting for the ack of {cid}", c.closed);
        }
        let errors: Vec<Value> = c.others[seen..].iter().filter(|f| f["type"] == "error").cloned().collect();
        seen = c.others.len();
        for e in errors {
            let Some((cid, body)) = sends.iter().find(|(cid, _)| e["ref"] == cid.as_str()) else { continue };
            let code = e["code"].as_str().unwrap_or_default();
            assert!(["not_acknowledged", "unavailable", "rate_limited"].contains(&code), "send {cid} refused: {e}");
            if !c.acks.contains_key(cid) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                c.send_to_conv(cid, conv, body).await;
            }
        }
    }
}

/// The conversation's whole history from the database, over REST through the gateway
/// (`after_seq` paging, oldest first).
async fn history(cluster: &Cluster, token: &str, conv: &str) -> Vec<Value> {
    let mut all: Vec<Value> = vec![];
    for _ in 0..1000 {
        let after = all.last().map_or(0, |m| m["seq"].as_i64().expect("seq"));
        let url = cluster.url(&format!("/api/conversations/{conv}/messages?after_seq={after}&limit=500"));
        let r = cluster.client().get(url).bearer_auth(token).send().await.expect("history");
        assert_eq!(r.status(), StatusCode::OK, "history page after seq {after}");
        let page: Value = r.json().await.expect("json");
        let messages = page["messages"].as_array().expect("messages");
        if messages.is_empty() {
            return all;
        }
        all.extend(messages.iter().cloned());
    }
    panic!("history did not end after 1000 pages ({} messages)", all.len());
}

/// Sends from Alice every 20 ms (recording acks) until `task` finishes; its result.
/// Panics if the task takes over three minutes.
async fn send_while<T>(alice: &mut Client, conv: &str, sent: &mut usize, task: tokio::task::JoinHandle<T>) -> T {
    let mut task = std::pin::pin!(tokio::time::timeout(Duration::from_secs(180), task));
    loop {
        tokio::select! {
            r = &mut task => return r.expect("the broker task finished within 3 minutes").expect("broker task"),
            _ = tokio::time::sleep(Duration::from_millis(20)) => {
                alice.send_to_conv(&format!("a-{sent}"), conv, &format!("alice {sent}")).await;
                *sent += 1;
                drain(alice).await;
            }
        }
    }
}

/// Reads until the client holds `n` messages of `conv`.
async fn read_until_count(c: &mut Client, conv: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + EXCHANGE_TIMEOUT;
    let count = |c: &Client| c.by_seq.get(conv).map_or(0, |m| m.len());
    while count(c) < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(!left.is_zero(), "only {} of {n} messages arrived", count(c));
        if c.read_one(left.min(FRAME_TIMEOUT)).await.is_none() {
            panic!("socket closed or silent ({:?}) with {} of {n} messages", c.closed, count(c));
        }
    }
}

/// Asks for everything after what the client has, and reads until `sync_done`.
async fn sync(c: &mut Client, conv: &str) {
    let have = c.by_seq.get(conv).and_then(|m| m.keys().next_back().copied()).unwrap_or(0);
    c.send(json!({"type": "sync", "since": {conv: have}})).await;
    c.next_of("sync_done").await;
}

/// The node id of each messaging process, from its readiness answer.
async fn node_ids(cluster: &Cluster, nodes: usize) -> Vec<String> {
    let mut ids = vec![];
    for i in 1..=nodes {
        let url = format!("http://{}/readyz", cluster.addr(&format!("messaging-{i}")));
        let v: Value = cluster.client().get(url).send().await.expect("readyz").json().await.expect("json");
        ids.push(v["node"].as_str().expect("node id").to_owned());
    }
    ids
}

/// Two users whose sockets the gateway put on different nodes of a two-node cluster,
/// with their conversation open.
struct Apart {
    alice_t: String,
    bob_t: String,
    bob_id: String,
    alice_node: String,
    /// The process name of Bob's node (`messaging-N`).
    bob_proc: String,
    conv: String,
}

async fn apart(backend: Backend) -> (Cluster, Client, Client, Apart) {
    let cluster = Cluster::start_on_backend(2, SHARED_AMQP, backend);
    let ids = node_ids(&cluster, 2).await;
    let (alice_t, bob_t, bob_id) = alice_and_bob(&cluster).await;
    let (mut alice, alice_node) = connect(cluster.gateway(), &alice_t).await.expect("alice connects");
    let (mut bob, bob_node) = connect(cluster.gateway(), &bob_t).await.expect("bob connects");
    assert_ne!(alice_node, bob_node);
    let bob_proc = format!("messaging-{}", ids.iter().position(|id| *id == bob_node).expect("bob's node") + 1);
    let conv = open_conversation(&mut alice, &mut bob, &bob_id).await;
    (cluster, alice, bob, Apart { alice_t, bob_t, bob_id, alice_node, bob_proc, conv })
}

/// After Bob's node went: Bob reconnects through the gateway (to Alice's node), syncs,
/// and holds seqs 1..=n with every message acked to Alice under its acked seq.
async fn bob_moves_to_alices_node_with_every_ack(
    cluster: &Cluster,
    alice: &Client,
    bob: &mut Client,
    bob_t: &str,
    alice_node: &str,
    conv: &str,
    n: usize,
) {
    let new_node = reconnect(bob, cluster.gateway(), bob_t).await;
    assert_eq!(new_node, alice_node, "the gateway sends bob to the live node");
    sync(bob, conv).await;
    read_until_count(bob, conv, n).await;
    bob.assert_complete(conv, n as i64);
    for (id, seq) in alice.acks.values() {
        assert_eq!(bob.messages.get(id).map(|(_, s)| *s), Some(*seq), "acked message {id} reached bob");
    }
}

/// Alice's first message opens the conversation; returns its id.
async fn open_conversation(alice: &mut Client, bob: &mut Client, bob_id: &str) -> String {
    alice.send_to_user("a-0", bob_id, "hello bob").await;
    let ack = alice.next_of("ack").await;
    let conv = ack["conversation_id"].as_str().expect("conversation").to_owned();
    read_until_count(bob, &conv, 1).await;
    conv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_exchange_a_thousand_messages_each_way_through_the_gateway() {
    exchange_through_the_gateway(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_nodes_exchange_a_thousand_messages_each_way_through_the_gateway() {
    exchange_through_the_gateway(Backend::Postgres).await;
}

async fn exchange_through_the_gateway(backend: Backend) {
    let cluster = Cluster::start_on_backend(2, SHARED_AMQP, backend);
    let (alice_t, bob_t, bob_id) = alice_and_bob(&cluster).await;
    let (mut alice, alice_node) = connect(cluster.gateway(), &alice_t).await.expect("alice connects");
    let (mut bob, bob_node) = connect(cluster.gateway(), &bob_t).await.expect("bob connects");
    assert_ne!(alice_node, bob_node, "the gateway puts the second socket on the other node");
    // Presence crosses nodes both ways: Bob's new socket learns that Alice (on the other
    // node, connected first) is online, and Alice learns Bob came online.
    let alice_id =
        cluster.me(&alice_t).await.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let online = |id: String| {
        move |c: &Client| {
            c.others.iter().any(|f| f["type"] == "presence" && f["user_id"] == id.as_str() && f["online"] == true)
        }
    };
    bob.read_until("alice's presence from the other node", online(alice_id)).await;
    alice.read_until("bob's presence from the other node", online(bob_id.clone())).await;
    let conv = open_conversation(&mut alice, &mut bob, &bob_id).await;

    const N: usize = 1000;
    let alice_sent: Vec<(String, String)> = (1..N).map(|i| (format!("a-{i}"), format!("alice {i}"))).collect();
    let bob_sent: Vec<(String, String)> = std::iter::once(("b-0".to_owned(), "hello alice".to_owned()))
        .chain((1..N).map(|i| (format!("b-{i}"), format!("bob {i}"))))
        .collect();
    bob.send_to_conv(&bob_sent[0].0, &conv, &bob_sent[0].1).await;
    for i in 1..N {
        let ((a_cid, a_body), (b_cid, b_body)) = (&alice_sent[i - 1], &bob_sent[i]);
        alice.send_to_conv(a_cid, &conv, a_body).await;
        bob.send_to_conv(b_cid, &conv, b_body).await;
        if i % 50 == 0 {
            drain(&mut alice).await;
            drain(&mut bob).await;
        }
    }
    for (c, sent) in [(&mut alice, &alice_sent), (&mut bob, &bob_sent)] {
        read_until_count(c, &conv, 2 * N).await;
        // As a real client does: resend what was not acked (a commit that outlasts the
        // server's commit timeout is answered `not_acknowledged`, e.g. when another test's
        // large file writes stall the disk). A resend stores nothing new and must be
        // acked with the first one's id and seq (the client checks).
        for (cid, body) in sent {
            if !c.acks.contains_key(cid) {
                c.send_to_conv(cid, &conv, body).await;
            }
        }
        c.read_until("every send acked", |c| sent.iter().all(|(cid, _)| c.acks.contains_key(cid))).await;
        assert_eq!(c.acks.len(), N, "one ack per client message id");
        c.assert_complete(&conv, 2 * N as i64);
        c.assert_in_order();
    }
    // Exactly once: each side holds each acked message once, under the acked seq.
    for c in [&alice, &bob] {
        for (id, seq) in alice.acks.values().chain(bob.acks.values()) {
            assert_eq!(c.messages.get(id).map(|(_, s)| *s), Some(*seq));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_acknowledged_and_its_clients_move_to_a_live_one() {
    killed_node_loses_nothing(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_killed_node_loses_nothing_acknowledged_and_its_clients_move_to_a_live_one() {
    killed_node_loses_nothing(Backend::Postgres).await;
}

async fn killed_node_loses_nothing(backend: Backend) {
    let (mut cluster, mut alice, mut bob, Apart { bob_t, alice_node, bob_proc, conv, .. }) = apart(backend).await;

    // Alice keeps sending; Bob's node dies a third of the way in.
    const N: usize = 300;
    for i in 1..N {
        alice.send_to_conv(&format!("a-{i}"), &conv, &format!("alice {i}")).await;
        if i == N / 3 {
            cluster.kill(&bob_proc);
        }
        if i % 20 == 0 {
            drain(&mut alice).await;
            drain(&mut bob).await;
            tokio::time::sleep(Duration::from_millis(5)).await; // a steady stream, not one burst
        }
    }
    alice.read_until("every send acked", |c| c.acks.len() == N).await;
    drain(&mut bob).await;
    assert!(bob.closed.is_some(), "bob's socket went down with his node");

    bob_moves_to_alices_node_with_every_ack(&cluster, &alice, &mut bob, &bob_t, &alice_node, &conv, N).await;
    // And the conversation goes on, live.
    alice.send_to_conv("after", &conv, "still here?").await;
    read_until_count(&mut bob, &conv, N + 1).await;
}

/// Where the bus directory says `user` has sessions (node ids), read from the database.
async fn directory_of(db: &sea_orm::DatabaseConnection, user: &str) -> Vec<String> {
    use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
    use switchboard::storage::entities::bus_directory;
    let user = uuid::Uuid::parse_str(user).expect("user id");
    let rows = bus_directory::Entity::find().filter(bus_directory::Column::UserId.eq(user)).all(db).await;
    let mut nodes: Vec<String> = rows.expect("directory").into_iter().map(|r| r.node_id).collect();
    nodes.sort();
    nodes
}

/// The directory follows sessions, and a node that dies with rows in it loses nothing:
/// Bob's node is SIGKILLed while the directory still sends his events there, Alice's
/// messages after that are published to a queue that is gone, and Bob, reconnected
/// through the gateway, has them all from his sync. Within a TTL and a heartbeat the dead
/// node leaves the directory; a clean stop leaves it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_directory_follows_sessions_and_a_dead_node_loses_nothing_and_is_swept() {
    let (mut cluster, mut alice, mut bob, Apart { alice_t, bob_t, bob_id, alice_node, bob_proc, conv }) =
        apart(Backend::Sqlite).await;
    let db = switchboard::storage::connect(&cluster.database_url()).await.expect("database");
    let alice_id = cluster.get_json("/api/auth/me", &alice_t).await["id"].as_str().expect("alice's id").to_owned();
    let ids = node_ids(&cluster, 2).await;
    let bob_node = ids.iter().find(|id| **id != alice_node).expect("bob's node").clone();
    assert_eq!(directory_of(&db, &alice_id).await, vec![alice_node.clone()]);
    assert_eq!(directory_of(&db, &bob_id).await, vec![bob_node.clone()]);
    // A second device of Alice on Bob's node (the gateway spreads sockets over the
    // nodes): two rows; closing it removes one.
    let mut phone = None;
    for _ in 0..10 {
        let (c, node) = connect(cluster.gateway(), &alice_t).await.expect("alice's phone connects");
        if node == bob_node {
            phone = Some(c);
            break;
        }
    }
    let mut phone = phone.expect("a socket of alice's on bob's node");
    let mut both = vec![alice_node.clone(), bob_node.clone()];
    both.sort();
    eventually("alice on both nodes", || async { (directory_of(&db, &alice_id).await == both).then_some(()) }).await;
    phone.ws.close(None).await.expect("close");
    eventually("alice back on one node", || async {
        (directory_of(&db, &alice_id).await == vec![alice_node.clone()]).then_some(())
    })
    .await;

    cluster.kill(&bob_proc);
    // The directory still names the dead node: these go to its vanished queue.
    assert_eq!(directory_of(&db, &bob_id).await, vec![bob_node.clone()]);
    const N: usize = 20;
    for i in 1..N {
        alice.send_to_conv(&format!("a-{i}"), &conv, &format!("while bob's node is dead {i}")).await;
    }
    alice.read_until("every send acked", |c| c.acks.len() == N).await;
    drain(&mut bob).await;
    bob_moves_to_alices_node_with_every_ack(&cluster, &alice, &mut bob, &bob_t, &alice_node, &conv, N).await;
    assert!(directory_of(&db, &bob_id).await.contains(&alice_node), "bob's new session has its row");

    // The dead node is swept (and only it): its heartbeat row and its rows go.
    eventually("the dead node swept", || async {
        let nodes: Vec<String> = <switchboard::storage::entities::bus_node::Entity as sea_orm::EntityTrait>::find()
            .all(&db)
            .await
            .ok()?
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        let swept = !nodes.contains(&bob_node) && nodes.contains(&alice_node);
        (swept && directory_of(&db, &bob_id).await == vec![alice_node.clone()]).then_some(())
    })
    .await;
    alice.send_to_conv("after", &conv, "still here?").await;
    read_until_count(&mut bob, &conv, N + 1).await;
}

/// The node that commits dies: Alice's own node is SIGKILLed in the middle of a burst of
/// her sends, some acked, some not. Alice reconnects through the gateway (to the live
/// node) and resends what was not acked, as a real client does. Every ack must stand for a
/// commit: each acked (id, seq) is in the database exactly once and reaches Bob, seqs run
/// 1..=n with no gap, each client_msg_id is stored once, and a resend of an id the dead
/// node acked gets the same id and seq. An ack sent before its commit fails here only when
/// a kill lands between the two; acks are paced by the publish path and commits run
/// ahead of them, so that window is short (a server mutated to answer just before COMMIT
/// failed about one run in six): the crash is repeated, each time mid-burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_senders_node_loses_no_ack_and_resends_are_stored_once() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;

    const ROUNDS: usize = 4;
    const BURST: usize = 200;
    let mut cluster = Cluster::start(2);
    let ids = node_ids(&cluster, 2).await;
    let (alice_t, bob_t, bob_id) = alice_and_bob(&cluster).await;
    let (mut alice, alice_node) = connect(cluster.gateway(), &alice_t).await.expect("alice connects");
    let (mut bob, bob_node) = connect(cluster.gateway(), &bob_t).await.expect("bob connects");
    assert_ne!(alice_node, bob_node);
    let alice_proc = format!("messaging-{}", ids.iter().position(|id| *id == alice_node).expect("alice's node") + 1);
    let conv = open_conversation(&mut alice, &mut bob, &bob_id).await;
    let mut sent: Vec<(String, String)> = vec![("a-0".to_owned(), "hello bob".to_owned())];
    let mut unacked_at_crashes = 0;

    for round in 0..ROUNDS {
        if round > 0 {
            // Alice's node is back; she opens her socket on it (directly: the gateway
            // would put her on either node).
            cluster.restart(&alice_proc);
            let (fresh, node) = connect(cluster.addr(&alice_proc), &alice_t).await.expect("alice connects again");
            assert_ne!(node, bob_node);
            alice.ws = fresh.ws;
            alice.closed = None;
        }
        let burst: Vec<(String, String)> =
            (0..BURST).map(|i| (format!("r{round}-{i}"), format!("round {round} message {i}"))).collect();
        sent.extend(burst.iter().cloned());
        // One burst, unread; once the first acks are in, the node is killed while it is
        // still committing and acking the rest.
        for (cid, body) in &burst {
            let frame = json!({"type": "send", "client_msg_id": cid, "conversation_id": conv, "body": body});
            alice.ws.send(Message::text(frame.to_string())).await.expect("send frame");
        }
        alice
            .read_until("the first acks of the burst", |c| {
                burst.iter().filter(|(cid, _)| c.acks.contains_key(cid)).count() > BURST / 10
            })
            .await;
        cluster.kill(&alice_proc);
        // Whatever acks were on their way before the crash.
        alice.closed_within(FRAME_TIMEOUT).await.expect("alice's socket went down with her node");
        let acked_before: Vec<(String, (String, i64))> =
            burst.iter().filter_map(|(cid, _)| Some((cid.clone(), alice.acks.get(cid)?.clone()))).collect();
        let unacked: Vec<(String, String)> =
            burst.iter().filter(|(cid, _)| !alice.acks.contains_key(cid)).cloned().collect();
        unacked_at_crashes += unacked.len();

        let new_node = reconnect(&mut alice, cluster.gateway(), &alice_t).await;
        assert_eq!(new_node, bob_node, "the gateway sends alice to the live node");
        send_until_acked(&mut alice, &conv, &unacked).await;
        // A resend of what the dead node acked is answered from the database: same id, seq.
        let again: Vec<(String, String)> =
            burst.iter().filter(|(cid, _)| acked_before.iter().any(|(a, _)| a == cid)).cloned().collect();
        for (cid, _) in &again {
            alice.acks.remove(cid);
        }
        send_until_acked(&mut alice, &conv, &again).await;
        for (cid, ack) in &acked_before {
            assert_eq!(
                alice.acks.get(cid),
                Some(ack),
                "the resend of {cid}, acked before the crash, got another id or seq"
            );
        }
        drain(&mut bob).await;
    }
    assert!(unacked_at_crashes > 0, "every crash came after all its sends were acked: nothing was tested");

    // Messages committed but not yet published when a node died reach Bob through the
    // resends, or through the next message's gap fill: send one more.
    let after = [("after".to_owned(), "after the crashes".to_owned())];
    send_until_acked(&mut alice, &conv, &after).await;
    sent.extend(after);
    let n = sent.len();
    assert_eq!(alice.acks.len(), n, "one ack per client message id");
    let mut acked_seqs: Vec<i64> = alice.acks.values().map(|(_, seq)| *seq).collect();
    acked_seqs.sort_unstable();
    assert_eq!(acked_seqs, (1..=n as i64).collect::<Vec<_>>(), "the acks name seqs 1..=n, each once");

    // Bob, on the live node all along, has every acked message under its seq, no gap.
    read_until_count(&mut bob, &conv, n).await;
    bob.assert_complete(&conv, n as i64);
    for (cid, (id, seq)) in &alice.acks {
        assert_eq!(bob.messages.get(id).map(|(_, s)| *s), Some(*seq), "acked message {cid} ({id}) reached bob");
    }

    // The database: seqs 1..=n, each acked (id, seq) once, each client_msg_id once, with
    // its body.
    let stored = history(&cluster, &bob_t, &conv).await;
    let seqs: Vec<i64> = stored.iter().map(|m| m["seq"].as_i64().expect("seq")).collect();
    assert_eq!(seqs, (1..=n as i64).collect::<Vec<_>>(), "stored seqs are 1..=n, no gap, no repeat");
    let mut by_cid: std::collections::HashMap<&str, &Value> = std::collections::HashMap::new();
    for m in &stored {
        let cid = m["client_msg_id"].as_str().expect("client_msg_id");
        assert!(by_cid.insert(cid, m).is_none(), "client_msg_id {cid} stored twice: {m}");
    }
    let bodies: std::collections::HashMap<&str, &str> =
        sent.iter().map(|(cid, body)| (cid.as_str(), body.as_str())).collect();
    assert_eq!(by_cid.len(), bodies.len(), "nothing stored but what Alice sent");
    for (cid, (id, seq)) in &alice.acks {
        let m = by_cid.get(cid.as_str()).unwrap_or_else(|| panic!("acked {cid} is not in the database"));
        assert_eq!((m["id"].as_str(), m["seq"].as_i64()), (Some(id.as_str()), Some(*seq)), "{cid} stored as acked");
        assert_eq!(m["body"].as_str(), Some(bodies[cid.as_str()]), "{cid} stored with its body");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_reconnect_by_themselves_after_the_broker_restarts() {
    broker_restart(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nodes_reconnect_by_themselves_after_the_broker_restarts() {
    broker_restart(Backend::Postgres).await;
}

async fn broker_restart(backend: Backend) {
    let broker = tokio::task::spawn_blocking(PrivateBroker::start).await.expect("broker starts");
    let cluster = Cluster::start_on_backend(2, &broker.url(), backend);
    let ids = node_ids(&cluster, 2).await;
    let (alice_t, bob_t, bob_id) = alice_and_bob(&cluster).await;
    let (mut alice, alice_node) = connect(cluster.gateway(), &alice_t).await.expect("alice connects");
    let (mut bob, bob_node) = connect(cluster.gateway(), &bob_t).await.expect("bob connects");
    assert_ne!(alice_node, bob_node);
    let conv = open_conversation(&mut alice, &mut bob, &bob_id).await;

    // Stop the broker while Alice keeps sending.
    let halt = tokio::task::spawn_blocking(move || {
        let mut broker = broker;
        broker.halt();
        broker
    });
    let mut sent = 1;
    let broker = send_while(&mut alice, &conv, &mut sent, halt).await;
    // The outage is real: both nodes say their link is down...
    for i in 1..=2 {
        let url = format!("http://{}/readyz", cluster.addr(&format!("messaging-{i}")));
        eventually("the node to report its broker link down", || async {
            let v: Value = cluster.client().get(&url).send().await.ok()?.json().await.ok()?;
            (v["broker"] == "down").then_some(())
        })
        .await;
    }
    // ...and sending still works: the commit is local, so the ack does not wait for the
    // broker (Bob, on the other node, gets these after the link returns).
    let during: Vec<(String, String)> =
        (0..5).map(|i| (format!("a-{}", sent + i), format!("during the outage {i}"))).collect();
    sent += during.len();
    send_until_acked(&mut alice, &conv, &during).await;
    let alice_proc = format!("messaging-{}", ids.iter().position(|id| *id == alice_node).expect("alice's node") + 1);
    let url = format!("http://{}/readyz", cluster.addr(&alice_proc));
    let v: Value = cluster.client().get(&url).send().await.expect("readyz").json().await.expect("json");
    assert_eq!(v["broker"], "down", "the sends were acked while Alice's node had no broker");
    // Start it again while Alice keeps sending.
    let boot = tokio::task::spawn_blocking(move || {
        let mut broker = broker;
        broker.boot();
        broker
    });
    let broker = send_while(&mut alice, &conv, &mut sent, boot).await;
    // Both nodes find the broker again by themselves.
    for i in 1..=2 {
        let url = format!("http://{}/readyz", cluster.addr(&format!("messaging-{i}")));
        eventually("the node's broker link", || async {
            let v: Value = cluster.client().get(&url).send().await.ok()?.json().await.ok()?;
            (v["broker"] == "up").then_some(())
        })
        .await;
    }
    for i in 0..50 {
        alice.send_to_conv(&format!("a-{sent}"), &conv, &format!("after {i}")).await;
        sent += 1;
    }
    alice.read_until("every send acked", |c| c.acks.len() == sent).await;
    // Bob never asked: the messages sent while the broker was away reach him because his
    // node catches its sessions up when its link returns, then live delivery resumes.
    read_until_count(&mut bob, &conv, sent).await;
    bob.assert_complete(&conv, sent as i64);
    for (id, seq) in alice.acks.values() {
        assert_eq!(bob.messages.get(id).map(|(_, s)| *s), Some(*seq), "acked message {id} reached bob");
    }
    assert!(ids.contains(&bob_node));
    drop(cluster);
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_auth_service_down_logged_in_users_keep_chatting_and_login_says_503() {
    let mut cluster = Cluster::start(1);
    let (alice_t, bob_t, bob_id) = alice_and_bob(&cluster).await;
    let (mut alice, _) = connect(cluster.gateway(), &alice_t).await.expect("alice connects");
    let (mut bob, _) = connect(cluster.gateway(), &bob_t).await.expect("bob connects");
    let conv = open_conversation(&mut alice, &mut bob, &bob_id).await;

    cluster.kill("auth");
    let login = cluster.login("alice", PASSWORD).await;
    assert_eq!(error_code(login, StatusCode::SERVICE_UNAVAILABLE).await, "service_unavailable");
    cluster.wait_marked_down("auth").await;
    let r = cluster.client().get(cluster.url("/api/contacts")).bearer_auth(&alice_t).send().await.expect("sent");
    let body: Value = r.json().await.expect("json");
    assert!(body["error"]["message"].as_str().expect("message").contains("auth"), "names the service: {body}");

    // Messaging checks tokens itself: chat, history and new sockets still work.
    for i in 1..=10 {
        alice.send_to_conv(&format!("a-{i}"), &conv, &format!("alice {i}")).await;
    }
    read_until_count(&mut bob, &conv, 11).await;
    let history = cluster
        .client()
        .get(cluster.url(&format!("/api/conversations/{conv}/messages")))
        .bearer_auth(&bob_t)
        .send()
        .await
        .expect("sent");
    assert_eq!(history.status(), StatusCode::OK);
    let (mut alice2, _) = connect(cluster.gateway(), &alice_t).await.expect("a new socket with the old token");
    alice2.send_to_conv("a2-1", &conv, "from my phone").await;
    alice2.next_of("ack").await;
    read_until_count(&mut bob, &conv, 12).await;
}

/// After a restart every client reconnects at once; a gateway that knew no live instance
/// answered 503 until its next health check, and each 503 was a retry. Now it tries one
/// anyway: a service back before the check is used at once (here the check is a minute
/// away, so only the request itself can find it back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_back_before_the_health_check_is_used_at_once() {
    let mut cluster = Cluster::start_with(1, SHARED_AMQP, "health_interval_ms = 60000");
    let (alice_t, _bob_t, _bob_id) = alice_and_bob(&cluster).await;
    cluster.kill("auth");
    let login = cluster.login("alice", PASSWORD).await;
    assert_eq!(error_code(login, StatusCode::SERVICE_UNAVAILABLE).await, "service_unavailable");
    cluster.kill("messaging-1");
    let refused = cluster.client().get(cluster.url("/api/conversations")).bearer_auth(&alice_t).send().await;
    assert_eq!(refused.expect("sent").status(), StatusCode::SERVICE_UNAVAILABLE);
    cluster.restart("auth");
    cluster.restart("messaging-1");
    // The first request after the restarts is served: no health check ran in between.
    let login = cluster.login("alice", PASSWORD).await;
    assert_eq!(login.status(), StatusCode::OK, "login through a gateway that knew auth only as down");
    let (mut alice, _) = connect(cluster.gateway(), &alice_t).await.expect("a socket to the restarted node");
    alice.send(serde_json::json!({"type": "ping"})).await;
    alice.next_of("pong").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_event_is_dead_lettered_and_the_node_carries_on() {
    let cluster = Cluster::start(1);
    let (alice_t, bob_t, bob_id) = alice_and_bob(&cluster).await;
    let (mut alice, _) = connect(cluster.gateway(), &alice_t).await.expect("alice connects");
    let (mut bob, _) = connect(cluster.gateway(), &bob_t).await.expect("bob connects");
    let conv = open_conversation(&mut alice, &mut bob, &bob_id).await;

    let node = node_ids(&cluster, 1).await.remove(0);
    let conn = lapin::Connection::connect(&cluster.amqp_url, Default::default()).await.expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default()).await.expect("confirms");
    // A batch with one readable event (someone typing to Bob): it reaches Bob although
    // the rest of the batch is unreadable.
    let typing = json!({"id": uuid::Uuid::now_v7(), "v": 1, "time": 0, "event": {"type": "typing",
        "payload": {"to": bob_id, "conversation_id": conv, "user_id": uuid::Uuid::nil(), "active": true}}});
    let partly = format!(r#"[{typing},{{"v":99,"event":{{"type":"nope"}}}}]"#);
    let garbage: [&[u8]; 4] =
        [b"not json", br#"{"id":"x","v":1}"#, br#"[{"v":99,"event":{"type":"nope"}}]"#, partly.as_bytes()];
    // Every process reads its queue the same way: the node's and the notify service's.
    for queue in [format!("{}.node.{node}", cluster.prefix), format!("{}.notify", cluster.prefix)] {
        for body in garbage {
            ch.basic_publish("".into(), queue.clone().into(), Default::default(), body, Default::default())
                .await
                .expect("publish")
                .await
                .expect("confirm");
        }
    }
    let dead = format!("{}.dead", cluster.prefix);
    eventually("eight dead letters", || async {
        let q = ch
            .queue_declare(
                dead.clone().into(),
                lapin::options::QueueDeclareOptions { passive: true, ..Default::default() },
                Default::default(),
            )
            .await
            .ok()?;
        (q.message_count() == 8).then_some(())
    })
    .await;
    let typed = bob.next_of("typing").await;
    assert_eq!(typed["conversation_id"], conv.as_str());
    // An event notify can read but the database refuses to store (a message in a
    // conversation it does not have) is left out after a few tries; the queue behind it
    // moves on.
    let stranger = switchboard_actors::ids::UserId::new();
    let poison = switchboard_actors::ports::Envelope::new(switchboard_actors::ports::Event::MessageCreated {
        to: stranger,
        message: switchboard_actors::ports::StoredMessage {
            id: switchboard_actors::ids::MessageId::new(),
            conversation_id: switchboard_actors::ids::ConversationId::new(),
            seq: 1,
            sender_id: switchboard_actors::ids::UserId::new(),
            client_msg_id: "poison".into(),
            kind: switchboard_actors::states::MessageKind::Text,
            body: "nobody's".into(),
            file_id: None,
            created_at: 0,
            target_id: None,
            edited_at: None,
            deleted: false,
        },
        frame: None,
        notified: false,
        delivered: false,
    });
    let poison = serde_json::to_vec(&vec![poison]).expect("encode");
    ch.basic_publish(
        "".into(),
        format!("{}.notify", cluster.prefix).into(),
        Default::default(),
        &poison,
        Default::default(),
    )
    .await
    .expect("publish")
    .await
    .expect("confirm");
    alice.send_to_conv("a-1", &conv, "still delivered").await;
    read_until_count(&mut bob, &conv, 2).await;
    assert!(bob.closed.is_none());
    eventually("bob's notification of the new message", || async {
        let n = cluster.get_json("/api/notifications", &bob_t).await;
        let item = n["notifications"].as_array()?.iter().find(|i| i["kind"] == "message")?.clone();
        (item["payload"]["preview"] == "still delivered").then_some(())
    })
    .await;
    let _ = conn.close(200, "bye".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_pages_passes_request_ids_limits_bodies_and_keeps_the_origin() {
    let cluster = Cluster::start(1);
    let http = cluster.client();
    // Pages and static files come from the gateway itself.
    let page = http.get(cluster.url("/")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.headers()["content-type"].to_str().expect("type").starts_with("text/html"));
    // A request id is made up, or the client's sane one kept.
    let r = http.get(cluster.url("/healthz")).send().await.expect("sent");
    assert!(r.headers().get("x-request-id").is_some_and(|v| v.len() >= 32));
    let r = http.get(cluster.url("/api/auth/me")).header("x-request-id", "trace-42").send().await.expect("sent");
    assert_eq!(r.headers()["x-request-id"], "trace-42");
    assert_eq!(error_code(r, StatusCode::UNAUTHORIZED).await, "invalid_token", "proxied to auth");
    // Bodies over the edge limit never reach a service: refused on the announced length,
    // before a byte of the body is read.
    let mut raw = tokio::net::TcpStream::connect(cluster.gateway()).await.expect("connect");
    let head = format!(
        "POST /api/auth/register HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        cluster.gateway(),
        9 * 1024 * 1024
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, head.as_bytes()).await.expect("write");
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(FRAME_TIMEOUT, tokio::io::AsyncReadExt::read(&mut raw, &mut answer))
        .await
        .expect("answered without the body")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
    // Unknown API paths get the JSON 404.
    let r = http.get(cluster.url("/api/nope")).send().await.expect("sent");
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");

    // A browser's cookie-authenticated socket: the node sees the public Host, so the
    // gateway's own origin passes and another site's does not.
    let (_, _, _) = alice_and_bob(&cluster).await;
    let login = cluster.login("alice", PASSWORD).await;
    let cookie = login
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("sb_session="))
        .and_then(|c| c.split(';').next())
        .expect("session cookie")
        .to_owned();
    let gateway = cluster.gateway();
    let open = |origin: String| {
        let cookie = cookie.clone();
        async move {
            let mut req = format!("ws://{gateway}/ws").into_client_request().expect("request");
            req.headers_mut().insert("cookie", HeaderValue::from_str(&cookie).expect("cookie"));
            req.headers_mut().insert("origin", HeaderValue::from_str(&origin).expect("origin"));
            match tokio_tungstenite::connect_async(req).await {
                Ok(_) => 101,
                Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
                Err(e) => panic!("connect: {e}"),
            }
        }
    };
    assert_eq!(open(format!("http://{gateway}")).await, 101);
    assert_eq!(open("https://evil.example".to_owned()).await, 403);
}

#[tokio::test]
async fn quorum_queues_are_one_switch_away() {
    use switchboard::bus::RabbitBus;
    use switchboard::config::{BusConfig, Secret};
    let prefix = format!("sbtest-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("bus.db").display());
    let db = switchboard::storage::connect(&url).await.expect("database");
    let config = BusConfig { prefix: prefix.clone(), quorum_queues: true, ..BusConfig::default() };
    let bus = RabbitBus::start(Secret::new(crate::cluster_support::SHARED_AMQP), "nquorum", config, db.clone()).await;
    assert!(bus.wait_connected(Duration::from_secs(20)).await, "the bus connects");
    // Declaring the dead-letter queue as a classic queue now conflicts: it is a quorum queue.
    let conn =
        lapin::Connection::connect(crate::cluster_support::SHARED_AMQP, Default::default()).await.expect("broker");
    let ch = conn.create_channel().await.expect("channel");
    let mut classic = lapin::types::FieldTable::default();
    classic.insert("x-queue-type".into(), lapin::types::AMQPValue::LongString("classic".into()));
    let durable = lapin::options::QueueDeclareOptions { durable: true, ..Default::default() };
    let err = ch.queue_declare(format!("{prefix}.dead").into(), durable, classic).await;
    let err = err.expect_err("the dead-letter queue was declared as a quorum queue");
    assert!(switchboard::bus::declaration_refused(&err), "recognised as a configuration mismatch: {err}");
    // A process still configured for classic queues on this prefix says its link is down
    // (and logs why) rather than running as if connected.
    let config = BusConfig { prefix: prefix.clone(), quorum_queues: false, ..BusConfig::default() };
    let mismatched = RabbitBus::start(Secret::new(crate::cluster_support::SHARED_AMQP), "nclassic", config, db).await;
    assert!(!mismatched.wait_connected(Duration::from_secs(3)).await, "a mismatched process is not connected");
    mismatched.close().await;
    bus.close().await;
    let _ = conn.close(200, "bye".into()).await;
    crate::cluster_support::delete_broker_objects(crate::cluster_support::SHARED_AMQP, &prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_a_client_that_stops_reading_pins_gateway_sockets() {
    let cluster = Cluster::start_with(1, crate::cluster_support::SHARED_AMQP, "socket_stall_secs = 2");
    let (alice, bob, bob_id) = alice_and_bob(&cluster).await;
    let (mut a, _) = connect(cluster.gateway(), &alice).await.expect("alice connects");
    let (mut b, _) = connect(cluster.gateway(), &bob).await.expect("bob connects");
    let conv = open_conversation(&mut a, &mut b, &bob_id).await;
    let bob_port = match b.ws.get_ref() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s.local_addr().expect("local addr").port(),
        _ => unreachable!("plain TCP in tests"),
    };
    let gateway_port = cluster.gateway().port();
    assert!(tcp_established(gateway_port, bob_port), "the gateway holds Bob's socket while it is live");
    // Bob stops reading; Alice sends ~10 MiB, more than the socket buffers between the
    // gateway and Bob hold, so the gateway's writes to Bob stop moving.
    let body = "z".repeat(16 * 1024);
    for i in 0..640 {
        a.send_to_conv(&format!("z{i}"), &conv, &body).await;
        let id = format!("z{i}");
        a.read_until("ack", move |d| d.acks.contains_key(&id)).await;
    }
    eventually("the gateway to drop the stalled socket", || async {
        (!tcp_established(gateway_port, bob_port)).then_some(())
    })
    .await;
    // Alice, who reads, is untouched.
    a.send_to_conv("after", &conv, "still here").await;
    a.read_until("ack", |d| d.acks.contains_key("after")).await;
}

/// Issue 16: a node whose root supervisor exits leaves the cluster (readiness fails, the
/// process exits non-zero), the gateway fails over, and its clients reconnect to the
/// other node and lose nothing that was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_root_supervisor_dies_exits_and_its_clients_move_on_losing_nothing() {
    let (mut cluster, mut alice, mut bob, Apart { bob_t, alice_node, bob_proc, conv, .. }) =
        apart(Backend::Sqlite).await;

    const N: usize = 200;
    for i in 1..N {
        alice.send_to_conv(&format!("a-{i}"), &conv, &format!("alice {i}")).await;
        if i == N / 3 {
            let r = cluster
                .client()
                .post(format!("http://{}/api/debug/faults", cluster.addr(&bob_proc)))
                .bearer_auth(&bob_t)
                .json(&json!({"kind": "sup", "id": "node", "fault": "kill"}))
                .send()
                .await
                .expect("fault injected");
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            let readyz = format!("http://{}/readyz", cluster.addr(&bob_proc));
            eventually("the dying node's /readyz to fail", || async {
                match cluster.client().get(&readyz).send().await {
                    Ok(r) => (r.status() == StatusCode::SERVICE_UNAVAILABLE).then_some(()),
                    Err(_) => Some(()), // gone already
                }
            })
            .await;
        }
        if i % 20 == 0 {
            drain(&mut alice).await;
            drain(&mut bob).await;
        }
    }
    alice.read_until("every send acked", |c| c.acks.len() == N).await;
    let status = cluster.wait_exit(&bob_proc);
    assert!(!status.success(), "the node exits with a failure status: {status:?}");
    assert!(cluster.log(&bob_proc).contains("root supervisor"), "it says why");
    drain(&mut bob).await;
    bob.closed_within(FRAME_TIMEOUT).await.expect("bob's socket went down with his node");

    bob_moves_to_alices_node_with_every_ack(&cluster, &alice, &mut bob, &bob_t, &alice_node, &conv, N).await;
}

/// Issue 16, hole 2 across nodes: logging out (through the gateway, handled by the auth
/// service) closes the sockets that login opened on every messaging node, and its
/// notification stream on the notify service; another login of the same user stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_logout_leaves_sockets_open_on_other_nodes() {
    let cluster = Cluster::start(2);
    let (alice_t, _bob_t, bob_id) = alice_and_bob(&cluster).await;
    let laptop = crate::holes::login_token(&cluster, "alice").await;
    let (mut on_1, _) = connect(cluster.addr("messaging-1"), &alice_t).await.expect("node 1");
    let (mut on_2, _) = connect(cluster.addr("messaging-2"), &alice_t).await.expect("node 2");
    let (mut laptop_ws, _) = connect(cluster.addr("messaging-2"), &laptop).await.expect("laptop");
    let mut stream = crate::notifications::SseReader::open(&cluster, &alice_t, None).await;
    while stream.next().await.expect("the stream is attached").0 != "unread" {}
    // Both sockets serve Alice before the logout.
    for (ws, cid) in [(&mut on_1, "one"), (&mut on_2, "two")] {
        ws.send_to_user(cid, &bob_id, cid).await;
        ws.read_until("the ack", |c| c.acks.contains_key(cid)).await;
    }
    assert_eq!(cluster.logout(&alice_t).await.status(), StatusCode::NO_CONTENT);
    for ws in [&mut on_1, &mut on_2] {
        let closed = ws.closed_within(FRAME_TIMEOUT).await;
        assert_eq!(closed, Some((4001, "logged out".to_owned())));
    }
    assert!(stream.ends_within(FRAME_TIMEOUT).await, "the notification stream on the notify service ends");
    laptop_ws.send_to_user("laptop", &bob_id, "still here").await;
    laptop_ws.read_until("the laptop's ack", |c| c.acks.contains_key("laptop")).await;
}

/// Issue 19: the operator disables an account from the command line, beside a running
/// cluster: its sockets on every node and its notification stream close at once, its
/// tokens are refused, and it cannot log in.
#[tokio::test]
async fn the_operator_disabling_an_account_closes_its_connections_on_every_node() {
    let cluster = Cluster::start(2);
    let (alice_t, _bob_t, bob_id) = alice_and_bob(&cluster).await;
    let (mut on_1, _) = connect(cluster.addr("messaging-1"), &alice_t).await.expect("node 1");
    let (mut on_2, _) = connect(cluster.addr("messaging-2"), &alice_t).await.expect("node 2");
    let mut stream = crate::notifications::SseReader::open(&cluster, &alice_t, None).await;
    while stream.next().await.expect("the stream is attached").0 != "unread" {}
    for (ws, cid) in [(&mut on_1, "one"), (&mut on_2, "two")] {
        ws.send_to_user(cid, &bob_id, cid).await;
        ws.read_until("the ack", |c| c.acks.contains_key(cid)).await;
    }
    // A short blocking run (no password to hash): the sockets just wait meanwhile.
    let (code, out, err) = cluster.user_command(&["disable", "alice"]);
    assert_eq!(code, 0, "{out}{err}");
    for ws in [&mut on_1, &mut on_2] {
        assert_eq!(ws.closed_within(FRAME_TIMEOUT).await, Some((4001, "logged out".to_owned())));
    }
    assert!(stream.ends_within(FRAME_TIMEOUT).await, "the notification stream ends");
    assert_eq!(cluster.me(&alice_t).await.status(), StatusCode::UNAUTHORIZED);
    let r = cluster.login("alice", crate::helpers::PASSWORD).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a disabled account cannot log in");
}
