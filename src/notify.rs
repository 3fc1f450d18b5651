//! The notify service's consumer: turns bus events into stored notifications and tells
//! the user's devices (chat sockets, notification streams) through the bus.
//!
//! - With RabbitMQ it consumes the durable queue `<prefix>.notify`, bound to the keys it
//!   needs ([`KEYS`]); an event is acked after it is stored, so while the service is down
//!   events wait in the queue and it catches up when it returns. A redelivered event makes
//!   no second notification (unique per user and event id).
//! - With the in-process bus (one process) it reads a tap of every published event.
//!
//! What makes a notification: a message to you from someone else (`message`), a contact
//! request to you (`contact_request`), your request accepted (`contact_accepted`). Your
//! own read marker in a conversation clears its message notifications up to that seq.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use switchboard_actors::ports::{Bus, Envelope, Event};

use crate::bus::{Topology, declare_common};
use crate::config::{BusConfig, NotifyConfig, Secret};
use crate::storage::Storage;
use crate::storage::notifications::NewNotification;

/// Routing keys the notify queue is bound to.
pub const KEYS: &[&str] =
    &["user.*.message.created", "user.*.contact.requested", "user.*.contact.accepted", "user.*.receipt"];

/// Longest message preview kept in a notification, in characters.
const PREVIEW_CHARS: usize = 140;

/// Turns events into notifications.
#[derive(Clone)]
pub struct Notifier {
    storage: Storage,
    bus: Arc<dyn Bus>,
    config: NotifyConfig,
}

impl Notifier {
    pub fn new(storage: Storage, bus: Arc<dyn Bus>, config: NotifyConfig) -> Self {
        Self { storage, bus, config }
    }

