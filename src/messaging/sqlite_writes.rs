//! The message path's writes on SQLite: appends and receipt markers as per-row prepared
//! statements on the writer thread's connection ([`crate::writer`]), inside its batch
//! transaction. The same writes through sea-orm (the PostgreSQL path) are
//! [`crate::messaging::chat::append_all`] and [`crate::messaging::chat::raise_receipts`];
//! both store the same rows. Here a statement costs microseconds (a call into SQLite on
//! this thread, its plan cached), so rows are written one by one, in queue order, sharing
//! the writer's view of each conversation (kept from batch to batch, see [`Known`]): a
//! receipt after an append in the same batch counts that append.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};
use switchboard_actors::ports::{Appended, NewMessage, Receipt, StoreError, StoredMessage};
use switchboard_actors::states::{ContactState, MessageKind};
use uuid::Uuid;

use crate::contacts::repo::NOT_A_CONTACT;
use crate::domain::{ConversationId, FileId, MessageId, UserId};
use crate::messaging::chat::{REUSED_ID, RaiseReceipt, Target, check_change, message_at, message_columns};
use crate::messaging::search;
use crate::storage::rows::{opt_uuid_at, text_at, uuid_at};

/// A conversation as the writer sees it: its participants and its counter, raised by a
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

/// What the writer has read of conversations and contact rules. It is kept from batch to
/// batch while no other connection writes the database (the writer's cache rule,
/// [`crate::writer`]'s `sqlite` module): its own writes keep it current.
#[derive(Default)]
pub(crate) struct Known {
    conversations: HashMap<Uuid, Option<Conversation>>,
    allowed: HashMap<(Uuid, Uuid), bool>,
    /// Receipt markers by (conversation, user) as stored: delivered and read seqs.
    receipts: HashMap<(Uuid, Uuid), (i64, i64)>,
}

impl Known {
    /// Entries held (to bound the memory it takes).
    pub(crate) fn len(&self) -> usize {
        self.conversations.len() + self.allowed.len() + self.receipts.len()
    }
}

/// One batch transaction's message writes, reading conversations and contact rules
/// through `known` (each read once, then kept).
pub(crate) struct Messages<'a> {
    db: &'a Connection,
    now: i64,
    known: &'a mut Known,
    /// The conversations whose counters this batch raised.
    raised: Vec<Uuid>,
}

const NOT_FOUND: StoreError = StoreError::NotFound;

impl<'a> Messages<'a> {
    /// The message writes of the transaction open on `db`, at `now`, with what the writer
    /// knows already. The caller forgets `known` if the transaction does not commit.
    pub(crate) fn new(db: &'a Connection, now: i64, known: &'a mut Known) -> Self {
        Self { db, now, known, raised: Vec::new() }
    }

    fn conversation(&mut self, id: Uuid) -> rusqlite::Result<Option<&mut Conversation>> {
        let found = match self.known.conversations.entry(id) {
            std::collections::hash_map::Entry::Occupied(known) => known.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(
                self.db
                    .prepare_cached("SELECT user_low, user_high, last_seq FROM conversations WHERE id = ?1")?
                    .query_row(params![id.as_bytes()], |r| {
                        Ok(Conversation {
                            low: uuid_at(r, 0)?,
                            high: uuid_at(r, 1)?,
                            last_seq: r.get(2)?,
                            raised: false,
                        })
                    })
                    .optional()?,
            ),
        };
        Ok(found.as_mut())
    }

