//! The node: its context (ports, limits, names) and the handle the web layer uses.

use std::fmt::Display;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ractor::{Actor, ActorCell, ActorRef, SpawnErr};

use crate::bridge::{BridgeArgs, BusBridge};
use crate::codes::ErrorCode;
use crate::faults::Faults;
use crate::ids::{ConversationId, TransferId, UserId};
use crate::notify_stream::{NotificationStore, NotificationStreamActor, StreamArgs, StreamItem, StreamMsg};
use crate::ports::{Bus, ChatStore, NewMessage, StoredMessage};
use crate::room::{RoomActor, RoomArgs, RoomMsg, SendError};
use crate::session::{ConnHandle, SessionActor, SessionArgs, SessionMsg};
use crate::supervisor::{ChildSpec, RestartPolicy, Supervisor, SupervisorArgs, SupervisorMsg, SupervisorStats};
use crate::transfer::{TransferActor, TransferArgs, TransferMsg, TransferStore};

/// Limits a node enforces on its sessions and rooms.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest message body, in bytes.
    pub max_body_bytes: usize,
    /// Largest WebSocket frame (message), in bytes.
    pub max_frame_bytes: usize,
    /// Frames queued for a connection before it counts as not reading and is closed.
    pub outbound_queue: usize,
    /// Messages a user may send per second (all their connections together)...
    pub sends_per_second: u32,
    /// ...with bursts up to this many.
    pub send_burst: u32,
    /// Bad frames a connection may send before it is closed.
    pub max_violations: u32,
    /// A room with no traffic for this long stops (and restarts on demand).
    pub room_idle: Duration,
    /// Messages per page when catching a client up.
    pub sync_page: u64,
    /// How long a session waits for a room to commit before telling the client to resend.
    pub commit_timeout: Duration,
    /// How long a catch-up may wait for a full outbound queue to drain.
    pub drain_timeout: Duration,
    /// How long after sending a text message its sender may edit it (0: no edits); told
    /// to clients in `hello`, enforced by the REST API.
    pub edit_window: Duration,
    /// A session idle this long hibernates: its actor stops, its connection stays
    /// (zero: never).
    pub hibernate_after: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024,
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            sends_per_second: 50,
            send_burst: 200,
            max_violations: 50,
            room_idle: Duration::from_secs(300),
            sync_page: 500,
            commit_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(15),
            edit_window: Duration::from_secs(24 * 3600),
            hibernate_after: Duration::from_secs(30),
        }
    }
}

/// `sync` frames one user may send per second on one node (all connections together),
/// with bursts up to [`SYNC_BURST`]: a reconnecting client syncs once, a few devices or
/// tabs at once fit in the burst.
pub const SYNCS_PER_SECOND: NonZeroU32 = NonZeroU32::MIN;
pub const SYNC_BURST: NonZeroU32 = match NonZeroU32::new(10) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// `read` frames that raise a read marker one user may send per second on one node (all
/// connections together), with bursts up to [`READ_BURST`]: a client marks a
/// conversation read as the person looks at it, a few times a second at most. Each is a
/// write and two receipts.
pub const READS_PER_SECOND: NonZeroU32 = match NonZeroU32::new(10) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};
pub const READ_BURST: NonZeroU32 = match NonZeroU32::new(30) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

/// Everything an actor of this node needs. Shared by `Arc`.
pub struct NodeCtx {
    /// Unique per node; scopes actor names and process groups.
    pub node_id: String,
    pub store: Arc<dyn ChatStore>,
    pub bus: Arc<dyn Bus>,
    pub faults: Faults,
    pub limits: Limits,
    /// Per-user send rate, across all of the user's connections on this node.
    pub send_limiter: DefaultKeyedRateLimiter<UserId>,
    /// Per-user `sync` rate: each can replay a user's whole history from the database.
    pub sync_limiter: DefaultKeyedRateLimiter<UserId>,
    /// Per-user rate of `read` frames that raise a read marker.
    pub read_limiter: DefaultKeyedRateLimiter<UserId>,
    /// Stored notifications, on processes that serve notification streams.
    pub notifications: Option<Arc<dyn NotificationStore>>,
    /// File transfers, on processes that take uploads.
    pub transfers: Option<Arc<dyn TransferStore>>,
    /// The open connections on this node, per user: what events are delivered to (a
    /// connection's session may be running or hibernating).
    connections: dashmap::DashMap<UserId, Vec<Arc<ConnHandle>>>,
}

