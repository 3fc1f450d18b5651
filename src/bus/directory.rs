//! The user→node directory (issue 18): which nodes have sessions of which users, kept in
//! the database every process shares (`bus_directory`, `bus_nodes`; migration 11).
//!
//! Publishers read it to send an event once per destination node (one AMQP message per
//! node and flush, see [`super::batch`]) instead of once per recipient through per-user
//! bindings. Why the database and not a broadcast between nodes: a node writes a user's
//! row, and the write commits, before that user's session may `sync`; a publisher reads
//! the rows after its event's message committed. So for any message either the
//! publisher sees the row (the event reaches the session live), or the message committed
//! before the row and so before the `sync` read (the sync returns it). A directory that
//! spreads by messages has no such order; this one costs one indexed read per flush (on a
//! SQLite file a reader connection on the calling thread, no hand-off).
//!
//! Rows outlive a node that dies without leaving: each node writes a heartbeat to
//! `bus_nodes` every third of `bus.node_ttl_secs`, and every heartbeat also sweeps the
//! nodes that missed theirs for a whole TTL, with their rows. Until then, events for
//! their users are published to a queue that no longer exists and dropped by the broker
//! (the users' clients have reconnected elsewhere and synced). A node that finds its own
//! heartbeat row gone (it was cut off from the database for a TTL and swept) writes its
//! users back and has its sessions catch up.

use std::collections::HashMap;
use std::sync::Arc;

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set, TransactionTrait,
};
use switchboard_actors::ids::UserId;

use crate::storage::entities::{bus_directory, bus_node};
use crate::storage::readers::Readers;

/// The directory as one node sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Directory {
    db: DatabaseConnection,
    readers: Option<Arc<Readers>>,
    node_id: String,
}

