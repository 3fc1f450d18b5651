//! The process's one writer for the hot paths: message appends, receipt markers and
//! notifications, group-committed.
//!
//! A single task takes every write waiting in its queue (up to [`MAX_BATCH`]) and commits
//! them in one transaction, then answers each: one fsync covers many writes. Being the
//! only busy writer matters on SQLite: it has one write lock, and a connection that finds
//! it taken waits in SQLite's busy handler, which *sleeps* (1, 2, 5, 10 ms, …) instead of
//! being woken. With messages and notifications written by two tasks, those sleeps were
//! the p99 of message delivery (docs/benchmarks.md); queued here, they never collide.
//! (Separate processes on one SQLite file each have their own committer and still meet
//! the busy handler; past one process, PostgreSQL is the database to use.)
//!
//! If a batch fails as a whole (say one row violates a constraint because another node
//! raced it), its writes are retried one transaction each, so one bad write never fails
//! its neighbours.
//!
//! Where things are: this module is the queue and the batching, on top of the services
//! whose writes it runs. The statements are theirs — [`crate::messaging::chat`] (appends
//! and receipts through sea-orm, the PostgreSQL path) and [`crate::messaging::sqlite_writes`],
//! [`crate::notify::repo`] and [`crate::notify::sqlite_writes`] — and so are the ports the
//! services queue through ([`MessageWrites`], [`NotificationWrites`]), which [`Committer`]
//! implements: the services' code never names the committer, so nothing here is a
//! circle. Each queued write carries the sender of its own answer's type ([`Job`]): an
//! answer of the wrong kind does not compile, where it used to be matched at run time.

mod sqlite;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use switchboard_actors::ports::{Appended, NewMessage, Pending, Receipt, StoreError, Unread};
use tokio::sync::oneshot;

use crate::auth::sessions::{LoginWrites, TouchLogin};
use crate::domain::{ConversationId, UserId};
use crate::messaging::chat::{MessageWrites, RaiseReceipt};
use crate::notify::repo::{NewNotification, NotificationWrites, Recorded};

/// Most writes committed in one transaction. Bounds the time one commit holds the write
/// lock, and the latency of the first write in a full batch.
pub const MAX_BATCH: usize = 256;
/// Writes waiting for the committer before writers wait for room (back-pressure).
const QUEUE: usize = 4096;

/// One queued write: what to write, where its answer goes, and the answer while its
/// transaction is open (sent only after the commit).
pub(crate) struct Job<T, R> {
    input: T,
    reply: oneshot::Sender<Result<R, StoreError>>,
    result: Option<Result<R, StoreError>>,
}

impl<T, R> Job<T, R> {
    fn answer(self) {
        let result = self.result.unwrap_or_else(|| Err(StoreError::Unavailable("write skipped".into())));
        let _ = self.reply.send(result);
    }

    fn fail(self, e: StoreError) {
        let _ = self.reply.send(Err(e));
    }
}

/// An append, and whether its transaction also writes the recipient's message
/// notification (keeping their newest `keep`), as one process running notify beside
/// messaging does: the notification is then as durable as the message, and costs no write
/// of its own.
pub(crate) struct Appending {
    pub(crate) message: NewMessage,
    pub(crate) notify: Option<u64>,
    /// Raise this user's delivered marker to the new message in the same transaction.
    pub(crate) delivered_to: Option<UserId>,
}

/// A run of notifications, deduplicated by event and capped at `keep` per user.
pub(crate) struct Record {
    pub(crate) news: Vec<NewNotification>,
    pub(crate) keep: u64,
}

/// `user` read `conversation` up to `seq`: its message notification is read that far.
pub(crate) struct ReadUpTo {
    pub(crate) user: UserId,
    pub(crate) conversation: ConversationId,
    pub(crate) seq: i64,
}