    /// The one messaging rule ([`crate::contacts::repo::messageable_pairs`]): an accepted contact
    /// and no block either way.
    fn may_message(&mut self, low: Uuid, high: Uuid) -> rusqlite::Result<bool> {
        if let Some(&ok) = self.known.allowed.get(&(low, high)) {
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
        self.known.allowed.insert((low, high), ok);
        Ok(ok)
    }

    /// The other participant of `m`'s conversation (read by the append before it).
    pub(crate) fn peer(&self, m: &StoredMessage) -> Option<UserId> {
        let c = self.known.conversations.get(&m.conversation_id.0)?.as_ref()?;
        let sender = m.sender_id.0;
        c.has(sender).then(|| UserId(if c.low == sender { c.high } else { c.low }))
    }

    /// Appends `m`, or answers a resend with the stored original (one stored by an earlier
    /// write of this batch included: the transaction sees its own rows).
    pub(crate) fn append(&mut self, m: &NewMessage) -> rusqlite::Result<Result<Appended, StoreError>> {
        let (conversation, sender) = (m.conversation_id.0, m.sender_id.0);
        let (low, high) = match self.conversation(conversation)? {
            Some(c) if c.has(sender) => (c.low, c.high),
            _ => return Ok(Err(NOT_FOUND)),
        };
        // A deletion needs no contact: people can always take back what they said.
        if m.kind != MessageKind::Delete && !self.may_message(low, high)? {
            return Ok(Err(StoreError::Forbidden(NOT_A_CONTACT)));
        }
        if let Some(old) = self.stored_message(sender, &m.client_msg_id)? {
            return Ok(if old.conversation_id != m.conversation_id {
                Err(StoreError::Forbidden(REUSED_ID))
            } else {
                Ok(Appended { message: old, duplicate: true, notification: None, delivered: None })
            });
        }
        let target = match m.target_id {
            Some(t) => self.target(t.0)?,
            None => None,
        };
        if let Err(e) = check_change(m, target.map(|(t, _)| t)) {
            return Ok(Err(e));
        }
        if let (MessageKind::Delete, Some(t), Some((target, rowid))) = (m.kind, m.target_id, target) {
            self.erase(t.0, target.file_id)?;
            search::reindex(self.db, rowid, None, (low, high))?;
        }
        let Some(c) = self.conversation(conversation)? else { return Ok(Err(NOT_FOUND)) };
        c.last_seq += 1;
        let (seq, first_raise) = (c.last_seq, !std::mem::replace(&mut c.raised, true));
        if first_raise {
            self.raised.push(conversation);
        }
        let message = StoredMessage {
            id: MessageId::new(),
            conversation_id: m.conversation_id,
            seq,
            sender_id: m.sender_id,
            client_msg_id: m.client_msg_id.clone(),
            kind: m.kind,
            body: m.body.clone(),
            file_id: m.file_id,
            created_at: self.now,
            target_id: m.target_id,
            edited_at: None,
            deleted: false,
        };
        self.db
            .prepare_cached(
                "INSERT INTO messages (id, conversation_id, seq, sender_id, client_msg_id, kind, body, file_id, \
                 created_at, target_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
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
                message.target_id.map(|t| *t.0.as_bytes()),
            ])?;
        if let (MessageKind::Edit, Some(t), Some((_, rowid))) = (m.kind, m.target_id, target) {
            self.supersede_edits(t.0, Some(message.id.0))?;
            self.db
                .prepare_cached("UPDATE messages SET body = ?1, edited_at = ?2 WHERE id = ?3 AND deleted_at IS NULL")?
                .execute(params![m.body, self.now, t.0.as_bytes()])?;
            search::reindex(self.db, rowid, Some(&m.body), (low, high))?;
        }
        Ok(Ok(Appended { message, duplicate: false, notification: None, delivered: None }))
    }

    /// The message an edit or deletion names, as the transaction sees it, and its rowid
    /// (its row in the search index).
    fn target(&self, id: Uuid) -> rusqlite::Result<Option<(Target, i64)>> {
        self.db
            .prepare_cached(
                "SELECT conversation_id, sender_id, kind, file_id, deleted_at, rowid FROM messages WHERE id = ?1",
            )?
            .query_row(params![id.as_bytes()], |r| {
                let target = Target {
                    conversation_id: ConversationId(uuid_at(r, 0)?),
                    sender_id: UserId(uuid_at(r, 1)?),
                    kind: text_at(r, 2, MessageKind::parse)?,
                    file_id: opt_uuid_at(r, 3)?.map(FileId),
                    deleted: r.get::<_, Option<i64>>(4)?.is_some(),
                };
                Ok((target, r.get(5)?))
            })
            .optional()
    }

    /// Deletes message `id` for both participants: erases its text and file link and
    /// those of its edit entries, and removes the file's record (no more downloads).
    fn erase(&self, id: Uuid, file: Option<FileId>) -> rusqlite::Result<()> {
        self.supersede_edits(id, None)?;
        self.db
            .prepare_cached(
                "UPDATE messages SET body = '', file_id = NULL, edited_at = NULL, deleted_at = ?1 WHERE id = ?2",
            )?
            .execute(params![self.now, id.as_bytes()])?;
        if let Some(file) = file {
            // The upload that made it goes too (its name and hash), as
            // `chat::erase_file` does; the bytes after the commit, if unshared.
            let file = file.0.as_bytes();
            self.db
                .prepare_cached(
                    "DELETE FROM transfer_chunks WHERE transfer_id IN (SELECT id FROM transfers WHERE file_id = ?1)",
                )?
                .execute(params![file])?;
            self.db.prepare_cached("DELETE FROM transfers WHERE file_id = ?1")?.execute(params![file])?;
            self.db.prepare_cached("DELETE FROM files WHERE id = ?1")?.execute(params![file])?;
        }
        Ok(())
    }

