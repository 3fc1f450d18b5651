//! The session actor: one per WebSocket connection.
//!
//! The socket's reader and writer tasks live outside the actor and share a
//! [`ConnHandle`] with it. The handle carries the outbound queue and, per conversation,
//! the last sequence number queued to this connection, so a restarted session actor knows
//! exactly where the connection is and re-attaches without loss: it re-sends what came
//! after. The same bookkeeping repairs a lost live delivery: a message whose seq skips
//! ahead first pulls the gap from the database.
//!
//! An idle session hibernates (in the Erlang sense): after `Limits::hibernate_after`
//! without a message its actor stops and the connection stays parked with its handle,
//! which holds everything a session needs to resume (the seqs queued, the bind state).
//! Everything for the session goes through the handle's [`ConnHandle::send`]: to the
//! running actor, or, when parked, into a queue and a fresh actor started through the
//! supervisor, which takes the queue in order before anything newer. Events that only
//! put a frame on the socket (presence, typing, receipts, notifications) are pushed by a
//! parked handle itself, so an idle user's contacts coming and going cost no actor.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio_util::sync::CancellationToken;

use crate::NORMAL_EXIT;
use crate::codes::ErrorCode;
use crate::ids::{ConnId, ConversationId, UserId};
use crate::node::NodeCtx;
use crate::ports::{ConversationInfo, Envelope, Event, NewMessage, StoreError, StoredMessage};
use crate::protocol::{ClientFrame, MAX_CLIENT_MSG_ID, MAX_SYNC_CONVERSATIONS, ServerFrame, parse_client_frame};
use crate::room::{RoomMsg, SendError};
use crate::states::{ContactChangeKind, MessageKind};

/// What the writer task sends on the socket.
#[derive(Debug)]
pub enum Outbound {
    Text(String),
    /// A frame encoded once for many connections (a message to both participants).
    Shared(Arc<str>),
}

/// WebSocket close code for a policy violation.
pub const CLOSE_POLICY: u16 = 1008;
/// WebSocket close code for "try again later" (server overloaded or client too slow).
pub const CLOSE_TRY_AGAIN: u16 = 1013;
/// WebSocket close code for a server-side failure the client recovers from by reconnecting
/// (its session actor is gone and will not come back).
pub const CLOSE_INTERNAL: u16 = 1011;
/// WebSocket close code: the login that opened the connection was revoked (logout);
/// log in again before reconnecting.
pub const CLOSE_LOGGED_OUT: u16 = 4001;
/// WebSocket close code: the login that opened the connection reached its absolute end
/// (it outlives its access token, not its login); log in again.
pub const CLOSE_TOKEN_EXPIRED: u16 = 4002;

/// The connection as the actor sees it; owned jointly with the socket tasks, so it
/// survives a restart of the actor.
pub struct ConnHandle {
    pub id: ConnId,
    pub user_id: UserId,
    /// The login session whose token opened the connection: revoking it closes the
    /// connection.
    pub login_session: uuid::Uuid,
    /// When that token expires (ms since the epoch): the connection closes then.
    pub expires_at: i64,
    /// A flume channel, not tokio's: tokio's allocates a 32-slot block and cache-padded
    /// state up front (about 1.2 KiB), flume only what is queued, and most connections
    /// are idle most of the time.
    tx: flume::Sender<Outbound>,
    /// Cancelled when the connection must close (or has closed).
    pub closed: CancellationToken,
    close_reason: Mutex<Option<(u16, &'static str)>>,
    /// Per conversation, the highest seq queued to this connection.
    last_sent: Mutex<HashMap<ConversationId, i64>>,
    /// Set by the first start of the actor; a start that finds it set is a restart.
    started: AtomicBool,
    violations: AtomicU32,
    /// Where this connection's share of the user's bus binding stands ([`BIND_NONE`],
    /// [`BIND_PENDING`], [`BIND_SETTLED`]). On the handle, not in the actor: an actor
    /// restarted while the bind is under way waits for the same bind, and the close
    /// takes back exactly what was bound, once.
    bind: AtomicU8,
    /// Woken when the bind settles.
    bind_settled: tokio::sync::Notify,
    /// Where the session's messages go: its actor, or a queue while it wakes.
    slot: Mutex<Slot>,
}

/// The session actor of a connection, as senders find it.
struct Slot {
    state: SlotState,
    /// Messages handed to the current actor since it attached: equal to the number it
    /// has handled exactly when its mailbox is empty (so it may park).
    sent: u64,
}

enum SlotState {
    /// No actor: none has started yet, or the session closed.
    Detached,
    /// The actor runs (or has died and its supervisor is restarting it).
    Live(ActorRef<SessionMsg>),
    /// Hibernating: no actor (this one stopped); the next message wakes one.
    Parked(ractor::ActorId),
    /// An actor is being started for these messages, in this order.
    Waking(Vec<SessionMsg>),
}

/// Why [`ConnHandle::send`] could not hand a message over.
pub enum NotSent {
    /// The actor died and its supervisor has not restarted it yet: try again shortly.
    Restarting(SessionMsg),
    /// There is no session (it never started, or stopped for good).
    NoSession,
}

/// How a starting actor finds its connection.
enum Attach {
    /// The connection's first actor.
    First,
    /// A restart after a failure: catch up from the database.
    Restart,
    /// Woken from hibernation: what woke it is in its mailbox; nothing was missed.
    Wake,
}

/// Tells `from`, who asked, that `me` is online here, if they may know (contacts only;
/// presence never crosses a block). Off the caller: a database read and a publish.
fn answer_probe(ctx: &Arc<NodeCtx>, me: UserId, from: UserId) {
    let (store, bus) = (ctx.store.clone(), ctx.bus.clone());
    tokio::spawn(async move {
        if store.may_message(me, from).await.is_ok() {
            let event = Event::Presence { to: from, user_id: me, online: true, last_seen_at: None };
            let _ = bus.publish(Envelope::new(event)).await;
        }
    });
}

/// Starts a new actor for the hibernating `conn`, in place of `before`, which stopped
/// itself. If none can start (the sessions supervisor is failing), the connection is
/// closed and taken back here as its actor would on `Closed`: nothing would take its
/// queue, and the user would stay bound and online.
async fn wake(ctx: Arc<NodeCtx>, conn: Arc<ConnHandle>, before: ractor::ActorId) {
    let Err(e) = ctx.start_session(conn.clone(), Some(before)).await else { return };
    tracing::warn!(conn = %conn.id, error = %e, "cannot wake a hibernating session; closing");
    conn.close(CLOSE_TRY_AGAIN, "session lost, reconnect");
    {
        let mut slot = conn.slot();
        if !matches!(slot.state, SlotState::Waking(_)) {
            return; // an actor started after all (a start that outlived the wait)
        }
        slot.state = SlotState::Detached;
    }
    let mut state = SessionState::new(ctx, conn);
    state.close().await;
}

/// Closes `conn` (1011) and takes it back, if its session actor is running or was until
/// it died: called when the sessions supervisor is started again, after the one before
/// took every running session with it and restarts none (their specs went with it).
/// The slot is detached first, so nothing reaches the dying actor (a `Closed` it took
/// while handling its kill would be lost, and the connection left registered), and the
/// clean-up its `Closed` would do runs here. A hibernating connection has no actor to
/// lose: it wakes through the new supervisor. True if it closed.
pub fn close_orphaned(ctx: &Arc<NodeCtx>, conn: &Arc<ConnHandle>) -> bool {
    {
        let mut slot = conn.slot();
        if !matches!(slot.state, SlotState::Live(_)) {
            return false;
        }
        slot.state = SlotState::Detached;
    }
    conn.close(CLOSE_INTERNAL, "session lost, reconnect");
    let mut state = SessionState::new(ctx.clone(), conn.clone());
    tokio::spawn(async move { state.close().await });
    true
}

/// Marks its connection's bind settled and wakes whoever waits for it, when dropped.
struct SettleOnDrop(Arc<ConnHandle>);

impl Drop for SettleOnDrop {
    fn drop(&mut self) {
        self.0.bind.store(BIND_SETTLED, Ordering::SeqCst);
        self.0.bind_settled.notify_waiters();
    }
}

/// No bind asked for (or it was taken back).
const BIND_NONE: u8 = 0;
/// Bind under way.
const BIND_PENDING: u8 = 1;
/// Bound: the bus routes the user's events here.
const BIND_SETTLED: u8 = 2;

impl ConnHandle {
    /// A handle and the receiving end of its outbound queue (for the writer task), for a
    /// connection of `user_id` opened with a token of `login_session` valid until
    /// `expires_at`.
    pub fn new(
        user_id: UserId,
        login_session: uuid::Uuid,
        expires_at: i64,
        queue: usize,
    ) -> (Arc<Self>, flume::Receiver<Outbound>) {
        let (tx, rx) = flume::bounded(queue.max(1));
        let handle = Self {
            id: ConnId::new(),
            user_id,
            login_session,
            expires_at,
            tx,
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
            last_sent: Mutex::new(HashMap::new()),
            started: AtomicBool::new(false),
            violations: AtomicU32::new(0),
            bind: AtomicU8::new(BIND_NONE),
            bind_settled: tokio::sync::Notify::new(),
            slot: Mutex::new(Slot { state: SlotState::Detached, sent: 0 }),
        };
        (Arc::new(handle), rx)
    }