impl NodeCtx {
    pub fn new(node_id: String, store: Arc<dyn ChatStore>, bus: Arc<dyn Bus>, faults: Faults, limits: Limits) -> Self {
        let rate = NonZeroU32::new(limits.sends_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.send_burst).unwrap_or(rate);
        let send_limiter = RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst));
        let sync_limiter = RateLimiter::dashmap(Quota::per_second(SYNCS_PER_SECOND).allow_burst(SYNC_BURST));
        let read_limiter = RateLimiter::dashmap(Quota::per_second(READS_PER_SECOND).allow_burst(READ_BURST));
        Self {
            node_id,
            store,
            bus,
            faults,
            limits,
            send_limiter,
            sync_limiter,
            read_limiter,
            notifications: None,
            transfers: None,
            connections: dashmap::DashMap::new(),
        }
    }

    /// Take uploads, with `store`.
    pub fn with_transfers(mut self, store: Arc<dyn TransferStore>) -> Self {
        self.transfers = Some(store);
        self
    }

    /// Serve notification streams from `store`.
    pub fn with_notifications(mut self, store: Arc<dyn NotificationStore>) -> Self {
        self.notifications = Some(store);
        self
    }

    /// The registry name of an actor of this node, e.g. `n1/room:<id>`.
    pub fn name(&self, kind: &str, id: impl Display) -> String {
        format!("{}/{kind}:{id}", self.node_id)
    }

    /// Events for `user` reach `conn` from now on.
    pub(crate) fn register_connection(&self, conn: &Arc<ConnHandle>) {
        let mut conns = self.connections.entry(conn.user_id).or_default();
        if !conns.iter().any(|c| c.id == conn.id) {
            conns.push(conn.clone());
        }
    }

    /// `conn` is closed: no more events for it. Idempotent.
    pub fn unregister_connection(&self, conn: &ConnHandle) {
        if let Some(mut conns) = self.connections.get_mut(&conn.user_id) {
            conns.retain(|c| c.id != conn.id);
        }
        self.connections.remove_if(&conn.user_id, |_, conns| conns.is_empty());
    }

    /// The open connections of `user` on this node.
    pub fn connections_of(&self, user: UserId) -> Vec<Arc<ConnHandle>> {
        self.connections.get(&user).map(|c| c.clone()).unwrap_or_default()
    }

    /// Forgets the users whose send, sync and read budgets are full again (their entries
    /// would otherwise stay for the process's life: one per user who ever connected).
    /// Called by the process's housekeeping; answers how many entries are left.
    pub fn prune_limiters(&self) -> usize {
        [&self.send_limiter, &self.sync_limiter, &self.read_limiter]
            .into_iter()
            .map(|l| {
                l.retain_recent();
                l.shrink_to_fit();
                l.len()
            })
            .sum()
    }

    /// How many connections `user` has open on this node.
    pub fn connections_here(&self, user: UserId) -> usize {
        self.connections.get(&user).map_or(0, |c| c.len())
    }

    /// Hands `event` to every connection of its recipient here.
    pub fn deliver(self: &Arc<Self>, event: crate::ports::Event) {
        // (Under the map's read lock: sending never comes back to the map.)
        if let Some(conns) = self.connections.get(&event.recipient()) {
            for conn in conns.iter() {
                conn.send_event(self, event.clone());
            }
        }
    }

    /// Every open connection on this node.
    pub fn all_connections(&self) -> Vec<Arc<ConnHandle>> {
        self.connections.iter().flat_map(|e| e.value().clone()).collect()
    }

    /// Starts the session actor of `conn` through the sessions supervisor: its first
    /// start, or a wake from hibernation (`replacing` the actor that hibernated).
    pub(crate) async fn start_session(
        self: &Arc<Self>,
        conn: Arc<ConnHandle>,
        replacing: Option<ractor::ActorId>,
    ) -> Result<ActorRef<SessionMsg>, String> {
        let key = self.name("session", conn.id);
        let spec: Arc<dyn ChildSpec> = Arc::new(SessionSpec { ctx: self.clone(), conn });
        Ok(self.start_child("sessions", key, spec, replacing).await?.into())
    }

    pub fn supervisor_name(&self, which: &str) -> String {
        self.name("sup", which)
    }

    pub fn bridge_name(&self) -> String {
        Self::bridge_name_of(&self.node_id)
    }

    /// The bus bridge's registry name on the node `node_id`.
    pub fn bridge_name_of(node_id: &str) -> String {
        format!("{node_id}/bridge:bus")
    }

    /// The room actor of a conversation, started if needed.
    pub async fn room(self: &Arc<Self>, conversation: ConversationId) -> Result<ActorRef<RoomMsg>, String> {
        let name = self.name("room", conversation);
        if let Some(room) = ActorRef::<RoomMsg>::where_is(&name) {
            return Ok(room);
        }
        let spec: Arc<dyn ChildSpec> = Arc::new(RoomSpec { ctx: self.clone(), conversation });
        let cell = self.start_child("rooms", name, spec, None).await?;
        Ok(cell.into())
    }

    async fn start_child(
        &self,
        sup: &str,
        key: String,
        spec: Arc<dyn ChildSpec>,
        replacing: Option<ractor::ActorId>,
    ) -> Result<ActorCell, String> {
        let sup_name = self.supervisor_name(sup);
        let Some(sup) = ActorRef::<SupervisorMsg>::where_is(&sup_name) else {
            return Err(format!("{sup_name} is not running"));
        };
        ractor::call_t!(sup, |reply| SupervisorMsg::StartChild { key, spec, replacing, reply }, 10_000)
            .map_err(|e| format!("{sup_name}: {e}"))?
    }
}

