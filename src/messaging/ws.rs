//! `GET /ws`: the chat WebSocket (protocol: docs/protocol.md).
//!
//! The caller is the verified token's user (bearer header or session cookie), never a
//! field of a frame. A cookie-authenticated upgrade must come from our own origin or an
//! allowed one (a browser sends cookies to cross-site WebSockets too).
//!
//! Each connection has a reader (this task) and a writer task, and a session actor in
//! between that the supervisor restarts if it fails; the tasks outlive it and re-attach
//! to the restarted actor by name.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use salvo::prelude::*;
use salvo::websocket::{Message, WebSocket, WebSocketUpgrade};
use switchboard_actors::node::Node;
use switchboard_actors::protocol::ServerFrame;
use switchboard_actors::session::{CLOSE_INTERNAL, CLOSE_POLICY, ConnHandle, NotSent, Outbound, SessionMsg};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::AuthUser;
use crate::auth::routes::authenticate_request;
use crate::config::MessagingConfig;
use crate::domain::UserId;
use crate::error::{AppError, ErrorCode};
use crate::web::state;

pub fn router() -> Router {
    Router::with_path("ws").get(upgrade)
}

/// Frames the writer task takes from the queue for one write to the socket.
const WRITE_BATCH: usize = 64;
/// Bytes of frames gathered before tungstenite writes to the socket without a flush.
const WRITE_BUFFER: usize = 16 * 1024;
/// How long the reader waits for a restarting session actor before giving up on the
/// connection (the client reconnects and syncs).
const REATTACH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection's last frames may take to leave and the client's close
/// frame to come back; the socket is dropped then, whatever is left.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Client frames read but not yet handled by the session, per connection; past it the
/// reader waits (the client's writes wait in TCP). A few: the session answers most frames
/// at once (a send's commit is awaited off the actor), and frames are at most
/// `messaging.max_frame_bytes` (2 MiB in flight at most with the defaults). A waking
/// session's queue (bounded by `messaging.outbound_queue`, at least 16) can still
/// overflow and close the socket (1013) when the queue is set that low.
const FRAMES_IN_FLIGHT: usize = 32;
/// How long a socket whose input broke the protocol stays open after our close frame,
/// since the client's close reply cannot be read there (at most [`CLOSE_GRACE`]).
const CLOSE_LINGER: Duration = Duration::from_secs(1);
const REATTACH_POLL: Duration = Duration::from_millis(10);
/// How often an open connection's login is checked against the database, as a backstop
/// for a revocation event that never arrived (the publisher's broker link was down). The
/// event closes a connection at once; this bounds how long one can be missed.
const REVALIDATE_EVERY: Duration = Duration::from_secs(300);

/// The WebSocket message for a queued frame (a shared one is copied here, once per
/// connection: cheaper than encoding it again).
fn message_of(out: Outbound) -> Message {
    match out {
        Outbound::Text(text) => Message::text(text),
        Outbound::Shared(text) => Message::text(String::from(&*text)),
    }
}

#[handler]
async fn upgrade(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let st = state(depot)?.clone();
    // The origin first: a page on another site must not even get a cookie renewed.
    crate::web::csrf::connection_origin(req, &st.config, "chat socket")?;
    // A browser whose access cookie expired is renewed from its refresh cookie here too
    // (the new cookie rides on the handshake's answer).
    let who = authenticate_request(req, res, &st).await?;
    let m = st.config.messaging.clone();
    let slot = st
        .sockets
        .acquire(who.user_id, m.max_connections_per_user)
        .ok_or(AppError::TooManyConnections { limit: m.max_connections_per_user })?;
    // After the cap: an open refused for it costs nothing of the budget.
    st.count_open(who.user_id)?;
    // Small buffers: an idle connection should cost kilobytes, not the default 128 KiB.
    // tungstenite zero-fills its whole read buffer on each read, so all of it stays
    // resident: 512 bytes fits a typical frame, and a larger frame grows it for that
    // connection only (4 KiB here cost 5 KiB more per idle connection; docs/benchmarks.md).
    // Writes gather up to WRITE_BUFFER before they reach the socket; the writer task
    // flushes after each run of queued frames, so nothing waits there.
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(512)
        .write_buffer_size(WRITE_BUFFER)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(m.max_frame_bytes))
        .max_frame_size(Some(m.max_frame_bytes));
    let node = st.node.clone();
    WebSocketUpgrade::with_config(ws_config)
        .upgrade(req, res, move |ws| async move {
            serve(ws, node, who, m, slot).await;
        })
        .await
        .map_err(|e| AppError::bad_request(ErrorCode::BadUpgrade, e.brief))
}

/// Open chat sockets per user on this node, so one account cannot hold unbounded
/// connections (and their memory). A [`SocketSlot`] gives its place back when dropped.
#[derive(Debug, Default)]
pub struct SocketCounts(dashmap::DashMap<UserId, usize>);

