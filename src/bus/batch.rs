//! Events between processes in batches: one AMQP message per destination and flush.
//!
//! Publishers queue each event encoded once ([`Outgoing`]); one task ([`run`]) takes what
//! is queued (under load after waiting `bus.batch_linger_us` for more to join the first;
//! after a quiet spell at once), asks the
//! [`super::directory`] once which other nodes have sessions of the batch's recipients,
//! and sends each destination one AMQP message through the default exchange: a JSON array
//! of envelopes, to `<prefix>.node.<id>` for every such node and to `<prefix>.notify` for
//! the events the notify service stores. One publisher confirm per message. Events for a
//! user on no other node go nowhere else: the database is the record, and the notify
//! queue gets what it needs.
//!
//! Reading the directory after the events' messages committed is what keeps the delivery
//! guarantee (see [`super::directory`]). Order: one task sends every batch on one channel,
//! so the events of one publisher reach each queue in the order they were published.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
use serde_json::value::RawValue;
use switchboard_actors::ids::UserId;
use switchboard_actors::ports::{BusError, Envelope};
use tokio::sync::{mpsc, oneshot};

use super::{Inner, Topology};

/// Most events in one batch (one read of the directory).
pub const MAX_EVENTS: usize = 1024;
/// A destination's events past this many bytes go in a further AMQP message.
pub const MAX_BYTES: usize = 1 << 20;
/// The longest a batch waits for the directory (a stalled database must not stall the
/// publishers behind the batcher: their own node's sessions have their events already).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(1);

/// An event encoded for the broker, with what routes it.
pub(crate) struct Outgoing {
    to: UserId,
    /// The notify service stores it ([`crate::notify::wants`]).
    notify: bool,
    json: Vec<u8>,
}

impl Outgoing {
    pub(crate) fn encode(envelope: &Envelope) -> Result<Self, BusError> {
        let json = serde_json::to_vec(envelope).map_err(|e| BusError(format!("encode event: {e}")))?;
        Ok(Self { to: envelope.event.recipient(), notify: crate::notify::wants(&envelope.event), json })
    }
}

/// What the batcher is handed: an event, or a request to send what is queued and answer
/// once the broker has confirmed it.
pub(crate) enum Queued {
    Event(Outgoing),
    Flush(oneshot::Sender<()>),
}

/// The batcher: until the bus stops.
pub(crate) async fn run(inner: Arc<Inner>, mut rx: mpsc::Receiver<Queued>) {
    let linger = Duration::from_micros(inner.config.batch_linger_us);
    let mut queued = Vec::with_capacity(MAX_EVENTS);
    let mut last_send = tokio::time::Instant::now();
    loop {
        let n = tokio::select! {
            _ = inner.stop.cancelled() => return,
            n = rx.recv_many(&mut queued, MAX_EVENTS) => n,
        };
        if n == 0 {
            return;
        }
        // Waiting pays only under load: an event after a quiet spell (nothing sent for a
        // linger) leaves at once; while events keep coming, each batch waits a linger
        // for more to join it.
        let busy = last_send.elapsed() < linger;
        let flushing = queued.iter().any(|q| matches!(q, Queued::Flush(_)));
        if busy && !flushing && queued.len() < MAX_EVENTS {
            tokio::time::sleep(linger).await;
            while queued.len() < MAX_EVENTS {
                match rx.try_recv() {
                    Ok(q) => queued.push(q),
                    Err(_) => break,
                }
            }
        }
        let mut events = Vec::with_capacity(queued.len());
        let mut flushes = vec![];
        for q in queued.drain(..) {
            match q {
                Queued::Event(e) => events.push(e),
                Queued::Flush(tx) => flushes.push(tx),
            }
        }
        let confirms = send(&inner, &events).await;
        last_send = tokio::time::Instant::now();
        if flushes.is_empty() {
            let inner = inner.clone();
            tokio::spawn(async move { count_confirms(&inner, confirms).await });
        } else {
            count_confirms(&inner, confirms).await;
            for tx in flushes {
                let _ = tx.send(());
            }
        }
    }
}

