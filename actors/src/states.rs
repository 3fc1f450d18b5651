//! The states and kinds of Switchboard's things, each an enum that travels as the same
//! string in JSON (the API, the WebSocket, the bus) and in the database. The repositories
//! convert at the storage boundary (the entities keep text columns, so no data migration;
//! this crate stays free of sea-orm), and a value the database holds that is none of these
//! is an error there, not a silent default.

crate::text_enum! {
    /// What a message holds.
    MessageKind {
        /// Text a person typed.
        Text = "text",
        /// A file, posted by the server when an upload completes (`body` is its JSON
        /// description, `file_id` names it).
        File = "file",
        /// A correction of an earlier text message of the same sender (`target_id`):
        /// `body` is its new text. An entry of the conversation's seq stream like any
        /// message, so it reaches every device with the same guarantees; the target's
        /// stored row is changed in the same transaction.
        Edit = "edit",
        /// The deletion of an earlier message of the same sender (`target_id`), for both
        /// participants: the target's text and file link are erased in the same
        /// transaction, a tombstone stays. `body` is empty.
        Delete = "delete",
    }
}

impl MessageKind {
    /// Whether this kind is a change to an earlier message (an edit or a deletion) rather
    /// than a message people see in the list.
    pub fn is_change(self) -> bool {
        matches!(self, MessageKind::Edit | MessageKind::Delete)
    }
}

crate::text_enum! {
    /// What happened to a contact request (the `kind` of a `contact` frame or event).
    ContactChangeKind {
        Requested = "requested",
        Accepted = "accepted",
        Declined = "declined",
        Cancelled = "cancelled",
        Removed = "removed",
    }
}

crate::text_enum! {
    /// Where a contact request stands.
    ContactState {
        /// Sent, not answered.
        Pending = "pending",
        /// The two are contacts.
        Accepted = "accepted",
        Declined = "declined",
        Cancelled = "cancelled",
        /// They were contacts; one removed the other.
        Removed = "removed",
    }
}

crate::text_enum! {
    /// How another user relates to the caller (in user search results).
    Relation {
        /// No request either way.
        None = "none",
        /// The other user asked the caller; unanswered.
        PendingIn = "pending_in",
        /// The caller asked the other user; unanswered.
        PendingOut = "pending_out",
        /// Accepted contacts.
        Contact = "contact",
    }
}

crate::text_enum! {
    /// Where an upload stands.
    TransferState {
        /// Chunks are coming in.
        Uploading = "uploading",
        /// Assembled, verified and posted as a `file` message.
        Complete = "complete",
        /// Refused or broken (blocked meanwhile, a bad assembly).
        Failed = "failed",
        /// Not finished in time.
        Expired = "expired",
    }
}

crate::text_enum! {
    /// What a notification is about.
    NotificationKind {
        /// New messages in a conversation (one per conversation, updated in place).
        Message = "message",
        /// Someone asked to be your contact.
        ContactRequest = "contact_request",
        /// Your contact request was accepted.
        ContactAccepted = "contact_accepted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_travel_as_their_text_and_refuse_anything_else() {
        for kind in MessageKind::ALL {
            let json = serde_json::to_string(kind).expect("serialises");
            assert_eq!(json, format!("\"{kind}\""));
            assert_eq!(serde_json::from_str::<MessageKind>(&json).expect("parses"), *kind);
        }
        assert_eq!(ContactState::parse("pending"), Some(ContactState::Pending));
        assert_eq!(TransferState::parse("Uploading"), None, "exact text only");
        let e = serde_json::from_str::<NotificationKind>("\"mesage\"").expect_err("a typo");
        assert!(e.to_string().contains("expected one of message, contact_request, contact_accepted"), "{e}");
    }
}
