//! The notify slice: notifications.
//!
//! - This module: the consumer, which turns bus events into stored notifications and
//!   tells the user's devices (chat sockets, notification streams) through the bus.
//! - [`repo`]: their storage (one message notification per conversation, updated in
//!   place; unread counts), the actors' `NotificationStore`; the writes as frequent as
//!   messages go through its `NotificationWrites` port to the committer
//!   ([`crate::writer`]).
//! - [`sqlite_writes`]: those writes as the SQLite writer thread runs them.
//! - [`routes`]: `/api/notifications*`: list, mark read, the live stream (SSE).
//!
//! The consumer:
//!
//! - With RabbitMQ it consumes the durable queue `<prefix>.notify`, to which publishers
//!   send, in batches, the events it [`wants`]; a batch is acked after its events are
//!   stored, so while the service is down events wait in the queue and it catches up when
//!   it returns. A redelivered event changes nothing (docs/broker.md).
//! - With the in-process bus (one process) it reads a tap of the published events it
//!   wants, but for the messages whose notification their append already wrote
//!   (`notified`: [`crate::messaging::chat::ChatRepo::with_inline_notifications`]).
//!
//! What makes a notification: messages to you from someone else (`message`, one per
//! conversation, updated in place), a contact request to you (`contact_request`), your
//! request accepted (`contact_accepted`). Your own read marker in a conversation counts
//! its messages up to that seq read; a request answered or withdrawn (on any device)
//! counts its `contact_request` notification read.

pub mod repo;
pub mod routes;
pub(crate) mod sqlite_writes;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use switchboard_actors::ids::{ConversationId, UserId};
use switchboard_actors::ports::{Bus, Envelope, Event, Receipt, StoredMessage};
use switchboard_actors::states::{ContactChangeKind, MessageKind, NotificationKind};

use crate::bus::{Topology, declare_common};
use crate::config::{BusConfig, NotifyConfig, Secret};
use crate::notify::repo::NotificationRepo;
use crate::notify::repo::{NewNotification, Recorded};

/// Refusals of a write by a database that answers before the events are handled one at
/// a time, and before one event is left out.
const REFUSALS: u32 = 3;

/// Whether `e` is the database refusing what was written (a constraint: foreign key,
/// unique, not null, check), which trying again will not change; SQLite and PostgreSQL
/// both name the constraint in the message.
fn refuses(e: &sea_orm::DbErr) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    // Not "no unique constraint matching the ON CONFLICT" (a schema behind the code):
    // that refuses every event alike, and waits for the migration.
    text.contains("constraint") && !text.contains("on conflict")
}

/// Events waiting for the in-process consumer before publishers wait (one process, no
/// broker; with RabbitMQ the durable queue holds them). Absorbs bursts (about 30 MB when
/// full); a sustained rate above what notify can store slows the senders instead.
pub const TAP_QUEUE: usize = 65_536;

/// The events the notify consumer reads: what publishers send to its queue, and what the
/// in-process tap takes. (Not the
/// `notification` events it publishes itself, not the sender's own copy of a message,
/// and of receipts only a reader's own, which carries their read marker.)
pub fn wants(event: &Event) -> bool {
    match event {
        // Not a message whose notification its append wrote ([`Event::MessageCreated`]'s
        // `notified`).
        Event::MessageCreated { to, message, notified, .. } => message.sender_id != *to && !notified,
        Event::Receipt { to, receipt } => receipt.user_id == *to,
        Event::Contact { change, .. } => matches!(
            change.kind,
            ContactChangeKind::Requested
                | ContactChangeKind::Accepted
                | ContactChangeKind::Declined
                | ContactChangeKind::Cancelled
        ),
        _ => false,
    }
}

/// A request answered or withdrawn, to its addressee: their "wants to be your contact"
/// notification is done with, wherever it was acted on.
fn request_settled(event: &Event) -> Option<(UserId, uuid::Uuid)> {
    match event {
        Event::Contact { to, change }
            if change.addressee_id == *to
                && matches!(
                    change.kind,
                    ContactChangeKind::Accepted | ContactChangeKind::Declined | ContactChangeKind::Cancelled
                ) =>
        {
            Some((*to, change.request_id))
        }
        _ => None,
    }
}

