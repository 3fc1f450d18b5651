//! Notification writes on SQLite: per-row prepared statements on the writer thread's
//! connection ([`crate::writer`]), inside its batch transaction. The same writes through
//! sea-orm (the PostgreSQL path) are [`crate::notify::repo::record_in_txn`] and
//! [`crate::notify::repo::read_conversation_in_txn`]; both follow the rules of
//! [`crate::notify::repo`] (`changes`, `bump`, `after_read`) and store the same rows.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use switchboard_actors::ports::{NotificationView, Unread};
use switchboard_actors::states::NotificationKind;
use uuid::Uuid;

use crate::domain::{ConversationId, UserId};
use crate::notify::repo::{Change, NewNotification, Recorded, Stored, after_read, bump, changes};
use crate::storage::rows::{opt_uuid_at, uuid_at};

/// What the writer has read for notifications: names, each user's message notification
/// per conversation, unread counts and counters (read markers come from the message writes). It is kept from batch to batch while
/// no other connection writes the database (the writer's cache rule, [`crate::writer`]'s
/// `sqlite` module): the writer's own writes keep it current.
#[derive(Default)]
pub(crate) struct Known {
    /// Username and display name by user id (`None`: no such user).
    names: HashMap<Uuid, Option<(String, String)>>,
    /// Message notification by user, then conversation: its id and what it stands for
    /// (`None`: none stored). By user first, so forgetting one user's is one removal.
    messages: HashMap<Uuid, HashMap<Uuid, Option<(Uuid, Stored)>>>,
    /// Entries in `messages`.
    message_entries: usize,
    /// Unread counts by user.
    unread: HashMap<Uuid, Counts>,
    /// The last number each user's notifications took (0: none yet).
    last_n: HashMap<Uuid, i64>,
}

impl Known {
    /// Entries held (to bound the memory it takes).
    pub(crate) fn len(&self) -> usize {
        self.names.len() + self.message_entries + self.unread.len() + self.last_n.len()
    }

    /// The unread notification's count of `user` in `conversation` (`None`: not of a
    /// conversation) changes from `before` to `after` (each 0 when read or absent).
    fn count_changed(&mut self, user: Uuid, conversation: Option<Uuid>, before: i64, after: i64) {
        let Some(counts) = self.unread.get_mut(&user) else { return };
        let sum = counts.sums.entry(conversation).or_default();
        *sum += after - before;
        if *sum == 0 {
            counts.sums.remove(&conversation);
        }
    }

    /// Forgets what was read of `user`'s notifications (some were deleted).
    fn forget_notifications(&mut self, user: Uuid) {
        self.unread.remove(&user);
        if let Some(gone) = self.messages.remove(&user) {
            self.message_entries -= gone.len();
        }
    }

    /// `user`'s message notification of `conversation`, if known.
    fn message(&self, user: Uuid, conversation: Uuid) -> Option<Option<(Uuid, Stored)>> {
        self.messages.get(&user)?.get(&conversation).copied()
    }

    /// `user`'s message notification of `conversation` is `now` (`None`: there is none).
    fn set_message(&mut self, user: Uuid, conversation: Uuid, now: Option<(Uuid, Stored)>) {
        if self.messages.entry(user).or_default().insert(conversation, now).is_none() {
            self.message_entries += 1;
        }
    }
}

/// A user's unread counts as stored: the sum of the unread notifications' counts per
/// conversation (`None`: contact notifications), and the mutes in force when read.
struct Counts {
    sums: HashMap<Option<Uuid>, i64>,
    mutes: Vec<(ConversationId, Option<i64>)>,
    /// When the mutes were read, and when the first of them ends: they hold for the times
    /// in between (a clock set back before `since` could bring back a mute that had ended).
    since: i64,
    until: i64,
}

impl Counts {
    fn unread(&self) -> Unread {
        let mut unread = Unread::default();
        for (conversation, sum) in &self.sums {
            unread.add(conversation.map(ConversationId), *sum);
        }
        for (conversation, until) in &self.mutes {
            unread.mute(*conversation, *until);
        }
        unread
    }
}

/// What a stored notification adds to its user's unread count.
fn unread_count(stored: Option<Stored>) -> i64 {
    stored.filter(|s| !s.read).map_or(0, |s| s.count)
}

/// One batch transaction's notification writes, reading through `known` (each read
/// once, then kept).
pub(crate) struct Notifications<'a> {
    db: &'a Connection,
    now: i64,
    known: &'a mut Known,
    /// The users whose counters this transaction raised (written back by [`Self::finish`]).
    numbered: Vec<Uuid>,
}

