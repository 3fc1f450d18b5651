//! The login-sessions repository: one row per login, keyed by the `jti` its access
//! tokens carry.
//!
//! A token is valid only while its login's row exists, belongs to the token's user, is
//! not revoked and has not expired, so logout takes effect at once in every service that
//! shares the database. A login slides: each use (at most one write per
//! [`TOUCH_EVERY`]) moves `expires_at` to `last use + idle`, never past `created_at +
//! max` ([`Lifetimes`]).

use std::sync::Arc;

use rusqlite::OptionalExtension;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use switchboard_actors::ports::Pending;

use crate::domain::{SessionId, UserId};
use crate::storage::entities::login_session;
use crate::storage::readers::Readers;

/// A login used at `now`: its expiry slides to `expires_at`, if it is still valid then.
#[derive(Clone, Copy, Debug)]
pub struct TouchLogin {
    pub id: SessionId,
    pub now: i64,
    pub expires_at: i64,
}

/// Where a login's use is written (implemented by [`crate::writer::Committer`]): in the
/// process's group commit, beside the message writes, rather than through the pool. On a
/// SQLite file, a commit from another connection makes the writer forget what it keeps
/// between batches ([`crate::writer`]), and every login is used about once a minute.
#[async_trait::async_trait]
pub trait LoginWrites: Send + Sync + std::fmt::Debug {
    async fn touch_login(&self, touch: TouchLogin) -> Pending<()>;
}

/// [`TouchLogin`] as one statement on `db` (the pool, or the committer's transaction on
/// PostgreSQL).
pub(crate) async fn touch_login_in(db: &impl sea_orm::ConnectionTrait, t: TouchLogin) -> Result<(), DbErr> {
    login_session::Entity::update_many()
        .col_expr(login_session::Column::LastSeenAt, Expr::value(t.now))
        .col_expr(login_session::Column::ExpiresAt, Expr::value(t.expires_at))
        .filter(login_session::Column::Id.eq(t.id.0))
        .filter(login_session::Column::RevokedAt.is_null())
        .filter(login_session::Column::ExpiresAt.gt(t.now))
        .exec(db)
        .await?;
    Ok(())
}

/// A login is written as used at most this often (each write slides its expiry), or a
/// tenth of its idle lifetime if that is shorter.
pub const TOUCH_EVERY_MS: i64 = 60_000;

/// How long logins last: `idle_ms` after their last use, `max_ms` after they began at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lifetimes {
    pub idle_ms: i64,
    pub max_ms: i64,
}

impl Lifetimes {
    pub fn from_config(cfg: &crate::config::AuthConfig) -> Self {
        let ms = |s: u64| i64::try_from(s).unwrap_or(i64::MAX / 1000).saturating_mul(1000);
        Self { idle_ms: ms(cfg.session_idle_secs), max_ms: ms(cfg.session_max_secs) }
    }

    /// When a login that began at `created_at` and was last used at `used_at` ends.
    pub fn expiry(&self, created_at: i64, used_at: i64) -> i64 {
        used_at.saturating_add(self.idle_ms).min(self.ends_at(created_at))
    }

    /// The absolute end of a login that began at `created_at`.
    pub fn ends_at(&self, created_at: i64) -> i64 {
        created_at.saturating_add(self.max_ms)
    }
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self::from_config(&crate::config::AuthConfig::default())
    }
}

/// A login that is still valid, as [`SessionRepo::active`] finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActiveLogin {
    pub created_at: i64,
    pub last_seen_at: i64,
    pub expires_at: i64,
}

/// A new login's row.
#[derive(Clone, Debug)]
pub struct NewLogin {
    pub id: SessionId,
    pub user: UserId,
    pub now: i64,
    pub user_agent: Option<String>,
    pub client_addr: Option<String>,
    /// SHA-256 (hex) of its refresh secret.
    pub refresh_hash: String,
}

/// A login as its owner sees it in the sessions list (`GET /api/auth/sessions`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, salvo::oapi::ToSchema)]
#[salvo(schema(name = LoginSession))]
pub struct LoginInfo {
    #[salvo(schema(value_type = String))]
    pub id: SessionId,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// When it ends unless used again.
    pub expires_at: i64,
    pub user_agent: Option<String>,
    /// The address it logged in from.
    pub client_addr: Option<String>,
    /// Whether this is the login making the request (set by the service).
    pub current: bool,
}

/// Logins one user may have listed at once, at most (the list shows the newest).
pub const MAX_LISTED: u64 = 200;

#[derive(Clone, Debug)]
pub struct SessionRepo {
    db: DatabaseConnection,
    /// On a SQLite file, [`Self::active`] (every socket and request checks it) reads
    /// here, without a thread hand-off.
    readers: Option<Arc<Readers>>,
    lifetimes: Lifetimes,
    /// Where uses are written; through the pool without one.
    writes: Option<Arc<dyn LoginWrites>>,
}