    /// Handles one event. `Ok` means done (stored, or nothing to store): ack it. `Err` is
    /// a storage failure: retry later.
    pub async fn handle(&self, envelope: &Envelope) -> Result<(), sea_orm::DbErr> {
        let now = crate::now_ms();
        let new = match &envelope.event {
            Event::MessageCreated { to, message } if message.sender_id != *to => {
                let sender = self.storage.users.find(message.sender_id).await?;
                let preview: String = message.body.chars().take(PREVIEW_CHARS).collect();
                NewNotification {
                    user: *to,
                    event_id: envelope.id.0,
                    kind: "message",
                    conversation_id: Some(message.conversation_id),
                    seq: Some(message.seq),
                    payload: json!({
                        "message_id": message.id,
                        "sender_id": message.sender_id,
                        "sender_username": sender.as_ref().map(|u| u.username.as_str()),
                        "sender_display_name": sender.as_ref().map(|u| u.display_name.as_str()),
                        "message_kind": message.kind,
                        "preview": preview,
                    }),
                }
            }
            Event::Contact { to, change } if change.kind == "requested" && change.addressee_id == *to => {
                let from = self.storage.users.find(change.requester_id).await?;
                NewNotification {
                    user: *to,
                    event_id: envelope.id.0,
                    kind: "contact_request",
                    conversation_id: None,
                    seq: None,
                    payload: json!({
                        "request_id": change.request_id,
                        "user_id": change.requester_id,
                        "username": from.as_ref().map(|u| u.username.as_str()),
                        "display_name": from.as_ref().map(|u| u.display_name.as_str()),
                    }),
                }
            }
            Event::Contact { to, change } if change.kind == "accepted" && change.requester_id == *to => {
                let by = self.storage.users.find(change.addressee_id).await?;
                NewNotification {
                    user: *to,
                    event_id: envelope.id.0,
                    kind: "contact_accepted",
                    conversation_id: None,
                    seq: None,
                    payload: json!({
                        "request_id": change.request_id,
                        "user_id": change.addressee_id,
                        "username": by.as_ref().map(|u| u.username.as_str()),
                        "display_name": by.as_ref().map(|u| u.display_name.as_str()),
                    }),
                }
            }
            Event::Receipt { to, receipt } if receipt.user_id == *to && receipt.read_seq > 0 => {
                let changed = self
                    .storage
                    .notifications
                    .read_conversation(*to, receipt.conversation_id, receipt.read_seq, now)
                    .await?;
                if changed > 0 {
                    self.publish_counts(*to).await?;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        let user = new.user;
        if let Some(view) = self.storage.notifications.record(new, self.config.max_per_user, now).await? {
            let unread = self.storage.notifications.unread_counts(user).await?;
            let event = Event::Notification { to: user, notification: Some(view), unread };
            if let Err(e) = self.bus.publish(Envelope::new(event)).await {
                // Stored: streams and sockets get it on their next catch-up.
                tracing::debug!(error = %e, "cannot publish a notification");
            }
        }
        Ok(())
    }

    /// Tells `user`'s devices their unread counts changed.
    pub async fn publish_counts(&self, user: switchboard_actors::ids::UserId) -> Result<(), sea_orm::DbErr> {
        let unread = self.storage.notifications.unread_counts(user).await?;
        let event = Event::Notification { to: user, notification: None, unread };
        if let Err(e) = self.bus.publish(Envelope::new(event)).await {
            tracing::debug!(error = %e, "cannot publish unread counts");
        }
        Ok(())
    }

    /// Deletes notifications past the retention period, every `every`.
    pub async fn run_retention(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            let cutoff = crate::now_ms() - self.config.retention_days as i64 * 86_400_000;
            match self.storage.notifications.expire(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired old notifications"),
                Err(e) => tracing::warn!(error = %e, "notification retention failed"),
            }
        }
    }

    /// Handles with retries: a storage failure waits and tries again, so an event is
    /// never dropped for a transient error.
    async fn handle_patiently(&self, envelope: &Envelope, stop: &CancellationToken) -> bool {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.handle(envelope).await {
                Ok(()) => return true,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot store a notification");
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Consumes the in-process tap (one process, no broker).
    pub async fn run_tap(self, mut rx: mpsc::UnboundedReceiver<Envelope>, stop: CancellationToken) {
        loop {
            let envelope = tokio::select! {
                _ = stop.cancelled() => return,
                e = rx.recv() => match e { Some(e) => e, None => return },
            };
            if !self.handle_patiently(&envelope, &stop).await {
                return;
            }
        }
    }

    /// Consumes the durable notify queue, reconnecting with backoff, until `stop`.
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
                Ok((connection, mut consumer)) => {
                    backoff = Duration::from_millis(100);
                    tracing::info!(queue = %queue, "notify consumer up");
                    loop {
                        let next = tokio::select! {
                            _ = stop.cancelled() => {
                                let _ = connection.close(200, "shutdown".into()).await;
                                return;
                            }
                            d = consumer.next() => d,
                        };
                        let delivery = match next {
                            Some(Ok(d)) => d,
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "notify consumer failed");
                                break;
                            }
                            None => break,
                        };
                        let Ok(envelope) = serde_json::from_slice::<Envelope>(&delivery.data) else {
                            tracing::warn!(routing_key = %delivery.routing_key, "unreadable event; dead-lettered");
                            let _ = delivery.reject(BasicRejectOptions { requeue: false }).await;
                            continue;
                        };
                        if self.handle_patiently(&envelope, &stop).await {
                            let _ = delivery.ack(BasicAckOptions::default()).await;
                        } else {
                            let _ = delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await;
                        }
                    }
                    tracing::warn!("notify consumer lost its link; reconnecting");
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
    declare_common(&channel, topology, config).await?;
    let mut args = crate::bus::durable_queue_args(config);
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(topology.dead_exchange.clone().into()));
    channel
        .queue_declare(queue.to_owned().into(), QueueDeclareOptions { durable: true, ..Default::default() }, args)
        .await?;
    for key in KEYS {
        channel
            .queue_bind(
                queue.to_owned().into(),
                topology.exchange.clone().into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    // Handled one by one in delivery order (so a user's notifications are numbered in
    // event order); the prefetch only saves round trips.
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