    /// Queues a frame without waiting. A full queue means the client does not read: the
    /// connection is closed rather than allowed to grow memory.
    pub fn push(&self, frame: &ServerFrame) -> bool {
        self.push_outbound(Outbound::Text(frame.to_json()))
    }

    /// [`Self::push`] for a frame encoded already.
    pub fn push_encoded(&self, frame: &Arc<str>) -> bool {
        self.push_outbound(Outbound::Shared(frame.clone()))
    }

    fn push_outbound(&self, outbound: Outbound) -> bool {
        match self.tx.try_send(outbound) {
            Ok(()) => true,
            Err(flume::TrySendError::Full(_)) => {
                self.close(CLOSE_TRY_AGAIN, "client is not reading");
                false
            }
            Err(flume::TrySendError::Disconnected(_)) => false,
        }
    }

    /// Queues a frame, waiting up to `timeout` for room (catch-up traffic, which may
    /// legitimately be large).
    pub async fn push_wait(&self, frame: &ServerFrame, timeout: Duration) -> bool {
        match tokio::time::timeout(timeout, self.tx.send_async(Outbound::Text(frame.to_json()))).await {
            Ok(Ok(())) => true,
            Ok(Err(flume::SendError(_))) => false,
            Err(_elapsed) => {
                self.close(CLOSE_TRY_AGAIN, "client is not reading");
                false
            }
        }
    }

    /// Asks the socket tasks to close the connection with `code`.
    pub fn close(&self, code: u16, reason: &'static str) {
        if let Ok(mut r) = self.close_reason.lock() {
            r.get_or_insert((code, reason));
        }
        self.closed.cancel();
    }

    /// Closes the connection if its login has reached its absolute end by `now`; true if
    /// it has. (An idle-expired or revoked login is found by the periodic check.)
    pub fn close_if_expired(&self, now: i64) -> bool {
        let expired = now >= self.expires_at;
        if expired {
            self.close(CLOSE_TOKEN_EXPIRED, "login expired");
        }
        expired
    }

    /// Closes the connection because its login was revoked, telling the client why.
    pub fn close_logged_out(&self) {
        self.push(&ServerFrame::error(ErrorCode::SessionRevoked, "you were logged out; log in again", None));
        self.close(CLOSE_LOGGED_OUT, "logged out");
    }

    /// Why the connection is being closed, if it is.
    pub fn close_reason(&self) -> Option<(u16, &'static str)> {
        self.close_reason.lock().ok().and_then(|r| *r)
    }

    /// Counts a bad frame; true when the connection has used up its allowance.
    pub fn violation(&self, max: u32) -> bool {
        self.violations.fetch_add(1, Ordering::Relaxed) + 1 > max
    }

    fn last_sent(&self, c: ConversationId) -> Option<i64> {
        self.last_sent.lock().ok().and_then(|m| m.get(&c).copied())
    }

    fn set_last_sent(&self, c: ConversationId, seq: i64) {
        if let Ok(mut m) = self.last_sent.lock() {
            let e = m.entry(c).or_insert(seq);
            *e = (*e).max(seq);
        }
    }