impl<'a> Notifications<'a> {
    /// The notification writes of the transaction open on `db`, at `now`, with what the
    /// writer knows already. The caller forgets `known` if the transaction does not commit.
    pub(crate) fn new(db: &'a Connection, now: i64, known: &'a mut Known) -> Self {
        Self { db, now, known, numbered: Vec::new() }
    }

    /// Stores `news` as [`crate::notify::repo::NotificationRepo::record_batch`] says: a
    /// contact notification per (user, event), one update per (user, conversation) of its
    /// message notification; numbers each change; deletes each user's notifications
    /// older than their newest `keep` numbers. Returns what was changed and kept, and the
    /// unread counts of each user who got one.
    /// `read_seq` gives a user's read marker in a conversation (the message writes'
    /// which keep the receipts).
    pub(crate) fn record(
        &mut self,
        news: &[NewNotification],
        keep: u64,
        read_seq: &mut dyn FnMut(UserId, ConversationId) -> rusqlite::Result<i64>,
    ) -> rusqlite::Result<Recorded> {
        let keep = keep as i64;
        let mut last_n: HashMap<Uuid, i64> = HashMap::new();
        let mut stored = Vec::with_capacity(news.len());
        for change in changes(news) {
            // `was_unread`: an existing row whose `read_at` is NULL.
            let (new, existing, count, was_unread) = match change {
                Change::Single(new) => {
                    let before = self
                        .db
                        .prepare_cached("SELECT 1 FROM notifications WHERE user_id = ?1 AND event_id = ?2")?
                        .exists(params![new.user.0.as_bytes(), new.event_id.as_bytes()])?;
                    if before {
                        continue;
                    }
                    (new, None, 1, false)
                }
                Change::Conversation { user, conversation, news } => {
                    let (existing, current) = match self.message_notification(user, conversation)? {
                        Some((id, s)) => (Some(id), Some(s)),
                        None => (None, None),
                    };
                    let Some(b) = bump(current, read_seq(user, conversation)?, &news) else { continue };
                    (b.newest, existing, b.count, current.is_some_and(|s| !s.read))
                }
            };
            let before = match (new.kind, new.conversation_id) {
                (NotificationKind::Message, Some(c)) => {
                    unread_count(self.known.message(new.user.0, c.0).flatten().map(|(_, s)| s))
                }
                _ => 0,
            };
            let user = new.user.0;
            let n = self.next_n(user)?;
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
            if existing.is_some() && was_unread && !view.read {
                // Unread before and after: `read_at` is not assigned, so SQLite leaves the
                // entry in `ix_notifications_unread` (and its page) alone.
                self.db
                    .prepare_cached(
                        "UPDATE notifications SET n = ?1, seq = ?2, payload = ?3, count = ?4, created_at = ?5 \
                         WHERE id = ?6",
                    )?
                    .execute(params![
                        n,
                        view.seq,
                        view.payload.to_string(),
                        count,
                        view.created_at,
                        view.id.as_bytes()
                    ])?;
            } else if existing.is_some() {
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
            let after = if view.read { 0 } else { count };
            self.known.count_changed(user, view.conversation_id.map(|c| c.0), before, after);
            if let (NotificationKind::Message, Some(c)) = (view.kind, view.conversation_id) {
                let now = Stored { seq: view.seq.unwrap_or(0), count, read: view.read };
                self.known.set_message(user, c.0, Some((view.id, now)));
            }
            stored.push((new.user, view));
        }
        let mut unread = HashMap::with_capacity(last_n.len());
        for (user, last) in &last_n {
            if *last > keep {
                let gone = self
                    .db
                    .prepare_cached("DELETE FROM notifications WHERE user_id = ?1 AND n <= ?2")?
                    .execute(params![user.as_bytes(), last - keep])?;
                if gone > 0 {
                    self.known.forget_notifications(*user);
                }
            }
            unread.insert(UserId(*user), self.unread(*user)?);
        }
        stored.retain(|(user, view)| last_n.get(&user.0).is_some_and(|l| view.n > l - keep));
        Ok(Recorded { stored, unread })
    }

    /// `user`'s message notification of `conversation`, if any: its id and what it stands for.
    fn message_notification(
        &mut self,
        user: UserId,
        conversation: ConversationId,
    ) -> rusqlite::Result<Option<(Uuid, Stored)>> {
        if let Some(known) = self.known.message(user.0, conversation.0) {
            return Ok(known);
        }
        // The literal kind lets SQLite use the partial index on (user, conversation); it is
        // `NotificationKind::Message`'s text, as in the index's definition (migration
        // m20261206_000004); a drift would find no row and break the unique index, which
        // the storage tests of notifications catch.
        let found = self
            .db
            .prepare_cached(
                "SELECT id, seq, count, read_at IS NOT NULL FROM notifications \
                 WHERE user_id = ?1 AND conversation_id = ?2 AND kind = 'message'",
            )?
            .query_row(params![user.0.as_bytes(), conversation.0.as_bytes()], |r| {
                let seq: Option<i64> = r.get(1)?;
                Ok((uuid_at(r, 0)?, Stored { seq: seq.unwrap_or(0), count: r.get(2)?, read: r.get(3)? }))
            })
            .optional()?;
        self.known.set_message(user.0, conversation.0, found);
        Ok(found)
    }

    /// The next number of `user`'s notifications (their counter is written back by
    /// [`Self::finish`]).
    fn next_n(&mut self, user: Uuid) -> rusqlite::Result<i64> {
        let last = match self.known.last_n.get(&user) {
            Some(&last) => last,
            None => self
                .db
                .prepare_cached("SELECT last_n FROM notification_counters WHERE user_id = ?1")?
                .query_row(params![user.as_bytes()], |r| r.get(0))
                .optional()?
                .unwrap_or(0),
        };
        if !self.numbered.contains(&user) {
            self.numbered.push(user);
        }
        self.known.last_n.insert(user, last + 1);
        Ok(last + 1)
    }

    /// Writes back the counters this transaction raised (last, before the commit).
    pub(crate) fn finish(&mut self) -> rusqlite::Result<()> {
        for user in std::mem::take(&mut self.numbered) {
            let Some(&last) = self.known.last_n.get(&user) else { continue };
            self.db
                .prepare_cached(
                    "INSERT INTO notification_counters (user_id, last_n) VALUES (?1, ?2) \
                     ON CONFLICT (user_id) DO UPDATE SET last_n = excluded.last_n",
                )?
                .execute(params![user.as_bytes(), last])?;
        }
        Ok(())
    }

    /// A user's username and display name (`None`: no such user), once per batch.
    fn names(&mut self, user: Uuid) -> rusqlite::Result<Option<&(String, String)>> {
        if !self.known.names.contains_key(&user) {
            let found = self
                .db
                .prepare_cached("SELECT username, display_name FROM users WHERE id = ?1")?
                .query_row(params![user.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            self.known.names.insert(user, found);
        }
        Ok(self.known.names.get(&user).and_then(Option::as_ref))
    }

    /// A user's unread counts, per conversation and in all (but muted conversations).
    fn unread(&mut self, user: Uuid) -> rusqlite::Result<Unread> {
        if let Some(counts) = self.known.unread.get(&user).filter(|c| (c.since..c.until).contains(&self.now)) {
            return Ok(counts.unread());
        }
        let mut sums = HashMap::new();
        let mut counts = self.db.prepare_cached(
            "SELECT conversation_id, SUM(count) FROM notifications WHERE user_id = ?1 AND read_at IS NULL \
             GROUP BY conversation_id",
        )?;
        let mut rows = counts.query(params![user.as_bytes()])?;
        while let Some(r) = rows.next()? {
            let sum: i64 = r.get(1)?;
            if sum != 0 {
                sums.insert(opt_uuid_at(r, 0)?, sum);
            }
        }
        let (mut mutes, mut until) = (Vec::new(), i64::MAX);
        let mut muted = self.db.prepare_cached(
            "SELECT conversation_id, until FROM conversation_mutes WHERE user_id = ?1 AND (until IS NULL OR until > ?2)",
        )?;
        let mut rows = muted.query(params![user.as_bytes(), self.now])?;
        while let Some(r) = rows.next()? {
            let ends: Option<i64> = r.get(1)?;
            until = until.min(ends.unwrap_or(i64::MAX));
            mutes.push((ConversationId(uuid_at(r, 0)?), ends));
        }
        let counts = Counts { sums, mutes, since: self.now, until };
        let unread = counts.unread();
        self.known.unread.insert(user, counts);
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
        let now = Stored { count, read: count == 0, ..stored };
        self.known.set_message(user.0, conversation.0, Some((id, now)));
        self.known.count_changed(user.0, Some(conversation.0), unread_count(Some(stored)), unread_count(Some(now)));
        self.unread(user.0).map(Some)
    }
}
