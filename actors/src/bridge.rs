//! The bus bridge: receives the events for users with sessions on this node and hands
//! each to every session of its user. The buses do the same themselves once their node
//! is attached ([`LocalDelivery`]: the same [`dispatch`], inside `publish` and, with
//! RabbitMQ, inside the consumer), so an event is in its sessions' mailboxes when that
//! call returns; the bridge takes what comes before that, and the resyncs.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::ids::UserId;
use crate::node::NodeCtx;
use crate::ports::{Bus, BusError, Envelope};
use crate::session::SessionMsg;

pub enum BridgeMsg {
    /// An event for one of this node's users.
    Incoming(Box<Envelope>),
    /// Live events may have been missed: every session catches up.
    Resync,
}

pub struct BusBridge;

pub struct BridgeArgs {
    pub ctx: Arc<NodeCtx>,
}

pub struct BridgeState {
    ctx: Arc<NodeCtx>,
    name: String,
}

impl Actor for BusBridge {
    type Msg = BridgeMsg;
    type State = BridgeState;
    type Arguments = BridgeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<BridgeMsg>,
        args: BridgeArgs,
    ) -> Result<BridgeState, ActorProcessingErr> {
        Ok(BridgeState { name: args.ctx.bridge_name(), ctx: args.ctx })
    }

    async fn handle(
        &self,
        _myself: ActorRef<BridgeMsg>,
        msg: BridgeMsg,
        state: &mut BridgeState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.faults.check(&state.name)?;
        match msg {
            BridgeMsg::Incoming(envelope) => dispatch(&state.ctx, envelope.event),
            BridgeMsg::Resync => {
                let n = resync(&state.ctx);
                tracing::info!(node = %state.ctx.node_id, sessions = n, "sessions catch up");
            }
        }
        Ok(())
    }
}

/// Hands an event to every local session of its recipient (and a notification or a
/// revoked login to the recipient's notification stream actor, if one runs here).
pub fn dispatch(ctx: &Arc<NodeCtx>, event: crate::ports::Event) {
    if matches!(event, crate::ports::Event::Notification { .. } | crate::ports::Event::SessionRevoked { .. }) {
        for cell in ractor::pg::get_scoped_members(&ctx.node_id, &ctx.stream_group(event.recipient())) {
            let stream: ActorRef<crate::notify_stream::StreamMsg> = cell.into();
            let _ = stream.cast(crate::notify_stream::StreamMsg::Event(Box::new(event.clone())));
        }
    }
    ctx.deliver(event);
}

/// Hands an event to the bridge of the node `node_id` (in this process), which passes it
/// to the recipient's sessions there.
pub fn deliver_local(node_id: &str, envelope: Envelope) -> Result<(), BusError> {
    let Some(bridge) = ActorRef::<BridgeMsg>::where_is(NodeCtx::bridge_name_of(node_id)) else {
        return Err(BusError("bus bridge is restarting".into()));
    };
    bridge.cast(BridgeMsg::Incoming(Box::new(envelope))).map_err(|e| BusError(e.to_string()))
}

/// Tells every session of the node `node_id` (through its bridge) to catch up from the
/// database, and every notification stream actor to check its logins: after the node's
/// bus link was down, live events (a revocation among them) may have been missed. False
/// if the bridge is not running (it is restarting; its sessions are restarted too).
pub fn resync_sessions(node_id: &str) -> bool {
    ActorRef::<BridgeMsg>::where_is(NodeCtx::bridge_name_of(node_id))
        .is_some_and(|bridge| bridge.cast(BridgeMsg::Resync).is_ok())
}

/// [`resync_sessions`] on the bridge: hibernating sessions wake for it. Answers how many
/// sessions were told.
fn resync(ctx: &Arc<NodeCtx>) -> usize {
    let mut n = 0;
    for conn in ctx.all_connections() {
        if conn.send(ctx, SessionMsg::CatchUp).is_ok() {
            n += 1;
        }
    }
    // Notification streams (`nstream:<id>`) fill gaps on their next event, and check
    // their logins now.
    let scope = ctx.node_id.clone();
    for group in ractor::pg::which_scoped_groups(&scope) {
        if group.starts_with("nstream:") {
            for cell in ractor::pg::get_scoped_members(&scope, &group) {
                let stream: ActorRef<crate::notify_stream::StreamMsg> = cell.into();
                let _ = stream.cast(crate::notify_stream::StreamMsg::Recheck);
            }
        }
    }
    n
}

