//! Notification writes on SQLite: per-row prepared statements on the writer thread's
//! connection ([`crate::writer`]), inside its batch transaction. The same writes through
//! sea-orm (the PostgreSQL path) are [`crate::notify::repo::record_in_txn`] and
//! [`crate::notify::repo::read_conversation_in_txn`]; both follow the rules of
//! [`crate::notify::repo`] (`changes`, `bump`, `after_read`) and store the same rows.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use switchboard_actors::ports::{NotificationView, Unread};
use uuid::Uuid;

use crate::domain::{ConversationId, UserId};
use crate::notify::repo::{Change, NewNotification, Recorded, Stored, after_read, bump, changes};
use crate::storage::rows::{opt_uuid_at, uuid_at};

/// One batch transaction's notification writes, and the users' names they read (once per
/// batch).
pub(crate) struct Notifications<'a> {
    db: &'a Connection,
    now: i64,
    /// Username and display name by user id (`None`: no such user).
    names: HashMap<Uuid, Option<(String, String)>>,
}

impl<'a> Notifications<'a> {
    /// The notification writes of the transaction open on `db`, at `now`.
    pub(crate) fn new(db: &'a Connection, now: i64) -> Self {
        Self { db, now, names: HashMap::new() }
    }

    /// Stores `news` as [`crate::notify::repo::NotificationRepo::record_batch`] says: a
    /// contact notification per (user, event), one update per (user, conversation) of its
    /// message notification; numbers each change; deletes each user's notifications
    /// older than their newest `keep` numbers. Returns what was changed and kept, and the
    /// unread counts of each user who got one.
    pub(crate) fn record(&mut self, news: &[NewNotification], keep: u64) -> rusqlite::Result<Recorded> {
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

    /// A user's unread counts, per conversation and in all (but muted conversations).
    fn unread(&self, user: Uuid) -> rusqlite::Result<Unread> {
        let mut unread = Unread::default();
        let mut counts = self.db.prepare_cached(
            "SELECT conversation_id, SUM(count) FROM notifications WHERE user_id = ?1 AND read_at IS NULL \
             GROUP BY conversation_id",
        )?;
        let mut rows = counts.query(params![user.as_bytes()])?;
        while let Some(r) = rows.next()? {
            unread.add(opt_uuid_at(r, 0)?.map(ConversationId), r.get(1)?);
        }
        let mut mutes = self.db.prepare_cached(
            "SELECT conversation_id, until FROM conversation_mutes WHERE user_id = ?1 AND (until IS NULL OR until > ?2)",
        )?;
        let mut rows = mutes.query(params![user.as_bytes(), self.now])?;
        while let Some(r) = rows.next()? {
            unread.mute(ConversationId(uuid_at(r, 0)?), r.get(1)?);
        }
        Ok(unread)
    }

    /// Counts `user`'s messages of `conversation` up to `seq` read in its notification
    /// (what is left: the messages after `seq`); the user's unread counts after it, if
    /// that changed it.
    pub(crate) fn read_conversation(
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
