//! The auth service: register, login, logout, and token authentication.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use switchboard_actors::ports::{Bus, Envelope, Event};

use super::AuthUser;
use super::passwords::PasswordHasher;
use super::tokens::{Claims, TokenKeys};
use crate::auth::sessions::SessionRepo;
use crate::auth::users::UserRepo;
use crate::auth::users::{CreateUserError, User};
use crate::config::AuthConfig;
use crate::domain::{DisplayName, Password, SessionId, Username};
use crate::error::{AppError, ErrorCode};
use crate::ratelimit::{FailureCounter, KeyedLimiter};

/// A successful login.
#[derive(Debug, Clone, Serialize, salvo::oapi::ToSchema)]
#[salvo(schema(name = LoginOut))]
pub struct LoginOutcome {
    pub access_token: String,
    /// Expiry, in milliseconds since the Unix epoch (like every time in the API).
    pub expires_at: i64,
    pub user: User,
}

#[derive(Clone)]
pub struct AuthService {
    users: UserRepo,
    sessions: SessionRepo,
    /// Where revocations are announced, so every node closes the sockets and streams of
    /// a revoked login (set once the process's bus is up).
    bus: Option<Arc<dyn Bus>>,
    /// Revocations the bus refused (broker down), published again by a background task
    /// until it takes them.
    retry: Option<tokio::sync::mpsc::Sender<Event>>,
    hasher: PasswordHasher,
    keys: TokenKeys,
    token_ttl_secs: i64,
    limits: Arc<Limits>,
}

#[derive(Debug)]
struct Limits {
    login_ip: KeyedLimiter,
    /// Failed logins per (username, client address).
    login_user_addr: FailureCounter,
    /// Failed logins per username from all addresses: the ceiling against guessing from
    /// many addresses. Past it, only addresses that have not failed may still try.
    login_user: FailureCounter,
    register_ip: KeyedLimiter,
}

/// The per-username ceiling is this many times the per-(username, address) limit.
const USERNAME_CEILING_FACTOR: u32 = 10;
const LOGIN_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl std::fmt::Debug for AuthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthService").field("token_ttl_secs", &self.token_ttl_secs).finish_non_exhaustive()
    }
}

impl AuthService {
    pub fn new(users: UserRepo, sessions: SessionRepo, cfg: &AuthConfig, keys: TokenKeys) -> anyhow::Result<Self> {
        Ok(Self {
            users,
            sessions,
            bus: None,
            retry: None,
            hasher: PasswordHasher::new(cfg)?,
            keys,
            token_ttl_secs: i64::try_from(cfg.token_ttl_secs)?,
            limits: Arc::new(Limits {
                login_ip: KeyedLimiter::per_minute(cfg.login_per_ip_per_minute),
                login_user_addr: FailureCounter::new(cfg.login_per_username_per_minute, LOGIN_WINDOW),
                login_user: FailureCounter::new(
                    cfg.login_per_username_per_minute.saturating_mul(USERNAME_CEILING_FACTOR),
                    LOGIN_WINDOW,
                ),
                register_ip: KeyedLimiter::per_minute(cfg.register_per_ip_per_minute),
            }),
        })
    }

