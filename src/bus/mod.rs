//! The RabbitMQ bus (lapin): the [`Bus`] port between nodes.
//!
//! Topology (see docs/broker.md): one exclusive, auto-deleted queue per node
//! `<prefix>.node.<node id>`, the notify service's durable queue `<prefix>.notify`, both
//! reached through the default exchange by name; unparseable deliveries are rejected into
//! the durable dead-letter queue `<prefix>.dead` (through the fanout exchange of the same
//! name).
//!
//! - Publishing hands the event to this node's own sessions first (no broker round trip,
//!   and local chat keeps working while the broker is away), then queues it, encoded once,
//!   for the batcher ([`batch`]): what has been queued is sent as one AMQP message per
//!   destination (each other node that has a session of a recipient, by the [`directory`],
//!   and the notify queue for the events it stores), with one publisher confirm each.
//! - A user's first session on the node writes the user's directory row (committed
//!   before the session syncs), the last one's close removes it ([`directory`]).
//! - Consuming: bounded prefetch, manual ack after each batch's events are handed to the
//!   sessions (one `multiple` ack per run of deliveries that had arrived together).
//! - A lost link is rebuilt with exponential backoff: queue and consumer are declared
//!   again, then every session of the node catches up from the database, so a broker
//!   outage costs latency, never messages.

pub mod batch;
pub mod directory;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use switchboard_actors::bridge::resync_sessions;
use switchboard_actors::ids::UserId;
use switchboard_actors::ports::{Bus, BusError, Envelope};

use crate::config::{BusConfig, Secret};
use batch::{Outgoing, Queued};
use directory::Directory;

/// Names of the broker objects for one deployment (or one test): all start with `prefix`.
#[derive(Debug, Clone)]
pub struct Topology {
    pub dead_exchange: String,
    pub dead_queue: String,
    pub notify_queue: String,
    pub node_queue: String,
}

impl Topology {
    pub fn new(prefix: &str, node_id: &str) -> Self {
        Self {
            dead_exchange: format!("{prefix}.dead"),
            dead_queue: format!("{prefix}.dead"),
            notify_queue: crate::notify::notify_queue(prefix),
            node_queue: Self::node_queue_of(prefix, node_id),
        }
    }

    /// The queue of the node `node_id`.
    pub fn node_queue_of(prefix: &str, node_id: &str) -> String {
        format!("{prefix}.node.{node_id}")
    }
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Events in batches the broker confirmed (an event for two destinations counts twice).
    pub published: AtomicU64,
    /// AMQP messages (batches) the broker confirmed.
    pub batches: AtomicU64,
    /// Events in batches the broker refused or never confirmed (the link broke first), or
    /// that were dropped because the link was down.
    pub unconfirmed: AtomicU64,
    /// Events received from other nodes.
    pub received: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub connects: AtomicU64,
}

/// The RabbitMQ implementation of [`Bus`]. Cheap to share (`Arc` inside).
#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    url: Secret,
    pub(crate) node_id: String,
    pub(crate) topology: Topology,
    pub(crate) config: BusConfig,
    /// The publishing channel while the link is up.
    pub(crate) channel: RwLock<Option<Channel>>,
    connected: AtomicBool,
    pub(crate) directory: Directory,
    /// Sessions per user on this node, and whether the user's row write has settled; a
    /// user with any session has a directory row. The lock orders the row changes: they
    /// are queued for the binder under it.
    bindings: Mutex<HashMap<UserId, Binding>>,
    binder: mpsc::UnboundedSender<BindOp>,
    /// Encoded events for the batcher.
    outbox: mpsc::Sender<Queued>,
    /// This node's sessions.
    local: switchboard_actors::bridge::LocalDelivery,
    pub(crate) stats: BusStats,
    pub(crate) stop: CancellationToken,
}

/// A user's sessions on this node, and the settling of the write of their row: every
/// session that opens waits for it (not only the first), so none syncs before
/// publishers can find it.
struct Binding {
    sessions: usize,
    settled: watch::Receiver<bool>,
}