impl Directory {
    pub fn new(db: DatabaseConnection, node_id: &str) -> Self {
        let readers = Readers::for_db(&db);
        Self { db, readers, node_id: node_id.to_owned() }
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The nodes other than this one with a session of each of `users` (users on no other
    /// node are left out).
    pub async fn lookup(&self, users: &[UserId]) -> Result<HashMap<UserId, Vec<String>>, DbErr> {
        let mut found: HashMap<UserId, Vec<String>> = HashMap::new();
        if users.is_empty() {
            return Ok(found);
        }
        if let Some(readers) = &self.readers {
            readers
                .read(|c| {
                    let mut stmt = c.prepare_cached("SELECT node_id FROM bus_directory WHERE user_id = ?1")?;
                    for user in users {
                        let mut rows = stmt.query([user.0.as_bytes()])?;
                        while let Some(row) = rows.next()? {
                            let node: String = row.get(0)?;
                            if node != self.node_id {
                                found.entry(*user).or_default().push(node);
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            return Ok(found);
        }
        let rows = bus_directory::Entity::find()
            .filter(bus_directory::Column::UserId.is_in(users.iter().map(|u| u.0)))
            .filter(bus_directory::Column::NodeId.ne(self.node_id.as_str()))
            .all(&self.db)
            .await?;
        for row in rows {
            found.entry(UserId(row.user_id)).or_default().push(row.node_id);
        }
        Ok(found)
    }

    /// Writes which of `changes`' users have a session here (`true`) or no longer do, in
    /// one transaction. Each user appears once (the caller folds a run of changes).
    pub async fn apply(&self, changes: &[(UserId, bool)]) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        self.apply_in(&txn, changes).await?;
        txn.commit().await
    }

    async fn apply_in(&self, db: &impl ConnectionTrait, changes: &[(UserId, bool)]) -> Result<(), DbErr> {
        let gone: Vec<_> = changes.iter().filter(|(_, here)| !here).map(|(u, _)| u.0).collect();
        let here: Vec<_> = changes.iter().filter(|(_, here)| *here).map(|(u, _)| u.0).collect();
        // In slices, so a storm's run stays well inside every backend's parameter limit.
        for chunk in gone.chunks(CHUNK) {
            bus_directory::Entity::delete_many()
                .filter(bus_directory::Column::NodeId.eq(self.node_id.as_str()))
                .filter(bus_directory::Column::UserId.is_in(chunk.iter().copied()))
                .exec(db)
                .await?;
        }
        for chunk in here.chunks(CHUNK) {
            bus_directory::Entity::insert_many(
                chunk
                    .iter()
                    .map(|u| bus_directory::ActiveModel { user_id: Set(*u), node_id: Set(self.node_id.clone()) }),
            )
            .on_conflict(
                OnConflict::columns([bus_directory::Column::UserId, bus_directory::Column::NodeId])
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
        }
        Ok(())
    }

    /// This node is alive at `now`. `false` if its row was gone (swept: it missed its
    /// heartbeats for a TTL), in which case its directory rows may be gone too: the
    /// caller writes them back ([`Self::rejoin`]).
    pub async fn heartbeat(&self, now: i64) -> Result<bool, DbErr> {
        let updated = bus_node::Entity::update_many()
            .col_expr(bus_node::Column::SeenAt, Expr::value(now))
            .filter(bus_node::Column::NodeId.eq(self.node_id.as_str()))
            .exec(&self.db)
            .await?;
        Ok(updated.rows_affected > 0)
    }

    /// Writes this node's heartbeat row and replaces its rows by `users`' (at start, with
    /// none; after a failed write; after being swept), in one transaction.
    pub async fn rejoin(&self, users: &[UserId], now: i64) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        bus_node::Entity::insert(bus_node::ActiveModel { node_id: Set(self.node_id.clone()), seen_at: Set(now) })
            .on_conflict(
                OnConflict::column(bus_node::Column::NodeId).update_column(bus_node::Column::SeenAt).to_owned(),
            )
            .exec_without_returning(&txn)
            .await?;
        bus_directory::Entity::delete_many()
            .filter(bus_directory::Column::NodeId.eq(self.node_id.as_str()))
            .exec(&txn)
            .await?;
        let changes: Vec<(UserId, bool)> = users.iter().map(|u| (*u, true)).collect();
        self.apply_in(&txn, &changes).await?;
        txn.commit().await
    }

    /// Removes the nodes whose last heartbeat is older than `ttl_ms` at `now`, with their
    /// directory rows, and with `orphans` also rows of nodes that have no heartbeat row
    /// (a full scan, so not every time); returns the nodes removed.
    pub async fn sweep(&self, now: i64, ttl_ms: i64, orphans: bool) -> Result<u64, DbErr> {
        let cutoff = now.saturating_sub(ttl_ms);
        let txn = self.db.begin().await?;
        let stale: Vec<String> = bus_node::Entity::find()
            .filter(bus_node::Column::SeenAt.lt(cutoff))
            .filter(bus_node::Column::NodeId.ne(self.node_id.as_str()))
            .all(&txn)
            .await?
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        for chunk in stale.chunks(CHUNK) {
            bus_directory::Entity::delete_many()
                .filter(bus_directory::Column::NodeId.is_in(chunk.iter().cloned()))
                .exec(&txn)
                .await?;
            bus_node::Entity::delete_many()
                .filter(bus_node::Column::NodeId.is_in(chunk.iter().cloned()))
                .exec(&txn)
                .await?;
        }
        // Rows of a node with no heartbeat row at all (it was swept while writing them,
        // then died before its next heartbeat could write them again).
        if orphans {
            txn.execute_unprepared(
                "DELETE FROM bus_directory WHERE NOT EXISTS \
                 (SELECT 1 FROM bus_nodes WHERE bus_nodes.node_id = bus_directory.node_id)",
            )
            .await?;
        }
        txn.commit().await?;
        Ok(stale.len() as u64)
    }

    /// Removes this node and its rows (a clean shutdown).
    pub async fn leave(&self) -> Result<(), DbErr> {
        let txn = self.db.begin().await?;
        bus_directory::Entity::delete_many()
            .filter(bus_directory::Column::NodeId.eq(self.node_id.as_str()))
            .exec(&txn)
            .await?;
        bus_node::Entity::delete_by_id(self.node_id.clone()).exec(&txn).await?;
        txn.commit().await
    }
}

/// Users per statement in the directory's writes.
const CHUNK: usize = 500;