/// A write the committer performs inside a group transaction, with its typed answer.
#[expect(
    clippy::large_enum_variant,
    reason = "nearly every write on the hot path is an append: boxing it would add an allocation to each message and shrink no queue"
)]
pub(crate) enum Write {
    Append(Job<Appending, Appended>),
    Receipt(Job<RaiseReceipt, Receipt>),
    /// Answered with what was stored and the users' unread counts.
    Notifications(Job<Record, Recorded>),
    /// Answered with the reader's unread counts, if the read marker changed any.
    ReadNotifications(Job<ReadUpTo, Option<Unread>>),
    /// A login used (its expiry slides).
    TouchLogin(Job<TouchLogin, ()>),
    /// A user's last connection closed.
    LastSeen(Job<LastSeen, ()>),
}

/// `user`'s last connection closed `at`.
pub(crate) struct LastSeen {
    pub(crate) user: UserId,
    pub(crate) at: i64,
}

impl Write {
    /// Sends the answer its transaction left (after the commit).
    fn answer(self) {
        match self {
            Write::Append(j) => j.answer(),
            Write::Receipt(j) => j.answer(),
            Write::Notifications(j) => j.answer(),
            Write::ReadNotifications(j) => j.answer(),
            Write::TouchLogin(j) => j.answer(),
            Write::LastSeen(j) => j.answer(),
        }
    }

    /// Answers with `e` (its transaction failed).
    fn fail(self, e: StoreError) {
        match self {
            Write::Append(j) => j.fail(e),
            Write::Receipt(j) => j.fail(e),
            Write::Notifications(j) => j.fail(e),
            Write::ReadNotifications(j) => j.fail(e),
            Write::TouchLogin(j) => j.fail(e),
            Write::LastSeen(j) => j.fail(e),
        }
    }

    /// Forgets the answer of a transaction that rolled back (before a retry).
    fn forget(&mut self) {
        match self {
            Write::Append(j) => j.result = None,
            Write::Receipt(j) => j.result = None,
            Write::Notifications(j) => j.result = None,
            Write::ReadNotifications(j) => j.result = None,
            Write::TouchLogin(j) => j.result = None,
            Write::LastSeen(j) => j.result = None,
        }
    }
}

/// The handle the services write through (as [`MessageWrites`] and
/// [`NotificationWrites`]); clones share one committer.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: flume::Sender<Write>,
}

impl Committer {
    /// Starts the committer for `db`: on a SQLite file, a writer thread with its own
    /// connection ([`sqlite`]); otherwise (PostgreSQL, in-memory SQLite) a task on the
    /// current runtime writing through `db`.
    pub fn start(db: DatabaseConnection) -> Self {
        let (tx, rx) = flume::bounded(QUEUE);
        if let Some(path) = crate::storage::sqlite_file(&db) {
            match sqlite::open(&path, crate::storage::SQLITE_BUSY_TIMEOUT) {
                Ok(conn) => {
                    let spawned = std::thread::Builder::new()
                        .name("sqlite-writer".into())
                        .spawn(move || sqlite::run(conn, &path, rx));
                    match spawned {
                        Ok(_) => return Self { tx },
                        Err(e) => tracing::error!(error = %e, "cannot start the SQLite writer thread"),
                    }
                    // The receiver went with the failed spawn: start over on the runtime.
                    let (tx, rx) = flume::bounded(QUEUE);
                    tokio::spawn(run(db, rx));
                    return Self { tx };
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "SQLite writer unavailable; writing through the pool")
                }
            }
        }
        tokio::spawn(run(db, rx));
        Self { tx }
    }

    /// Queues `input` as the write `kind` makes of it (waiting for room if the queue is
    /// full) and returns the future of its answer, which resolves after the commit. Writes
    /// queued one after another are committed in that order.
    async fn queue<T, R: Send + 'static>(&self, input: T, kind: fn(Job<T, R>) -> Write) -> Pending<R> {
        let (reply, answer) = oneshot::channel();
        let queued = self.tx.send_async(kind(Job { input, reply, result: None })).await.is_ok();
        Box::pin(async move {
            if !queued {
                return Err(StoreError::Unavailable("committer stopped".into()));
            }
            answer.await.map_err(|_| StoreError::Unavailable("committer dropped the request".into()))?
        })
    }
}

