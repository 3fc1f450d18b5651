//! Storage, the part every service shares: the database connection and the entities.
//! Each service's repository lives in its own folder (`auth::users`, `auth::sessions`,
//! `contacts::repo`, `messaging::chat`, `messaging::files`, `notify::repo`); the one
//! writer of the hot paths is [`crate::writer`], above the services whose writes it runs.
//!
//! - [`connect`] opens SQLite (WAL, `synchronous=FULL`, busy timeout, foreign keys) or
//!   PostgreSQL by URL and runs the migrations.
//! - [`entities`], SeaORM entities, one per table.
//! - [`seed`], bulk contact pairs for benchmarks and storage tests.
//! - [`stored`], a state or kind read from a text column, as its enum; `rows`, the same
//!   for the SQLite writer's rusqlite rows.
//!
//! Handlers and actors call repositories, never SQL directly.

pub mod entities;
pub mod readers;
pub(crate) mod rows;
pub mod seed;

use std::time::Duration;

use anyhow::Context;
use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, SqlErr, TransactionTrait,
};

/// How long a SQLite writer waits for another (process or connection) to finish before
/// failing with "database is locked". Generous: several processes may share one file.
pub(crate) const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `url` and brings the schema up to date.
pub async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false).connect_timeout(Duration::from_secs(10)).acquire_timeout(Duration::from_secs(10));
    if url.starts_with("sqlite:") {
        // WAL lets readers run beside the one writer; FULL makes an acknowledged commit
        // survive a power cut (fsync is cheap here, and group commit amortises it).
        opts.max_connections(8).min_connections(1).map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
                .create_if_missing(true)
        });
    } else {
        opts.max_connections(16).min_connections(1);
    }
    let db = Database::connect(opts).await.context("cannot connect to the database")?;
    migrate(&db).await.context("cannot apply database migrations")?;
    Ok(db)
}

/// Key of the PostgreSQL advisory lock held while migrating (any constant all processes
/// share; these are the bytes of "sb-migr").
const MIGRATION_LOCK: i64 = 0x0073_622d_6d69_6772;

/// Brings the schema up to date. Every process does this at start; on PostgreSQL, where
/// processes on several hosts may start at once, one migrates at a time (an advisory lock
/// held by a transaction of its own, released when it ends) and the others find the
/// schema current. (On SQLite the file's write lock serialises them.)
async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await;
    }
    let lock = db.begin().await?;
    lock.execute_unprepared(&format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")).await?;
    let migrated = Migrator::up(db, None).await;
    lock.commit().await?;
    migrated
}

/// True when `err` is about reaching the database (no connection, pool exhausted), not
/// about what a statement held: retrying a batch's writes one by one would meet it again
/// for each. Anything else (a constraint, bad data, a deadlock) may be one write's.
pub fn affects_every_write(err: &DbErr) -> bool {
    matches!(err, DbErr::Conn(_) | DbErr::ConnectionAcquire(_))
}

/// True when `err` is a unique-constraint violation (a duplicate insert).
pub fn is_unique_violation(err: &DbErr) -> bool {
    matches!(err.sql_err(), Some(SqlErr::UniqueConstraintViolation(_)))
}

/// `SUM(column)` as a 64-bit integer on both databases (PostgreSQL sums BIGINT to NUMERIC).
pub(crate) fn sum_bigint<C: sea_orm::ColumnTrait>(column: C) -> sea_orm::sea_query::Expr {
    use sea_orm::sea_query::{Expr, Func};
    Expr::expr(Func::cast_as(Func::sum(Expr::col(column)), "BIGINT"))
}

/// A state or kind as the database holds it (text), as its enum
/// (`switchboard_actors::states`): a value that is none of the enum's is an error, never a
/// default.
pub(crate) fn stored<T>(parse: fn(&str) -> Option<T>, column: &str, text: &str) -> Result<T, DbErr> {
    parse(text).ok_or_else(|| DbErr::Type(format!("{column} holds {text:?}, which is none of its values")))
}

/// The database file of a SQLite connection opened read-write on a plain file (`None`
/// for PostgreSQL, in-memory, read-only or other special SQLite URLs, which the pool
/// keeps serving).
pub fn sqlite_file(db: &DatabaseConnection) -> Option<std::path::PathBuf> {
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