/// Publishes `events`; returns each message's pending confirm with its event count.
async fn send(inner: &Inner, events: &[Outgoing]) -> Vec<(u64, PublisherConfirm)> {
    let mut confirms = vec![];
    if events.is_empty() {
        return confirms;
    }
    let Some(channel) = inner.channel.read().ok().and_then(|c| c.clone()) else {
        inner.stats.unconfirmed.fetch_add(events.len() as u64, Ordering::Relaxed);
        return confirms;
    };
    let mut users: Vec<UserId> = events.iter().map(|e| e.to).collect();
    users.sort_unstable();
    users.dedup();
    let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, inner.directory.lookup(&users));
    let nodes = match lookup.await.unwrap_or_else(|_| Err(sea_orm::DbErr::Custom("timed out".into()))) {
        Ok(nodes) => nodes,
        Err(e) => {
            // Live delivery across nodes is lost for this batch (the clients' gap fill and
            // sync recover it); the notify queue still gets its events.
            tracing::warn!(node = %inner.node_id, error = %e, "cannot read the bus directory");
            HashMap::new()
        }
    };
    for (queue, durable, indices) in destinations(&inner.topology, &inner.config.prefix, events, &nodes) {
        for body in bodies(events, &indices) {
            let count = body.events;
            let props = BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(if durable { 2 } else { 1 })
                .with_message_id(uuid::Uuid::now_v7().to_string().into())
                .with_app_id(inner.node_id.clone().into());
            match channel
                .basic_publish("".into(), queue.clone().into(), BasicPublishOptions::default(), &body.json, props)
                .await
            {
                Ok(confirm) => confirms.push((count, confirm)),
                Err(e) => {
                    inner.stats.unconfirmed.fetch_add(count, Ordering::Relaxed);
                    tracing::debug!(node = %inner.node_id, error = %e, "publish failed (link lost?)");
                }
            }
        }
    }
    confirms
}

/// Where each event goes: `(queue, durable, indices of its events)`, in the order the
/// destinations first appear.
fn destinations(
    topology: &Topology,
    prefix: &str,
    events: &[Outgoing],
    nodes: &HashMap<UserId, Vec<String>>,
) -> Vec<(String, bool, Vec<usize>)> {
    let mut out: Vec<(String, bool, Vec<usize>)> = vec![];
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut add = |queue: String, durable: bool, i: usize| {
        let at = *index.entry(queue.clone()).or_insert_with(|| {
            out.push((queue, durable, vec![]));
            out.len() - 1
        });
        out[at].2.push(i);
    };
    for (i, event) in events.iter().enumerate() {
        for node in nodes.get(&event.to).into_iter().flatten() {
            add(Topology::node_queue_of(prefix, node), false, i);
        }
        if event.notify {
            add(topology.notify_queue.clone(), true, i);
        }
    }
    out
}

/// One AMQP message's body: a JSON array of encoded envelopes.
struct Body {
    json: Vec<u8>,
    events: u64,
}

/// The events at `indices` as JSON arrays of at most about [`MAX_BYTES`] each (an event
/// larger than that alone in its own).
fn bodies(events: &[Outgoing], indices: &[usize]) -> Vec<Body> {
    let mut out = vec![];
    let mut json = Vec::with_capacity(256);
    let mut count = 0u64;
    for &i in indices {
        let event = &events[i].json;
        if count > 0 && json.len() + event.len() + 2 > MAX_BYTES {
            json.push(b']');
            out.push(Body { json: std::mem::take(&mut json), events: count });
            count = 0;
        }
        json.push(if count == 0 { b'[' } else { b',' });
        json.extend_from_slice(event);
        count += 1;
    }
    if count > 0 {
        json.push(b']');
        out.push(Body { json, events: count });
    }
    out
}

async fn count_confirms(inner: &Inner, confirms: Vec<(u64, PublisherConfirm)>) {
    for (count, confirm) in confirms {
        match confirm.await {
            Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => {
                inner.stats.published.fetch_add(count, Ordering::Relaxed);
                inner.stats.batches.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Confirmation::Nack(_)) => {
                inner.stats.unconfirmed.fetch_add(count, Ordering::Relaxed);
                tracing::warn!(node = %inner.node_id, events = count, "the broker refused a batch (nack)");
            }
            Err(e) => {
                inner.stats.unconfirmed.fetch_add(count, Ordering::Relaxed);
                tracing::debug!(node = %inner.node_id, error = %e, "batch not confirmed (link lost?)");
            }
        }
    }
}