/// A reader's own receipt with a read marker (the one that clears their notifications):
/// the reader and the receipt.
fn own_read(event: &Event) -> Option<(UserId, &Receipt)> {
    match event {
        Event::Receipt { to, receipt } if receipt.user_id == *to && receipt.read_seq > 0 => Some((*to, receipt)),
        _ => None,
    }
}

/// The positions of the read receipts in `envelopes` that a later one of the same reader
/// and conversation, as high or higher, makes moot: that one clears whatever they would,
/// including notifications stored between them. Each read waits for a commit of its own,
/// so a run of reads (one person reading fast, or many frames) costs one wait, not one
/// per receipt.
fn superseded_reads(envelopes: &[Envelope]) -> std::collections::HashSet<usize> {
    use std::collections::hash_map::Entry;
    let mut later: std::collections::HashMap<(UserId, ConversationId), i64> = std::collections::HashMap::new();
    let mut superseded = std::collections::HashSet::new();
    for (i, envelope) in envelopes.iter().enumerate().rev() {
        let Some((reader, receipt)) = own_read(&envelope.event) else { continue };
        match later.entry((reader, receipt.conversation_id)) {
            Entry::Occupied(highest) if *highest.get() >= receipt.read_seq => {
                superseded.insert(i);
            }
            Entry::Occupied(mut highest) => {
                highest.insert(receipt.read_seq);
            }
            Entry::Vacant(slot) => {
                slot.insert(receipt.read_seq);
            }
        }
    }
    superseded
}

/// Most events handled in one transaction.
const BATCH: usize = 256;

/// Longest message preview kept in a notification, in characters.
const PREVIEW_CHARS: usize = 140;

/// Turns events into notifications, and changes them for their user (marking read), each
/// time telling the user's devices.
#[derive(Clone)]
pub struct Notifier {
    notifications: NotificationRepo,
    bus: Arc<dyn Bus>,
    config: NotifyConfig,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(notifications: NotificationRepo, bus: Arc<dyn Bus>, config: NotifyConfig) -> Self {
        Self { notifications, bus, config }
    }

    /// Handles a run of events, in order. `Ok` means all are done (stored, or nothing to
    /// store): ack them all. `Err` is a storage failure: retry the whole run later (what
    /// was stored is not stored twice). Consecutive notifications are stored in one
    /// transaction; a read marker first stores what came before it, then clears.
    pub async fn handle_batch(&self, envelopes: &[Envelope]) -> Result<(), sea_orm::DbErr> {
        let mut pending = Vec::new();
        let superseded = superseded_reads(envelopes);
        for (i, envelope) in envelopes.iter().enumerate() {
            if let Some((to, receipt)) = own_read(&envelope.event) {
                if !superseded.contains(&i) {
                    self.store(std::mem::take(&mut pending)).await?;
                    let read =
                        self.notifications.read_conversation(to, receipt.conversation_id, receipt.read_seq).await?;
                    if let Some(unread) = read {
                        self.publish(Event::Notification { to, notification: None, unread }).await;
                    }
                }
                continue;
            }
            match &envelope.event {
                Event::MessageCreated { to, message, .. } if message.kind.is_change() && message.sender_id != *to => {
                    // After what came before (the changed message's own notification).
                    self.store(std::mem::take(&mut pending)).await?;
                    if let Some(target) = message.target_id {
                        let changed = self
                            .notifications
                            .follow_change(*to, message.conversation_id, target.0, PREVIEW_CHARS)
                            .await?;
                        if let Some(view) = changed {
                            let unread = self.notifications.unread_counts(*to).await?;
                            self.publish(Event::Notification { to: *to, notification: Some(view), unread }).await;
                        }
                    }
                }
                event => {
                    if let Some((user, request)) = request_settled(event) {
                        self.store(std::mem::take(&mut pending)).await?;
                        if self.notifications.read_request(user, request, crate::now_ms()).await? > 0 {
                            self.publish_counts(user).await?;
                        }
                    }
                    if let Some(new) = notification_for(envelope.id.0, event) {
                        pending.push(new);
                    }
                }
            }
        }
        self.store(pending).await
    }

