//! The committer's SQLite back end: one OS thread that owns a write connection
//! (rusqlite) and runs each group of writes as one `BEGIN IMMEDIATE` transaction of
//! cached prepared statements.
//!
//! Why not sea-orm here: its SQLite driver (sqlx) runs every statement on a worker thread
//! of its own and hands the result back over a channel. A chat message is a dozen
//! statements (permission, resend lookup, insert, seq, delivered marker, notification,
//! counter, ...), so under load most of a node's CPU went to those hand-offs (futex wait
//! and wake) rather than to SQLite (docs/benchmarks.md, issue 17's profile). Here a batch
//! costs one hand-off in and one answer out per write, and each statement is a call into
//! SQLite on this thread, its plan cached: per-row statements, which cost microseconds
//! here, where the sea-orm version ([`crate::storage::committer`], still the PostgreSQL path)
//! batches rows into few statements to save round trips. Both store the same rows; the
//! answers differ only in that the PostgreSQL path answers every receipt write of a batch
//! with the receipt as the whole batch leaves it.
//!
//! The write lock is taken first (`BEGIN IMMEDIATE`), so the reads of a batch (the
//! conversation's `last_seq`, the contact rules, resends) see what its writes build on,
//! also when other processes write the same file. Writes are applied in queue order and
//! share the batch's view of each conversation, so a receipt after an append in the same
//! batch counts that append. (The PostgreSQL path runs a batch's appends before its
//! receipts, so there a receipt queued just before an append may be capped one higher;
//! a client reports only seqs it was sent, which are committed, so neither caps them.)

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use switchboard_actors::ports::{Appended, NewMessage, NotificationView, Receipt, StoreError, StoredMessage, Unread};
use switchboard_actors::states::{ContactState, MessageKind};
use uuid::Uuid;

use crate::domain::{ConversationId, FileId, MessageId, UserId};
use crate::notify::repo::{Change, NewNotification, Recorded, Stored, add_unread, after_read, bump, changes};
use crate::storage::committer::{MAX_BATCH, Reply, Write, Written};

/// Prepared statements kept per connection (the writer uses a dozen).
const STATEMENT_CACHE: usize = 32;

/// Shortest time between the starts of two commits. Each commit is a WAL write and an
/// fsync, whose CPU (mostly in the kernel) was most of the writer's when every write
/// committed alone; a message makes three writes (the append, the recipient's delivered
/// marker, the notification) at different moments. At most this much is added to an ack's
/// latency, and only when the previous commit was this recent. At 1,000 msg/s, 2 / 3 / 4 /
/// 5 ms cost 0.235 / 0.199 / 0.182 / 0.165 ms of CPU per message with p99 latency 4.7 /
/// 6.0 / 7.1 / 7.6 ms (docs/benchmarks.md): 4 ms keeps p99 well inside 10 ms.
const GROUP_WINDOW: Duration = Duration::from_millis(4);

/// Opens the write connection on the database file `path` (created and migrated by the
/// pool already), with the pool's settings: WAL (a property of the file),
/// `synchronous=FULL`, the busy timeout, foreign keys.
pub(crate) fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// The writer thread's loop: waits for a write, takes whatever else is queued (up to
/// [`MAX_BATCH`]), commits them together, answers each. Ends when every sender is gone.
///
/// Commits start at most one per [`GROUP_WINDOW`]: a write that arrives sooner after the
/// last commit began waits for the rest of the window, with what else arrives meanwhile.
/// An idle writer commits at once; a busy one puts many writes under one fsync.
pub(crate) fn run(mut conn: Connection, path: &Path, rx: flume::Receiver<(Write, Reply)>) {
    let _drain = DrainOnExit(rx.clone());
    // Checkpoints run beside the writer; the writer's own (in a commit) only as the
    // backstop that restarts the log (see [`BACKSTOP_PAGES`]).
    let _checkpoints = match start_checkpointer(path) {
        Ok(running) => {
            if let Err(e) = conn.pragma_update(None, "wal_autocheckpoint", BACKSTOP_PAGES) {
                tracing::warn!(error = %e, "cannot hand checkpoints to their thread");
            }
            Some(running)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no checkpoint thread; the writer checkpoints in its commits");
            None
        }
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut last_commit: Option<Instant> = None;
    while let Ok(first) = rx.recv() {
        batch.push(first);
        // Sleep out the window rather than wait on the queue: a waiting receiver is woken
        // (a futex call on each side) by every write that arrives, a sleeping one is not.
        let window_left =
            last_commit.map_or(Duration::ZERO, |t| (t + GROUP_WINDOW).saturating_duration_since(Instant::now()));
        if !window_left.is_zero() && rx.len() < MAX_BATCH - 1 {
            std::thread::sleep(window_left);
        }
        batch.extend(rx.try_iter().take(MAX_BATCH - 1));
        last_commit = Some(Instant::now());
        let writes = std::mem::take(&mut batch);
        // A panic (a bug) fails its batch, whose callers see their reply dropped, and the
        // writer goes on: the transaction was rolled back when it unwound.
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| commit_batch(&mut conn, writes))).is_err() {
            tracing::error!("the SQLite writer panicked in a batch; its writes failed");
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
        }
    }
}