    /// Announces revocations on `bus` (and starts the task that retries them while the
    /// bus is down). Call from within the runtime.
    pub fn with_bus(mut self, bus: Arc<dyn Bus>) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_PENDING_REVOCATIONS);
        tokio::spawn(retry_revocations(bus.clone(), rx));
        self.bus = Some(bus);
        self.retry = Some(tx);
        self
    }

    /// Creates an account. 409 `username_taken` if the name (case-insensitively) exists.
    pub async fn register(
        &self,
        ip: Option<IpAddr>,
        username: &str,
        password: String,
        display_name: Option<&str>,
    ) -> Result<User, AppError> {
        if let Some(ip) = ip {
            check(&self.limits.register_ip, &crate::net::limit_key(ip))?;
        }
        let username = Username::parse(username).map_err(invalid)?;
        let password = Password::parse(password).map_err(invalid)?;
        let display_name = match display_name {
            Some(d) => DisplayName::parse(d).map_err(invalid)?,
            None => DisplayName::from(&username),
        };
        let hash = self.hasher.hash(&password).await?;
        match self.users.create(&username, &display_name, hash, crate::now_ms()).await {
            Ok(user) => {
                tracing::info!(user_id = %user.id, username = %user.username, "user registered");
                Ok(user)
            }
            Err(CreateUserError::UsernameTaken) => {
                Err(AppError::conflict(ErrorCode::UsernameTaken, "this username is already taken"))
            }
            Err(CreateUserError::Db(e)) => Err(e.into()),
        }
    }

    /// Checks credentials and issues a token. Unknown user and wrong password give the
    /// same error, after the same work.
    pub async fn login(
        &self,
        ip: Option<IpAddr>,
        username: &str,
        password: String,
        user_agent: Option<String>,
    ) -> Result<LoginOutcome, AppError> {
        if let Some(ip) = ip {
            check(&self.limits.login_ip, &crate::net::limit_key(ip))?;
        }
        let bad = || AppError::unauthorized(ErrorCode::InvalidCredentials, "wrong username or password");
        // Malformed names or passwords cannot match an account: same answer as a wrong one.
        let username = Username::parse(username).map_err(|_| bad())?;
        let password = Password::parse(password).map_err(|_| bad())?;
        // Failures count per (username, address), so no one can lock a chosen user out
        // by failing on purpose; a ceiling per username (many addresses) holds back only
        // addresses that have failed themselves. Each attempt is reserved before the
        // (slow) hash and counts as a failure until it succeeds, so concurrent guesses
        // cannot all pass one check.
        let attempt = Attempt::begin(&self.limits, username.as_str(), ip)?;
        let found = self.users.find_credentials(&username).await?;
        let ok = self.hasher.verify(&password, found.as_ref().map(|(_, h)| h.as_str())).await?;
        let Some((user, _)) = found.filter(|_| ok) else {
            attempt.failed();
            tracing::info!(username = %username, "login failed");
            return Err(bad());
        };
        attempt.succeeded();
        let now = chrono::Utc::now().timestamp();
        let exp = now + self.token_ttl_secs;
        let claims = Claims { sub: user.id, jti: SessionId::new(), iat: now, exp };
        let user_agent = user_agent.map(|ua| ua.chars().take(256).collect());
        self.sessions.create(claims.jti, user.id, now * 1000, exp * 1000, user_agent).await?;
        let access_token = self.keys.sign(&claims)?;
        tracing::info!(user_id = %user.id, session = %claims.jti, "login");
        Ok(LoginOutcome { access_token, expires_at: exp * 1000, user })
    }

    /// Revokes the caller's session: the token stops working at once, and every socket
    /// and notification stream it opened, on any node, is closed.
    pub async fn logout(&self, who: AuthUser) -> Result<(), AppError> {
        self.sessions.revoke(who.session_id, crate::now_ms()).await?;
        tracing::info!(user_id = %who.user_id, session = %who.session_id, "logout");
        self.announce_revoked(who).await;
        Ok(())
    }

    /// Tells every node that `who`'s login is gone. The row is the record: a node that
    /// misses the event (broker down) checks the row when its link comes back, and every
    /// new request is refused by it regardless.
    async fn announce_revoked(&self, who: AuthUser) {
        let Some(bus) = &self.bus else { return };
        let event = Event::SessionRevoked { to: who.user_id, session_id: who.session_id.0 };
        if let Err(e) = bus.publish(Envelope::new(event.clone())).await {
            tracing::warn!(user_id = %who.user_id, error = %e, "revocation not announced yet; retrying");
            if self.retry.as_ref().is_none_or(|r| r.try_send(event).is_err()) {
                // The connections' periodic login check (5 min) closes them instead.
                tracing::warn!(user_id = %who.user_id, "too many revocations pending; left to the periodic check");
            }
        }
    }

    /// Turns a token into the caller, or 401 if it is invalid, expired or revoked.
    pub async fn authenticate(&self, token: &str) -> Result<AuthUser, AppError> {
        let unauthorized =
            || AppError::unauthorized(ErrorCode::InvalidToken, "missing, invalid, expired or revoked token");
        let claims = self.keys.verify(token).ok_or_else(unauthorized)?;
        if !self.sessions.is_active(claims.jti, claims.sub, crate::now_ms()).await? {
            return Err(unauthorized());
        }
        Ok(AuthUser { user_id: claims.sub, session_id: claims.jti, expires_at: claims.exp.saturating_mul(1000) })
    }

    /// The caller's account (401 if it no longer exists).
    pub async fn me(&self, who: AuthUser) -> Result<User, AppError> {
        self.users
            .find(who.user_id)
            .await?
            .ok_or_else(|| AppError::unauthorized(ErrorCode::InvalidToken, "the account no longer exists"))
    }

    /// Periodic housekeeping: forget idle rate-limit keys, delete long-expired sessions.
    pub async fn housekeeping(&self) -> anyhow::Result<()> {
        self.limits.login_ip.prune();
        self.limits.login_user.prune();
        self.limits.login_user_addr.prune();
        self.limits.register_ip.prune();
        let removed = self.sessions.purge_expired(crate::now_ms()).await?;
        if removed > 0 {
            tracing::debug!(removed, "purged expired sessions");
        }
        Ok(())
    }
}

