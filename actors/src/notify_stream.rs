//! The notification stream actor: one per user with open notification streams (SSE) on
//! this node.
//!
//! A stream attaches with the last notification number it has (`Last-Event-ID`); the
//! actor sends what came after from the database, then every new notification as its
//! event arrives, in `n` order with no gap (a gap is filled from the database first) and
//! no repeat. Each stream is a bounded channel to its HTTP response: a stream that does
//! not keep up is dropped (its client reconnects with `Last-Event-ID`). If the actor
//! dies, its streams end with it, and the reconnecting clients attach to the restarted
//! actor: nothing is lost, because the database has every notification.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

use crate::NORMAL_EXIT;
use crate::ids::UserId;
use crate::node::NodeCtx;
use crate::ports::{Event, NotificationView, StoreError, Unread};

/// What a stream's HTTP response writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamItem {
    Notification(NotificationView),
    Unread(Unread),
}

/// Notifications a stream may have queued before it counts as stuck and is dropped.
pub const STREAM_QUEUE: usize = 256;
/// Notifications read from the database per catch-up query.
const PAGE: u64 = 200;
/// How often the actor drops closed streams, and how long it lives with none.
const TICK: Duration = Duration::from_millis(500);
const IDLE_TICKS: u32 = 20;
/// Ticks between checks of the streams' logins against the database (5 minutes): the
/// backstop for a revocation event that never arrived.
const RECHECK_TICKS: u64 = 600;

/// Storage the stream actor reads (the notify service implements it).
#[async_trait::async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    /// Up to `limit` of `user`'s notifications with `n > after`, in `n` order.
    async fn after(&self, user: UserId, after: i64, limit: u64) -> Result<Vec<NotificationView>, StoreError>;
    /// `user`'s unread counts.
    async fn unread(&self, user: UserId) -> Result<Unread, StoreError>;
}

pub enum StreamMsg {
    /// A new stream that has everything up to `after`, opened with a token of the login
    /// session `login` (revoking it ends the stream).
    Attach { tx: mpsc::Sender<StreamItem>, after: i64, login: uuid::Uuid },
    /// A notification event for this user, from the bus ([`crate::bridge::dispatch`]).
    Event(Box<Event>),
    /// Periodic: drop closed streams; stop when none has been open for a while.
    Tick,
    /// Check the streams' logins now (the bus link was down: a revocation may have been
    /// missed).
    Recheck,
}

pub struct NotificationStreamActor;

pub struct StreamArgs {
    pub ctx: Arc<NodeCtx>,
    pub user: UserId,
}

struct Stream {
    tx: mpsc::Sender<StreamItem>,
    last_n: i64,
    login: uuid::Uuid,
}

pub struct StreamState {
    ctx: Arc<NodeCtx>,
    user: UserId,
    name: String,
    streams: Vec<Stream>,
    idle_ticks: u32,
    ticks: u64,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl NodeCtx {
    /// The process group of a user's notification stream actor on this node.
    pub fn stream_group(&self, user: UserId) -> String {
        format!("nstream:{user}")
    }
}

impl Actor for NotificationStreamActor {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StreamMsg>,
        args: StreamArgs,
    ) -> Result<StreamState, ActorProcessingErr> {
        let StreamArgs { ctx, user } = args;
        ractor::pg::join_scoped(ctx.node_id.clone(), ctx.stream_group(user), vec![myself.get_cell()]);
        // Route the user's events to this node while a stream is open here.
        if let Err(e) = ctx.bus.bind_user(user).await {
            tracing::warn!(%user, error = %e, "cannot bind the user on the bus");
        }
        let ticker = Some(myself.send_interval(TICK, || StreamMsg::Tick));
        Ok(StreamState { name: ctx.name("nstream", user), ctx, user, streams: vec![], idle_ticks: 0, ticks: 0, ticker })
    }