    fn init_last_sent(&self, c: ConversationId, seq: i64) {
        if let Ok(mut m) = self.last_sent.lock() {
            m.entry(c).or_insert(seq);
        }
    }

    fn known_conversations(&self) -> Vec<(ConversationId, i64)> {
        self.last_sent.lock().map(|m| m.iter().map(|(c, s)| (*c, *s)).collect()).unwrap_or_default()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        // A panic while the lock is held leaves a consistent slot (every change is one
        // assignment): take it as it is.
        self.slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hands `msg` to the connection's session: to its actor, or, while it hibernates,
    /// to a new one started for it (the messages queue in order until it runs).
    pub fn send(self: &Arc<Self>, ctx: &Arc<NodeCtx>, msg: SessionMsg) -> Result<(), NotSent> {
        self.send_locked(self.slot(), ctx, msg)
    }

    /// [`Self::send`] with the slot's lock already held.
    fn send_locked(
        self: &Arc<Self>,
        mut slot: std::sync::MutexGuard<'_, Slot>,
        ctx: &Arc<NodeCtx>,
        msg: SessionMsg,
    ) -> Result<(), NotSent> {
        match &mut slot.state {
            SlotState::Live(actor) => match actor.cast(msg) {
                Ok(()) => {
                    slot.sent += 1;
                    Ok(())
                }
                Err(ractor::MessagingErr::SendErr(msg)) => Err(NotSent::Restarting(msg)),
                Err(_) => Err(NotSent::NoSession),
            },
            SlotState::Waking(queue) => {
                // Bounded like the outbound queue, and for the same reason: a connection
                // whose session cannot keep up is closed, not allowed to grow memory.
                // `Closed` always gets in: it is what takes the connection back.
                if queue.len() >= ctx.limits.outbound_queue && !matches!(msg, SessionMsg::Closed) {
                    drop(slot);
                    self.close(CLOSE_TRY_AGAIN, "server busy");
                    return Err(NotSent::NoSession);
                }
                queue.push(msg);
                Ok(())
            }
            SlotState::Parked(before) => {
                let before = *before;
                slot.state = SlotState::Waking(vec![msg]);
                drop(slot);
                tokio::spawn(wake(ctx.clone(), self.clone(), before));
                Ok(())
            }
            SlotState::Detached => Err(NotSent::NoSession),
        }
    }

    /// Hands an event to the session; a hibernating one is not woken for an event that
    /// only puts a frame on the socket (nothing else is queued then, so order holds).
    pub fn send_event(self: &Arc<Self>, ctx: &Arc<NodeCtx>, event: Event) {
        // One lock for the check and the hand-over (this is every event's path).
        let slot = self.slot();
        if matches!(slot.state, SlotState::Parked(_)) {
            let frame = match event {
                Event::Receipt { receipt, .. } => Some(ServerFrame::Receipt(receipt)),
                Event::Typing { conversation_id, user_id, active, .. } => {
                    Some(ServerFrame::Typing { conversation_id, user_id, active })
                }
                Event::Presence { user_id, online, last_seen_at, .. } => {
                    Some(ServerFrame::Presence { user_id, online, last_seen_at })
                }
                Event::Transfer { progress, .. } => Some(ServerFrame::Transfer(progress)),
                Event::Notification { notification, unread, .. } => {
                    Some(ServerFrame::Notification { notification, unread })
                }
                Event::Profile { user_id, display_name, .. } => Some(ServerFrame::Profile { user_id, display_name }),
                Event::SessionRevoked { session_id, .. } => {
                    if session_id == self.login_session {
                        drop(slot);
                        self.close_logged_out();
                    }
                    return;
                }
                Event::PresenceProbe { from, .. } => {
                    drop(slot);
                    return answer_probe(ctx, self.user_id, from);
                }
                other => {
                    let _ = self.send_locked(slot, ctx, SessionMsg::Event(Box::new(other)));
                    return;
                }
            };
            if let Some(frame) = frame {
                self.push(&frame);
            }
            return;
        }
        let _ = self.send_locked(slot, ctx, SessionMsg::Event(Box::new(event)));
    }

    /// Asks a running session whether it may hibernate (it decides: idle long enough,
    /// nothing in flight). Does nothing to one that is not running.
    pub fn offer_park(self: &Arc<Self>) {
        let mut slot = self.slot();
        if let SlotState::Live(actor) = &slot.state
            && actor.cast(SessionMsg::Park).is_ok()
        {
            slot.sent += 1;
        }
    }

    /// Parks the connection if its actor has handled all `handled` messages it was sent
    /// (its mailbox is empty): from here on a message wakes a new actor. True if parked.
    fn park(&self, handled: u64) -> bool {
        let mut slot = self.slot();
        match &slot.state {
            SlotState::Live(actor) if slot.sent == handled => {
                slot.state = SlotState::Parked(actor.get_id());
                true
            }
            _ => false,
        }
    }

    /// The session closed for good: nothing wakes it again.
    fn detach(&self) {
        self.slot().state = SlotState::Detached;
    }

    /// True while the session hibernates (no actor).
    pub fn is_parked(&self) -> bool {
        matches!(self.slot().state, SlotState::Parked(_))
    }

    /// The actor `actor` starts for this connection: how it should begin.
    fn attach(&self, actor: &ActorRef<SessionMsg>) -> Attach {
        let mut slot = self.slot();
        let before = std::mem::replace(&mut slot.state, SlotState::Live(actor.clone()));
        slot.sent = 0;
        if !self.started.swap(true, Ordering::SeqCst) {
            return Attach::First;
        }
        match before {
            SlotState::Waking(queue) => {
                // In order, ahead of anything sent once the lock is released.
                for msg in queue {
                    if actor.cast(msg).is_ok() {
                        slot.sent += 1;
                    }
                }
                Attach::Wake
            }
            _ => Attach::Restart,
        }
    }
}

pub enum SessionMsg {
    /// A text frame from the client, with the socket reader's permit for it: the reader
    /// holds a few permits per connection and reads no further frame while all are out,
    /// so a client that writes faster than its session handles frames is slowed down
    /// (TCP backpressure) instead of queueing without bound. Dropped with the frame.
    Frame(String, tokio::sync::OwnedSemaphorePermit),
    /// An event for this user, from the bus ([`crate::bridge::dispatch`]).
    Event(Box<Event>),
    /// The socket closed: leave, announce, stop.
    Closed,
    /// Catch up on one conversation after a commit this session could not confirm.
    Refresh(ConversationId),
    /// Catch up on every conversation: the node's bus link was down and live events may
    /// have been missed.
    CatchUp,
    /// A delivered marker was saved; send the next one if more arrived meanwhile.
    DeliveredSaved(ConversationId),
    /// The user's events from other nodes reach this node now (the bus has them in its
    /// directory): check the login once more, for a revocation published before.
    Bound,
    /// Hibernate if idle long enough and nothing is in flight (offered by the socket's
    /// heartbeat).
    Park,
    /// A frame for the socket, in turn: a send's answer, queued after the sender's own
    /// copy of the message (published before the answer), so both usually leave in one
    /// socket write.
    Answer(Arc<str>),
}

pub struct SessionActor;

pub struct SessionArgs {
    pub ctx: Arc<NodeCtx>,
    pub conn: Arc<ConnHandle>,
}

pub struct SessionState {
    ctx: Arc<NodeCtx>,
    conn: Arc<ConnHandle>,
    name: String,
    conversations: HashMap<ConversationId, ConversationInfo>,
    /// Whether `conversations` holds all of them (a woken session reads them lazily).
    loaded: bool,
    /// Per conversation, the typing state last forwarded and when it turned active.
    typing: HashMap<ConversationId, (bool, Instant)>,
    /// Typing events forwarded in the current one-second window, and its start.
    typing_window: (u32, Instant),
    /// Conversations with a delivered-marker write in flight, and the newest seq (with its
    /// sender) delivered since: at most one write per conversation at a time, so a burst
    /// of messages costs one or two marker writes, not one each.
    delivered_inflight: HashMap<ConversationId, Option<(i64, UserId)>>,
    /// Per conversation, the read marker as this connection's last `read` left it: a
    /// `read` frame at or below it changes nothing and costs nothing.
    read_asked: HashMap<ConversationId, i64>,
    /// Messages handled by this actor (see [`Slot::sent`]).
    handled: u64,
    /// When it last handled anything but a `Park`.
    last_active: Instant,
}

/// Typing events a session forwards per conversation: only changes of state, and at most
/// one "active" per interval (a repeated "active" refreshes the peer's indicator).
const TYPING_INTERVAL: Duration = Duration::from_millis(1000);
/// Typing events one connection may forward per second, over all its conversations.
const TYPING_PER_SECOND: u32 = 10;

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let SessionArgs { ctx, conn } = args;
        let user = conn.user_id;
        let attach = conn.attach(&myself);
        let mut state = SessionState::new(ctx, conn);
        match attach {
            // Woken from hibernation: the connection stayed registered and every event
            // for it came to the handle, so nothing was missed; what woke it is queued.
            Attach::Wake => {}
            Attach::Restart => {
                // Registered all along (the handle, not the actor, is what events find):
                // anything committed from here on comes as an event, and the catch-up
                // read finds what the dead actor dropped; the seq bookkeeping drops doubles.
                tracing::info!(%user, conn = %state.conn.id, "session actor restarted; catching up");
                // The login check, the conversations' read and the catch-up run as the
                // first message (`CatchUp`), after the first start's bind if it is still
                // under way (a crash right after it began): the read then sees what
                // publishers could not route here, and the supervisor, which waits for
                // this start, does not wait for a database write.
                state.to_self(SessionMsg::CatchUp);
            }
            Attach::First => {
                // Read first, then register: the connection starts at each conversation's
                // current seq (the client syncs the past). A message committed in between
                // is not lost: the next one pulls it in as a gap, and the client's sync
                // covers it.
                state.load_conversations(true).await;
                state.ctx.register_connection(&state.conn);
                state.conn.push(&ServerFrame::Hello {
                    user_id: user,
                    node: state.ctx.node_id.clone(),
                    max_body_bytes: state.ctx.limits.max_body_bytes,
                    max_frame_bytes: state.ctx.limits.max_frame_bytes,
                    edit_window_secs: state.ctx.limits.edit_window.as_secs(),
                });
                // A revocation that came while the socket was opening, after its token was
                // checked, is found here, before any frame is served...
                if !state.revalidate(false).await {
                    return Ok(state);
                }
                // ...and one published until the bind settles, when `Bound` checks again.
                // The bind runs in the background (a database write across nodes: other
                // sessions' starts must not queue behind it); a `sync` waits for it.
                state.announce(true).await;
            }
        }
        // The socket closed before this start (the connection gave up waiting for it, or
        // the actor that had its `Closed` crashed): close now, so the user's bus binding
        // and registration are taken back.
        if state.conn.closed.is_cancelled() {
            state.to_self(SessionMsg::Closed);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.faults.check(&state.name)?;
        // Each arm's future is boxed: ractor keeps the handler's future inside the actor's
        // long-lived task, sized for its largest arm, so an idle session would otherwise
        // hold kilobytes of state machine it is not using (docs/benchmarks.md, "Idle
        // connections"). One allocation per message is the price.
        state.handled += 1;
        if !matches!(msg, SessionMsg::Park) {
            state.last_active = Instant::now();
        }
        match msg {
            // Frames queued before the server closed the connection (its login revoked or
            // ended, a violation, overload) are not served: unanswered, a send is resent
            // by the client with the same id. Those before the client's own close are.
            SessionMsg::Frame(..) if state.conn.close_reason().is_some_and(|(code, _)| code != 1000) => {}
            SessionMsg::Frame(text, _permit) => Box::pin(state.on_frame(&text)).await,
            SessionMsg::Event(event) => Box::pin(state.on_event(*event)).await,
            SessionMsg::Refresh(c) => Box::pin(state.catch_up(c)).await,
            SessionMsg::CatchUp => {
                Box::pin(async {
                    state.wait_bound().await;
                    // A revocation published while the bus was down never came: ask.
                    if !state.revalidate(false).await {
                        return;
                    }
                    state.load_conversations(false).await;
                    state.catch_up_all().await;
                })
                .await
            }
            SessionMsg::DeliveredSaved(c) => {
                if let Some(Some((seq, sender))) = state.delivered_inflight.remove(&c) {
                    state.mark_delivered(c, sender, seq);
                }
            }
            SessionMsg::Bound => {
                // Joined and bound, so a revocation from now on arrives as an event; one
                // that came while the socket was opening, after its token was checked, is
                // found here.
                Box::pin(state.revalidate(false)).await;
            }
            SessionMsg::Park => {
                if state.may_park() && state.conn.park(state.handled) {
                    tracing::debug!(conn = %state.conn.id, "session hibernates");
                    myself.stop(Some(NORMAL_EXIT.to_owned()));
                }
            }
            SessionMsg::Answer(frame) => {
                state.conn.push_encoded(&frame);
            }
            SessionMsg::Closed => {
                Box::pin(state.close()).await;
                myself.stop(Some(NORMAL_EXIT.to_owned()));
            }
        }
        Ok(())
    }
}

impl SessionState {
    fn new(ctx: Arc<NodeCtx>, conn: Arc<ConnHandle>) -> Self {
        Self {
            name: ctx.name("session", conn.id),
            ctx,
            conn,
            conversations: HashMap::new(),
            loaded: false,
            typing: HashMap::new(),
            typing_window: (0, Instant::now()),
            delivered_inflight: HashMap::new(),
            read_asked: HashMap::new(),
            handled: 0,
            last_active: Instant::now(),
        }
    }

