//! Short reads on a SQLite file without a thread hand-off: a few read-only rusqlite
//! connections, each used on the calling thread for one indexed read (microseconds with
//! a warm page cache), instead of sqlx's per-connection worker thread and the futex wake
//! and switch around every statement. Used for the reads a reconnect storm makes per
//! socket (login session, conversations, messages after a seq): with them through the
//! pool, a third of a restarted node's CPU was on sqlx's threads (docs/benchmarks.md,
//! "Reconnect storm"). Everything else, and PostgreSQL, reads through sea-orm.
//!
//! WAL lets these read beside the writer thread; each read is its own transaction, so it
//! sees every commit made before it began.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OpenFlags};
use sea_orm::DatabaseConnection;

/// Connections kept for reuse (more may be opened under load; extras are closed).
const KEEP: usize = 4;
/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 16;

#[derive(Debug)]
pub struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    /// Readers for `db` when it is a plain SQLite file (`None` otherwise: read through the
    /// pool). Opens nothing until the first read.
    pub fn for_db(db: &DatabaseConnection) -> Option<Arc<Readers>> {
        crate::storage::sqlite_file(db).map(|path| Arc::new(Readers { path, idle: Mutex::new(Vec::new()) }))
    }

    /// Runs `read` on an idle connection (opened if none is), on this thread.
    pub fn read<T>(&self, read: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> rusqlite::Result<T> {
        let idle = self.idle.lock().ok().and_then(|mut v| v.pop());
        let conn = match idle {
            Some(c) => c,
            None => open(&self.path)?,
        };
        let result = read(&conn);
        if let Ok(mut v) = self.idle.lock()
            && v.len() < KEEP
        {
            v.push(conn);
        }
        result
    }
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.busy_timeout(crate::storage::SQLITE_BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}
