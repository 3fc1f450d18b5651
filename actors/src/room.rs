//! The room actor: one per active conversation.
//!
//! It commits the conversation's messages (the store assigns the sequence number in the
//! same transaction as the insert), then publishes them to both participants, then
//! answers the sender. So an `ack` always follows the commit and the hand-over to the bus;
//! a resend of an acknowledged message is answered from the database and published again
//! (at-least-once on the wire; clients deduplicate by message id).
//!
//! Its state (participants) is rebuilt from the database on every start. A room with no
//! traffic for `limits.room_idle` stops and is started again on demand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::NORMAL_EXIT;
use crate::ids::ConversationId;
use crate::node::NodeCtx;
use crate::ports::{ConversationInfo, Envelope, Event, NewMessage, StoreError, StoredMessage};

/// A send that failed, with a code for the client's `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub code: &'static str,
    pub message: String,
}

pub enum RoomMsg {
    /// Commit and fan out a message; answers the stored message (or the stored original
    /// of a resend).
    Send { msg: Box<NewMessage>, reply: RpcReplyPort<Result<StoredMessage, SendError>> },
    /// Periodic: stop if idle.
    Tick,
}

pub struct RoomActor;

pub struct RoomArgs {
    pub ctx: Arc<NodeCtx>,
    pub conversation: ConversationId,
}

pub struct RoomState {
    ctx: Arc<NodeCtx>,
    name: String,
    info: ConversationInfo,
    last_activity: Instant,
    ticker: Option<JoinHandle<()>>,
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomState, ActorProcessingErr> {
        let info = match args.ctx.store.conversation(args.conversation).await {
            Ok(Some(info)) => info,
            Ok(None) => return Err(format!("conversation {} does not exist", args.conversation).into()),
            Err(e) => return Err(format!("conversation {}: {e}", args.conversation).into()),
        };
        let tick = (args.ctx.limits.room_idle / 4).max(Duration::from_millis(50));
        let ticker = Some(myself.send_interval(tick, || RoomMsg::Tick));
        Ok(RoomState {
            name: args.ctx.name("room", args.conversation),
            ctx: args.ctx,
            info,
            last_activity: Instant::now(),
            ticker,
        })
    }

    async fn post_stop(&self, _myself: ActorRef<RoomMsg>, state: &mut RoomState) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        state: &mut RoomState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.faults.check(&state.name)?;
        match msg {
            RoomMsg::Send { msg, reply } => {
                state.last_activity = Instant::now();
                let result = state.send(*msg).await;
                // The sender may have given up waiting; the message is committed anyway.
                let _ = reply.send(result);
            }
            RoomMsg::Tick => {
                if state.last_activity.elapsed() >= state.ctx.limits.room_idle {
                    tracing::debug!(room = %state.name, "idle; stopping");
                    myself.stop(Some(NORMAL_EXIT.to_owned()));
                }
            }
        }
        Ok(())
    }
}

impl RoomState {
    async fn send(&mut self, msg: NewMessage) -> Result<StoredMessage, SendError> {
        if !self.info.has(msg.sender_id) {
            return Err(SendError { code: "not_found", message: "no such conversation".into() });
        }
        let appended = self.ctx.store.append(msg).await.map_err(|e| match e {
            StoreError::NotFound => SendError { code: "not_found", message: "no such conversation".into() },
            StoreError::Forbidden(why) => SendError { code: "forbidden", message: why.into() },
            StoreError::Unavailable(e) => {
                tracing::warn!(room = %self.name, error = %e, "append failed");
                SendError { code: "unavailable", message: "storage is unavailable; resend later".into() }
            }
        })?;
        let message = appended.message;
        self.info.last_seq = self.info.last_seq.max(message.seq);
        for to in self.info.participants {
            let event = Envelope::new(Event::MessageCreated { to, message: message.clone() });
            if let Err(e) = self.ctx.bus.publish(event).await {
                // Committed, so not lost: the recipient gets it on the next message (gap
                // fill) or on sync.
                tracing::warn!(room = %self.name, error = %e, "publish failed");
            }
        }
        Ok(message)
    }
}