impl SessionRepo {
    pub fn new(db: DatabaseConnection) -> Self {
        let readers = Readers::for_db(&db);
        Self::sharing(db, readers)
    }

    /// The repository reading through `readers` (another repository's, so one process
    /// keeps one set of reader connections per repository that owns them).
    pub(crate) fn sharing(db: DatabaseConnection, readers: Option<Arc<Readers>>) -> Self {
        Self { db, readers, lifetimes: Lifetimes::default(), writes: None }
    }

    /// The same repository writing uses through `writes` (the process's committer).
    pub fn with_writes(mut self, writes: Arc<dyn LoginWrites>) -> Self {
        self.writes = Some(writes);
        self
    }

    /// The same repository sliding logins by `lifetimes`.
    pub fn with_lifetimes(mut self, lifetimes: Lifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }

    pub fn lifetimes(&self) -> Lifetimes {
        self.lifetimes
    }

    /// Records a new login; it expires after the idle lifetime unless used.
    pub async fn create(&self, login: NewLogin) -> Result<ActiveLogin, DbErr> {
        let expires_at = self.lifetimes.expiry(login.now, login.now);
        login_session::ActiveModel {
            id: Set(login.id.0),
            user_id: Set(login.user.0),
            created_at: Set(login.now),
            expires_at: Set(expires_at),
            revoked_at: Set(None),
            user_agent: Set(login.user_agent),
            last_seen_at: Set(login.now),
            client_addr: Set(login.client_addr),
            refresh_hash: Set(Some(login.refresh_hash)),
        }
        .insert(&self.db)
        .await?;
        Ok(ActiveLogin { created_at: login.now, last_seen_at: login.now, expires_at })
    }

    /// The login if it exists for `user`, is not revoked and has not expired by `now`.
    pub async fn active(&self, id: SessionId, user: UserId, now: i64) -> Result<Option<ActiveLogin>, DbErr> {
        let row = self.row(id).await?;
        Ok(row.filter(|r| r.user_id == user.0 && r.revoked_at.is_none() && r.expires_at > now).map(|r| ActiveLogin {
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            expires_at: r.expires_at,
        }))
    }

    /// True if the session exists for `user`, is not revoked and has not expired.
    pub async fn is_active(&self, id: SessionId, user: UserId, now: i64) -> Result<bool, DbErr> {
        Ok(self.active(id, user, now).await?.is_some())
    }

    /// [`Self::active`], and the login written as used now if it was not for
    /// [`TOUCH_EVERY_MS`] (so its expiry slides).
    pub async fn use_login(&self, id: SessionId, user: UserId, now: i64) -> Result<Option<ActiveLogin>, DbErr> {
        let Some(mut login) = self.active(id, user, now).await? else { return Ok(None) };
        if now - login.last_seen_at >= TOUCH_EVERY_MS.min(self.lifetimes.idle_ms / 10) {
            let touch = TouchLogin { id, now, expires_at: self.lifetimes.expiry(login.created_at, now) };
            match &self.writes {
                Some(writes) => writes.touch_login(touch).await.await.map_err(|e| DbErr::Custom(e.to_string()))?,
                None => touch_login_in(&self.db, touch).await?,
            }
            login.expires_at = touch.expires_at;
            login.last_seen_at = now;
        }
        Ok(Some(login))
    }

    /// The login's owner and refresh-secret hash, if it is valid at `now`.
    pub async fn refreshable(&self, id: SessionId, now: i64) -> Result<Option<(UserId, String)>, DbErr> {
        let row = self.row(id).await?;
        Ok(row
            .filter(|r| r.revoked_at.is_none() && r.expires_at > now)
            .and_then(|r| r.refresh_hash.map(|h| (UserId(r.user_id), h))))
    }

    /// The fields the checks need, from a reader connection where there is one.
    async fn row(&self, id: SessionId) -> Result<Option<CheckRow>, DbErr> {
        if let Some(readers) = &self.readers {
            return readers
                .read(|c| {
                    c.prepare_cached(
                        "SELECT user_id, revoked_at, expires_at, created_at, last_seen_at, refresh_hash \
                         FROM login_sessions WHERE id = ?1",
                    )?
                    .query_row([id.0.as_bytes()], |r| {
                        let owner: Vec<u8> = r.get(0)?;
                        Ok(CheckRow {
                            user_id: uuid::Uuid::from_slice(&owner).unwrap_or_default(),
                            revoked_at: r.get(1)?,
                            expires_at: r.get(2)?,
                            created_at: r.get(3)?,
                            last_seen_at: r.get(4)?,
                            refresh_hash: r.get(5)?,
                        })
                    })
                    .optional()
                })
                .map_err(|e| DbErr::Custom(e.to_string()));
        }
        let row = login_session::Entity::find_by_id(id.0).one(&self.db).await?;
        Ok(row.map(|r| CheckRow {
            user_id: r.user_id,
            revoked_at: r.revoked_at,
            expires_at: r.expires_at,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            refresh_hash: r.refresh_hash,
        }))
    }

