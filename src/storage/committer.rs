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

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use switchboard_actors::ports::{Appended, NewMessage, Receipt, StoreError, Unread};
use tokio::sync::oneshot;

use crate::domain::{ConversationId, UserId};
use crate::notify::repo::{NewNotification, Recorded};

/// Most writes committed in one transaction. Bounds the time one commit holds the write
/// lock, and the latency of the first write in a full batch.
pub const MAX_BATCH: usize = 256;
/// Writes waiting for the committer before writers wait for room (back-pressure).
const QUEUE: usize = 4096;

/// A write the committer performs inside a group transaction.
pub(crate) enum Write {
    Append(NewMessage),
    Receipt {
        conversation: ConversationId,
        user: UserId,
        delivered: Option<i64>,
        read: Option<i64>,
    },
    /// A run of notifications, deduplicated by event and capped at `keep` per user.
    Notifications {
        news: Vec<NewNotification>,
        keep: u64,
    },
    /// `user` read `conversation` up to `seq`: its message notifications are read.
    ReadNotifications {
        user: UserId,
        conversation: ConversationId,
        seq: i64,
    },
}

pub(crate) enum Written {
    Appended(Appended),
    Receipt(Receipt),
    Notifications(Recorded),
    /// The reader's unread counts, if the read marker changed any notification.
    Read(Option<Unread>),
}

pub(crate) type Reply = oneshot::Sender<Result<Written, StoreError>>;

/// The handle repositories write through; clones share one committer.
#[derive(Clone, Debug)]
pub struct Committer {
    tx: flume::Sender<(Write, Reply)>,
}

impl Committer {
    /// Starts the committer for `db`: on a SQLite file, a writer thread with its own
    /// connection ([`crate::storage::sqlite_writer`]); otherwise (PostgreSQL, in-memory SQLite) a
    /// task on the current runtime writing through `db`.
    pub fn start(db: DatabaseConnection) -> Self {
        let (tx, rx) = flume::bounded(QUEUE);
        if let Some(path) = sqlite_file(&db) {
            match crate::storage::sqlite_writer::open(&path, crate::storage::SQLITE_BUSY_TIMEOUT) {
                Ok(conn) => {
                    let spawned = std::thread::Builder::new()
                        .name("sqlite-writer".into())
                        .spawn(move || crate::storage::sqlite_writer::run(conn, &path, rx));
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

    /// Queues `w` (waiting for room if the queue is full) and returns the future of its
    /// result, which resolves after the commit. Writes queued one after another are
    /// committed in that order.
    pub(crate) async fn queue(
        &self,
        w: Write,
    ) -> impl std::future::Future<Output = Result<Written, StoreError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.tx.send_async((w, tx)).await.is_ok();
        async move {
            if !queued {
                return Err(StoreError::Unavailable("committer stopped".into()));
            }
            rx.await.map_err(|_| StoreError::Unavailable("committer dropped the request".into()))?
        }
    }
}

fn unavailable(e: DbErr) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// The database file of a SQLite connection opened read-write on a plain file (`None`
/// for PostgreSQL, in-memory, read-only or other special SQLite URLs, which the pool
/// keeps serving).
fn sqlite_file(db: &DatabaseConnection) -> Option<std::path::PathBuf> {
    use sea_orm::sqlx::ConnectOptions;
    if db.get_database_backend() != DbBackend::Sqlite {
        return None;
    }
    let options = db.get_sqlite_connection_pool().connect_options();
    let url = options.to_url_lossy();
    let plain = url.query_pairs().all(|(k, v)| match &*k {
        "mode" => v == "rw" || v == "rwc",
        "cache" => true,
        _ => false,
    });
    let path = options.get_filename().to_owned();
    (plain && path.is_file()).then_some(path)
}

async fn run(db: DatabaseConnection, rx: flume::Receiver<(Write, Reply)>) {
    let _drain = crate::storage::sqlite_writer::DrainOnExit(rx.clone());
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

async fn commit_batch(db: &DatabaseConnection, batch: Vec<(Write, Reply)>) {
    let writes: Vec<&Write> = batch.iter().map(|(w, _)| w).collect();
    match write_in_txn(db, &writes).await {
        Ok(results) => {
            for ((_, reply), result) in batch.into_iter().zip(results) {
                let _ = reply.send(result);
            }
        }
        Err(e) if batch.len() > 1 && !crate::storage::affects_every_write(&e) => {
            tracing::warn!(error = %e, size = batch.len(), "batch commit failed; retrying one by one");
            for (write, reply) in batch {
                let result = match write_in_txn(db, &[&write]).await {
                    Ok(mut r) => r.pop().unwrap_or_else(|| Err(StoreError::Unavailable("empty result".into()))),
                    Err(e) => Err(unavailable(e)),
                };
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            for (_, reply) in batch {
                let _ = reply.send(Err(unavailable(e.clone())));
            }
        }
    }
}

/// Performs `writes` in one transaction. The outer error aborts the whole transaction; the
/// inner results are per write (not found, forbidden, a reused id, or what was stored).
async fn write_in_txn(db: &DatabaseConnection, writes: &[&Write]) -> Result<Vec<Result<Written, StoreError>>, DbErr> {
    let txn = db.begin().await?;
    if txn.get_database_backend() == DbBackend::Sqlite {
        // Take the write lock first (what BEGIN IMMEDIATE would do): a deferred
        // transaction that reads before it writes cannot wait for the lock and fails with
        // SQLITE_BUSY when another connection wrote meanwhile; this one waits its turn.
        txn.execute_unprepared("UPDATE conversations SET last_seq = last_seq WHERE 0").await?;
    }
    let now = crate::now_ms();
    let mut results: Vec<Option<Result<Written, StoreError>>> = writes.iter().map(|_| None).collect();
    let appends: Vec<&NewMessage> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Append(m) => Some(m),
            _ => None,
        })
        .collect();
    let mut appended = crate::messaging::chat::append_all(&txn, &appends, now).await?.into_iter();
    // Appends first (a receipt in the same batch may count one of them).
    for (slot, w) in results.iter_mut().zip(writes) {
        if let Write::Append(_) = w {
            *slot = appended.next().map(|r| r.map(Written::Appended));
        }
    }
    // Then every receipt at once (two statements for the batch), then notifications in
    // queue order.
    let receipts: Vec<crate::messaging::chat::RaiseReceipt> = writes
        .iter()
        .filter_map(|w| match w {
            Write::Receipt { conversation, user, delivered, read } => Some((*conversation, *user, *delivered, *read)),
            _ => None,
        })
        .collect();
    let mut raised = crate::messaging::chat::raise_receipts(&txn, &receipts, now).await?.into_iter();
    for (slot, w) in results.iter_mut().zip(writes) {
        if let Write::Receipt { .. } = w {
            *slot = raised.next().map(|r| r.map(Written::Receipt));
        }
    }
    for (slot, w) in results.iter_mut().zip(writes) {
        match w {
            Write::Receipt { .. } => {}
            Write::Notifications { news, keep } => {
                let stored = crate::notify::repo::record_in_txn(&txn, news, *keep, now).await?;
                *slot = Some(Ok(Written::Notifications(stored)));
            }
            Write::ReadNotifications { user, conversation, seq } => {
                let unread =
                    crate::notify::repo::read_conversation_in_txn(&txn, *user, *conversation, *seq, now).await?;
                *slot = Some(Ok(Written::Read(unread)));
            }
            Write::Append(_) => {}
        }
    }
    txn.commit().await?;
    Ok(results.into_iter().map(|r| r.unwrap_or_else(|| Err(StoreError::Unavailable("write skipped".into())))).collect())
}