/// A delivery's events: a JSON array of envelopes (or one envelope alone), and how many
/// of them did not parse.
#[derive(Debug)]
pub struct Decoded {
    pub envelopes: Vec<Envelope>,
    pub unreadable: usize,
}

pub fn decode(data: &[u8]) -> Decoded {
    let mut decoded = Decoded { envelopes: vec![], unreadable: 0 };
    let array = data.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if !array {
        match serde_json::from_slice::<Envelope>(data) {
            Ok(e) => decoded.envelopes.push(e),
            Err(_) => decoded.unreadable = 1,
        }
        return decoded;
    }
    match serde_json::from_slice::<Vec<&RawValue>>(data) {
        Ok(items) => {
            for item in items {
                match serde_json::from_str::<Envelope>(item.get()) {
                    Ok(e) => decoded.envelopes.push(e),
                    Err(_) => decoded.unreadable += 1,
                }
            }
        }
        Err(_) => decoded.unreadable = 1,
    }
    decoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_actors::ports::Event;

    fn probe(to: UserId) -> Envelope {
        Envelope::new(Event::PresenceProbe { to, from: UserId::new() })
    }

    #[test]
    fn a_batch_decodes_to_its_events_and_counts_the_unreadable() {
        let (a, b) = (UserId::new(), UserId::new());
        let events: Vec<Outgoing> =
            [probe(a), probe(b)].iter().map(|e| Outgoing::encode(e).expect("encodes")).collect();
        let body = bodies(&events, &[0, 1]);
        assert_eq!(body.len(), 1);
        assert_eq!(body[0].events, 2);
        let decoded = decode(&body[0].json);
        assert_eq!(decoded.unreadable, 0);
        let to: Vec<UserId> = decoded.envelopes.iter().map(|e| e.event.recipient()).collect();
        assert_eq!(to, vec![a, b]);
        // One envelope alone (an earlier version's message) still reads.
        assert_eq!(decode(&events[0].json).envelopes.len(), 1);
        let mut mixed = b"[".to_vec();
        mixed.extend_from_slice(&events[0].json);
        mixed.extend_from_slice(br#",{"v":99,"event":{"type":"nope"}},7]"#);
        let decoded = decode(&mixed);
        assert_eq!((decoded.envelopes.len(), decoded.unreadable), (1, 2));
        for garbage in [&b"not json"[..], b"[1,", b"", b"{}"] {
            let d = decode(garbage);
            assert!(d.envelopes.is_empty() && d.unreadable == 1, "{garbage:?}");
        }
        assert_eq!(decode(b"[]").unreadable, 0);
    }

    #[test]
    fn large_batches_are_split_and_every_destination_gets_its_events() {
        let users: Vec<UserId> = (0..3).map(|_| UserId::new()).collect();
        let events: Vec<Outgoing> =
            (0..10_000).map(|i| Outgoing::encode(&probe(users[i % 3])).expect("encodes")).collect();
        let indices: Vec<usize> = (0..events.len()).collect();
        let parts = bodies(&events, &indices);
        assert!(parts.len() > 1, "10,000 events of ~170 bytes exceed one MiB");
        assert!(parts.iter().all(|p| p.json.len() <= MAX_BYTES));
        assert_eq!(parts.iter().map(|p| p.events).sum::<u64>(), 10_000);
        let read: usize = parts.iter().map(|p| decode(&p.json).envelopes.len()).sum();
        assert_eq!(read, 10_000);

        // users[0] on nodes x and y, users[1] on x, users[2] nowhere.
        let t = Topology::new("p", "self");
        let nodes = HashMap::from([(users[0], vec!["x".to_owned(), "y".to_owned()]), (users[1], vec!["x".to_owned()])]);
        let dests = destinations(&t, "p", &events[..6], &nodes);
        let got: Vec<(&str, Vec<usize>)> = dests.iter().map(|(q, _, i)| (q.as_str(), i.clone())).collect();
        assert_eq!(got, vec![("p.node.x", vec![0, 1, 3, 4]), ("p.node.y", vec![0, 3])]);
    }
}
