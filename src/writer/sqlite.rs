//! The committer's SQLite back end: one OS thread that owns a write connection
//! (rusqlite) and runs each group of writes as one `BEGIN IMMEDIATE` transaction of
//! cached prepared statements. The statements are the services' own
//! ([`crate::messaging::sqlite_writes`], [`crate::notify::sqlite_writes`]); this is the
//! thread, the connection, the batching and the checkpoints.
//!
//! Why not sea-orm here: its SQLite driver (sqlx) runs every statement on a worker thread
//! of its own and hands the result back over a channel. A chat message is a dozen
//! statements (permission, resend lookup, insert, seq, delivered marker, notification,
//! counter, ...), so under load most of a node's CPU went to those hand-offs (futex wait
//! and wake) rather than to SQLite (docs/benchmarks.md, issue 17's profile). Here a batch
//! costs one hand-off in and one answer out per write, and each statement is a call into
//! SQLite on this thread, its plan cached: per-row statements, which cost microseconds
//! here, where the sea-orm version ([`super`]'s pool path, still the PostgreSQL one)
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

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, TransactionBehavior};
use switchboard_actors::ports::StoreError;

use super::{DrainOnExit, MAX_BATCH, ReadUpTo, Record, Write};
use crate::messaging::search;
use crate::messaging::sqlite_writes::Messages;
use crate::notify::sqlite_writes::Notifications;

