//! The RabbitMQ bus (lapin): the [`Bus`] port between nodes.
//!
//! Topology (see docs/broker.md): one durable topic exchange `<prefix>.events`; one
//! exclusive, auto-deleted queue per node `<prefix>.node.<node id>`, bound to
//! `user.<id>.#` for every user with a session on the node; unparseable deliveries are
//! rejected into the durable dead-letter queue `<prefix>.dead` (through the fanout exchange
//! of the same name).
//!
//! - Publishing hands the event to this node's own sessions first (no broker round trip,
//!   and local chat keeps working while the broker is away), then publishes it on a
//!   confirm-mode channel; confirms are pipelined (awaited off the publisher's path).
//!   Deliveries this node published itself are acked and skipped.
//! - Consuming: bounded prefetch, manual ack after the event is handed to the sessions
//!   (one `multiple` ack per run of deliveries that had arrived together).
//! - A lost link is rebuilt with exponential backoff: queue, bindings and consumer are
//!   declared again, then every session of the node catches up from the database, so a
//!   broker outage costs latency, never messages.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

use switchboard_actors::bridge::{deliver_local, resync_sessions};
use switchboard_actors::ids::UserId;
use switchboard_actors::ports::{Bus, BusError, Envelope};

use crate::config::{BusConfig, Secret};

/// Names of the broker objects for one deployment (or one test): all start with `prefix`.
#[derive(Debug, Clone)]
pub struct Topology {
    pub exchange: String,
    pub dead_exchange: String,
    pub dead_queue: String,
    pub node_queue: String,
}

impl Topology {
    pub fn new(prefix: &str, node_id: &str) -> Self {
        Self {
            exchange: format!("{prefix}.events"),
            dead_exchange: format!("{prefix}.dead"),
            dead_queue: format!("{prefix}.dead"),
            node_queue: format!("{prefix}.node.{node_id}"),
        }
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Events the broker confirmed.
    pub published: AtomicU64,
    /// Events the broker refused or never confirmed (the link broke first).
    pub unconfirmed: AtomicU64,
    pub received: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub connects: AtomicU64,
}

/// The RabbitMQ implementation of [`Bus`]. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

struct Inner {
    url: Secret,
    node_id: String,
    topology: Topology,
    config: BusConfig,
    /// The publishing channel while the link is up.
    channel: RwLock<Option<Channel>>,
    connected: AtomicBool,
    /// Sessions per user on this node; a user with any is bound. The lock also orders the
    /// bind and unbind calls on the broker.
    bindings: tokio::sync::Mutex<HashMap<UserId, usize>>,
    stats: BusStats,
    stop: CancellationToken,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("node_id", &self.inner.node_id)
            .field("topology", &self.inner.topology)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl RabbitBus {
    /// Starts the link manager for node `node_id`; returns at once. The link comes up in
    /// the background (and comes back by itself after every loss).
    pub fn start(url: Secret, node_id: &str, config: BusConfig) -> Self {
        let inner = Arc::new(Inner {
            url,
            node_id: node_id.to_owned(),
            topology: Topology::new(&config.prefix, node_id),
            config,
            channel: RwLock::new(None),
            connected: AtomicBool::new(false),
            bindings: tokio::sync::Mutex::new(HashMap::new()),
            stats: BusStats::default(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(run_link(inner.clone()));
        Self { inner }
    }

    /// Whether the broker link is up now.
    pub fn is_connected(&self) -> bool {
        self.inner.connected.load(Ordering::Acquire)
    }

    /// Waits up to `timeout` for the link to come up.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.is_connected() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    pub fn stats(&self) -> &BusStats {
        &self.inner.stats
    }

    /// Closes the link for good (process shutdown).
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
    }
}

#[async_trait::async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let inner = &self.inner;
        let payload = serde_json::to_vec(&envelope).map_err(|e| BusError(format!("encode event: {e}")))?;
        let routing_key = envelope.event.routing_key();
        let message_id = envelope.id.to_string();
        // This node's own sessions first: no round trip, and no dependency on the broker.
        if let Err(e) = deliver_local(&inner.node_id, envelope) {
            tracing::debug!(error = %e, "local delivery failed");
        }
        let Some(channel) = inner.channel.read().ok().and_then(|c| c.clone()) else {
            return Err(BusError("the broker link is down".into()));
        };
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message_id.into())
            .with_app_id(inner.node_id.clone().into());
        // Sending is awaited (so events leave in the order they were published); the
        // confirm is awaited off the caller's path, so publishers pipeline their confirms
        // instead of paying a broker round trip per event. The database is the record:
        // an event the broker loses costs live delivery, and the next message's gap fill
        // or the client's sync brings it back.
        let confirm = channel
            .basic_publish(
                inner.topology.exchange.clone().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                &payload,
                props,
            )
            .await
            .map_err(|e| BusError(format!("publish: {e}")))?;
        let inner = self.inner.clone();
        tokio::spawn(async move {
            match confirm.await {
                Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => {
                    inner.stats.published.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Confirmation::Nack(_)) => {
                    inner.stats.unconfirmed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %inner.node_id, "the broker refused an event (nack)");
                }
                Err(e) => {
                    inner.stats.unconfirmed.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(node = %inner.node_id, error = %e, "event not confirmed (link lost?)");
                }
            }
        });
        Ok(())
    }

    async fn bind_user(&self, user: UserId) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut bindings = inner.bindings.lock().await;
        let count = bindings.entry(user).or_insert(0);
        *count += 1;
        if *count > 1 {
            return Ok(());
        }
        // Unbound until the link is up; the link binds every user in the map when it is.
        let Some(channel) = inner.channel.read().ok().and_then(|c| c.clone()) else {
            return Ok(());
        };
        bind(&channel, &inner.topology, user).await.map_err(|e| BusError(format!("bind: {e}")))
    }

    async fn unbind_user(&self, user: UserId) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut bindings = inner.bindings.lock().await;
        match bindings.get_mut(&user) {
            Some(count) if *count > 1 => {
                *count -= 1;
                return Ok(());
            }
            Some(_) => {
                bindings.remove(&user);
            }
            None => return Ok(()),
        }
        let Some(channel) = inner.channel.read().ok().and_then(|c| c.clone()) else {
            return Ok(());
        };
        channel
            .queue_unbind(
                inner.topology.node_queue.clone().into(),
                inner.topology.exchange.clone().into(),
                user_key(user).into(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| BusError(format!("unbind: {e}")))
    }
}