#[async_trait::async_trait]
impl MessageWrites for Committer {
    async fn append(
        &self,
        message: NewMessage,
        notify: Option<u64>,
        delivered_to: Option<UserId>,
    ) -> Pending<Appended> {
        self.queue(Appending { message, notify, delivered_to }, Write::Append).await
    }

    async fn raise_receipt(&self, receipt: RaiseReceipt) -> Pending<Receipt> {
        self.queue(receipt, Write::Receipt).await
    }

    async fn record_last_seen(&self, user: UserId, at: i64) -> Pending<()> {
        self.queue(LastSeen { user, at }, Write::LastSeen).await
    }
}

#[async_trait::async_trait]
impl LoginWrites for Committer {
    async fn touch_login(&self, touch: TouchLogin) -> Pending<()> {
        self.queue(touch, Write::TouchLogin).await
    }
}

#[async_trait::async_trait]
impl NotificationWrites for Committer {
    async fn record(&self, news: Vec<NewNotification>, keep: u64) -> Pending<Recorded> {
        self.queue(Record { news, keep }, Write::Notifications).await
    }

    async fn read_conversation(&self, user: UserId, conversation: ConversationId, seq: i64) -> Pending<Option<Unread>> {
        self.queue(ReadUpTo { user, conversation, seq }, Write::ReadNotifications).await
    }
}