/// A change for the binder: a user's row written or removed (`settled` once tried); or
/// every row of this node written anew (after a failed write, or after this node was
/// swept).
enum BindOp {
    Change { user: UserId, here: bool, settled: watch::Sender<bool> },
    Rejoin,
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

/// Events waiting for the batcher before publishers wait.
const OUTBOX: usize = 65_536;

impl RabbitBus {
    /// Starts the link manager, the batcher and the directory upkeep for node `node_id`
    /// on the database `db`; returns once the node's heartbeat row is written (or could
    /// not be: the upkeep tries again). The link comes up in the background (and comes
    /// back by itself after every loss).
    pub async fn start(url: Secret, node_id: &str, config: BusConfig, db: sea_orm::DatabaseConnection) -> Self {
        let directory = Directory::new(db, node_id);
        if let Err(e) = directory.rejoin(&[], crate::now_ms()).await {
            tracing::warn!(node = %node_id, error = %e, "cannot write this node's heartbeat yet");
        }
        let (binder, binds) = mpsc::unbounded_channel();
        let (outbox, queued) = mpsc::channel(OUTBOX);
        let inner = Arc::new(Inner {
            url,
            node_id: node_id.to_owned(),
            topology: Topology::new(&config.prefix, node_id),
            config,
            channel: RwLock::new(None),
            connected: AtomicBool::new(false),
            directory,
            bindings: Mutex::new(HashMap::new()),
            binder,
            outbox,
            local: switchboard_actors::bridge::LocalDelivery::new(node_id),
            stats: BusStats::default(),
            stop: CancellationToken::new(),
        });
        tokio::spawn(run_link(inner.clone()));
        tokio::spawn(batch::run(inner.clone(), queued));
        tokio::spawn(run_binder(inner.clone(), binds));
        tokio::spawn(run_upkeep(inner.clone()));
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

    /// Sends what is queued and waits (up to `timeout`) for the broker's confirms.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.inner.outbox.send(Queued::Flush(tx)).await.is_err() {
            return false;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// Leaves for good (process shutdown): what is queued is sent (up to 5 s), this
    /// node's directory rows are removed, and the link closes.
    pub async fn close(&self) {
        if self.is_connected() && !self.flush(Duration::from_secs(5)).await {
            tracing::warn!(node = %self.inner.node_id, "events still unconfirmed at shutdown");
        }
        if let Err(e) = self.inner.directory.leave().await {
            tracing::warn!(node = %self.inner.node_id, error = %e, "cannot remove this node from the directory (it is swept after bus.node_ttl_secs)");
        }
        self.inner.stop.cancel();
    }
}

#[async_trait::async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let inner = &self.inner;
        let out = Outgoing::encode(&envelope)?;
        // This node's own sessions first: no round trip, and no dependency on the broker.
        if let Err(e) = inner.local.deliver(envelope) {
            tracing::debug!(error = %e, "local delivery failed");
        }
        if !self.is_connected() {
            return Err(BusError("the broker link is down".into()));
        }
        // The database is the record: an event the broker loses costs live delivery, and
        // the next message's gap fill or the client's sync brings it back.
        inner.outbox.send(Queued::Event(out)).await.map_err(|_| BusError("the bus is closing".into()))
    }

    async fn bind_user(&self, user: UserId) -> Result<(), BusError> {
        self.change(user, true).await
    }

    async fn unbind_user(&self, user: UserId) -> Result<(), BusError> {
        self.change(user, false).await
    }

    fn attach(&self, node: &Arc<switchboard_actors::node::NodeCtx>) {
        self.inner.local.attach(node);
    }
}

impl RabbitBus {
    /// Counts a session of `user` opening (`here`) or closing; the first opening writes
    /// the user's directory row and the last closing removes it. An opening returns once
    /// the write has settled (committed, or failed and handed to the repair, which makes
    /// the sessions catch up when it is done), so a new session syncs only after
    /// publishers can find it.
    async fn change(&self, user: UserId, here: bool) -> Result<(), BusError> {
        let inner = &self.inner;
        let mut settled = {
            let mut bindings = inner.bindings.lock().map_err(|_| BusError("bindings poisoned".into()))?;
            let queue = |here: bool| {
                let (tx, rx) = watch::channel(false);
                // Queued under the lock: the binder writes the changes in this order.
                inner
                    .binder
                    .send(BindOp::Change { user, here, settled: tx })
                    .map(|()| rx)
                    .map_err(|_| BusError("the bus is closing".into()))
            };
            if here {
                match bindings.get_mut(&user) {
                    Some(b) => {
                        b.sessions += 1;
                        b.settled.clone()
                    }
                    None => {
                        let settled = queue(true)?;
                        bindings.insert(user, Binding { sessions: 1, settled: settled.clone() });
                        settled
                    }
                }
            } else {
                match bindings.get_mut(&user) {
                    Some(b) if b.sessions > 1 => {
                        b.sessions -= 1;
                        return Ok(());
                    }
                    Some(_) => {
                        bindings.remove(&user);
                        queue(false)?
                    }
                    None => return Ok(()),
                }
            }
        };
        // A binder that stopped (shutdown) drops the sender: nothing more to wait for.
        let _ = settled.wait_for(|done| *done).await;
        Ok(())
    }
}

/// Most directory changes written in one transaction.
const BIND_RUN: usize = 512;