    /// `user`'s valid logins at `now`, most recently used first ([`MAX_LISTED`] at most).
    pub async fn list(&self, user: UserId, now: i64) -> Result<Vec<LoginInfo>, DbErr> {
        let rows = login_session::Entity::find()
            .filter(login_session::Column::UserId.eq(user.0))
            .filter(login_session::Column::RevokedAt.is_null())
            .filter(login_session::Column::ExpiresAt.gt(now))
            .order_by_desc(login_session::Column::LastSeenAt)
            .order_by_desc(login_session::Column::Id)
            .limit(MAX_LISTED)
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| LoginInfo {
                id: SessionId(r.id),
                created_at: r.created_at,
                last_seen_at: r.last_seen_at,
                expires_at: r.expires_at,
                user_agent: r.user_agent,
                client_addr: r.client_addr,
                current: false,
            })
            .collect())
    }

    /// Replaces the refresh-secret hash of `user`'s valid login `id`; false if there is no
    /// such login.
    pub async fn set_refresh_hash(&self, id: SessionId, user: UserId, hash: &str) -> Result<bool, DbErr> {
        let r = login_session::Entity::update_many()
            .col_expr(login_session::Column::RefreshHash, Expr::value(hash))
            .filter(login_session::Column::Id.eq(id.0))
            .filter(login_session::Column::UserId.eq(user.0))
            .filter(login_session::Column::RevokedAt.is_null())
            .exec(&self.db)
            .await?;
        Ok(r.rows_affected == 1)
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

    /// Revokes `user`'s valid logins except `keep`; returns the ones it revoked (so their
    /// connections can be closed).
    pub async fn revoke_all(&self, user: UserId, keep: Option<SessionId>, now: i64) -> Result<Vec<SessionId>, DbErr> {
        let mut q = login_session::Entity::find()
            .filter(login_session::Column::UserId.eq(user.0))
            .filter(login_session::Column::RevokedAt.is_null())
            .filter(login_session::Column::ExpiresAt.gt(now));
        if let Some(k) = keep {
            q = q.filter(login_session::Column::Id.ne(k.0));
        }
        let ids: Vec<uuid::Uuid> = q.all(&self.db).await?.into_iter().map(|r| r.id).collect();
        if ids.is_empty() {
            return Ok(vec![]);
        }
        // By owner, not by the ids just read: a login made meanwhile is revoked too (its
        // own connections are closed by their periodic check).
        let mut update = login_session::Entity::update_many()
            .col_expr(login_session::Column::RevokedAt, Expr::value(now))
            .filter(login_session::Column::UserId.eq(user.0))
            .filter(login_session::Column::RevokedAt.is_null());
        if let Some(k) = keep {
            update = update.filter(login_session::Column::Id.ne(k.0));
        }
        update.exec(&self.db).await?;
        Ok(ids.into_iter().map(SessionId).collect())
    }

    /// Logins revoked after `after` (a `(revoked_at, id)` position: those at that time
    /// with a larger id, then later ones), at most `limit`, in that order: the revocation
    /// feed each node reads, `(login, owner, revoked_at)`. Paging by the pair, not the
    /// time alone, because one revocation of many logins stamps them all alike.
    pub async fn revoked_after(
        &self,
        after: (i64, Option<SessionId>),
        limit: u64,
    ) -> Result<Vec<(SessionId, UserId, i64)>, DbErr> {
        let (at, id) = after;
        let position = match id {
            Some(id) => sea_orm::Condition::any().add(login_session::Column::RevokedAt.gt(at)).add(
                sea_orm::Condition::all()
                    .add(login_session::Column::RevokedAt.eq(at))
                    .add(login_session::Column::Id.gt(id.0)),
            ),
            None => sea_orm::Condition::all().add(login_session::Column::RevokedAt.gte(at)),
        };
        let rows = login_session::Entity::find()
            .filter(position)
            .order_by_asc(login_session::Column::RevokedAt)
            .order_by_asc(login_session::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(|r| (SessionId(r.id), UserId(r.user_id), r.revoked_at.unwrap_or(at))).collect())
    }

    /// Deletes sessions that expired before `before`; returns how many. Their tokens are
    /// rejected by their rows' `expires_at` already, so the rows are no longer needed.
    pub async fn purge_expired(&self, before: i64) -> Result<u64, DbErr> {
        let res = login_session::Entity::delete_many()
            .filter(login_session::Column::ExpiresAt.lt(before))
            .exec(&self.db)
            .await?;
        Ok(res.rows_affected)
    }
}

/// The columns the checks read.
struct CheckRow {
    user_id: uuid::Uuid,
    revoked_at: Option<i64>,
    expires_at: i64,
    created_at: i64,
    last_seen_at: i64,
    refresh_hash: Option<String>,
}