/// How often the checkpoint thread copies the WAL into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// WAL pages after which the writer checkpoints inside a commit, as SQLite does by default
/// every 1,000. A checkpoint beside a busy writer copies the log only up to where it stood
/// when it began, and SQLite restarts the log from its beginning only when a write begins
/// after a checkpoint copied *all* of it: under steady writes the thread's checkpoints
/// alone never get there and the log grows without end. This one runs between the
/// writer's own writes, so it completes and the next commit restarts the log; the thread
/// has copied most pages by then, so it is short. (`journal_size_limit` then truncates the
/// file back.)
const BACKSTOP_PAGES: i64 = 2_000;

/// Bytes the WAL file is truncated back to when the log restarts: a little over the
/// backstop's 8 MiB, so a steady log reuses its file (growing a file costs more than
/// overwriting it) and only a log that grew past it, behind a long reader, shrinks.
const WAL_SIZE_LIMIT: i64 = 12 * 1024 * 1024;

/// Starts the checkpoint thread: every [`CHECKPOINT_EVERY`], a `PASSIVE` checkpoint from a
/// connection of its own, which copies committed WAL pages into the database file and
/// fsyncs it while the writer goes on committing (WAL allows both at once). In a commit,
/// as SQLite does by default every 1,000 pages, all of that copy and fsync held up every
/// write queued behind it. The thread ends when the returned sender is dropped (the
/// writer ends). A failing checkpoint is logged once until one succeeds again; the
/// writer's backstop keeps the log bounded meanwhile.
fn start_checkpointer(path: &Path) -> std::io::Result<std::sync::mpsc::Sender<()>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(std::io::Error::other)?;
    conn.busy_timeout(crate::storage::SQLITE_BUSY_TIMEOUT).map_err(std::io::Error::other)?;
    let (alive, ended) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new().name("sqlite-checkpoint".into()).spawn(move || {
        let mut failing = false;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = ended.recv_timeout(CHECKPOINT_EVERY) {
            match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                Ok(()) => failing = false,
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "WAL checkpoint failed; the writer's backstop checkpoints meanwhile");
                }
                Err(_) => {}
            }
        }
    })?;
    Ok(alive)
}

/// Answers every write still queued when the writer ends (every sender gone, or an
/// unwinding panic) with an error: a queued write must never wait for ever. Shared with the
/// pool-backed committer.
pub(crate) struct DrainOnExit(pub(crate) flume::Receiver<(Write, Reply)>);

impl Drop for DrainOnExit {
    fn drop(&mut self) {
        let rx = self.0.clone();
        let answer = move || {
            // Until every sender is gone (at once when the committer ended normally): a write
            // queued after this point, or by a sender that was waiting for room, is answered
            // too, instead of sitting in a queue nobody reads.
            for (_, reply) in rx.iter() {
                let _ = reply.send(Err(StoreError::Unavailable("the committer stopped".into())));
            }
        };
        if !self.0.is_disconnected() && std::thread::Builder::new().name("committer-gone".into()).spawn(answer).is_err()
        {
            for (_, reply) in self.0.drain() {
                let _ = reply.send(Err(StoreError::Unavailable("the committer stopped".into())));
            }
        }
    }
}

/// Whether `e` is about the database rather than one write (busy, locked, full, I/O, read
/// only): retrying the batch's writes one by one would meet it again for each.
fn affects_every_write(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode::*;
    matches!(
        e.sqlite_error_code(),
        Some(
            DatabaseBusy
                | DatabaseLocked
                | DiskFull
                | SystemIoFailure
                | CannotOpen
                | ReadOnly
                | OutOfMemory
                | NotADatabase
                | DatabaseCorrupt
        )
    )
}

fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn commit_batch(conn: &mut Connection, batch: Vec<(Write, Reply)>) {
    let writes: Vec<&Write> = batch.iter().map(|(w, _)| w).collect();
    match write_in_txn(conn, &writes) {
        Ok(results) => {
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) if batch.len() > 1 && !affects_every_write(&e) => {
            // One bad write (say a constraint another process raced) must not fail its
            // neighbours: each alone, one transaction each. (Not for a busy lock, a full
            // disk or an I/O error, which every write would meet again, one by one.)
            tracing::warn!(error = %e, size = batch.len(), "batch commit failed; retrying one by one");
            for (write, reply) in batch {
                let result = match write_in_txn(conn, &[&write]) {
                    Ok(mut r) => r.pop().unwrap_or_else(|| Err(StoreError::Unavailable("empty result".into()))),
                    Err(e) => Err(unavailable(e)),
                };
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            let e = unavailable(e);
            for (_, reply) in batch {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Performs `writes` in one transaction. The outer error aborts the whole transaction; the
/// inner results are per write (not found, forbidden, a reused id, or what was stored).
fn write_in_txn(conn: &mut Connection, writes: &[&Write]) -> rusqlite::Result<Vec<Result<Written, StoreError>>> {
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut batch = Batch {
        db: &txn,
        now: crate::now_ms(),
        conversations: HashMap::new(),
        allowed: HashMap::new(),
        names: HashMap::new(),
    };
    let mut results = Vec::with_capacity(writes.len());
    for w in writes {
        results.push(match w {
            Write::Append(m) => batch.append(m)?.map(Written::Appended),
            Write::Receipt { conversation, user, delivered, read } => {
                batch.raise_receipt(*conversation, *user, *delivered, *read)?.map(Written::Receipt)
            }
            Write::Notifications { news, keep } => Ok(Written::Notifications(batch.notifications(news, *keep)?)),
            Write::ReadNotifications { user, conversation, seq } => {
                Ok(Written::Read(batch.read_notifications(*user, *conversation, *seq)?))
            }
        });
    }
    batch.save_conversations()?;
    drop(batch);
    txn.commit()?;
    Ok(results)
}

/// A conversation as the batch sees it: its participants and its counter, raised by the
/// batch's appends and written back once before the commit.
struct Conversation {
    low: Uuid,
    high: Uuid,
    last_seq: i64,
    raised: bool,
}

impl Conversation {
    fn has(&self, user: Uuid) -> bool {
        self.low == user || self.high == user
    }
}

/// One transaction's state: what it read (conversations, contact rules) so each is read
/// once per batch.
struct Batch<'a> {
    db: &'a Connection,
    now: i64,
    conversations: HashMap<Uuid, Option<Conversation>>,
    allowed: HashMap<(Uuid, Uuid), bool>,
    /// Username and display name by user id (`None`: no such user).
    names: HashMap<Uuid, Option<(String, String)>>,
}

fn uuid_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Uuid> {
    let blob = row.get_ref(i)?.as_blob()?;
    Uuid::from_slice(blob)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Blob, e.into()))
}

/// A state or kind at column `i`, as its enum (a value none of its variants is an error).
fn text_at<T>(row: &rusqlite::Row<'_>, i: usize, parse: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text = row.get_ref(i)?.as_str()?;
    parse(text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("{text:?} is none of the column's values").into(),
        )
    })
}