/// Writes the directory changes in runs: what is queued, folded per user (the last
/// change wins: the queue is in the order the counts changed), in one transaction, then
/// settles each. A run that fails is not retried as it was: the repair writes every row
/// of this node anew from the counts (a second later, and again with backoff until it
/// succeeds), then has every session catch up from the database, so whatever crossed
/// nodes without them meanwhile reaches them.
async fn run_binder(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<BindOp>) {
    let mut ops = Vec::with_capacity(BIND_RUN);
    let mut repair_wait = Duration::from_secs(1);
    // One pending repair at most, however many runs fail before it is due.
    let mut repair_at: Option<tokio::time::Instant> = None;
    loop {
        let due = async {
            match repair_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let n = tokio::select! {
            _ = inner.stop.cancelled() => return,
            n = rx.recv_many(&mut ops, BIND_RUN) => n,
            () = due => {
                ops.push(BindOp::Rejoin);
                1
            }
        };
        if n == 0 {
            return;
        }
        let mut folded: Vec<(UserId, bool)> = Vec::with_capacity(ops.len());
        let mut index: HashMap<UserId, usize> = HashMap::new();
        let mut rejoin = false;
        for op in &ops {
            match op {
                BindOp::Change { user, here, .. } => match index.get(user) {
                    Some(&i) => folded[i].1 = *here,
                    None => {
                        index.insert(*user, folded.len());
                        folded.push((*user, *here));
                    }
                },
                BindOp::Rejoin => rejoin = true,
            }
        }
        let written = if rejoin {
            // Every user with a session here now (this run's changes are in the counts).
            let users: Vec<UserId> = inner.bindings.lock().map(|b| b.keys().copied().collect()).unwrap_or_default();
            inner.directory.rejoin(&users, crate::now_ms()).await
        } else {
            inner.directory.apply(&folded).await
        };
        match written {
            Ok(()) => {
                if rejoin {
                    repair_at = None;
                    repair_wait = Duration::from_secs(1);
                    let told = resync_sessions(&inner.node_id);
                    tracing::info!(node = %inner.node_id, told, "this node's bus directory rows are written anew; sessions catch up");
                }
            }
            Err(e) => {
                tracing::warn!(node = %inner.node_id, error = %e, retry_in_ms = repair_wait.as_millis() as u64, "cannot write the bus directory; rewriting this node's rows");
                if repair_at.is_none() || rejoin {
                    repair_at = Some(tokio::time::Instant::now() + repair_wait);
                    repair_wait = (repair_wait * 2).min(Duration::from_secs(30));
                }
            }
        }
        for op in ops.drain(..) {
            if let BindOp::Change { settled, .. } = op {
                let _ = settled.send(true);
            }
        }
    }
}

/// Heartbeats, and sweeps of nodes that stopped sending theirs: every third of
/// `bus.node_ttl_secs`. A node that finds its own row gone has its rows written again.
async fn run_upkeep(inner: Arc<Inner>) {
    let ttl_ms = i64::try_from(inner.config.node_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let every = Duration::from_millis((inner.config.node_ttl_secs.saturating_mul(1000) / 3).max(100));
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = inner.stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        tick += 1;
        let now = crate::now_ms();
        match inner.directory.heartbeat(now).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = inner.binder.send(BindOp::Rejoin);
            }
            Err(e) => tracing::warn!(node = %inner.node_id, error = %e, "bus directory heartbeat failed"),
        }
        match inner.directory.sweep(now, ttl_ms, tick.is_multiple_of(ORPHAN_SWEEP_EVERY)).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(node = %inner.node_id, nodes = n, "swept nodes that stopped their heartbeats from the bus directory")
            }
            Err(e) => tracing::debug!(node = %inner.node_id, error = %e, "bus directory sweep failed"),
        }
    }
}

/// Heartbeats between sweeps of rows whose node has no heartbeat row at all.
const ORPHAN_SWEEP_EVERY: u64 = 10;

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
                    let told = resync_sessions(&inner.node_id);
                    tracing::info!(node = %inner.node_id, told, "broker link restored; sessions catch up");
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

/// One link: connection, topology and the consumer.
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
    if let Ok(mut c) = inner.channel.write() {
        *c = Some(publish);
    }
    Ok((connection, consumer))
}

/// Declares what every process shares: the dead-letter exchange with its durable queue,
/// and the notify service's durable queue (so events for it wait there even before the
/// service first starts).
pub async fn declare_common(channel: &Channel, t: &Topology, config: &BusConfig) -> lapin::Result<()> {
    let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
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
        .await?;
    let mut args = durable_queue_args(config);
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(t.dead_exchange.clone().into()));
    channel
        .queue_declare(t.notify_queue.clone().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await?;
    Ok(())
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

/// Hands one delivery's events to the sessions; `true` if it is to be acked, `false` if
/// it was dead-lettered (rejected) instead: when it does not parse, or some of its events
/// do not (the readable ones are handed over first).
async fn handle_delivery(inner: &Inner, delivery: &Delivery) -> bool {
    let own = delivery.properties.app_id().as_ref().is_some_and(|a| a.as_str() == inner.node_id);
    if own {
        return true;
    }
    let decoded = batch::decode(&delivery.data);
    inner.stats.received.fetch_add(decoded.envelopes.len() as u64, Ordering::Relaxed);
    for envelope in decoded.envelopes {
        if let Err(e) = inner.local.deliver(envelope) {
            // The sessions catch up from the database on their next message or sync.
            tracing::debug!(error = %e, "local delivery failed");
        }
    }
    if decoded.unreadable == 0 {
        return true;
    }
    inner.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(node = %inner.node_id, unreadable = decoded.unreadable, "unreadable events; the delivery is dead-lettered");
    if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
        tracing::warn!(error = %e, "reject failed");
    }
    false
}