    fn me(&self) -> UserId {
        self.conn.user_id
    }

    /// The connection closed: no more events here, the bus binding taken back, peers
    /// told if it was the user's last connection here; nothing wakes the session again.
    async fn close(&mut self) {
        self.ctx.unregister_connection(&self.conn);
        self.announce(false).await;
        self.conn.detach();
    }

    /// Closes the connection (4001) if its login was revoked; true if it may go on. A
    /// store that cannot answer does not close anyone: the next check will.
    async fn revalidate(&mut self, in_use: bool) -> bool {
        match self.ctx.store.login_active(self.conn.login_session, self.me(), in_use).await {
            Ok(false) => {
                tracing::info!(user = %self.me(), conn = %self.conn.id, "login no longer valid; closing the socket");
                self.conn.close_logged_out();
                false
            }
            Ok(true) | Err(_) => true,
        }
    }

    async fn load_conversations(&mut self, set_baseline: bool) {
        match self.ctx.store.conversations_of(self.me()).await {
            Ok(convs) => {
                self.loaded = true;
                for c in convs {
                    if set_baseline {
                        self.conn.init_last_sent(c.id, c.last_seq);
                    }
                    self.conversations.insert(c.id, c);
                }
            }
            Err(e) => tracing::warn!(user = %self.me(), error = %e, "session start: cannot load conversations"),
        }
    }