struct RoomSpec {
    ctx: Arc<NodeCtx>,
    conversation: ConversationId,
}

#[async_trait::async_trait]
impl ChildSpec for RoomSpec {
    async fn spawn(&self, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = RoomArgs { ctx: self.ctx.clone(), conversation: self.conversation };
        let name = self.ctx.name("room", self.conversation);
        Ok(Actor::spawn_linked(Some(name), RoomActor, args, sup).await?.0.get_cell())
    }
}

struct StreamSpec {
    ctx: Arc<NodeCtx>,
    user: UserId,
}

#[async_trait::async_trait]
impl ChildSpec for StreamSpec {
    async fn spawn(&self, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = StreamArgs { ctx: self.ctx.clone(), user: self.user };
        let name = self.ctx.name("nstream", self.user);
        Ok(Actor::spawn_linked(Some(name), NotificationStreamActor, args, sup).await?.0.get_cell())
    }
}

struct TransferSpec {
    ctx: Arc<NodeCtx>,
    id: TransferId,
}

#[async_trait::async_trait]
impl ChildSpec for TransferSpec {
    async fn spawn(&self, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = TransferArgs { ctx: self.ctx.clone(), id: self.id };
        let name = self.ctx.name("transfer", self.id);
        Ok(Actor::spawn_linked(Some(name), TransferActor, args, sup).await?.0.get_cell())
    }
}

struct SessionSpec {
    ctx: Arc<NodeCtx>,
    conn: Arc<ConnHandle>,
}

#[async_trait::async_trait]
impl ChildSpec for SessionSpec {
    async fn spawn(&self, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = SessionArgs { ctx: self.ctx.clone(), conn: self.conn.clone() };
        let name = self.ctx.name("session", self.conn.id);
        Ok(Actor::spawn_linked(Some(name), SessionActor, args, sup).await?.0.get_cell())
    }
}

struct SupervisorSpec {
    ctx: Arc<NodeCtx>,
    which: &'static str,
    policy: RestartPolicy,
}