impl SocketCounts {
    /// A slot for one more socket of `user`, unless they have `max` already.
    pub fn acquire(self: &Arc<Self>, user: UserId, max: usize) -> Option<SocketSlot> {
        let mut n = self.0.entry(user).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(SocketSlot { counts: self.clone(), user })
    }
}

/// One open (or opening) socket, counted in [`SocketCounts`].
#[derive(Debug)]
pub struct SocketSlot {
    counts: Arc<SocketCounts>,
    user: UserId,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if let Some(mut n) = self.counts.0.get_mut(&self.user) {
            *n = n.saturating_sub(1);
        }
        self.counts.0.remove_if(&self.user, |_, n| *n == 0);
    }
}

/// Runs one accepted connection: opens its session actor, then moves frames between the
/// socket and it (reader and writer tasks) until either side closes.
/// `slot` (the user's socket count) is given back once the connection is over, before the
/// closing handshake: a socket waiting for a client's close reply is not one of theirs.
async fn serve(ws: WebSocket, node: Arc<Node>, who: AuthUser, m: MessagingConfig, slot: SocketSlot) {
    let (conn, outbound) = ConnHandle::new(who.user_id, who.session_id.0, who.expires_at, m.outbound_queue);
    let (mut sink, mut stream) = ws.split();
    // Boxed: this task lives as long as the connection, and a future awaited in place
    // stays part of its size for good (the spawn through the supervisor is large).
    match Box::pin(node.open_session(conn.clone())).await {
        Ok(_) => {}
        Err(e) => {
            tracing::error!(error = %e, "cannot start a session actor");
            // An actor that starts after all (a start that outlived the wait) sees the
            // connection closed and closes itself.
            conn.close(CLOSE_INTERNAL, "server busy");
            let _ = sink.send(Message::close_with(CLOSE_INTERNAL, "server busy, reconnect later")).await;
            drop(slot);
            closing_handshake(&mut stream, tokio::time::Instant::now() + CLOSE_GRACE).await;
            return;
        }
    }
    let last_seen = Arc::new(AtomicI64::new(crate::now_ms()));
    let frames = Arc::new(tokio::sync::Semaphore::new(FRAMES_IN_FLIGHT));

    let writer = {
        let conn = conn.clone();
        let last_seen = last_seen.clone();
        // The node, not the session's name: an idle socket should hold 8 bytes for a
        // check made every few minutes, not a string.
        let node = node.clone();
        let heartbeat = Duration::from_secs(m.heartbeat_secs);
        let revalidate_ticks = (REVALIDATE_EVERY.as_secs() / m.heartbeat_secs.max(1)).max(1);
        let idle_ms = i64::try_from(m.idle_timeout_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        tokio::spawn(async move {
            let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            let mut ticks: u64 = 0;
            loop {
                tokio::select! {
                    biased;
                    _ = conn.closed.cancelled() => {
                        // Flush what is queued (e.g. the error frame that explains the close).
                        while let Ok(out) = outbound.try_recv() {
                            if sink.send(message_of(out)).await.is_err() { break; }
                        }
                        let (code, reason) = conn.close_reason().unwrap_or((1000, "closed"));
                        let _ = sink.send(Message::close_with(code, reason)).await;
                        break;
                    }
                    next = outbound.recv_async() => match next {
                        Ok(out) => {
                            // Frames queued together (an ack and the sender's own copy, a
                            // burst) leave in one write to the socket, not one each.
                            let mut written = sink.feed(message_of(out)).await;
                            for out in outbound.try_iter().take(WRITE_BATCH) {
                                if written.is_err() {
                                    break;
                                }
                                written = sink.feed(message_of(out)).await;
                            }
                            if written.is_err() || sink.flush().await.is_err() {
                                conn.close(1000, "write failed");
                            }
                        }
                        Err(flume::RecvError::Disconnected) => break,
                    },
                    _ = ping.tick() => {
                        let now = crate::now_ms();
                        if conn.close_if_expired(now) {
                            continue;
                        }
                        ticks += 1;
                        if ticks.is_multiple_of(revalidate_ticks) {
                            // The periodic backstop for a revocation event that never
                            // came (a use of the login), off this task and without the
                            // session actor, which may hibernate.
                            let (node, conn) = (node.clone(), conn.clone());
                            tokio::spawn(async move {
                                let store = &node.ctx.store;
                                if let Ok(false) = store.login_active(conn.login_session, conn.user_id, true).await {
                                    tracing::info!(user = %conn.user_id, conn = %conn.id, "login no longer valid; closing the socket");
                                    conn.close_logged_out();
                                }
                            });
                        }
                        // An idle session may hibernate (it decides).
                        conn.offer_park();
                        if now - last_seen.load(Ordering::Relaxed) > idle_ms {
                            conn.close(CLOSE_POLICY, "heartbeat timeout");
                        } else if sink.send(Message::ping(Vec::<u8>::new())).await.is_err() {
                            conn.close(1000, "write failed");
                        }
                    }
                }
            }
        })
    };

    loop {
        let next = tokio::select! {
            _ = conn.closed.cancelled() => break,
            next = stream.next() => next,
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                if let Some((code, reason)) = violation_close(&e) {
                    conn.close(code, reason);
                }
                break;
            }
            None => break,
        };
        let now = crate::now_ms();
        // A frame after the token's expiry is not served (the heartbeat closes an idle
        // connection at the latest `heartbeat_secs` after it).
        if conn.close_if_expired(now) {
            break;
        }
        last_seen.store(now, Ordering::Relaxed);
        if msg.is_text() {
            let Ok(text) = msg.as_str() else { break };
            // Wait for the session to take a frame off the ones in flight before reading on.
            let permit = tokio::select! {
                _ = conn.closed.cancelled() => break,
                permit = frames.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            if !forward(&node, &conn, SessionMsg::Frame(text.to_owned(), permit)).await {
                break;
            }
        } else if msg.is_binary() {
            conn.push(&ServerFrame::error(ErrorCode::BinaryNotSupported, "send JSON text frames", None));
            if conn.violation(m.max_violations) {
                conn.close(CLOSE_POLICY, "too many invalid frames");
            }
        } else if msg.is_close() {
            break;
        }
    }
    conn.close(1000, "closed");
    if !forward(&node, &conn, SessionMsg::Closed).await {
        // No session to take the connection back (its supervisor gave up): at least no
        // event is routed here any more.
        node.ctx.unregister_connection(&conn);
    }
    // The writer flushes and closes; a client that stopped reading would keep it waiting
    // on a full socket for ever, holding the socket: after the grace period it is dropped.
    let deadline = tokio::time::Instant::now() + CLOSE_GRACE;
    let mut writer = writer;
    if tokio::time::timeout_at(deadline, &mut writer).await.is_err() {
        writer.abort();
        return;
    }
    drop(slot);
    closing_handshake(&mut stream, deadline).await;
}

/// The close code for a frame that broke the protocol, if the socket can still say so
/// (RFC 6455, 7.4.1): 1009 too large (past `messaging.max_frame_bytes`), 1007 text that is
/// not UTF-8, 1002 any other protocol error. An I/O error or a socket already closed gets
/// none: there is nobody to tell.
fn violation_close(e: &salvo::Error) -> Option<(u16, &'static str)> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let salvo::Error::Other(inner) = e else { return None };
    match inner.downcast_ref::<WsError>()? {
        WsError::Capacity(_) => Some((1009, "frame too large")),
        WsError::Utf8(_) => Some((1007, "text is not UTF-8")),
        WsError::Protocol(_) => Some((1002, "protocol error")),
        _ => None,
    }
}

/// The end of the closing handshake, once our close frame is out: reads (and drops) what
/// the client still sends, until its close frame, the end of the stream or `deadline`. A
/// socket dropped with input unread, or written to by the client after the drop (a pong,
/// its close reply), is reset by the kernel, and a client that has to write before it
/// reads on loses our close frame: it sees 1006 instead of the code sent.
async fn closing_handshake<S>(stream: &mut S, deadline: tokio::time::Instant)
where
    S: futures_util::Stream<Item = Result<Message, salvo::Error>> + Unpin,
{
    let _ = tokio::time::timeout_at(deadline, async {
        loop {
            match stream.next().await {
                Some(Ok(msg)) if msg.is_close() => break,
                Some(Ok(_)) => {}
                // Past a protocol error (the rest of an oversized frame, say) nothing more
                // can be read as frames: give the client a moment to read our close frame
                // before the socket goes.
                Some(Err(e)) if violation_close(&e).is_some() => break tokio::time::sleep(CLOSE_LINGER).await,
                // The client is gone (a reset, the end of the stream).
                Some(Err(_)) => break,
                None => break,
            }
        }
    })
    .await;
}

/// Sends to the connection's session (waking it if it hibernates); if its actor is
/// restarting, waits (bounded) for the new one. False if there is none: the connection is
/// then closed.
async fn forward(node: &Node, conn: &Arc<ConnHandle>, msg: SessionMsg) -> bool {
    let mut msg = match conn.send(&node.ctx, msg) {
        Ok(()) => return true,
        Err(NotSent::Restarting(msg)) => msg,
        Err(NotSent::NoSession) => return false,
    };
    let deadline = tokio::time::Instant::now() + REATTACH_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(REATTACH_POLL).await;
        msg = match conn.send(&node.ctx, msg) {
            Ok(()) => return true,
            Err(NotSent::Restarting(msg)) => msg,
            Err(NotSent::NoSession) => return false,
        };
    }
    tracing::warn!(conn = %conn.id, "session actor did not come back; closing the connection");
    conn.close(CLOSE_INTERNAL, "session lost, reconnect");
    false
}
