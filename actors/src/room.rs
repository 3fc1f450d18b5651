//! The room actor: one per active conversation.
//!
//! It commits the conversation's messages (the store assigns the sequence number in the
//! same transaction as the insert), then publishes them to both participants, then
//! answers the sender. So an `ack` always follows the commit and the hand-over to the bus;
//! a resend of an acknowledged message is answered from the database and published again
//! (at-least-once on the wire; clients deduplicate by message id).
//!
//! Pipelined: the actor only queues each append (in arrival order) and moves on; the
//! room's completion task awaits the commits in that same order, publishes, and answers.
//! So a busy conversation puts many messages into each group commit instead of one, and
//! events leave in sequence order.
//!
//! Its state (participants) is rebuilt from the database on every start. A room with no
//! traffic for `limits.room_idle` stops and is started again on demand.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::NORMAL_EXIT;
use crate::codes::ErrorCode;
use crate::ids::{ConversationId, UserId};
use crate::node::NodeCtx;
use crate::ports::{
    Appended, ConversationInfo, Envelope, Event, InlineNotification, NewMessage, Pending, StoreError, StoredMessage,
};
use crate::protocol::ServerFrame;

/// A send that failed, with a code for the client's `error` frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub code: ErrorCode,
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
    /// Queued appends, to the completion task (which outlives a stopped or killed room
    /// until every queued append is answered).
    completions: mpsc::UnboundedSender<Completion>,
}

/// A queued append and the sender waiting for its outcome.
struct Completion {
    pending: Pending<Appended>,
    reply: RpcReplyPort<Result<StoredMessage, SendError>>,
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
        let name = args.ctx.name("room", args.conversation);
        let (completions, rx) = mpsc::unbounded_channel();
        tokio::spawn(complete(args.ctx.clone(), name.clone(), info.participants, rx));
        Ok(RoomState { name, ctx: args.ctx, info, last_activity: Instant::now(), ticker, completions })
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
                if !state.info.has(msg.sender_id) {
                    let _ = reply
                        .send(Err(SendError { code: ErrorCode::NotFound, message: "no such conversation".into() }));
                    return Ok(());
                }
                // A recipient with a connection here gets the message the moment it is
                // committed: their delivered marker is raised in the same transaction.
                // (Not by an edit or deletion: see `SessionState::deliver`.)
                let store = &state.ctx.store;
                let pending = match state.info.peer_of(msg.sender_id) {
                    Some(to) if !msg.kind.is_change() && state.ctx.connections_here(to) > 0 => {
                        store.queue_append_delivered(*msg, to).await
                    }
                    _ => store.queue_append(*msg).await,
                };
                if let Err(mpsc::error::SendError(c)) = state.completions.send(Completion { pending, reply }) {
                    // Cannot happen while the room lives (it holds the receiver's task);
                    // answer anyway rather than leave the sender waiting.
                    let _ =
                        c.reply.send(Err(SendError { code: ErrorCode::Unavailable, message: "room stopped".into() }));
                }
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

/// Awaits each queued append in order, publishes the message to both participants, and
/// answers the sender. Runs until the room's sender side is gone and the queue is empty.
async fn complete(
    ctx: Arc<NodeCtx>,
    name: String,
    participants: [UserId; 2],
    mut rx: mpsc::UnboundedReceiver<Completion>,
) {
    while let Some(Completion { pending, reply }) = rx.recv().await {
        let result = pending.await.map_err(|e| match e {
            StoreError::NotFound => SendError { code: ErrorCode::NotFound, message: "no such conversation".into() },
            StoreError::Forbidden(why) => SendError { code: ErrorCode::Forbidden, message: why.into() },
            StoreError::Conflict(why) => SendError { code: ErrorCode::Conflict, message: why.into() },
            StoreError::Unavailable(e) => {
                tracing::warn!(room = %name, error = %e, "append failed");
                SendError { code: ErrorCode::Unavailable, message: "storage is unavailable; resend later".into() }
            }
        });
        let mut result = result;
        if let Ok(appended) = &mut result {
            // Encoded once: the same text goes to every connection of both participants.
            let frame: Arc<str> = ServerFrame::Message(appended.message.clone()).to_json().into();
            let notification = appended.notification.take();
            let notified = notification.as_ref().map(|n| n.to);
            let delivered = appended.delivered.take();
            let messages = participants.map(|to| Event::MessageCreated {
                to,
                message: appended.message.clone(),
                frame: Some(frame.clone()),
                notified: notified == Some(to),
                delivered: delivered.is_some_and(|r| r.user_id == to),
            });
            // The notification the append wrote with the message, after the message.
            let note = notification.and_then(|n| {
                let InlineNotification { to, view, unread } = *n;
                view.map(|view| Event::Notification { to, notification: Some(view), unread })
            });
            // The delivered marker it raised, to the sender (whose devices get it with
            // their own copy); when a later message of the same batch raised it further
            // (PostgreSQL merges a batch's raises), that message's receipt tells it.
            let seq = appended.message.seq;
            let receipt = delivered
                .filter(|r| r.delivered_seq == seq)
                .map(|receipt| Event::Receipt { to: appended.message.sender_id, receipt });
            for event in messages.into_iter().chain(note).chain(receipt) {
                if let Err(e) = ctx.bus.publish(Envelope::new(event)).await {
                    // Committed, so not lost: the recipient gets it on the next message
                    // (gap fill) or on sync; a notification on the next catch-up.
                    tracing::warn!(room = %name, error = %e, "publish failed");
                }
            }
        }
        // The sender may have given up waiting; the message is committed anyway.
        let _ = reply.send(result.map(|a| a.message));
    }
}