    /// Sends a message to this session through its handle, like every other sender (so
    /// the handle's count of what the actor has been sent stays exact).
    fn to_self(&self, msg: SessionMsg) {
        let _ = self.conn.send(&self.ctx, msg);
    }

    /// Whether this session may hibernate now: hibernation is on, nothing happened for
    /// that long, and nothing is in flight that would need the actor (a delivered marker
    /// being written, the first bind).
    fn may_park(&self) -> bool {
        let after = self.ctx.limits.hibernate_after;
        !after.is_zero()
            && self.last_active.elapsed() >= after
            && self.delivered_inflight.is_empty()
            && self.conn.bind.load(Ordering::SeqCst) != BIND_PENDING
            && !self.conn.closed.is_cancelled()
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>, reference: Option<String>) {
        self.conn.push(&ServerFrame::error(code, message, reference));
    }

    /// Until the bus routes this user's events here: a read of the database before then
    /// could miss a message committed after it whose event went elsewhere.
    async fn wait_bound(&self) {
        let conn = &self.conn;
        loop {
            let settled = conn.bind_settled.notified();
            tokio::pin!(settled);
            // Registered before the check: a settle in between is not missed.
            settled.as_mut().enable();
            if conn.bind.load(Ordering::SeqCst) != BIND_PENDING {
                return;
            }
            settled.await;
        }
    }