    /// Stores `news` and tells each user's devices about theirs, with the unread counts
    /// (both from the storing transaction).
    async fn store(&self, news: Vec<NewNotification>) -> Result<(), sea_orm::DbErr> {
        let Recorded { stored, unread } = self.notifications.record_batch(news, self.config.max_per_user).await?;
        for (user, view) in stored {
            let counts = unread.get(&user).cloned().unwrap_or_default();
            self.publish(Event::Notification { to: user, notification: Some(view), unread: counts }).await;
        }
        Ok(())
    }

    /// Publishes a notification event; a failure costs live delivery only (the
    /// notification is stored: streams and sockets get it on their next catch-up).
    async fn publish(&self, event: Event) {
        if let Err(e) = self.bus.publish(Envelope::new(event)).await {
            tracing::debug!(error = %e, "cannot publish a notification");
        }
    }

    /// Marks one of `user`'s notifications read and tells their devices the new counts;
    /// `false` (nothing changed) if it is not one of theirs.
    pub async fn mark_read(&self, user: UserId, id: uuid::Uuid) -> Result<bool, sea_orm::DbErr> {
        if !self.notifications.mark_read(user, id, crate::now_ms()).await? {
            return Ok(false);
        }
        self.publish_counts(user).await?;
        Ok(true)
    }

    /// Marks all of `user`'s notifications read; their devices get the new counts if any
    /// was unread.
    pub async fn mark_all_read(&self, user: UserId) -> Result<(), sea_orm::DbErr> {
        if self.notifications.mark_all_read(user, crate::now_ms()).await? > 0 {
            self.publish_counts(user).await?;
        }
        Ok(())
    }

    /// Tells `user`'s devices their unread counts (or mutes) changed.
    pub async fn publish_counts(&self, user: UserId) -> Result<(), sea_orm::DbErr> {
        let unread = self.notifications.unread_counts(user).await?;
        self.publish(Event::Notification { to: user, notification: None, unread }).await;
        Ok(())
    }

