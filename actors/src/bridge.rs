//! The bus bridge: receives the events for users with sessions on this node and hands
//! each to every session of its user. With RabbitMQ it is fed by the node's consumer;
//! with the in-process bus ([`InProcessBus`]) publishing sends straight to it.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use crate::ids::UserId;
use crate::node::NodeCtx;
use crate::ports::{Bus, BusError, Envelope};
use crate::session::SessionMsg;

pub enum BridgeMsg {
    /// An event for one of this node's users.
    Incoming(Box<Envelope>),
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
        let BridgeMsg::Incoming(envelope) = msg;
        dispatch(&state.ctx, envelope.event);
        Ok(())
    }
}

/// Hands an event to every local session of its recipient.
pub fn dispatch(ctx: &NodeCtx, event: crate::ports::Event) {
    for cell in ctx.sessions_of(event.recipient()) {
        let session: ActorRef<SessionMsg> = cell.into();
        let _ = session.cast(SessionMsg::Event(Box::new(event.clone())));
    }
}

/// The bus of a single process: publishing hands the event to this node's bridge.
pub struct InProcessBus {
    bridge_name: String,
}

impl InProcessBus {
    /// The bus for the node with this id.
    pub fn new(node_id: &str) -> Self {
        Self { bridge_name: format!("{node_id}/bridge:bus") }
    }
}

#[async_trait::async_trait]
impl Bus for InProcessBus {
    async fn publish(&self, envelope: Envelope) -> Result<(), BusError> {
        let Some(bridge) = ActorRef::<BridgeMsg>::where_is(&self.bridge_name) else {
            return Err(BusError("bus bridge is restarting".into()));
        };
        bridge.cast(BridgeMsg::Incoming(Box::new(envelope))).map_err(|e| BusError(e.to_string()))
    }

    async fn bind_user(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }

    async fn unbind_user(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
}
