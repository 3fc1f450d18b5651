//! The contacts service: each change to a relation, with its consequences. The state
//! machine itself (which transitions are allowed, races) is the repository's
//! ([`super::repo`]); this adds what a change means beyond its row:
//!
//! - every change is published to both users (`contact` events: their live sessions, and
//!   the notify service for requests and acceptances);
//! - an acceptance opens the pair's conversation (files can go before a first message, and
//!   each side's sessions learn the other's presence);
//! - a block ends the relation and fails the uploads under way between the two (the
//!   blocked user could otherwise keep putting `transfer` frames, with names of their
//!   choosing, in front of the blocker).
//!
//! Publishing is best effort: the database is the record, and clients read it on load.

use std::sync::Arc;

use sea_orm::DbErr;
use switchboard_actors::ports::{Bus, ChatStore, Envelope, Event};
use switchboard_actors::states::{ContactChangeKind, ContactState};
use uuid::Uuid;

use super::repo::{ContactError, ContactRepo, ContactRequest, ContactView, RequestOutcome, RequestView, SearchHit};
use crate::auth::users::UserRepo;
use crate::domain::{UserId, Username};

/// The uploads between two users, which a block ends (implemented by messaging's file
/// repository): the service depends on this port, not on messaging, which depends on the
/// contact rules.
#[async_trait::async_trait]
pub trait Uploads: Send + Sync {
    /// Fails every upload in progress between `a` and `b`; the events that tell each
    /// uploader.
    async fn fail_between(&self, a: UserId, b: UserId) -> Result<Vec<Event>, DbErr>;
}

#[derive(Clone)]
pub struct ContactsService {
    contacts: ContactRepo,
    users: UserRepo,
    /// Where an acceptance opens the pair's conversation (the actors' port).
    chat: Arc<dyn ChatStore>,
    uploads: Arc<dyn Uploads>,
    bus: Arc<dyn Bus>,
}

impl std::fmt::Debug for ContactsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactsService").finish_non_exhaustive()
    }
}

impl ContactsService {
    pub fn new(
        contacts: ContactRepo,
        users: UserRepo,
        chat: Arc<dyn ChatStore>,
        uploads: Arc<dyn Uploads>,
        bus: Arc<dyn Bus>,
    ) -> Self {
        Self { contacts, users, chat, uploads, bus }
    }

    /// `me` asks the user named `username`. [`RequestOutcome::Accepted`] when that user had
    /// asked first (the two are contacts now). An unknown or malformed name is not found.
    pub async fn request(&self, me: UserId, username: &str) -> Result<(ContactRequest, RequestOutcome), ContactError> {
        let username = Username::parse(username).map_err(|_| ContactError::NotFound)?;
        let target = self.users.find_by_username(&username).await?.ok_or(ContactError::NotFound)?;
        let (request, outcome) = self.contacts.request(me, target.id).await?;
        match outcome {
            RequestOutcome::Created => self.publish(ContactChangeKind::Requested, &request).await,
            RequestOutcome::Accepted => self.publish(ContactChangeKind::Accepted, &request).await,
            RequestOutcome::Unchanged => {}
        }
        Ok((request, outcome))
    }

    /// The addressee accepts or declines a pending request (the same answer twice is fine).
    pub async fn answer(&self, me: UserId, id: Uuid, accept: bool) -> Result<ContactRequest, ContactError> {
        let (request, changed) = self.contacts.answer(me, id, accept).await?;
        if changed {
            let kind = if accept { ContactChangeKind::Accepted } else { ContactChangeKind::Declined };
            self.publish(kind, &request).await;
        }
        Ok(request)
    }

    /// The requester withdraws a pending request (twice is fine).
    pub async fn cancel(&self, me: UserId, id: Uuid) -> Result<ContactRequest, ContactError> {
        let (request, changed) = self.contacts.cancel(me, id).await?;
        if changed {
            self.publish(ContactChangeKind::Cancelled, &request).await;
        }
        Ok(request)
    }

    /// Either side ends an accepted contact (history stays; twice is fine).
    pub async fn remove(&self, me: UserId, other: UserId) -> Result<(), ContactError> {
        let (request, changed) = self.contacts.remove(me, other).await?;
        if changed {
            self.publish(ContactChangeKind::Removed, &request).await;
        }
        Ok(())
    }