    /// Deletes notifications past the retention period, every `every`.
    pub async fn run_retention(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let cutoff = crate::now_ms() - self.config.retention_days as i64 * 86_400_000;
            match self.notifications.expire(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired old notifications"),
                Err(e) => tracing::warn!(error = %e, "notification retention failed"),
            }
        }
    }

    /// Handles with retries: a storage failure waits and tries again, so an event is
    /// never dropped for a transient error. `false` only when stopped first.
    ///
    /// A batch the database keeps refusing by a constraint while it answers holds an event
    /// it can never store (one that names a user or conversation the database does not
    /// have, say); any other error (locked, unreachable, out of space) is an outage, waited
    /// out however long it lasts:
    /// after [`REFUSALS`] tries the events are handled one at a time, and an event refused
    /// on its own [`REFUSALS`] times while the database answers is logged and left out,
    /// so one bad event never stops the queue behind it.
    async fn handle_patiently(&self, envelopes: &[Envelope], stop: &CancellationToken) -> bool {
        let mut wait = Duration::from_millis(100);
        let mut refused = 0;
        loop {
            let e = match self.handle_batch(envelopes).await {
                Ok(()) => return true,
                Err(e) => e,
            };
            if refuses(&e) && self.notifications.database_answers().await {
                refused += 1;
                if refused >= REFUSALS {
                    return self.handle_one_by_one(envelopes, stop).await;
                }
            }
            tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot store notifications");
            tokio::select! {
                _ = stop.cancelled() => return false,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn handle_one_by_one(&self, envelopes: &[Envelope], stop: &CancellationToken) -> bool {
        for envelope in envelopes {
            let mut refused = 0;
            let mut wait = Duration::from_millis(100);
            loop {
                let e = match self.handle_batch(std::slice::from_ref(envelope)).await {
                    Ok(()) => break,
                    Err(e) => e,
                };
                if refuses(&e) && self.notifications.database_answers().await {
                    refused += 1;
                    if refused >= REFUSALS {
                        tracing::error!(event = %envelope.id.0, kind = %envelope.event.routing_key(), error = %e, "the database refuses this event's notification; left out");
                        break;
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
        true
    }

    /// Consumes the in-process tap (one process, no broker): whatever is waiting, up to
    /// [`BATCH`] events, per transaction.
    pub async fn run_tap(self, mut rx: mpsc::Receiver<Envelope>, stop: CancellationToken) {
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let n = tokio::select! {
                _ = stop.cancelled() => return,
                n = rx.recv_many(&mut batch, BATCH) => n,
            };
            if n == 0 || !self.handle_patiently(&batch, &stop).await {
                return;
            }
            batch.clear();
        }
    }

    /// Consumes the durable notify queue, reconnecting with backoff, until `stop`. The
    /// deliveries already received (up to [`BATCH`]) are handled together and acked
    /// together, after their transaction commits.
    pub async fn run_amqp(self, url: Secret, node_id: String, config: BusConfig, stop: CancellationToken) {
        let topology = Topology::new(&config.prefix, &node_id);
        let queue = notify_queue(&config.prefix);
        let mut backoff = Duration::from_millis(100);
        loop {
            let attempt = tokio::select! {
                _ = stop.cancelled() => return,
                r = connect_notify(&url, &node_id, &topology, &queue, &config) => r,
            };
            match attempt {
                Ok((connection, consumer)) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(queue = %queue, "notify consumer up");
                    let mut deliveries = consumer.ready_chunks(BATCH);
                    'link: loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => {
                                let _ = connection.close(200, "shutdown".into()).await;
                                return;
                            }
                            d = deliveries.next() => d,
                        };
                        let Some(chunk) = next else { break };
                        let mut envelopes = Vec::with_capacity(chunk.len());
                        let mut last = None;
                        let mut unreadable = vec![];
                        let mut failed = None;
                        for d in chunk {
                            match d {
                                Ok(d) => {
                                    let decoded = crate::bus::batch::decode(&d.data);
                                    envelopes.extend(decoded.envelopes);
                                    if decoded.unreadable == 0 {
                                        last = Some(d);
                                    } else {
                                        tracing::warn!(
                                            unreadable = decoded.unreadable,
                                            "unreadable events; the delivery is dead-lettered once its readable events are stored"
                                        );
                                        unreadable.push(d);
                                    }
                                }
                                Err(e) => failed = Some(e),
                            }
                        }
                        if !envelopes.is_empty() || !unreadable.is_empty() {
                            if self.handle_patiently(&envelopes, &stop).await {
                                // Rejected before the `multiple` ack, which would
                                // settle them too.
                                for d in unreadable {
                                    let _ = d.reject(BasicRejectOptions { requeue: false }).await;
                                }
                                // One ack for the run (every delivery up to the last).
                                if let Some(last) = last {
                                    let _ = last.ack(BasicAckOptions { multiple: true }).await;
                                }
                            } else if let Some(last) = last {
                                let _ = last.nack(BasicNackOptions { requeue: true, multiple: true }).await;
                            }
                        }
                        if let Some(e) = failed {
                            tracing::warn!(error = %e, "notify consumer failed");
                            break 'link;
                        }
                    }
                    tracing::warn!("notify consumer lost its link; reconnecting");
                }
                Err(e) if crate::bus::declaration_refused(&e) => {
                    tracing::error!(error = %e, "notify consumer: {}", crate::bus::DECLARATION_REFUSED)
                }
                Err(e) => tracing::warn!(error = %e, "notify consumer cannot reach the broker"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_millis(config.reconnect_max_ms));
        }
    }
}

/// For an event that makes a notification: its recipient, kind, and the user it is from.
fn notification_source(event: &Event) -> Option<(UserId, NotificationKind, UserId)> {
    match event {
        Event::Contact { to, change } if change.kind == ContactChangeKind::Requested && change.addressee_id == *to => {
            Some((*to, NotificationKind::ContactRequest, change.requester_id))
        }
        Event::Contact { to, change } if change.kind == ContactChangeKind::Accepted && change.requester_id == *to => {
            Some((*to, NotificationKind::ContactAccepted, change.addressee_id))
        }
        _ => None,
    }
}

/// The notification `event` (bus event `event_id`) makes, if any. The sender's names are
/// added to its payload by the storing transaction ([`NewNotification::from`]).
fn notification_for(event_id: uuid::Uuid, event: &Event) -> Option<NewNotification> {
    if let Event::MessageCreated { to, message, .. } = event {
        return message_notification(event_id, *to, message);
    }
    let (user, kind, from) = notification_source(event)?;
    let Event::Contact { change, .. } = event else { return None };
    let payload = json!({"request_id": change.request_id, "user_id": from});
    Some(NewNotification { user, event_id, kind, conversation_id: None, seq: None, payload, from: Some((from, "")) })
}

/// The notification a new message makes for `to`: none for its sender, and none for an
/// edit or deletion (which changes the notification of its message, if any, instead).
/// Made from the bus event by the notify consumer, or in the append's own transaction
/// when notify runs in the same process ([`crate::writer`]); `event_id` names its cause.
pub(crate) fn message_notification(
    event_id: uuid::Uuid,
    to: UserId,
    message: &StoredMessage,
) -> Option<NewNotification> {
    if message.sender_id == to || message.kind.is_change() {
        return None;
    }
    // A file's notification names the file (its body is the file's JSON description).
    let file_name = (message.kind == MessageKind::File)
        .then(|| serde_json::from_str::<serde_json::Value>(&message.body).ok())
        .flatten()
        .and_then(|d| d["name"].as_str().map(|n| n.chars().take(PREVIEW_CHARS).collect::<String>()));
    let preview: String = match &file_name {
        Some(name) => name.clone(),
        None => message.body.chars().take(PREVIEW_CHARS).collect(),
    };
    let mut payload = json!({
        "message_id": message.id,
        "sender_id": message.sender_id,
        "message_kind": message.kind,
        "preview": preview,
    });
    if let Some(name) = file_name {
        payload["file_name"] = name.into();
    }
    Some(NewNotification {
        user: to,
        event_id,
        kind: NotificationKind::Message,
        conversation_id: Some(message.conversation_id),
        seq: Some(message.seq),
        payload,
        from: Some((message.sender_id, "sender_")),
    })
}

/// The durable queue of the notify service.
pub fn notify_queue(prefix: &str) -> String {
    format!("{prefix}.notify")
}

async fn connect_notify(
    url: &Secret,
    node_id: &str,
    topology: &Topology,
    queue: &str,
    config: &BusConfig,
) -> lapin::Result<(Connection, lapin::Consumer)> {
    let props = ConnectionProperties::default().with_connection_name(format!("switchboard notify {node_id}").into());
    let connection = Connection::connect(url.expose(), props).await?;
    let channel = connection.create_channel().await?;
    // Declares the queue too (every process does: publishers send to it by name).
    declare_common(&channel, topology, config).await?;
    // Handled in delivery order (so a user's notifications are numbered in event order),
    // in runs of what has arrived: the prefetch bounds a run.
    channel.basic_qos(config.prefetch, BasicQosOptions::default()).await?;
    let consumer = channel
        .basic_consume(
            queue.to_owned().into(),
            format!("notify-{node_id}").into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((connection, consumer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_actors::ids::{ConversationId, MessageId};
    use switchboard_actors::ports::{ContactChange, Receipt, StoredMessage};
    use switchboard_actors::states::{ContactState, MessageKind};

    fn events() -> Vec<Event> {
        let (ann, ben) = (UserId::new(), UserId::new());
        let message = StoredMessage {
            id: MessageId::new(),
            conversation_id: ConversationId::new(),
            seq: 1,
            sender_id: ann,
            client_msg_id: "c1".into(),
            kind: MessageKind::Text,
            body: "hi".into(),
            file_id: None,
            created_at: 0,
            target_id: None,
            edited_at: None,
            deleted: false,
        };
        let receipt = Receipt { conversation_id: message.conversation_id, user_id: ben, delivered_seq: 1, read_seq: 1 };
        let change = |kind: ContactChangeKind| ContactChange {
            kind,
            request_id: uuid::Uuid::nil(),
            requester_id: ann,
            addressee_id: ben,
            state: ContactState::Pending,
        };
        let mut out = vec![
            Event::MessageCreated { to: ann, message: message.clone(), frame: None, notified: false, delivered: false },
            Event::MessageCreated { to: ben, message, frame: None, notified: false, delivered: false },
            Event::Receipt { to: ann, receipt },
            Event::Receipt { to: ben, receipt },
            Event::Typing { to: ben, conversation_id: receipt.conversation_id, user_id: ann, active: true },
            Event::Presence { to: ben, user_id: ann, online: true, last_seen_at: None },
        ];
        for kind in ContactChangeKind::ALL.iter().copied() {
            out.push(Event::Contact { to: ann, change: change(kind) });
            out.push(Event::Contact { to: ben, change: change(kind) });
        }
        out
    }

    #[test]
    fn a_later_read_as_high_makes_earlier_ones_of_its_reader_and_conversation_moot() {
        let (ann, ben) = (UserId::new(), UserId::new());
        let (c, d) = (ConversationId::new(), ConversationId::new());
        let read = |user: UserId, conversation: ConversationId, seq: i64| {
            Envelope::new(Event::Receipt {
                to: user,
                receipt: Receipt { conversation_id: conversation, user_id: user, delivered_seq: 0, read_seq: seq },
            })
        };
        let peer = Envelope::new(Event::Receipt {
            to: ben,
            receipt: Receipt { conversation_id: c, user_id: ann, delivered_seq: 0, read_seq: 9 },
        });
        let batch = [
            read(ann, c, 3), // moot: 5 and 7 follow
            read(ann, c, 7), // moot: 7 again follows
            read(ann, d, 9), // another conversation
            read(ben, c, 1), // another reader
            peer,            // to the peer: not a read marker
            read(ann, c, 5), // moot: 7 follows
            read(ann, c, 7), // the last and highest
            read(ann, d, 2), // lower than the 9 before it: kept (it comes after)
        ];
        let mut moot: Vec<usize> = superseded_reads(&batch).into_iter().collect();
        moot.sort_unstable();
        assert_eq!(moot, vec![0, 1, 5]);
        assert!(superseded_reads(&batch[..1]).is_empty());
    }

    #[test]
    fn nothing_notify_acts_on_is_filtered_out() {
        let mut taken = 0;
        for event in events() {
            let read_marker = matches!(&event, Event::Receipt { to, receipt } if receipt.user_id == *to);
            if notification_for(uuid::Uuid::nil(), &event).is_some() || read_marker {
                assert!(wants(&event), "{}", event.routing_key());
                taken += 1;
            }
        }
        // A message to its recipient, a read marker, a request and an acceptance.
        assert_eq!(taken, 4);
    }

    #[test]
    fn a_message_whose_append_wrote_its_notification_stays_off_the_tap() {
        let notified = events()
            .into_iter()
            .filter_map(|e| match e {
                Event::MessageCreated { to, message, frame, .. } if message.sender_id != to => {
                    Some(Event::MessageCreated { to, message, frame, notified: true, delivered: false })
                }
                _ => None,
            })
            .collect::<Vec<_>>();
        assert_eq!(notified.len(), 1);
        assert!(!wants(&notified[0]));
    }

    #[test]
    fn copies_for_the_senders_own_devices_stay_off_the_notify_queue() {
        let keys: Vec<String> = events().iter().filter(|e| !wants(e)).map(Event::routing_key).collect();
        assert!(keys.iter().any(|k| k.ends_with(".message.created.self")), "{keys:?}");
        assert!(keys.iter().any(|k| k.ends_with(".receipt")), "{keys:?}");
    }
}
