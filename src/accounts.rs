//! An account's whole life across the services: deleting it, and exporting what it holds.
//! Used by the REST API (`DELETE /api/auth/me`, `GET /api/auth/me/export`) and the
//! operator's command line (`switchboard user delete`).
//!
//! ## What deleting an account leaves (docs/api.md, "Deleting an account")
//!
//! - The user row stays, because the messages the other participants keep name it as
//!   their sender, but it holds nothing of the person: username `~<id>` (the name
//!   is free to register again: a name is not a person, and reserving it would let one
//!   deleted account hold a name for ever; the new holder is a different id, with no
//!   contacts and no conversations), display name "Deleted user", no password, disabled.
//! - Every login ends, with its sockets and streams, on every node.
//! - Contacts are removed and pending requests cancelled or declined (the other side is
//!   told, as when done by hand), then every contact row and block involving the user is
//!   deleted; uploads in progress between them fail. No one can message the deleted
//!   account (messages need an accepted contact) or find it (search skips it).
//! - Its notifications are deleted, and other users' notifications about it lose its
//!   names (username null, display name "Deleted user").
//! - Conversations and their messages stay for the other participant (they are theirs
//!   too), attributed to "Deleted user"; the files in them stay downloadable by that
//!   participant alone, since no one else can log in as the deleted user.

use hyper::body::Bytes;
use serde::Serialize;
use switchboard_actors::ports::ChatStore;
use tokio::sync::mpsc;

use crate::auth::service::AuthService;
use crate::auth::users::{DELETED_NAME, UserRepo};
use crate::contacts::service::ContactsService;
use crate::domain::UserId;
use crate::error::AppError;
use crate::messaging::chat::ChatRepo;
use crate::notify::repo::NotificationRepo;

/// The services an account's life touches.
#[derive(Clone, Debug)]
pub struct Accounts {
    pub auth: AuthService,
    pub users: UserRepo,
    pub contacts: ContactsService,
    pub chat: ChatRepo,
    pub notifications: NotificationRepo,
}

impl Accounts {
    /// Deletes `user`'s account (see the module's documentation for what stays). The
    /// password is checked by the caller (the API) or not at all (the operator). False if
    /// there was no such account (or it was deleted already).
    pub async fn delete(&self, user: UserId) -> Result<bool, AppError> {
        // First the row: from here on no password logs in and no refresh renews, so no
        // new login can start while the rest goes.
        if !self.users.anonymize(user, crate::now_ms()).await? {
            return Ok(false);
        }
        let ended = self.auth.end_logins(user, None).await?;
        self.contacts.announce_profile(user, DELETED_NAME).await;
        self.contacts.forget(user).await.map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?;
        let notifications = self.notifications.forget(user).await?;
        self.notifications.forget_sender(user, DELETED_NAME).await?;
        tracing::info!(user_id = %user, logins_ended = ended, notifications, "account deleted");
        Ok(true)
    }

    /// Streams `user`'s data as one JSON document (docs/api.md, "Export"), page by page
    /// from the database: at most [`EXPORT_PAGE`] messages are held at a time. The
    /// receiver yields the document's chunks; an `Err` chunk means the export failed
    /// part-way (the response is cut short, so the client sees invalid JSON, never a
    /// complete-looking partial file).
    pub fn export(&self, user: UserId) -> mpsc::Receiver<Result<Bytes, std::io::Error>> {
        let (tx, rx) = mpsc::channel(8);
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.write_export(user, &tx).await {
                tracing::warn!(user_id = %user, error = %e, "export failed part-way");
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
            }
        });
        rx
    }

    async fn write_export(&self, user: UserId, tx: &mpsc::Sender<Result<Bytes, std::io::Error>>) -> anyhow::Result<()> {
        let send = |s: String| async move {
            tx.send(Ok(Bytes::from(s))).await.map_err(|_| anyhow::anyhow!("the client went away"))
        };
        let me = self.users.find(user).await?.ok_or_else(|| anyhow::anyhow!("no such account"))?;
        let contacts = self.contacts.contacts(user).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let blocked = self.contacts.blocked(user).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let head = serde_json::json!({
            "format": "switchboard-export/1",
            "exported_at": crate::now_ms(),
            "user": me,
            "contacts": contacts,
            "blocked": blocked,
        })
        .to_string();
        // The head object, left open for the conversations.
        let head = head.strip_suffix('}').unwrap_or(&head).to_owned();
        send(format!("{head},\"conversations\":[")).await?;
        let conversations = self.chat.conversations_of(user).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        for (i, c) in conversations.iter().enumerate() {
            let peer_id = c.participants.into_iter().find(|p| *p != user).unwrap_or(user);
            let peer = self.users.find(peer_id).await?.map(|u| PeerOut {
                id: u.id,
                username: u.username,
                display_name: u.display_name,
            });
            let open = serde_json::json!({"id": c.id, "peer": peer}).to_string();
            let open = open.strip_suffix('}').unwrap_or(&open).to_owned();
            send(format!("{}{open},\"messages\":[", if i > 0 { "," } else { "" })).await?;
            let mut after = 0;
            let mut first = true;
            loop {
                let page = self.chat.history(c.id, Some(after), None, EXPORT_PAGE).await?;
                let Some(last) = page.last() else { break };
                after = last.seq;
                let mut chunk = String::new();
                for m in &page {
                    if !first {
                        chunk.push(',');
                    }
                    first = false;
                    chunk.push_str(&serde_json::to_string(m)?);
                }
                send(chunk).await?;
                if (page.len() as u64) < EXPORT_PAGE {
                    break;
                }
            }
            send("]}".to_owned()).await?;
        }
        send("]}\n".to_owned()).await?;
        Ok(())
    }
}

/// Messages read per page while exporting.
pub const EXPORT_PAGE: u64 = 500;

/// A conversation's other participant, in an export.
#[derive(Serialize)]
struct PeerOut {
    id: UserId,
    username: String,
    display_name: String,
}