fn unavailable(e: DbErr) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Answers every write still queued when the writer ends (every sender gone, or an
/// unwinding panic) with an error: a queued write must never wait for ever. Used by both
/// back ends.
struct DrainOnExit(flume::Receiver<Write>);

impl Drop for DrainOnExit {
    fn drop(&mut self) {
        let stopped = || StoreError::Unavailable("the committer stopped".into());
        let rx = self.0.clone();
        let answer = move || {
            // Until every sender is gone (at once when the committer ended normally): a write
            // queued after this point, or by a sender that was waiting for room, is answered
            // too, instead of sitting in a queue nobody reads.
            for write in rx.iter() {
                write.fail(stopped());
            }
        };
        if !self.0.is_disconnected() && std::thread::Builder::new().name("committer-gone".into()).spawn(answer).is_err()
        {
            for write in self.0.drain() {
                write.fail(stopped());
            }
        }
    }
}

/// The pool-backed committer (PostgreSQL, in-memory SQLite), through sea-orm: takes what
/// is queued, without a window; in each batch, appends, then receipts, then notifications.
async fn run(db: DatabaseConnection, rx: flume::Receiver<Write>) {
    let _drain = DrainOnExit(rx.clone());
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv_async().await {
        batch.push(first);
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        // A panic (a bug) fails its batch, whose callers see their reply dropped, and the
        // committer goes on (the transaction rolls back when dropped).
        let committed = std::panic::AssertUnwindSafe(commit_batch(&db, std::mem::take(&mut batch)));
        if futures_util::FutureExt::catch_unwind(committed).await.is_err() {
            tracing::error!("the committer panicked in a batch; its writes failed");
        }
    }
}

async fn commit_batch(db: &DatabaseConnection, mut batch: Vec<Write>) {
    match write_in_txn(db, &mut batch).await {
        Ok(()) => batch.into_iter().for_each(Write::answer),
        Err(e) if batch.len() > 1 && !crate::storage::affects_every_write(&e) => {
            tracing::warn!(error = %e, size = batch.len(), "batch commit failed; retrying one by one");
            for mut write in batch {
                write.forget();
                match write_in_txn(db, std::slice::from_mut(&mut write)).await {
                    Ok(()) => write.answer(),
                    Err(e) => write.fail(unavailable(e)),
                }
            }
        }
        Err(e) => {
            for write in batch {
                write.fail(unavailable(e.clone()));
            }
        }
    }
}

/// Performs `writes` in one transaction, leaving each one's answer in it. An error aborts
/// the whole transaction; the answers are per write (not found, forbidden, a reused id, or
/// what was stored).
async fn write_in_txn(db: &DatabaseConnection, writes: &mut [Write]) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    if txn.get_database_backend() == DbBackend::Sqlite {
        // Take the write lock first (what BEGIN IMMEDIATE would do): a deferred
        // transaction that reads before it writes cannot wait for the lock and fails with
        // SQLITE_BUSY when another connection wrote meanwhile; this one waits its turn.
        txn.execute_unprepared("UPDATE conversations SET last_seq = last_seq WHERE 0").await?;
    }
    let now = crate::now_ms();
    // Appends first (a receipt in the same batch may count one of them), then every
    // receipt at once (two statements for the batch), then notifications in queue order,
    // then the appends' own notifications.
    let appends: Vec<&NewMessage> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Append(j) => Some(&j.input.message),
            _ => None,
        })
        .collect();
    let appended = crate::messaging::chat::append_all(&txn, &appends, now).await?;
    // The appends' own delivered markers ride with the batch's receipts, after them.
    let delivered: Vec<Option<RaiseReceipt>> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Append(j) => Some(j.input.delivered_to),
            _ => None,
        })
        .zip(&appended)
        .map(|(to, a)| match (to, a) {
            (Some(to), Ok(a)) => delivered_receipt(a, to),
            _ => None,
        })
        .collect();
    let mut receipts: Vec<&RaiseReceipt> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Receipt(j) => Some(&j.input),
            _ => None,
        })
        .collect();
    let queued = receipts.len();
    receipts.extend(delivered.iter().flatten());
    let mut raised = crate::messaging::chat::raise_receipts(&txn, &receipts, now).await?;
    let mut raised_delivered = raised.split_off(queued).into_iter();
    let mut raised = raised.into_iter();
    let mut appended = appended.into_iter().zip(delivered);
    for write in writes.iter_mut() {
        match write {
            Write::Append(j) => {
                j.result = appended.next().map(|(mut a, delivered)| {
                    if let (Ok(a), Some(_)) = (&mut a, delivered) {
                        a.delivered = raised_delivered.next().and_then(|r| raised_to(r, a));
                    }
                    a
                })
            }
            Write::Receipt(j) => j.result = raised.next(),
            Write::Notifications(j) => {
                let Record { news, keep } = &j.input;
                j.result = Some(Ok(crate::notify::repo::record_in_txn(&txn, news, *keep, now).await?));
            }
            Write::ReadNotifications(j) => {
                let ReadUpTo { user, conversation, seq } = j.input;
                let unread = crate::notify::repo::read_conversation_in_txn(&txn, user, conversation, seq, now).await?;
                j.result = Some(Ok(unread));
            }
            Write::TouchLogin(j) => {
                crate::auth::sessions::touch_login_in(&txn, j.input).await?;
                j.result = Some(Ok(()));
            }
            Write::LastSeen(j) => {
                crate::messaging::chat::record_last_seen_in(&txn, j.input.user, j.input.at).await?;
                j.result = Some(Ok(()));
            }
        }
    }
    // Last, so the counts they carry are the transaction's final ones (after the batch's
    // read markers and notification writes), and `bump` sees the read markers raised.
    record_inline(&txn, writes, now).await?;
    txn.commit().await?;
    Ok(())
}

/// The delivered marker an append raises with its message for `to`
/// ([`Appending::delivered_to`]): none for a resend (its first append was delivered, or
/// not, then) or for the sender.
fn delivered_receipt(appended: &Appended, to: UserId) -> Option<RaiseReceipt> {
    let m = &appended.message;
    (!appended.duplicate && m.sender_id != to).then_some(RaiseReceipt {
        conversation: m.conversation_id,
        user: to,
        delivered: Some(m.seq),
        read: None,
    })
}