fn opt_uuid_at(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<Uuid>> {
    match row.get_ref(i)? {
        rusqlite::types::ValueRef::Null => Ok(None),
        _ => uuid_at(row, i).map(Some),
    }
}

const NOT_FOUND: StoreError = StoreError::NotFound;
const REUSED_ID: &str = "client_msg_id was already used for another conversation";

impl Batch<'_> {
    fn conversation(&mut self, id: Uuid) -> rusqlite::Result<Option<&mut Conversation>> {
        if !self.conversations.contains_key(&id) {
            let found = self
                .db
                .prepare_cached("SELECT user_low, user_high, last_seq FROM conversations WHERE id = ?1")?
                .query_row(params![id.as_bytes()], |r| {
                    Ok(Conversation { low: uuid_at(r, 0)?, high: uuid_at(r, 1)?, last_seq: r.get(2)?, raised: false })
                })
                .optional()?;
            self.conversations.insert(id, found);
        }
        Ok(self.conversations.get_mut(&id).and_then(Option::as_mut))
    }

    /// The one messaging rule ([`crate::contacts::repo::messageable_pairs`]): an accepted contact
    /// and no block either way.
    fn may_message(&mut self, low: Uuid, high: Uuid) -> rusqlite::Result<bool> {
        if let Some(&ok) = self.allowed.get(&(low, high)) {
            return Ok(ok);
        }
        let ok = self
            .db
            .prepare_cached(
                "SELECT 1 FROM contacts c WHERE c.user_low = ?1 AND c.user_high = ?2 AND c.state = ?3 \
                 AND NOT EXISTS (SELECT 1 FROM blocks b WHERE (b.blocker_id = ?1 AND b.blocked_id = ?2) \
                 OR (b.blocker_id = ?2 AND b.blocked_id = ?1))",
            )?
            .exists(params![low.as_bytes(), high.as_bytes(), ContactState::Accepted.as_str()])?;
        self.allowed.insert((low, high), ok);
        Ok(ok)
    }

    /// Appends `m`, or answers a resend with the stored original (one stored by an earlier
    /// write of this batch included: the transaction sees its own rows).
    fn append(&mut self, m: &NewMessage) -> rusqlite::Result<Result<Appended, StoreError>> {
        let (conversation, sender) = (m.conversation_id.0, m.sender_id.0);
        let (low, high) = match self.conversation(conversation)? {
            Some(c) if c.has(sender) => (c.low, c.high),
            _ => return Ok(Err(NOT_FOUND)),
        };
        if !self.may_message(low, high)? {
            return Ok(Err(StoreError::Forbidden(crate::contacts::repo::NOT_A_CONTACT)));
        }
        if let Some(old) = self.stored_message(sender, &m.client_msg_id)? {
            return Ok(if old.conversation_id != m.conversation_id {
                Err(StoreError::Forbidden(REUSED_ID))
            } else {
                Ok(Appended { message: old, duplicate: true })
            });
        }
        let Some(c) = self.conversation(conversation)? else { return Ok(Err(NOT_FOUND)) };
        c.last_seq += 1;
        c.raised = true;
        let message = StoredMessage {
            id: MessageId::new(),
            conversation_id: m.conversation_id,
            seq: c.last_seq,
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id.clone(),
            kind: m.kind,
            body: m.body.clone(),
            file_id: m.file_id,
            created_at: self.now,
        };
        self.db
            .prepare_cached(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, kind, body, file_id, \
                 created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                message.id.0.as_bytes(),
                conversation.as_bytes(),
                message.seq,
                sender.as_bytes(),
                message.client_msg_id,
                message.kind.as_str(),
                message.body,
                message.file_id.map(|f| *f.0.as_bytes()),
                message.created_at,
            ])?;
        Ok(Ok(Appended { message, duplicate: false }))
    }

    /// The message `sender` stored with `client_msg_id`, if any (a resend).
    fn stored_message(&self, sender: Uuid, client_msg_id: &str) -> rusqlite::Result<Option<StoredMessage>> {
        self.db
            .prepare_cached(
                "SELECT id, conversation_id, seq, kind, body, file_id, created_at FROM messages \
                 WHERE sender_id = ?1 AND client_msg_id = ?2",
            )?
            .query_row(params![sender.as_bytes(), client_msg_id], |r| {
                Ok(StoredMessage {
                    id: MessageId(uuid_at(r, 0)?),
                    conversation_id: ConversationId(uuid_at(r, 1)?),
                    seq: r.get(2)?,
                    sender_id: UserId(sender),
                    client_msg_id: client_msg_id.to_owned(),
                    kind: text_at(r, 3, MessageKind::parse)?,
                    body: r.get(4)?,
                    file_id: opt_uuid_at(r, 5)?.map(FileId),
                    created_at: r.get(6)?,
                })
            })
            .optional()
    }

    /// Writes back the counters the batch's appends raised.
    fn save_conversations(&self) -> rusqlite::Result<()> {
        for (id, c) in &self.conversations {
            if let Some(c) = c.as_ref().filter(|c| c.raised) {
                self.db
                    .prepare_cached("UPDATE conversations SET last_seq = ?1, updated_at = ?2 WHERE id = ?3")?
                    .execute(params![c.last_seq, self.now, id.as_bytes()])?;
            }
        }
        Ok(())
    }

    /// Raises a user's markers (never lowers them; read implies delivered; both capped at
    /// the last seq, counting this batch's appends).
    fn raise_receipt(
        &mut self,
        conversation: ConversationId,
        user: UserId,
        delivered: Option<i64>,
        read: Option<i64>,
    ) -> rusqlite::Result<Result<Receipt, StoreError>> {
        let last = match self.conversation(conversation.0)? {
            Some(c) if c.has(user.0) => c.last_seq,
            _ => return Ok(Err(NOT_FOUND)),
        };
        let read = read.map_or(0, |s| s.clamp(0, last));
        let delivered = delivered.map_or(0, |s| s.clamp(0, last)).max(read);
        let (delivered_seq, read_seq) = self
            .db
            .prepare_cached(
                "INSERT INTO receipts (conversation_id, user_id, delivered_seq, read_seq, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (conversation_id, user_id) DO UPDATE SET \
                 updated_at = CASE WHEN excluded.delivered_seq > delivered_seq OR excluded.read_seq > read_seq \
                 THEN excluded.updated_at ELSE updated_at END, \
                 delivered_seq = MAX(delivered_seq, excluded.delivered_seq), \
                 read_seq = MAX(read_seq, excluded.read_seq) \
                 RETURNING delivered_seq, read_seq",
            )?
            .query_row(params![conversation.0.as_bytes(), user.0.as_bytes(), delivered, read, self.now], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        Ok(Ok(Receipt { conversation_id: conversation, user_id: user, delivered_seq, read_seq }))
    }

    /// Stores `news` as [`crate::notify::repo::NotificationRepo::record_batch`] says: a
    /// contact notification per (user, event), one update per (user, conversation) of its
    /// message notification; numbers each change; deletes each user's notifications
    /// older than their newest `keep` numbers. Returns what was changed and kept, and the
    /// unread counts of each user who got one.
    fn notifications(&mut self, news: &[NewNotification], keep: u64) -> rusqlite::Result<Recorded> {
        let keep = keep as i64;
        let mut last_n: HashMap<Uuid, i64> = HashMap::new();
        let mut stored = Vec::with_capacity(news.len());
        for change in changes(news) {
            let (new, existing, count) = match change {
                Change::Single(new) => {
                    let before = self
                        .db
                        .prepare_cached("SELECT 1 FROM notifications WHERE user_id = ?1 AND event_id = ?2")?
                        .exists(params![new.user.0.as_bytes(), new.event_id.as_bytes()])?;
                    if before {
                        continue;
                    }
                    (new, None, 1)
                }
                Change::Conversation { user, conversation, news } => {
                    let (existing, current) = match self.message_notification(user, conversation)? {
                        Some((id, s)) => (Some(id), Some(s)),
                        None => (None, None),
                    };
                    let read_seq: i64 = self
                        .db
                        .prepare_cached("SELECT read_seq FROM receipts WHERE conversation_id = ?1 AND user_id = ?2")?
                        .query_row(params![conversation.0.as_bytes(), user.0.as_bytes()], |r| r.get(0))
                        .optional()?
                        .unwrap_or(0);
                    let Some(b) = bump(current, read_seq, &news) else { continue };
                    (b.newest, existing, b.count)
                }
            };
            let user = new.user.0;
            let n: i64 = self
                .db
                .prepare_cached(
                    "INSERT INTO notification_counters (user_id, last_n) VALUES (?1, 1) \
                     ON CONFLICT (user_id) DO UPDATE SET last_n = last_n + 1 RETURNING last_n",
                )?
                .query_row(params![user.as_bytes()], |r| r.get(0))?;
            last_n.insert(user, n);
            let names = match new.from {
                Some((from, _)) => self.names(from.0)?,
                None => None,
            };
            let payload = new.payload_named(names.map(|(u, d)| (u.as_str(), d.as_str())));
            let view = NotificationView {
                id: existing.unwrap_or_else(Uuid::now_v7),
                n,
                kind: new.kind,
                conversation_id: new.conversation_id,
                seq: new.seq,
                payload,
                read: count == 0,
                count,
                created_at: self.now,
            };
            let read_at = view.read.then_some(self.now);
            if existing.is_some() {
                self.db
                    .prepare_cached(
                        "UPDATE notifications SET n = ?1, seq = ?2, payload = ?3, read_at = ?4, count = ?5, \
                         created_at = ?6 WHERE id = ?7",
                    )?
                    .execute(params![
                        n,
                        view.seq,
                        view.payload.to_string(),
                        read_at,
                        count,
                        view.created_at,
                        view.id.as_bytes()
                    ])?;
            } else {
                self.db
                    .prepare_cached(
                        "INSERT INTO notifications (id, user_id, n, event_id, kind, conversation_id, seq, payload, \
                         read_at, count, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    )?
                    .execute(params![
                        view.id.as_bytes(),
                        user.as_bytes(),
                        n,
                        new.event_id.as_bytes(),
                        view.kind.as_str(),
                        view.conversation_id.map(|c| *c.0.as_bytes()),
                        view.seq,
                        view.payload.to_string(),
                        read_at,
                        count,
                        view.created_at,
                    ])?;
            }
            stored.push((new.user, view));
        }
        let mut unread = HashMap::with_capacity(last_n.len());
        for (user, last) in &last_n {
            if *last > keep {
                self.db
                    .prepare_cached("DELETE FROM notifications WHERE user_id = ?1 AND n <= ?2")?
                    .execute(params![user.as_bytes(), last - keep])?;
            }
            unread.insert(UserId(*user), self.unread(*user)?);
        }
        stored.retain(|(user, view)| last_n.get(&user.0).is_some_and(|l| view.n > l - keep));
        Ok(Recorded { stored, unread })
    }

    /// `user`'s message notification of `conversation`, if any: its id and what it stands for.
    fn message_notification(
        &self,
        user: UserId,
        conversation: ConversationId,
    ) -> rusqlite::Result<Option<(Uuid, Stored)>> {
        // The literal kind lets SQLite use the partial index on (user, conversation); it is
        // `NotificationKind::Message`'s text, as in the index's definition (migration
        // m20261206_000004); a drift would find no row and break the unique index, which
        // the storage tests of notifications catch.
        self.db
            .prepare_cached(
                "SELECT id, seq, count, read_at IS NOT NULL FROM notifications \
                 WHERE user_id = ?1 AND conversation_id = ?2 AND kind = 'message'",
            )?
            .query_row(params![user.0.as_bytes(), conversation.0.as_bytes()], |r| {
                let seq: Option<i64> = r.get(1)?;
                Ok((uuid_at(r, 0)?, Stored { seq: seq.unwrap_or(0), count: r.get(2)?, read: r.get(3)? }))
            })
            .optional()
    }

    /// A user's username and display name (`None`: no such user), once per batch.
    fn names(&mut self, user: Uuid) -> rusqlite::Result<Option<&(String, String)>> {
        if !self.names.contains_key(&user) {
            let found = self
                .db
                .prepare_cached("SELECT username, display_name FROM users WHERE id = ?1")?
                .query_row(params![user.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            self.names.insert(user, found);
        }
        Ok(self.names.get(&user).and_then(Option::as_ref))
    }

    /// A user's unread counts, per conversation and in all.
    fn unread(&self, user: Uuid) -> rusqlite::Result<Unread> {
        let mut unread = Unread::default();
        let mut counts = self.db.prepare_cached(
            "SELECT conversation_id, SUM(count) FROM notifications WHERE user_id = ?1 AND read_at IS NULL \
             GROUP BY conversation_id",
        )?;
        let mut rows = counts.query(params![user.as_bytes()])?;
        while let Some(r) = rows.next()? {
            add_unread(&mut unread, opt_uuid_at(r, 0)?.map(ConversationId), r.get(1)?);
        }
        Ok(unread)
    }

    /// Counts `user`'s messages of `conversation` up to `seq` read in its notification
    /// (what is left: the messages after `seq`); the user's unread counts after it, if
    /// that changed it.
    fn read_notifications(
        &mut self,
        user: UserId,
        conversation: ConversationId,
        seq: i64,
    ) -> rusqlite::Result<Option<Unread>> {
        let Some((id, stored)) = self.message_notification(user, conversation)? else { return Ok(None) };
        let Some(count) = after_read(stored, seq) else { return Ok(None) };
        self.db.prepare_cached("UPDATE notifications SET count = ?1, read_at = ?2 WHERE id = ?3")?.execute(params![
            count,
            (count == 0).then_some(self.now),
            id.as_bytes()
        ])?;
        self.unread(user.0).map(Some)
    }
}