fn user_key(user: UserId) -> String {
    format!("user.{user}.#")
}

async fn bind(channel: &Channel, topology: &Topology, user: UserId) -> lapin::Result<()> {
    channel
        .queue_bind(
            topology.node_queue.clone().into(),
            topology.exchange.clone().into(),
            user_key(user).into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// Keeps the link up: connect, declare, consume until the link breaks, back off, again.
async fn run_link(inner: Arc<Inner>) {
    let mut backoff = Duration::from_millis(100);
    let max_backoff = Duration::from_millis(inner.config.reconnect_max_ms);
    let mut links = 0u64;
    loop {
        let attempt = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = connect(&inner) => r,
        };
        match attempt {
            Ok((connection, consumer)) => {
                links += 1;
                inner.stats.connects.fetch_add(1, Ordering::Relaxed);
                inner.connected.store(true, Ordering::Release);
                backoff = Duration::from_millis(100);
                if links > 1 {
                    let n = resync_sessions(&inner.node_id);
                    tracing::info!(node = %inner.node_id, sessions = n, "broker link restored; sessions catch up");
                } else {
                    tracing::info!(node = %inner.node_id, "broker link up");
                }
                consume(&inner, consumer).await;
                inner.connected.store(false, Ordering::Release);
                if let Ok(mut c) = inner.channel.write() {
                    *c = None;
                }
                if inner.stop.is_cancelled() {
                    let _ = connection.close(200, "shutdown".into()).await;
                    return;
                }
                tracing::warn!(node = %inner.node_id, "broker link lost; reconnecting");
            }
            Err(e) if declaration_refused(&e) => {
                tracing::error!(node = %inner.node_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "{DECLARATION_REFUSED}");
            }
            Err(e) => {
                tracing::warn!(node = %inner.node_id, error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot reach the broker");
            }
        }
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

/// One link: connection, topology, bindings of the current users, and the consumer.
async fn connect(inner: &Inner) -> lapin::Result<(Connection, lapin::Consumer)> {
    let props = ConnectionProperties::default().with_connection_name(format!("switchboard {}", inner.node_id).into());
    let connection = Connection::connect(inner.url.expose(), props).await?;
    let t = &inner.topology;
    let publish = connection.create_channel().await?;
    publish.confirm_select(ConfirmSelectOptions::default()).await?;
    declare_common(&publish, t, &inner.config).await?;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(t.dead_exchange.clone().into()));
    publish
        .queue_declare(
            t.node_queue.clone().into(),
            QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() },
            args,
        )
        .await?;
    let consume = connection.create_channel().await?;
    consume.basic_qos(inner.config.prefetch, BasicQosOptions::default()).await?;
    let consumer = consume
        .basic_consume(
            t.node_queue.clone().into(),
            format!("node-{}", inner.node_id).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Bind everyone who has a session here, then open the channel for binds and
    // publishes, under the bindings lock so no bind in between is missed.
    let bindings = inner.bindings.lock().await;
    for user in bindings.keys() {
        bind(&publish, t, *user).await?;
    }
    if let Ok(mut c) = inner.channel.write() {
        *c = Some(publish);
    }
    drop(bindings);
    Ok((connection, consumer))
}

/// Declares what every process shares: the events exchange, and the dead-letter
/// exchange with its durable queue.
pub async fn declare_common(channel: &Channel, t: &Topology, config: &BusConfig) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
    channel.exchange_declare(t.exchange.clone().into(), ExchangeKind::Topic, durable, FieldTable::default()).await?;
    channel
        .exchange_declare(t.dead_exchange.clone().into(), ExchangeKind::Fanout, durable, FieldTable::default())
        .await?;
    channel
        .queue_declare(
            t.dead_queue.clone().into(),
            QueueDeclareOptions { durable: true, ..Default::default() },
            durable_queue_args(config),
        )
        .await?;
    channel
        .queue_bind(
            t.dead_queue.clone().into(),
            t.dead_exchange.clone().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

/// What to tell the operator when the broker refuses a declaration: the link stays down
/// (readiness says `"broker": "down"`) until the configuration and the broker agree.
pub const DECLARATION_REFUSED: &str = "the broker refused to declare this process's queues or exchanges with \
     its arguments (PRECONDITION_FAILED): they exist with others, most often bus.quorum_queues differing from the \
     existing <prefix>.dead and <prefix>.notify queues; no events cross the broker until it is fixed (docs/broker.md)";

/// Whether `e` is the broker refusing a declaration whose arguments differ from the
/// existing object's (a configuration mismatch, not an outage).
pub fn declaration_refused(e: &lapin::Error) -> bool {
    e.to_string().contains("PRECONDITION_FAILED")
}

/// Arguments of the durable queues: quorum queues when configured (for a broker cluster).
pub fn durable_queue_args(config: &BusConfig) -> FieldTable {
    let mut args = FieldTable::default();
    if config.quorum_queues {
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    }
    args
}

/// Hands deliveries to the sessions until the link breaks or the bus stops. What has
/// arrived is handled as a run and acked with one `multiple` ack (each delivery is handed
/// to the sessions before it).
async fn consume(inner: &Inner, consumer: lapin::Consumer) {
    let mut runs = consumer.ready_chunks(ACK_RUN);
    loop {
        let run = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = runs.next() => r,
        };
        let Some(run) = run else { return };
        let mut last = None;
        let mut failed = None;
        for d in run {
            match d {
                Ok(delivery) => {
                    if handle_delivery(inner, &delivery).await {
                        last = Some(delivery);
                    }
                }
                Err(e) => failed = Some(e),
            }
        }
        if let Some(last) = last
            && let Err(e) = last.ack(BasicAckOptions { multiple: true }).await
        {
            tracing::debug!(error = %e, "ack failed (link lost?)");
        }
        if let Some(e) = failed {
            tracing::warn!(node = %inner.node_id, error = %e, "consumer failed");
            return;
        }
    }
}

/// Most deliveries acked together.
const ACK_RUN: usize = 256;

/// Hands one delivery to the sessions; `true` if it is to be acked, `false` if it was
/// dead-lettered (rejected) instead.
async fn handle_delivery(inner: &Inner, delivery: &Delivery) -> bool {
    let own = delivery.properties.app_id().as_ref().is_some_and(|a| a.as_str() == inner.node_id);
    if own {
        return true;
    }
    match serde_json::from_slice::<Envelope>(&delivery.data) {
        Ok(envelope) => {
            inner.stats.received.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = deliver_local(&inner.node_id, envelope) {
                // The sessions catch up from the database on their next message or sync.
                tracing::debug!(error = %e, "delivery to the bridge failed");
            }
            true
        }
        Err(e) => {
            inner.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(node = %inner.node_id, error = %e, routing_key = %delivery.routing_key, "unreadable event; dead-lettered");
            if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                tracing::warn!(error = %e, "reject failed");
            }
            false
        }
    }
}