#[async_trait::async_trait]
impl ChildSpec for SupervisorSpec {
    async fn spawn(&self, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        let name = self.ctx.supervisor_name(self.which);
        let args = SupervisorArgs {
            name: name.clone(),
            policy: self.policy,
            initial: vec![],
            faults: self.ctx.faults.clone(),
        };
        if self.which == "sessions" {
            // A restart (at the first start there is no connection yet): the sessions of
            // the supervisor before died with it and nothing restarts them, so their sockets
            // close now and the clients reconnect and sync, rather than on their next frame
            // (a page that only listens would hear nothing until its next ping).
            let closed =
                self.ctx.all_connections().iter().filter(|c| crate::session::close_orphaned(&self.ctx, c)).count();
            if closed > 0 {
                tracing::warn!(closed, "sessions supervisor restarted; closing the connections of its sessions");
            }
        }
        Ok(Actor::spawn_linked(Some(name), Supervisor, args, sup).await?.0.get_cell())
    }
}

struct BridgeSpec {
    ctx: Arc<NodeCtx>,
}

#[async_trait::async_trait]
impl ChildSpec for BridgeSpec {
    async fn spawn(&self, sup: ActorCell) -> Result<ActorCell, SpawnErr> {
        let args = BridgeArgs { ctx: self.ctx.clone() };
        Ok(Actor::spawn_linked(Some(self.ctx.bridge_name()), BusBridge, args, sup).await?.0.get_cell())
    }
}

/// The supervisors under the node supervisor.
pub const SUPERVISORS: [&str; 4] = ["sessions", "rooms", "transfers", "notifications"];

/// A running node: the actor tree and its context.
pub struct Node {
    pub ctx: Arc<NodeCtx>,
    root: ActorRef<SupervisorMsg>,
    /// Set by [`Node::shutdown`]: the root's exit after it is expected.
    stopping: Arc<std::sync::atomic::AtomicBool>,
    /// Cancelled when the root supervisor exits without a shutdown: killed, or past its
    /// restart intensity. Nothing restarts the top of the tree inside the process, so
    /// the process must go and let its own supervisor (systemd, the cluster script, the
    /// gateway's health checks) act, as an Erlang node does when its top supervisor dies.
    failed: tokio_util::sync::CancellationToken,
}