    /// `me` blocks `other`: the relation ends (contact removed, request cancelled or
    /// declined) and uploads between the two fail.
    pub async fn block(&self, me: UserId, other: UserId) -> Result<(), ContactError> {
        if let Some(ended) = self.contacts.block(me, other).await? {
            let kind = match ended.state {
                ContactState::Cancelled => ContactChangeKind::Cancelled,
                ContactState::Declined => ContactChangeKind::Declined,
                _ => ContactChangeKind::Removed,
            };
            self.publish(kind, &ended).await;
        }
        for event in self.uploads.fail_between(me, other).await? {
            if let Err(e) = self.bus.publish(Envelope::new(event)).await {
                tracing::warn!(error = %e, "cannot tell the uploader their upload failed");
            }
        }
        Ok(())
    }

    /// Lifts a block (they are not contacts again; they may ask anew).
    pub async fn unblock(&self, me: UserId, other: UserId) -> Result<(), ContactError> {
        self.contacts.unblock(me, other).await
    }

    /// The caller's contacts, most recent first.
    pub async fn contacts(&self, me: UserId) -> Result<Vec<ContactView>, ContactError> {
        Ok(self.contacts.contacts(me).await?)
    }

    /// The users the caller blocked, newest first.
    pub async fn blocked(&self, me: UserId) -> Result<Vec<ContactView>, ContactError> {
        Ok(self.contacts.blocked(me).await?)
    }

    /// Pending requests: `(incoming, outgoing)`.
    pub async fn requests(&self, me: UserId) -> Result<(Vec<RequestView>, Vec<RequestView>), ContactError> {
        Ok(self.contacts.requests(me).await?)
    }

    /// Users whose username or display name starts with `prefix` (see
    /// [`ContactRepo::search`]), and the cursor of the next page.
    pub async fn search(
        &self,
        me: UserId,
        prefix: &str,
        limit: u64,
        cursor: Option<&str>,
    ) -> Result<(Vec<SearchHit>, Option<String>), ContactError> {
        Ok(self.contacts.search(me, prefix, limit, cursor).await?)
    }

    /// Ends every relation of `user`, whose account is being deleted: contacts are
    /// removed and pending requests cancelled or declined (each told to the other side, as
    /// if done by hand), uploads between them fail, then every contact row and block
    /// involving `user` is deleted.
    pub async fn forget(&self, user: UserId) -> Result<(), ContactError> {
        for (id, other, state, requester) in self.contacts.relations_of(user).await? {
            let ended = match ContactState::parse(&state) {
                Some(ContactState::Accepted) => self.remove(user, other).await,
                Some(ContactState::Pending) if requester == user => self.cancel(user, id).await.map(|_| ()),
                Some(ContactState::Pending) => self.answer(user, id, false).await.map(|_| ()),
                _ => Ok(()),
            };
            if let Err(e) = ended {
                tracing::warn!(error = %e, "a relation of a deleted account did not end cleanly");
            }
            self.fail_uploads(user, other).await;
        }
        self.contacts.forget(user).await?;
        Ok(())
    }

    /// Fails the uploads between `a` and `b`, telling each uploader.
    async fn fail_uploads(&self, a: UserId, b: UserId) {
        match self.uploads.fail_between(a, b).await {
            Ok(events) => {
                for event in events {
                    if let Err(e) = self.bus.publish(Envelope::new(event)).await {
                        tracing::warn!(error = %e, "transfer event not published");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "uploads not failed"),
        }
    }

    /// Tells `user`'s devices and contacts that they are now called `display_name`
    /// (`profile` frames). Best effort, like every change told here: lists read on load
    /// show the new name regardless.
    pub async fn announce_profile(&self, user: UserId, display_name: &str) {
        let contacts = match self.contacts.contacts(user).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "contacts not told of a new display name");
                vec![]
            }
        };
        for to in std::iter::once(user).chain(contacts.into_iter().map(|c| c.user.id)) {
            let event = Event::Profile { to, user_id: user, display_name: display_name.to_owned() };
            if let Err(e) = self.bus.publish(Envelope::new(event)).await {
                tracing::warn!(error = %e, "profile event not published");
            }
        }
    }

    /// Tells both users of a request that it changed; an acceptance first opens their
    /// conversation.
    async fn publish(&self, kind: ContactChangeKind, r: &ContactRequest) {
        if kind == ContactChangeKind::Accepted
            && let Err(e) = self.chat.open_conversation(r.requester_id, r.addressee_id).await
        {
            tracing::warn!(error = %e, "conversation for new contacts not opened");
        }
        for to in [r.requester_id, r.addressee_id] {
            let event = Envelope::new(Event::Contact { to, change: r.change(kind) });
            if let Err(e) = self.bus.publish(event).await {
                tracing::warn!(error = %e, "contact event not published");
            }
        }
    }
}