/// The bus of a single process: publishing hands the event to this node's sessions
/// ([`dispatch`], as the bridge would, without the hop through its mailbox), and to the
/// tap, if any (the in-process notify consumer).
pub struct InProcessBus {
    local: LocalDelivery,
    tap: Option<Tap>,
}

/// Delivery of events to the sessions of one node in this process: [`dispatch`] inside
/// the caller, once the node is attached ([`Bus::attach`]), so an event is in its
/// sessions' mailboxes when the call returns; before that, through the node's bridge
/// ([`deliver_local`]). Both buses use it for their own node.
pub struct LocalDelivery {
    node_id: String,
    /// The node, once started; weak, as the node holds its bus.
    node: std::sync::OnceLock<std::sync::Weak<NodeCtx>>,
}

impl LocalDelivery {
    pub fn new(node_id: &str) -> Self {
        Self { node_id: node_id.to_owned(), node: std::sync::OnceLock::new() }
    }

    /// Hands `envelope` to the node's sessions (and notification streams).
    pub fn deliver(&self, envelope: Envelope) -> Result<(), BusError> {
        match self.node.get().and_then(std::sync::Weak::upgrade) {
            Some(ctx) => {
                dispatch(&ctx, envelope.event);
                Ok(())
            }
            None => deliver_local(&self.node_id, envelope),
        }
    }

    /// From now on, delivers to `node` directly (if it is this delivery's node).
    pub fn attach(&self, node: &Arc<NodeCtx>) {
        if node.node_id == self.node_id {
            let _ = self.node.set(Arc::downgrade(node));
        }
    }
}

/// A bounded queue of the events a consumer wants. Bounded: when the consumer falls
/// behind, publishers wait for room (back-pressure up to the senders) instead of the queue
/// growing without limit.
struct Tap {
    tx: tokio::sync::mpsc::Sender<Envelope>,
    wants: fn(&crate::ports::Event) -> bool,
}

impl InProcessBus {
    /// The bus for the node with this id.
    pub fn new(node_id: &str) -> Self {
        Self { local: LocalDelivery::new(node_id), tap: None }
    }

    /// Also sends every published event that `wants` accepts to `tap`. The consumer must
    /// not itself publish events it wants (it would wait on its own queue).
    pub fn with_tap(
        mut self,
        tap: tokio::sync::mpsc::Sender<Envelope>,
        wants: fn(&crate::ports::Event) -> bool,
    ) -> Self {
        self.tap = Some(Tap { tx: tap, wants });
        self
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        if let Some(tap) = &self.tap
            && (tap.wants)(&envelope.event)
        {
            // A closed tap (consumer stopped) drops the copy; local delivery goes on.
            let _ = tap.tx.send(envelope.clone()).await;
        }
        self.local.deliver(envelope)
    }

    fn attach(&self, node: &Arc<NodeCtx>) {
        self.local.attach(node);
    }

    async fn bind_user(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    async fn unbind_user(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;
    use crate::ports::Event;

    fn presence(online: bool) -> Envelope {
        Envelope::new(Event::Presence { to: UserId::new(), user_id: UserId::new(), online, last_seen_at: None })
    }

    #[tokio::test]
    async fn the_tap_takes_only_what_it_wants_and_holds_publishers_when_full() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let bus = InProcessBus::new("test-node").with_tap(tx, |e| matches!(e, Event::Presence { online: true, .. }));
        // (No bridge runs here, so local delivery reports an error: only the tap matters.)
        let _ = bus.publish(presence(false)).await;
        let _ = bus.publish(presence(true)).await;
        // The tap is full: the next wanted publish waits for the consumer...
        let mut waiting = Box::pin(bus.publish(presence(true)));
        assert!((&mut waiting).now_or_never().is_none(), "a full tap holds the publisher");
        // ... and goes through once the consumer takes one.
        let first = rx.recv().await.expect("tapped");
        assert!(matches!(first.event, Event::Presence { online: true, .. }));
        let _ = waiting.await;
        assert!(matches!(rx.recv().await.map(|e| e.event), Some(Event::Presence { online: true, .. })));
        assert!(rx.try_recv().is_err(), "the unwanted event never reached the tap");
    }
}