/// One login attempt's place in the failure counters: reserved before the password is
/// checked, kept as a failure, given back on success (or if the check itself failed).
struct Attempt<'a> {
    limits: &'a Limits,
    pair: String,
    username: String,
    /// The attempt holds a place under the per-username ceiling too.
    in_ceiling: bool,
    settled: bool,
}

impl<'a> Attempt<'a> {
    fn begin(limits: &'a Limits, username: &str, ip: Option<IpAddr>) -> Result<Self, AppError> {
        let limited = |retry_after_secs| AppError::RateLimited { retry_after_secs };
        let pair = format!("{username}|{}", ip.map_or_else(|| "-".to_owned(), crate::net::limit_key));
        let before = limits.login_user_addr.reserve(&pair).map_err(limited)?;
        let mut attempt = Attempt { limits, pair, username: username.to_owned(), in_ceiling: false, settled: false };
        if before > 0 {
            // This address has failed before: it must fit under the username's ceiling.
            limits.login_user.reserve(username).map_err(limited)?;
            attempt.in_ceiling = true;
        }
        Ok(attempt)
    }

    fn failed(mut self) {
        if !self.in_ceiling {
            self.limits.login_user.record(&self.username);
        }
        self.settled = true;
    }

    fn succeeded(mut self) {
        self.limits.login_user_addr.clear(&self.pair);
        if self.in_ceiling {
            self.limits.login_user.refund(&self.username);
        }
        self.settled = true;
    }
}

impl Drop for Attempt<'_> {
    /// Neither failed nor succeeded (a storage error): the attempt is given back.
    fn drop(&mut self) {
        if !self.settled {
            self.limits.login_user_addr.refund(&self.pair);
            if self.in_ceiling {
                self.limits.login_user.refund(&self.username);
            }
        }
    }
}

/// Revocations waiting for the bus, at most (each a few dozen bytes).
const MAX_PENDING_REVOCATIONS: usize = 10_000;

/// Publishes each refused revocation again, in order, backing off while the bus is down.
async fn retry_revocations(bus: Arc<dyn Bus>, mut rx: tokio::sync::mpsc::Receiver<Event>) {
    while let Some(event) = rx.recv().await {
        let mut backoff = std::time::Duration::from_millis(250);
        while bus.publish(Envelope::new(event.clone())).await.is_err() {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
        }
    }
}

fn check(limiter: &KeyedLimiter, key: &str) -> Result<(), AppError> {
    limiter.check(key).map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })
}

fn invalid(e: crate::domain::InvalidInput) -> AppError {
    AppError::bad_request(e.code, e.message)
}