/// The receipt that raise left, when it covers the message (a later message of the same
/// batch may have raised it further: PostgreSQL merges a batch's raises of one receipt).
fn raised_to(raised: Result<Receipt, StoreError>, appended: &Appended) -> Option<Receipt> {
    raised.ok().filter(|r| r.delivered_seq >= appended.message.seq)
}

/// The recipient's notification of a message just stored (its append's own, in the same
/// transaction), if it makes one: none for a resend (its first append made it), for an
/// edit or deletion, or without a recipient.
fn inline_notification(appended: &Appended, to: UserId) -> Option<NewNotification> {
    if appended.duplicate {
        return None;
    }
    let message = &appended.message;
    crate::notify::message_notification(message.id.0, to, message)
}

/// Records the inline notifications of a batch's appends (those queued with `notify`)
/// together, in one `record_in_txn` (a fixed number of statements however many: one
/// call per append would be that many round trips inside the transaction). Each such
/// append gets the recipient's counts after the batch; the notification view goes with
/// the batch's last message of its (recipient, conversation), which it stands for.
async fn record_inline(txn: &sea_orm::DatabaseTransaction, writes: &mut [Write], now: i64) -> Result<(), DbErr> {
    let mut peers = Peers::default();
    let mut news = Vec::new();
    let mut keep = None;
    let mut appended: Vec<&mut Appended> = writes
        .iter_mut()
        .filter_map(|w| match w {
            Write::Append(Job { input: Appending { notify: Some(notify), .. }, result: Some(Ok(a)), .. }) => {
                keep = Some(keep.map_or(*notify, |k: u64| k.min(*notify)));
                Some(a)
            }
            _ => None,
        })
        .collect();
    for (i, a) in appended.iter().enumerate() {
        let Some(to) = peers.of(txn, a).await? else { continue };
        if let Some(new) = inline_notification(a, to) {
            news.push((i, to, new));
        }
    }
    let Some(keep) = keep.filter(|_| !news.is_empty()) else { return Ok(()) };
    let only: Vec<NewNotification> = news.iter().map(|(_, _, new)| new.clone()).collect();
    let mut recorded = crate::notify::repo::record_in_txn(txn, &only, keep, now).await?;
    for (i, to, new) in news.into_iter().rev() {
        let view = recorded
            .stored
            .iter()
            .position(|(user, view)| *user == to && view.conversation_id == new.conversation_id)
            .map(|at| recorded.stored.remove(at).1);
        let unread = recorded.unread.get(&to).cloned().unwrap_or_default();
        if let Some(a) = appended.get_mut(i) {
            a.notification = Some(Box::new(switchboard_actors::ports::InlineNotification { to, view, unread }));
        }
    }
    Ok(())
}

/// The other participant of each conversation a batch appended to (sea-orm: read once
/// per conversation and batch).
#[derive(Default)]
struct Peers(std::collections::HashMap<ConversationId, Option<[UserId; 2]>>);

impl Peers {
    async fn of(&mut self, txn: &sea_orm::DatabaseTransaction, appended: &Appended) -> Result<Option<UserId>, DbErr> {
        use sea_orm::EntityTrait;
        let m = &appended.message;
        let pair = match self.0.entry(m.conversation_id) {
            std::collections::hash_map::Entry::Occupied(known) => *known.get(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                let found =
                    crate::storage::entities::conversation::Entity::find_by_id(m.conversation_id.0).one(txn).await?;
                *slot.insert(found.map(|c| [UserId(c.user_low), UserId(c.user_high)]))
            }
        };
        Ok(pair.and_then(|pair| pair.into_iter().find(|u| *u != m.sender_id)))
    }
}