    /// The earlier edit entries of message `id` (all but `keep`) lose their text: a newer
    /// edit supersedes them, a deletion erases them. They stay in the stream, `deleted`.
    fn supersede_edits(&self, id: Uuid, keep: Option<Uuid>) -> rusqlite::Result<()> {
        self.db
            .prepare_cached(
                "UPDATE messages SET body = '', deleted_at = ?1 WHERE target_id = ?2 AND kind = 'edit' \
                 AND deleted_at IS NULL AND (?3 IS NULL OR id <> ?3)",
            )?
            .execute(params![self.now, id.as_bytes(), keep.map(|k| *k.as_bytes())])?;
        Ok(())
    }

    /// The message `sender` stored with `client_msg_id`, if any (a resend).
    fn stored_message(&self, sender: Uuid, client_msg_id: &str) -> rusqlite::Result<Option<StoredMessage>> {
        self.db
            .prepare_cached(concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2"
            ))?
            .query_row(params![sender.as_bytes(), client_msg_id], message_at)
            .optional()
    }

    /// Writes back the counters the batch's appends raised (last, before the commit).
    pub(crate) fn finish(&mut self) -> rusqlite::Result<()> {
        for id in std::mem::take(&mut self.raised) {
            if let Some(Some(c)) = self.known.conversations.get_mut(&id) {
                self.db
                    .prepare_cached("UPDATE conversations SET last_seq = ?1, updated_at = ?2 WHERE id = ?3")?
                    .execute(params![c.last_seq, self.now, id.as_bytes()])?;
                c.raised = false;
            }
        }
        Ok(())
    }

    /// The receipt markers of (conversation, user) as stored: delivered and read seqs
    /// (`None`: no row; not kept, the next raise writes one).
    fn receipt(&self, key: (Uuid, Uuid)) -> rusqlite::Result<Option<(i64, i64)>> {
        if let Some(&stored) = self.known.receipts.get(&key) {
            return Ok(Some(stored));
        }
        self.db
            .prepare_cached("SELECT delivered_seq, read_seq FROM receipts WHERE conversation_id = ?1 AND user_id = ?2")?
            .query_row(params![key.0.as_bytes(), key.1.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
    }

    /// `user`'s read marker in `conversation` as stored (0: none), for the notifications
    /// written in the same transaction.
    pub(crate) fn read_seq(&mut self, user: UserId, conversation: ConversationId) -> rusqlite::Result<i64> {
        let key = (conversation.0, user.0);
        let stored = self.receipt(key)?;
        if let Some(stored) = stored {
            self.known.receipts.insert(key, stored);
        }
        Ok(stored.map_or(0, |(_, read)| read))
    }

    /// Raises a user's markers (never lowers them; read implies delivered; both capped at
    /// the last seq, counting this batch's appends).
    pub(crate) fn raise_receipt(&mut self, r: &RaiseReceipt) -> rusqlite::Result<Result<Receipt, StoreError>> {
        let RaiseReceipt { conversation, user, delivered, read } = *r;
        let last = match self.conversation(conversation.0)? {
            Some(c) if c.has(user.0) => c.last_seq,
            _ => return Ok(Err(NOT_FOUND)),
        };
        let read = read.map_or(0, |s| s.clamp(0, last));
        let delivered = delivered.map_or(0, |s| s.clamp(0, last)).max(read);
        let key = (conversation.0, user.0);
        let stored = self.receipt(key)?;
        // Never lowered; written only when raised (a repeated marker writes nothing).
        let (delivered_seq, read_seq) = stored.map_or((delivered, read), |(d, r)| (d.max(delivered), r.max(read)));
        match stored {
            Some(old) if old == (delivered_seq, read_seq) => {}
            Some(_) => {
                self.db
                    .prepare_cached(
                        "UPDATE receipts SET delivered_seq = ?1, read_seq = ?2, updated_at = ?3 \
                         WHERE conversation_id = ?4 AND user_id = ?5",
                    )?
                    .execute(params![delivered_seq, read_seq, self.now, key.0.as_bytes(), key.1.as_bytes()])?;
            }
            None => {
                self.db
                    .prepare_cached(
                        "INSERT INTO receipts (conversation_id, user_id, delivered_seq, read_seq, updated_at) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                    )?
                    .execute(params![key.0.as_bytes(), key.1.as_bytes(), delivered_seq, read_seq, self.now])?;
            }
        }
        self.known.receipts.insert(key, (delivered_seq, read_seq));
        Ok(Ok(Receipt { conversation_id: conversation, user_id: user, delivered_seq, read_seq }))
    }
}
