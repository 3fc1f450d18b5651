//! Bulk set-up for benchmarks and storage tests: pairs of users who are contacts, each
//! with its conversation, written straight into the database (no password hashing, no
//! API round trips). The accounts cannot log in (their password hash is `!`).

use sea_orm::{ActiveValue::Set, DatabaseConnection, DbErr, EntityTrait};

use crate::domain::{ConversationId, UserId};
use crate::storage::entities::{contact, conversation, user};
use switchboard_actors::states::ContactState;

/// Two users who are contacts and the conversation between them.
#[derive(Debug, Clone, Copy)]
pub struct SeededPair {
    pub conversation: ConversationId,
    pub a: UserId,
    pub b: UserId,
}

/// A user row for bulk set-up: `username`, `display_name` (searched lower-cased), no
/// password (cannot log in).
pub fn user_row(id: uuid::Uuid, username: String, display_name: String, now: i64) -> user::ActiveModel {
    user::ActiveModel {
        id: Set(id),
        display_key: Set(display_name.to_lowercase()),
        username: Set(username),
        display_name: Set(display_name),
        password_hash: Set("!".into()),
        created_at: Set(now),
        updated_at: Set(now),
        disabled_at: Set(None),
        deleted_at: Set(None),
        last_seen_at: Set(None),
    }
}

/// Creates `n` pairs named `<tag><i>a` / `<tag><i>b`, 500 per statement.
pub async fn contact_pairs(db: &DatabaseConnection, n: usize, tag: &str) -> Result<Vec<SeededPair>, DbErr> {
    let now = crate::now_ms();
    let mut pairs = Vec::with_capacity(n);
    for start in (0..n).step_by(500) {
        let (mut users, mut contacts, mut conversations) = (vec![], vec![], vec![]);
        for i in start..(start + 500).min(n) {
            let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
            for (id, side) in [(a, "a"), (b, "b")] {
                let name = format!("{tag}{i}{side}");
                users.push(user_row(id, name.clone(), name, now));
            }
            let (low, high) = (a.min(b), a.max(b));
            contacts.push(contact::ActiveModel {
                id: Set(uuid::Uuid::now_v7()),
                user_low: Set(low),
                user_high: Set(high),
                requester_id: Set(a),
                state: Set(ContactState::Accepted.to_string()),
                created_at: Set(now),
                updated_at: Set(now),
            });
            let id = uuid::Uuid::now_v7();
            conversations.push(conversation::ActiveModel {
                id: Set(id),
                user_low: Set(low),
                user_high: Set(high),
                last_seq: Set(0),
                created_at: Set(now),
                updated_at: Set(now),
            });
            pairs.push(SeededPair { conversation: ConversationId(id), a: UserId(a), b: UserId(b) });
        }
        user::Entity::insert_many(users).exec_without_returning(db).await?;
        contact::Entity::insert_many(contacts).exec_without_returning(db).await?;
        conversation::Entity::insert_many(conversations).exec_without_returning(db).await?;
    }
    Ok(pairs)
}