    /// First session of the user on this node opened, or last one closed: route the
    /// user's events here (or stop), and tell their peers.
    async fn announce(&mut self, online: bool) {
        let me = self.me();
        if !self.loaded {
            // A woken session reads its conversations when it needs them: now.
            self.load_conversations(false).await;
        }
        let remaining = self.ctx.connections_here(me);
        let edge = if online { remaining == 1 } else { remaining == 0 };
        // Presence is for contacts only: not for former contacts, and never across a block.
        // One question for all the conversations (a store that cannot answer: no one).
        let candidates: Vec<UserId> = self.conversations.values().filter_map(|c| c.peer_of(me)).collect();
        let peers: Vec<UserId> = match self.ctx.store.messageable_peers(me, &candidates).await {
            Ok(allowed) => candidates.into_iter().filter(|p| allowed.contains(p)).collect(),
            Err(e) => {
                tracing::warn!(user = %me, error = %e, "presence: cannot read who may be told");
                vec![]
            }
        };
        let mut probes = vec![];
        if online {
            // Tell this connection which of those peers are online here; ask about the
            // others (they may be on other nodes: their sessions answer over the bus).
            for peer in &peers {
                if self.ctx.connections_here(*peer) > 0 {
                    self.conn.push(&ServerFrame::Presence { user_id: *peer, online: true, last_seen_at: None });
                } else {
                    probes.push(*peer);
                }
            }
        }
        // Every session counts for the binding (the bus binds on the first, unbinds after
        // the last): counting there, under one lock, keeps a close and an open that race
        // from leaving the user unbound. The bind settles in the background; the unbind
        // follows this session's own bind, so the count it takes back is there.
        let bus = self.ctx.bus.clone();
        // (Once per connection: a restarted actor does not announce again.)
        let binding = online
            && self.conn.bind.compare_exchange(BIND_NONE, BIND_PENDING, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        if binding {
            let (bus, ctx, conn) = (bus.clone(), self.ctx.clone(), self.conn.clone());
            // Settled however the task ends (a panic, a runtime shutting down): nothing
            // waits on a bind for ever.
            let settle = SettleOnDrop(self.conn.clone());
            tokio::spawn(async move {
                if let Err(e) = bus.bind_user(me).await {
                    tracing::warn!(user = %me, error = %e, "cannot bind user on the bus");
                }
                drop(settle);
                let _ = conn.send(&ctx, SessionMsg::Bound);
                // Asked once the answers can find this node.
                for peer in probes {
                    let _ = bus.publish(Envelope::new(Event::PresenceProbe { to: peer, from: me })).await;
                }
            });
        } else if !online {
            self.wait_bound().await;
            // Only what this connection bound, and only once: a connection closed before
            // it was bound (its login found revoked at start) must not take back another
            // connection's share of the binding.
            let bound =
                self.conn.bind.compare_exchange(BIND_SETTLED, BIND_NONE, Ordering::SeqCst, Ordering::SeqCst).is_ok();
            if bound && let Err(e) = bus.unbind_user(me).await {
                tracing::warn!(user = %me, error = %e, "cannot unbind user on the bus");
            }
        }
        if !edge {
            return;
        }
        // The last connection here closed: that is when the user was last seen.
        let last_seen_at = (!online).then(crate::now_ms);
        let store = self.ctx.store.clone();
        tokio::spawn(async move {
            if let Some(at) = last_seen_at
                && let Err(e) = store.record_last_seen(me, at).await
            {
                tracing::debug!(user = %me, error = %e, "last seen not recorded");
            }
            for peer in peers {
                let _ =
                    bus.publish(Envelope::new(Event::Presence { to: peer, user_id: me, online, last_seen_at })).await;
            }
        });
    }

    async fn on_frame(&mut self, text: &str) {
        let (frame, reference) = match parse_client_frame(text) {
            Ok(f) => f,
            Err(e) => {
                self.conn.push(&e.into());
                self.count_violation();
                return;
            }
        };
        match frame {
            ClientFrame::Send { client_msg_id, conversation_id, to_user_id, body } => {
                self.on_send(client_msg_id, conversation_id, to_user_id, body, reference).await
            }
            ClientFrame::Sync { since } => self.on_sync(since, reference).await,
            ClientFrame::Typing { conversation_id, active } => self.on_typing(conversation_id, active).await,
            ClientFrame::Read { conversation_id, seq } => self.on_read(conversation_id, seq, reference).await,
            ClientFrame::Ping => {
                self.conn.push(&ServerFrame::Pong);
            }
        }
    }

    fn count_violation(&self) {
        if self.conn.violation(self.ctx.limits.max_violations) {
            tracing::info!(user = %self.me(), conn = %self.conn.id, "closing: too many bad frames");
            self.conn.close(CLOSE_POLICY, "too many invalid frames");
        }
    }

    /// The conversation, if the caller takes part in it (cached; refreshed from storage).
    async fn conversation(&mut self, id: ConversationId) -> Result<ConversationInfo, StoreError> {
        if let Some(c) = self.conversations.get(&id) {
            return Ok(*c);
        }
        match self.ctx.store.conversation(id).await? {
            Some(c) if c.has(self.me()) => {
                self.conversations.insert(id, c);
                Ok(c)
            }
            _ => Err(StoreError::NotFound),
        }
    }

    async fn on_send(
        &mut self,
        client_msg_id: String,
        conversation_id: Option<ConversationId>,
        to_user_id: Option<UserId>,
        body: String,
        reference: Option<String>,
    ) {
        let me = self.me();
        let r = reference.or_else(|| Some(client_msg_id.clone()));
        if client_msg_id.is_empty()
            || client_msg_id.chars().count() > MAX_CLIENT_MSG_ID
            || client_msg_id.chars().any(char::is_control)
        {
            self.count_violation();
            return self.error(
                ErrorCode::InvalidClientMsgId,
                format!("client_msg_id must be 1 to {MAX_CLIENT_MSG_ID} characters"),
                r,
            );
        }
        if let Err((code, why)) = crate::protocol::check_body(&body, self.ctx.limits.max_body_bytes) {
            return self.error(code, why, r);
        }
        if self.ctx.send_limiter.check_key(&me).is_err() {
            return self.error(ErrorCode::RateLimited, "sending too fast; resend this message later", r);
        }
        let conv = match (conversation_id, to_user_id) {
            (Some(c), _) => self.conversation(c).await,
            (None, Some(to)) if to == me => {
                return self.error(ErrorCode::InvalidRecipient, "you cannot message yourself", r);
            }
            (None, Some(to)) => match self.ctx.store.open_conversation(me, to).await {
                Ok(c) => {
                    self.conversations.insert(c.id, c);
                    Ok(c)
                }
                Err(e) => Err(e),
            },
            (None, None) => return self.error(ErrorCode::InvalidFrame, "send needs conversation_id or to_user_id", r),
        };
        let conv = match conv {
            Ok(c) => c,
            Err(e) => return self.store_error(e, r),
        };
        // Who may message whom is checked where the message is committed, in the same
        // transaction (so a block takes effect for every message committed after it).
        let room = match self.ctx.room(conv.id).await {
            Ok(room) => room,
            Err(e) => {
                tracing::warn!(conversation = %conv.id, error = %e, "no room actor");
                return self.error(ErrorCode::Unavailable, "conversation is unavailable; resend later", r);
            }
        };
        let msg = NewMessage {
            conversation_id: conv.id,
            sender_id: me,
            client_msg_id,
            kind: MessageKind::Text,
            body,
            file_id: None,
            target_id: None,
        };
        let (tx, rx) = ractor::concurrency::oneshot();
        let reply: RpcReplyPort<Result<StoredMessage, SendError>> = tx.into();
        if room.cast(RoomMsg::Send { msg: Box::new(msg), reply }).is_err() {
            return self.error(ErrorCode::Unavailable, "conversation is restarting; resend later", r);
        }
        // Wait for the commit off the actor, so this session keeps delivering meanwhile.
        let conn = self.conn.clone();
        let timeout = self.ctx.limits.commit_timeout;
        let ctx = self.ctx.clone();
        let conv_id = conv.id;
        tokio::spawn(async move {
            let frame = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(m))) => ServerFrame::Ack {
                    client_msg_id: m.client_msg_id,
                    message_id: m.id,
                    conversation_id: m.conversation_id,
                    seq: m.seq,
                },
                Ok(Ok(Err(e))) => ServerFrame::error(e.code, e.message, r),
                // The room died or is slow: the message may or may not be committed. A
                // resend with the same client_msg_id is safe either way; meanwhile make
                // sure this connection sees whatever was committed.
                _ => {
                    let _ = conn.send(&ctx, SessionMsg::Refresh(conv_id));
                    ServerFrame::error(
                        ErrorCode::NotAcknowledged,
                        "not acknowledged; resend with the same client_msg_id",
                        r,
                    )
                }
            };
            // Through the session's mailbox (so after the own copy); directly if it has none.
            let frame: Arc<str> = frame.to_json().into();
            if conn.send(&ctx, SessionMsg::Answer(frame.clone())).is_err() {
                conn.push_encoded(&frame);
            }
        });
    }

    fn store_error(&self, e: StoreError, r: Option<String>) {
        match e {
            StoreError::NotFound => self.error(ErrorCode::NotFound, "no such conversation or user", r),
            StoreError::Forbidden(why) => self.error(ErrorCode::Forbidden, why, r),
            StoreError::Conflict(why) => self.error(ErrorCode::Conflict, why, r),
            StoreError::Unavailable(_) => self.error(ErrorCode::Unavailable, "storage is unavailable; retry later", r),
        }
    }

    async fn on_sync(&mut self, since: HashMap<ConversationId, i64>, reference: Option<String>) {
        if self.ctx.sync_limiter.check_key(&self.me()).is_err() {
            return self.error(ErrorCode::RateLimited, "syncing too often; sync again in a second", reference);
        }
        self.wait_bound().await;
        if since.len() > MAX_SYNC_CONVERSATIONS {
            return self.error(
                ErrorCode::InvalidFrame,
                format!("sync names more than {MAX_SYNC_CONVERSATIONS} conversations"),
                reference,
            );
        }
        let convs = match self.ctx.store.conversations_of(self.me()).await {
            Ok(c) => c,
            Err(e) => return self.store_error(e, reference),
        };
        let mut sent = 0;
        for c in convs {
            self.conversations.insert(c.id, c);
            let after = since.get(&c.id).copied().unwrap_or(0).max(0);
            match self.send_after(c.id, after, c.last_seq).await {
                Some(n) => sent += n,
                None => return,
            }
        }
        self.conn.push(&ServerFrame::SyncDone { messages: sent });
    }

    /// Queues every message of `c` with `after < seq <= upto`, paged, waiting for the
    /// client to read. `None` if the connection gave up.
    async fn send_after(&mut self, c: ConversationId, mut after: i64, upto: i64) -> Option<u64> {
        let mut sent = 0;
        while after < upto {
            let page = match self.ctx.store.messages_after(c, after, self.ctx.limits.sync_page).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(conversation = %c, error = %e, "catch-up read failed");
                    self.error(ErrorCode::Unavailable, "storage is unavailable; sync again later", None);
                    return None;
                }
            };
            let Some(last) = page.last().map(|m| m.seq) else { break };
            for m in page {
                if m.seq > upto {
                    break;
                }
                if !self.conn.push_wait(&ServerFrame::Message(m), self.ctx.limits.drain_timeout).await {
                    return None;
                }
                sent += 1;
            }
            self.conn.set_last_sent(c, last.min(upto));
            after = last;
        }
        Some(sent)
    }

    /// Sends whatever of `c` this connection has not been sent yet.
    async fn catch_up(&mut self, c: ConversationId) {
        let Ok(Some(info)) = self.ctx.store.conversation(c).await else { return };
        let last = self.conn.last_sent(c).unwrap_or(0);
        self.send_after(c, last, info.last_seq).await;
    }

    async fn catch_up_all(&mut self) {
        let mut targets: Vec<ConversationId> = self.conversations.keys().copied().collect();
        for (c, _) in self.conn.known_conversations() {
            if !targets.contains(&c) {
                targets.push(c);
            }
        }
        for c in targets {
            self.catch_up(c).await;
        }
    }

    async fn on_event(&mut self, event: Event) {
        match event {
            Event::MessageCreated { message, frame, delivered, .. } => self.deliver(message, frame, delivered).await,
            Event::Receipt { receipt, .. } => {
                self.conn.push(&ServerFrame::Receipt(receipt));
            }
            Event::Typing { conversation_id, user_id, active, .. } => {
                self.conn.push(&ServerFrame::Typing { conversation_id, user_id, active });
            }
            Event::Presence { user_id, online, last_seen_at, .. } => {
                self.conn.push(&ServerFrame::Presence { user_id, online, last_seen_at });
            }
            Event::PresenceProbe { from, .. } => answer_probe(&self.ctx, self.me(), from),
            Event::Transfer { progress, .. } => {
                self.conn.push(&ServerFrame::Transfer(progress));
            }
            Event::Notification { notification, unread, .. } => {
                self.conn.push(&ServerFrame::Notification { notification, unread });
            }
            Event::Profile { user_id, display_name, .. } => {
                self.conn.push(&ServerFrame::Profile { user_id, display_name });
            }
            Event::SessionRevoked { session_id, .. } => {
                if session_id == self.conn.login_session {
                    tracing::info!(user = %self.me(), conn = %self.conn.id, "login revoked; closing the socket");
                    self.conn.close_logged_out();
                }
            }
            Event::Contact { change, .. } => {
                let me = self.me();
                let peer = if change.requester_id == me { change.addressee_id } else { change.requester_id };
                let now_contacts = match change.kind {
                    ContactChangeKind::Accepted => Some(true),
                    ContactChangeKind::Removed => Some(false),
                    _ => None,
                };
                self.conn.push(&ServerFrame::Contact(change));
                // New contacts see each other's presence at once (their conversation was
                // opened with the acceptance); former contacts stop seeing it.
                if let Some(online) = now_contacts {
                    if online {
                        self.load_conversations(false).await;
                    }
                    let peer_here = self.ctx.connections_here(peer) > 0;
                    if peer_here || !online {
                        self.conn.push(&ServerFrame::Presence {
                            user_id: peer,
                            online: online && peer_here,
                            last_seen_at: None,
                        });
                    }
                    let bus = self.ctx.bus.clone();
                    tokio::spawn(async move {
                        let event = Event::Presence { to: peer, user_id: me, online, last_seen_at: None };
                        let _ = bus.publish(Envelope::new(event)).await;
                    });
                }
            }
        }
    }

    /// Live delivery, in seq order and gap-free per conversation. `marked`: the append
    /// already raised this user's delivered marker to it.
    async fn deliver(&mut self, m: StoredMessage, frame: Option<Arc<str>>, marked: bool) {
        let c = m.conversation_id;
        let last = self.conn.last_sent(c).unwrap_or(0);
        if m.seq <= last {
            return; // already queued (a redelivery, or caught up before)
        }
        if m.seq > last + 1 && self.send_after(c, last, m.seq - 1).await.is_none() {
            return;
        }
        let (seq, sender, kind) = (m.seq, m.sender_id, m.kind);
        let pushed = match &frame {
            Some(f) => self.conn.push_encoded(f),
            None => self.conn.push(&ServerFrame::Message(m)),
        };
        if !pushed {
            return;
        }
        self.conn.set_last_sent(c, seq);
        // Messages raise the delivered marker; edits and deletions do not (the next
        // message raises it past them). A deletion needs no contact, so its receipt would
        // reach a former contact or someone this user blocked.
        if sender != self.me() && !marked && !kind.is_change() {
            self.mark_delivered(c, sender, seq);
        }
    }

    /// Records that `seq` reached this user, and tells the sender (off the actor; one
    /// write per conversation in flight, later seqs coalesced into the next).
    fn mark_delivered(&mut self, c: ConversationId, sender: UserId, seq: i64) {
        if let Some(pending) = self.delivered_inflight.get_mut(&c) {
            if pending.is_none_or(|(s, _)| s < seq) {
                *pending = Some((seq, sender));
            }
            return;
        }
        self.delivered_inflight.insert(c, None);
        let (store, bus, me) = (self.ctx.store.clone(), self.ctx.bus.clone(), self.me());
        let (ctx, conn) = (self.ctx.clone(), self.conn.clone());
        tokio::spawn(async move {
            match store.update_receipt(c, me, Some(seq), None).await {
                Ok(receipt) if receipt.delivered_seq == seq => {
                    let _ = bus.publish(Envelope::new(Event::Receipt { to: sender, receipt })).await;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "delivered marker not saved"),
            }
            let _ = conn.send(&ctx, SessionMsg::DeliveredSaved(c));
        });
    }

    /// Forwards typing state to the peer, throttled per connection: typing is ephemeral,
    /// so what the throttle drops is dropped, not answered. "Stopped" follows "started"
    /// once; "started" again waits out [`TYPING_INTERVAL`]; repeats of the state the peer
    /// has are dropped, so alternating frames cannot turn into a stream of events (each a
    /// permission check and a publish).
    async fn on_typing(&mut self, c: ConversationId, active: bool) {
        let Ok(conv) = self.conversation(c).await else {
            return self.error(ErrorCode::NotFound, "no such conversation", None);
        };
        let now = Instant::now();
        let forward = match self.typing.get(&c) {
            // (Nothing known: a first "started", or a "stopped" after the session woke
            // from hibernation, which forgot what it had forwarded.)
            None => true,
            Some((was_active, since)) => match (*was_active, active) {
                (true, false) => true,
                (_, true) => now.duration_since(*since) >= TYPING_INTERVAL,
                (false, false) => false,
            },
        };
        if !forward {
            return;
        }
        let (count, window) = &mut self.typing_window;
        if now.duration_since(*window) >= Duration::from_secs(1) {
            *count = 0;
            *window = now;
        }
        if *count >= TYPING_PER_SECOND {
            return;
        }
        *count += 1;
        let since = if active { now } else { self.typing.get(&c).map_or(now, |(_, t)| *t) };
        self.typing.insert(c, (active, since));
        if let Some(peer) = conv.peer_of(self.me())
            && self.ctx.store.may_message(self.me(), peer).await.is_ok()
        {
            // Published in place (not from a spawned task), so typing events leave in the
            // order the client sent them, ahead of whatever this connection does next.
            let event = Event::Typing { to: peer, conversation_id: c, user_id: self.me(), active };
            let _ = self.ctx.bus.publish(Envelope::new(event)).await;
        }
    }

    async fn on_read(&mut self, c: ConversationId, seq: i64, reference: Option<String>) {
        let conv = match self.conversation(c).await {
            Ok(conv) => conv,
            Err(e) => return self.store_error(e, reference),
        };
        if seq < 0 {
            return self.error(ErrorCode::InvalidFrame, "seq must not be negative", reference);
        }
        if self.read_asked.get(&c).is_some_and(|asked| seq <= *asked) {
            return;
        }
        // Each read that gets here is a write and a receipt to the reader's devices and the
        // peer: bounded per user, like sends.
        if self.ctx.read_limiter.check_key(&self.me()).is_err() {
            return self.error(
                ErrorCode::RateLimited,
                "marking read too often; send the newest read again later",
                reference,
            );
        }
        match self.ctx.store.update_receipt(c, self.me(), None, Some(seq)).await {
            Ok(receipt) => {
                // The marker as stored (capped at the conversation's last seq): a read of
                // a seq past it is asked again once more messages came.
                let before = self.read_asked.insert(c, receipt.read_seq);
                let raised = before.is_none_or(|b| receipt.read_seq > b);
                let bus = self.ctx.bus.clone();
                // Your other devices always (the answer to the read); the peer when the
                // marker moved, and only while you are contacts.
                let mut targets = vec![self.me()];
                if raised
                    && let Some(peer) = conv.peer_of(self.me())
                    && self.ctx.store.may_message(self.me(), peer).await.is_ok()
                {
                    targets.push(peer);
                }
                tokio::spawn(async move {
                    for to in targets {
                        let _ = bus.publish(Envelope::new(Event::Receipt { to, receipt })).await;
                    }
                });
            }
            Err(e) => self.store_error(e, reference),
        }
    }
}