    async fn post_stop(&self, myself: ActorRef<StreamMsg>, state: &mut StreamState) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        ractor::pg::leave_scoped(
            state.ctx.node_id.clone(),
            state.ctx.stream_group(state.user),
            vec![myself.get_cell()],
        );
        let _ = state.ctx.bus.unbind_user(state.user).await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StreamMsg>,
        msg: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.faults.check(&state.name)?;
        match msg {
            StreamMsg::Attach { tx, after, login } => {
                state.idle_ticks = 0;
                let mut stream = Stream { tx, last_n: after.max(0), login };
                // Boxed, as in the session actor: the actor's task keeps the handler's
                // future for its whole life, sized for the largest arm.
                let login = stream.login;
                if Box::pin(async { state.catch_up(&mut stream).await && state.send_unread(&stream).await }).await {
                    state.streams.push(stream);
                }
                // Attached, so a revocation from now on arrives as an event; one that
                // came while the stream was opening is found here.
                Box::pin(state.drop_revoked(Some(login), false)).await;
            }
            StreamMsg::Event(event) => match *event {
                Event::Notification { notification, unread, .. } => {
                    Box::pin(state.on_notification(notification, unread)).await;
                }
                // Dropping a stream's sender ends its HTTP response.
                Event::SessionRevoked { session_id, .. } => state.streams.retain(|s| s.login != session_id),
                _ => {}
            },
            StreamMsg::Recheck => Box::pin(state.drop_revoked(None, false)).await,
            StreamMsg::Tick => {
                state.streams.retain(|s| !s.tx.is_closed());
                state.ticks += 1;
                if state.ticks.is_multiple_of(RECHECK_TICKS) {
                    // The periodic check: a use of each open stream's login.
                    Box::pin(state.drop_revoked(None, true)).await;
                }
                if state.streams.is_empty() {
                    state.idle_ticks += 1;
                    if state.idle_ticks >= IDLE_TICKS {
                        myself.stop(Some(NORMAL_EXIT.to_owned()));
                    }
                } else {
                    state.idle_ticks = 0;
                }
            }
        }
        Ok(())
    }
}

impl StreamState {
    /// Ends the streams whose login is no longer valid (`only`: just that login's). A
    /// store that cannot answer ends nothing: the next check will.
    async fn drop_revoked(&mut self, only: Option<uuid::Uuid>, in_use: bool) {
        let mut logins: Vec<uuid::Uuid> = self.streams.iter().map(|s| s.login).collect();
        logins.sort_unstable();
        logins.dedup();
        for login in logins.into_iter().filter(|l| only.is_none_or(|o| o == *l)) {
            if let Ok(false) = self.ctx.store.login_active(login, self.user, in_use).await {
                self.streams.retain(|s| s.login != login);
            }
        }
    }

    fn store(&self) -> Option<&Arc<dyn NotificationStore>> {
        self.ctx.notifications.as_ref()
    }

    /// Sends what the stream lacks from the database; false if the stream is gone.
    async fn catch_up(&self, stream: &mut Stream) -> bool {
        let Some(store) = self.store() else { return true };
        loop {
            let page = match store.after(self.user, stream.last_n, PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(user = %self.user, error = %e, "notification catch-up failed; closing the stream");
                    return false;
                }
            };
            let full = page.len() as u64 == PAGE;
            for n in page {
                let number = n.n;
                if stream.tx.try_send(StreamItem::Notification(n)).is_err() {
                    return false;
                }
                stream.last_n = number;
            }
            if !full {
                return true;
            }
        }
    }

    async fn send_unread(&self, stream: &Stream) -> bool {
        let Some(store) = self.store() else { return true };
        match store.unread(self.user).await {
            Ok(u) => stream.tx.try_send(StreamItem::Unread(u)).is_ok(),
            Err(_) => true,
        }
    }

    async fn on_notification(&mut self, notification: Option<NotificationView>, unread: Unread) {
        let mut streams = std::mem::take(&mut self.streams);
        let mut keep = Vec::with_capacity(streams.len());
        for mut s in streams.drain(..) {
            let ok = match &notification {
                Some(n) if n.n <= s.last_n => true,
                Some(n) if n.n == s.last_n + 1 => {
                    let sent = s.tx.try_send(StreamItem::Notification(n.clone())).is_ok();
                    if sent {
                        s.last_n = n.n;
                    }
                    sent
                }
                // A gap (an event was lost or overtaken): the database has it.
                Some(_) => self.catch_up(&mut s).await,
                None => true,
            };
            if ok && s.tx.try_send(StreamItem::Unread(unread.clone())).is_ok() {
                keep.push(s);
            }
        }
        self.streams = keep;
    }
}