/// Prepared statements kept per connection: the writer's own (appends, edits, receipts,
/// notifications, counters, search indexing) are about 35, and one evicted is prepared
/// again the next time.
const STATEMENT_CACHE: usize = 64;

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
pub(crate) fn run(mut conn: Connection, path: &Path, rx: flume::Receiver<Write>) {
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
    let mut index = SearchIndexing::new();
    let mut known = Known::default();
    loop {
        // Idle with messages to index: wake to index them.
        let first = if index.waiting {
            match rx.recv_timeout(search::INDEX_EVERY) {
                Ok(w) => Some(w),
                Err(flume::RecvTimeoutError::Timeout) => None,
                Err(flume::RecvTimeoutError::Disconnected) => break,
            }
        } else {
            match rx.recv() {
                Ok(w) => Some(w),
                Err(_) => break,
            }
        };
        let Some(first) = first else {
            index.step_alone(&mut conn);
            continue;
        };
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
        let with_index = index.due();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            commit_batch(&mut conn, &mut known, writes, with_index)
        }))
        .is_err()
        {
            tracing::error!("the SQLite writer panicked in a batch; its writes failed");
            known = Known::default();
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

/// When the writer last indexed messages for search, and whether more are waiting.
struct SearchIndexing {
    last: Instant,
    waiting: bool,
}

impl SearchIndexing {
    fn new() -> Self {
        // At start, whatever was stored before (an upgrade, a crash) is indexed once idle.
        Self { last: Instant::now().checked_sub(search::INDEX_EVERY).unwrap_or_else(Instant::now), waiting: true }
    }

    /// Whether the next batch should index too: at most every [`search::INDEX_EVERY`]. A
    /// batch may store messages, so after it some wait to be indexed (a step when idle
    /// finds out).
    fn due(&mut self) -> bool {
        let due = self.last.elapsed() >= search::INDEX_EVERY;
        if due {
            self.last = Instant::now();
        }
        self.waiting = true;
        due
    }

    /// An indexing step in a transaction of its own (the writer is idle).
    fn step_alone(&mut self, conn: &mut Connection) {
        self.last = Instant::now();
        let step = conn.transaction_with_behavior(TransactionBehavior::Immediate).and_then(|txn| {
            let more = search::index_pending(&txn, search::INDEX_IDLE_BYTES)?;
            txn.commit()?;
            Ok(more)
        });
        self.waiting = match step {
            Ok(more) => more,
            Err(e) => {
                tracing::warn!(error = %e, "indexing messages for search failed; trying again later");
                true
            }
        };
    }
}

/// Most entries [`Known`] holds; past it, it starts again empty (a few reads per write,
/// as without it, until it fills again).
const KNOWN_ENTRIES: usize = 200_000;

/// What the writer has read and keeps from batch to batch: conversations, contact rules,
/// names, notifications, read markers, unread counts. Its writes are the only writes of
/// those rows while the database's `data_version` stays the same: the writer keeps the
/// entries current as it writes. Any other connection's commit (the services' pool,
/// another process) changes `data_version`, and the next batch starts with nothing
/// known. A transaction that does not commit forgets everything too, since entries
/// follow its writes.
#[derive(Default)]
pub(crate) struct Known {
    data_version: Option<i64>,
    pub(crate) messages: crate::messaging::sqlite_writes::Known,
    pub(crate) notifications: crate::notify::sqlite_writes::Known,
}

impl Known {
    /// Starts a transaction's use of what is known: forgets it all if another connection
    /// committed since the last one (read inside the transaction, whose write lock keeps
    /// others out until it ends), or if it grew past [`KNOWN_ENTRIES`].
    fn check(&mut self, txn: &Connection) -> rusqlite::Result<()> {
        let version: i64 = txn.prepare_cached("PRAGMA data_version")?.query_row([], |r| r.get(0))?;
        let full = self.messages.len() + self.notifications.len() > KNOWN_ENTRIES;
        if self.data_version != Some(version) || full {
            *self = Known { data_version: Some(version), ..Known::default() };
        }
        Ok(())
    }
}

fn commit_batch(conn: &mut Connection, known: &mut Known, mut batch: Vec<Write>, with_index: bool) {
    // The search index rides along with a batch's commit (no fsync of its own), only on
    // the first try: the one-by-one retries below are for the batch's own writes.
    if with_index {
        match write_in_txn(conn, known, &mut batch, true) {
            Ok(()) => return batch.into_iter().for_each(Write::answer),
            Err(e) if affects_every_write(&e) => {
                let e = unavailable(e);
                return batch.into_iter().for_each(|w| w.fail(e.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "a batch with search indexing failed; without it");
                batch.iter_mut().for_each(Write::forget);
            }
        }
    }
    match write_in_txn(conn, known, &mut batch, false) {
        Ok(()) => batch.into_iter().for_each(Write::answer),
        Err(e) if batch.len() > 1 && !affects_every_write(&e) => {
            // One bad write (say a constraint another process raced) must not fail its
            // neighbours: each alone, one transaction each. (Not for a busy lock, a full
            // disk or an I/O error, which every write would meet again, one by one.)
            tracing::warn!(error = %e, size = batch.len(), "batch commit failed; retrying one by one");
            for mut write in batch {
                write.forget();
                match write_in_txn(conn, known, std::slice::from_mut(&mut write), false) {
                    Ok(()) => write.answer(),
                    Err(e) => write.fail(unavailable(e)),
                }
            }
        }
        Err(e) => {
            let e = unavailable(e);
            for write in batch {
                write.fail(e.clone());
            }
        }
    }
}

/// Performs `writes` in one transaction, in queue order, leaving each one's answer in it.
/// An error aborts the whole transaction; the answers are per write (not found, forbidden,
/// a reused id, or what was stored).
/// What is known ([`Known`]) is forgotten unless the transaction commits.
fn write_in_txn(conn: &mut Connection, known: &mut Known, writes: &mut [Write], index: bool) -> rusqlite::Result<()> {
    let result = try_write_in_txn(conn, known, writes, index);
    if result.is_err() {
        *known = Known::default();
    }
    result
}

fn try_write_in_txn(
    conn: &mut Connection,
    known: &mut Known,
    writes: &mut [Write],
    index: bool,
) -> rusqlite::Result<()> {
    let txn = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    known.check(&txn)?;
    let now = crate::now_ms();
    let mut messages = Messages::new(&txn, now, &mut known.messages);
    let mut notifications = Notifications::new(&txn, now, &mut known.notifications);
    for write in writes.iter_mut() {
        match write {
            Write::Append(j) => {
                let mut result = messages.append(&j.input.message)?;
                if let (Some(keep), Ok(appended)) = (j.input.notify, &mut result) {
                    // One message at a time: here a statement is a call on this thread.
                    if let Some(to) = messages.peer(&appended.message)
                        && let Some(new) = super::inline_notification(appended, to)
                    {
                        let recorded = notifications.record(&[new], keep, &mut |u, c| messages.read_seq(u, c))?;
                        appended.notification = Some(Box::new(recorded.inline(to)));
                    }
                }
                if let (Some(to), Ok(appended)) = (j.input.delivered_to, &mut result)
                    && let Some(raise) = super::delivered_receipt(appended, to)
                {
                    appended.delivered = super::raised_to(messages.raise_receipt(&raise)?, appended);
                }
                j.result = Some(result);
            }
            Write::Receipt(j) => j.result = Some(messages.raise_receipt(&j.input)?),
            Write::Notifications(j) => {
                let Record { news, keep } = &j.input;
                j.result = Some(Ok(notifications.record(news, *keep, &mut |u, c| messages.read_seq(u, c))?));
            }
            Write::ReadNotifications(j) => {
                let ReadUpTo { user, conversation, seq } = j.input;
                j.result = Some(Ok(notifications.read_conversation(user, conversation, seq)?));
            }
            Write::TouchLogin(j) => {
                let t = j.input;
                txn.prepare_cached(
                    "UPDATE login_sessions SET last_seen_at = ?1, expires_at = ?2 \
                     WHERE id = ?3 AND revoked_at IS NULL AND expires_at > ?1",
                )?
                .execute(rusqlite::params![t.now, t.expires_at, t.id.0.as_bytes()])?;
                j.result = Some(Ok(()));
            }
            Write::LastSeen(j) => {
                txn.prepare_cached("UPDATE users SET last_seen_at = ?1 WHERE id = ?2")?
                    .execute(rusqlite::params![j.input.at, j.input.user.0.as_bytes()])?;
                j.result = Some(Ok(()));
            }
        }
    }
    messages.finish()?;
    notifications.finish()?;
    drop((messages, notifications));
    if index {
        search::index_pending(&txn, search::INDEX_BATCH_BYTES)?;
    }
    txn.commit()
}