impl Node {
    /// Starts the supervision tree.
    pub async fn start(ctx: NodeCtx) -> Result<Self, SpawnErr> {
        let ctx = Arc::new(ctx);
        ctx.bus.attach(&ctx);
        let child_policy = RestartPolicy::default();
        let mut initial: Vec<(String, Arc<dyn ChildSpec>)> = SUPERVISORS
            .iter()
            .map(|which| {
                let spec: Arc<dyn ChildSpec> =
                    Arc::new(SupervisorSpec { ctx: ctx.clone(), which, policy: child_policy });
                (ctx.supervisor_name(which), spec)
            })
            .collect();
        initial.push((ctx.bridge_name(), Arc::new(BridgeSpec { ctx: ctx.clone() })));
        let name = ctx.supervisor_name("node");
        let args = SupervisorArgs {
            name: name.clone(),
            policy: RestartPolicy { max_restarts: 10, window: Duration::from_secs(60) },
            initial,
            faults: ctx.faults.clone(),
        };
        let (root, handle) = Actor::spawn(Some(name), Supervisor, args).await?;
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let failed = tokio_util::sync::CancellationToken::new();
        {
            let (stopping, failed, node_id) = (stopping.clone(), failed.clone(), ctx.node_id.clone());
            tokio::spawn(async move {
                let _ = handle.await;
                if !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    tracing::error!(node = %node_id, "the root supervisor exited; this node can no longer serve");
                    failed.cancel();
                }
            });
        }
        Ok(Self { ctx, root, stopping, failed })
    }

    /// True once the root supervisor has exited without a shutdown (see [`Node::failed`]).
    pub fn is_failed(&self) -> bool {
        self.failed.is_cancelled()
    }

    /// Resolves when the root supervisor exits without a shutdown.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Starts the session actor of a new connection.
    pub async fn open_session(&self, conn: Arc<ConnHandle>) -> Result<ActorRef<SessionMsg>, String> {
        self.ctx.start_session(conn, None).await
    }

    /// Attaches a notification stream of `user` (opened with a token of the login session
    /// `login`) that has everything up to `after`: the user's stream actor (started if
    /// needed) sends the rest, then live notifications.
    pub async fn open_notification_stream(
        &self,
        user: UserId,
        login: uuid::Uuid,
        after: i64,
    ) -> Result<tokio::sync::mpsc::Receiver<StreamItem>, String> {
        let name = self.ctx.name("nstream", user);
        let actor = match ActorRef::<StreamMsg>::where_is(name.clone()) {
            Some(a) => a,
            None => {
                let spec: Arc<dyn ChildSpec> = Arc::new(StreamSpec { ctx: self.ctx.clone(), user });
                self.ctx.start_child("notifications", name, spec, None).await?.into()
            }
        };
        let (tx, rx) = tokio::sync::mpsc::channel(crate::notify_stream::STREAM_QUEUE);
        actor.cast(StreamMsg::Attach { tx, after, login }).map_err(|e| format!("stream actor: {e}"))?;
        Ok(rx)
    }

    /// Tells the upload's transfer actor (started if needed) that a chunk is in.
    pub async fn transfer_touched(&self, id: TransferId) -> Result<(), String> {
        let name = self.ctx.name("transfer", id);
        let actor = match ActorRef::<TransferMsg>::where_is(name.clone()) {
            // A fresh actor looks at the transfer when it starts.
            Some(a) => a,
            None => {
                let spec: Arc<dyn ChildSpec> = Arc::new(TransferSpec { ctx: self.ctx.clone(), id });
                let _ = self.ctx.start_child("transfers", name, spec, None).await?;
                return Ok(());
            }
        };
        actor.cast(TransferMsg::ChunkStored).map_err(|e| format!("transfer actor: {e}"))
    }

    /// Commits `msg` (an edit or a deletion from the REST API) through its conversation's
    /// room as a sent message is: appended in the room's order, published to both
    /// participants, answered after the commit. A room that stopped before it took the
    /// message (idle, killed) is asked once more; an answer that never comes is
    /// `not_acknowledged` (the change may or may not be committed: both kinds are safe to
    /// repeat).
    pub async fn post(&self, msg: NewMessage) -> Result<StoredMessage, SendError> {
        let unavailable = |message: String| SendError { code: ErrorCode::Unavailable, message };
        let mut last = unavailable("conversation is restarting; try again".into());
        for _ in 0..2 {
            let room = self.ctx.room(msg.conversation_id).await.map_err(unavailable)?;
            let (tx, rx) = ractor::concurrency::oneshot();
            if room.cast(RoomMsg::Send { msg: Box::new(msg.clone()), reply: tx.into() }).is_err() {
                continue;
            }
            match tokio::time::timeout(self.ctx.limits.commit_timeout, rx).await {
                Ok(Ok(answer)) => return answer,
                // The room stopped with the message in its mailbox: not queued.
                Ok(Err(_)) => continue,
                Err(_) => {
                    last =
                        SendError { code: ErrorCode::NotAcknowledged, message: "not acknowledged; try again".into() };
                    break;
                }
            }
        }
        Err(last)
    }

    /// Counters of one supervisor (`node`, `sessions`, `rooms`, ...).
    pub async fn stats(&self, which: &str) -> Option<SupervisorStats> {
        let sup = ActorRef::<SupervisorMsg>::where_is(self.ctx.supervisor_name(which))?;
        ractor::call_t!(sup, SupervisorMsg::Stats, 5_000).ok()
    }

    /// Stops the whole tree.
    pub fn shutdown(&self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        self.root.stop(Some(crate::NORMAL_EXIT.to_owned()));
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("node_id", &self.ctx.node_id).finish()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.shutdown();
    }
}
