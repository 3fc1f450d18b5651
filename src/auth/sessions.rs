//! The login-sessions repository: one row per issued access token, keyed by its `jti`.
//!
//! A token is valid only while its row exists, belongs to the token's user, is not
//! revoked and has not expired, so logout takes effect at once in every service that
//! shares the database.

use std::sync::Arc;

use rusqlite::OptionalExtension;
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};

use crate::domain::{SessionId, UserId};
use crate::storage::entities::login_session;
use crate::storage::readers::Readers;

#[derive(Clone, Debug)]
pub struct SessionRepo {
    db: DatabaseConnection,
    /// On a SQLite file, [`Self::is_active`] (every socket and request checks it) reads
    /// here, without a thread hand-off.
    readers: Option<Arc<Readers>>,
}

impl SessionRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        let readers = Readers::for_db(&db);
        Self::sharing(db, readers)
    }

    /// The repository reading through `readers` (another repository's, so one process
    /// keeps one set of reader connections per repository that owns them).
    pub(crate) fn sharing(db: DatabaseConnection, readers: Option<Arc<Readers>>) -> Self {
        Self { db, readers }
    }

    /// Records a newly issued token.
    pub async fn create(
        &self,
        id: SessionId,
        user: UserId,
        now: i64,
        expires_at: i64,
        user_agent: Option<String>,
    ) -> Result<(), DbErr> {
        login_session::ActiveModel {
            id: Set(id.0),
            user_id: Set(user.0),
            created_at: Set(now),
            expires_at: Set(expires_at),
            revoked_at: Set(None),
            user_agent: Set(user_agent),
        }
        .insert(&self.db)
        .await?;
        Ok(())
    }

    /// True if the session exists for `user`, is not revoked and has not expired.
    pub async fn is_active(&self, id: SessionId, user: UserId, now: i64) -> Result<bool, DbErr> {
        if let Some(readers) = &self.readers {
            let row: Option<(Vec<u8>, Option<i64>, i64)> = readers
                .read(|c| {
                    c.prepare_cached("SELECT user_id, revoked_at, expires_at FROM login_sessions WHERE id = ?1")?
                        .query_row([id.0.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .optional()
                })
                .map_err(|e| DbErr::Custom(e.to_string()))?;
            return Ok(row.is_some_and(|(owner, revoked_at, expires_at)| {
                owner == user.0.as_bytes() && revoked_at.is_none() && expires_at > now
            }));
        }
        let row = login_session::Entity::find_by_id(id.0).one(&self.db).await?;
        Ok(row.is_some_and(|s| s.user_id == user.0 && s.revoked_at.is_none() && s.expires_at > now))
    }

    /// Revokes the session; revoking twice is harmless.
    pub async fn revoke(&self, id: SessionId, now: i64) -> Result<(), DbErr> {
        login_session::Entity::update_many()
            .col_expr(login_session::Column::RevokedAt, Expr::value(now))
            .filter(login_session::Column::Id.eq(id.0))
            .filter(login_session::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(())
    }

    /// Deletes sessions that expired before `before`; returns how many. Their tokens are
    /// rejected by their own `exp` already, so the rows are no longer needed.
    pub async fn purge_expired(&self, before: i64) -> Result<u64, DbErr> {
        let res = login_session::Entity::delete_many()
            .filter(login_session::Column::ExpiresAt.lt(before))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected)
    }
}
