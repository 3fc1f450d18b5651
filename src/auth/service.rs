//! The auth service: register, login, logout, and token authentication.

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;
use switchboard_actors::ports::{Bus, Envelope, Event};

use super::AuthUser;
use super::passwords::PasswordHasher;
use super::tokens::{Claims, TokenKeys};
use crate::auth::sessions::{ActiveLogin, Lifetimes, LoginInfo, NewLogin, SessionRepo};
use crate::auth::users::{CreateUserError, User};
use crate::auth::users::{Credentials, UserRepo};
use crate::config::AuthConfig;
use crate::domain::{DisplayName, Password, SessionId, UserId, Username};
use crate::error::{AppError, ErrorCode};
use crate::ratelimit::{FailureCounter, KeyedLimiter};

/// A successful login, or a renewed access token.
#[derive(Debug, Clone, Serialize, salvo::oapi::ToSchema)]
#[salvo(schema(name = LoginOut))]
pub struct LoginOutcome {
    /// The short-lived access token (`Authorization: Bearer …`).
    pub access_token: String,
    /// Its expiry, in milliseconds since the Unix epoch (like every time in the API):
    /// renew it before then with `POST /api/auth/refresh`.
    pub expires_at: i64,
    /// The login's refresh secret (only in the login's answer): renews access tokens while
    /// the login lasts. Keep it like a password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// When the login ends unless used again (it slides with use, up to its absolute end).
    pub session_expires_at: i64,
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
    /// Display-name changes per user (each is a frame to every contact).
    renames: KeyedLimiter,
}

/// Display-name changes a user may make per minute.
const RENAMES_PER_MINUTE: u32 = 10;

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
            sessions: sessions.with_lifetimes(Lifetimes::from_config(cfg)),
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
                renames: KeyedLimiter::per_minute(RENAMES_PER_MINUTE),
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
            Some(d) => self::display_name(d)?,
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

    /// Checks credentials and starts a login: an access token and the login's refresh
    /// secret. Unknown user and wrong password give the same error, after the same work.
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
        // Malformed names or passwords cannot match an account: same answer as a wrong one.
        let username = Username::parse(username).map_err(|_| bad_credentials())?;
        let password = Password::parse(password).map_err(|_| bad_credentials())?;
        let found = self.users.find_credentials(&username).await?;
        let (user, creds) = self.verify_password(username.as_str(), ip, &password, found).await?;
        if creds.disabled_at.is_some() {
            tracing::info!(user_id = %user.id, "login refused: account disabled");
            return Err(disabled());
        }
        let now = crate::now_ms();
        let (refresh_token, refresh_hash) = refresh_secret(SessionId::new());
        let id = refresh_token.session;
        let login = NewLogin {
            id,
            user: user.id,
            now,
            user_agent: user_agent.map(|ua| ua.chars().filter(|c| !c.is_control()).take(256).collect()),
            client_addr: ip.map(|ip| ip.to_string()),
            refresh_hash,
        };
        let active = self.sessions.create(login).await?;
        tracing::info!(user_id = %user.id, session = %id, "login");
        let mut out = self.issue(user, id, active, now)?;
        out.refresh_token = Some(refresh_token.to_string());
        Ok(out)
    }

    /// An access token for the login `id` of `user`, expiring after the token lifetime
    /// or with the login, whichever is first.
    fn issue(&self, user: User, id: SessionId, login: ActiveLogin, now: i64) -> Result<LoginOutcome, AppError> {
        let now_s = now / 1000;
        let ends_s = self.sessions.lifetimes().ends_at(login.created_at) / 1000;
        let exp = (now_s + self.token_ttl_secs).min(ends_s).max(now_s + 1);
        let claims = Claims { sub: user.id, jti: id, iat: now_s, exp };
        let access_token = self.keys.sign(&claims)?;
        Ok(LoginOutcome {
            access_token,
            expires_at: exp * 1000,
            refresh_token: None,
            session_expires_at: login.expires_at,
            user,
        })
    }

    /// Checks `password` against `found` under the login failure limits for `username`
    /// (per address and per name), so guessing here is as slow as at login.
    async fn verify_password(
        &self,
        username: &str,
        ip: Option<IpAddr>,
        password: &Password,
        found: Option<(User, Credentials)>,
    ) -> Result<(User, Credentials), AppError> {
        // Failures count per (username, address), so no one can lock a chosen user out
        // by failing on purpose; a ceiling per username (many addresses) holds back only
        // addresses that have failed themselves. Each attempt is reserved before the
        // (slow) hash and counts as a failure until it succeeds, so concurrent guesses
        // cannot all pass one check.
        let attempt = Attempt::begin(&self.limits, username, ip)?;
        let ok = self.hasher.verify(password, found.as_ref().map(|(_, c)| c.password_hash.as_str())).await?;
        let Some(found) = found.filter(|_| ok) else {
            attempt.failed();
            tracing::info!(username = %username, "password check failed");
            return Err(bad_credentials());
        };
        attempt.succeeded();
        Ok(found)
    }

    /// A new access token for the login a refresh secret belongs to, if that login is
    /// still valid (the login slides: this is a use). 401 otherwise.
    pub async fn refresh(&self, refresh_token: &str) -> Result<(AuthUser, LoginOutcome), AppError> {
        let token = RefreshToken::parse(refresh_token).ok_or_else(invalid_token)?;
        let now = crate::now_ms();
        let (user_id, hash) = self.sessions.refreshable(token.session, now).await?.ok_or_else(invalid_token)?;
        if !crate::web::csrf::constant_time_eq(hash.as_bytes(), hash_secret(&token.secret).as_bytes()) {
            return Err(invalid_token());
        }
        let login = self.sessions.use_login(token.session, user_id, now).await?.ok_or_else(invalid_token)?;
        let Some((user, creds)) = self.users.credentials_of(user_id).await? else { return Err(invalid_token()) };
        if creds.disabled_at.is_some() {
            return Err(invalid_token());
        }
        let out = self.issue(user, token.session, login, now)?;
        let who = AuthUser {
            user_id,
            session_id: token.session,
            expires_at: self.sessions.lifetimes().ends_at(login.created_at),
        };
        Ok((who, out))
    }

    /// Changes the caller's password after checking the current one (401 if wrong,
    /// counted like a failed login). Every other login of the user ends, with its
    /// sockets and streams; the caller's stays.
    pub async fn change_password(
        &self,
        who: AuthUser,
        ip: Option<IpAddr>,
        current: String,
        new: String,
    ) -> Result<(), AppError> {
        let new = Password::parse(new).map_err(invalid)?;
        self.check_password(who, ip, current).await?;
        let hash = self.hasher.hash(&new).await?;
        if !self.users.set_password(who.user_id, hash, crate::now_ms()).await? {
            return Err(gone());
        }
        let ended = self.end_logins(who.user_id, Some(who.session_id)).await?;
        tracing::info!(user_id = %who.user_id, other_logins_ended = ended, "password changed");
        Ok(())
    }

    /// Checks the caller's password (401 if wrong, counted like a failed login): the
    /// proof a destructive request (deleting the account) asks for.
    pub async fn check_password(&self, who: AuthUser, ip: Option<IpAddr>, password: String) -> Result<(), AppError> {
        if let Some(ip) = ip {
            check(&self.limits.login_ip, &crate::net::limit_key(ip))?;
        }
        let password = Password::parse(password).map_err(|_| bad_credentials())?;
        let found = self.users.credentials_of(who.user_id).await?;
        let username = found.as_ref().map(|(u, _)| u.username.clone()).ok_or_else(gone)?;
        self.verify_password(&username, ip, &password, found).await?;
        Ok(())
    }

    /// The operator sets `username`'s password (no proof asked: they hold the database);
    /// every login of the user ends. `Ok(None)` if there is no such account.
    pub async fn reset_password(&self, username: &str, password: String) -> Result<Option<User>, AppError> {
        let Some(user) = self.find_user(username).await? else { return Ok(None) };
        let password = Password::parse(password).map_err(invalid)?;
        let hash = self.hasher.hash(&password).await?;
        if !self.users.set_password(user.id, hash, crate::now_ms()).await? {
            return Ok(None);
        }
        let ended = self.end_logins(user.id, None).await?;
        tracing::info!(user_id = %user.id, logins_ended = ended, "password reset by the operator");
        Ok(Some(user))
    }

    /// The operator disables (`true`) or enables an account; disabling ends every login
    /// of the user at once. `Ok(None)` if there is no such account.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<Option<User>, AppError> {
        let Some(user) = self.find_user(username).await? else { return Ok(None) };
        let now = crate::now_ms();
        if !self.users.set_disabled(user.id, disabled.then_some(now), now).await? {
            return Ok(None);
        }
        if disabled {
            let ended = self.end_logins(user.id, None).await?;
            tracing::info!(user_id = %user.id, logins_ended = ended, "account disabled by the operator");
        } else {
            tracing::info!(user_id = %user.id, "account enabled by the operator");
        }
        Ok(Some(user))
    }

    /// The account named `username` (any casing), if it exists.
    pub async fn find_user(&self, username: &str) -> Result<Option<User>, AppError> {
        let Ok(name) = Username::parse(username) else { return Ok(None) };
        Ok(self.users.find_by_username(&name).await?)
    }

    /// Gives the caller's login a new refresh secret (the old one stops working): after a
    /// password change or "log out everywhere else", a copy of this device's refresh token
    /// held by someone else must stop working too. The new refresh token.
    pub async fn rotate_refresh(&self, who: AuthUser) -> Result<String, AppError> {
        let (token, hash) = refresh_secret(who.session_id);
        if !self.sessions.set_refresh_hash(who.session_id, who.user_id, &hash).await? {
            return Err(invalid_token());
        }
        Ok(token.to_string())
    }

    /// The caller's valid logins, most recently used first.
    pub async fn sessions(&self, who: AuthUser) -> Result<Vec<LoginInfo>, AppError> {
        let mut logins = self.sessions.list(who.user_id, crate::now_ms()).await?;
        for login in &mut logins {
            login.current = login.id == who.session_id;
        }
        Ok(logins)
    }

    /// Ends one of the caller's logins (404 unless it is theirs and valid).
    pub async fn end_session(&self, who: AuthUser, id: SessionId) -> Result<(), AppError> {
        let now = crate::now_ms();
        if !self.sessions.is_active(id, who.user_id, now).await? {
            return Err(AppError::not_found(ErrorCode::NotFound, "no such session"));
        }
        self.sessions.revoke(id, now).await?;
        tracing::info!(user_id = %who.user_id, session = %id, "session ended by its owner");
        self.announce_revoked(AuthUser { session_id: id, ..who }).await;
        Ok(())
    }

    /// Ends every login of `user` but `keep`, closing their connections on every node;
    /// returns how many ended.
    pub async fn end_logins(&self, user: UserId, keep: Option<SessionId>) -> Result<usize, AppError> {
        let ended = self.sessions.revoke_all(user, keep, crate::now_ms()).await?;
        for id in &ended {
            self.announce_revoked(AuthUser { user_id: user, session_id: *id, expires_at: 0 }).await;
        }
        Ok(ended.len())
    }

    /// Renames the caller; the user as it is now.
    pub async fn set_display_name(&self, who: AuthUser, name: &str) -> Result<User, AppError> {
        check(&self.limits.renames, &who.user_id.to_string())?;
        let name = display_name(name)?;
        self.users.set_display_name(who.user_id, &name, crate::now_ms()).await?.ok_or_else(gone)
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
        let login = self.sessions.use_login(claims.jti, claims.sub, crate::now_ms()).await?.ok_or_else(unauthorized)?;
        Ok(AuthUser {
            user_id: claims.sub,
            session_id: claims.jti,
            expires_at: self.sessions.lifetimes().ends_at(login.created_at),
        })
    }

    /// The absolute lifetime of a login, in seconds (how long a refresh cookie may live).
    pub fn login_max_secs(&self) -> i64 {
        self.sessions.lifetimes().max_ms / 1000
    }

    /// The caller's account (401 if it no longer exists).
    pub async fn me(&self, who: AuthUser) -> Result<User, AppError> {
        self.users.find(who.user_id).await?.ok_or_else(gone)
    }

    /// Periodic housekeeping: forget idle rate-limit keys, delete long-expired sessions.
    pub async fn housekeeping(&self) -> anyhow::Result<()> {
        self.limits.login_ip.prune();
        self.limits.login_user.prune();
        self.limits.login_user_addr.prune();
        self.limits.register_ip.prune();
        self.limits.renames.prune();
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

/// A display name a person may choose: the domain's rules, and not the name deleted
/// accounts show (no one may pass for one).
fn display_name(name: &str) -> Result<DisplayName, AppError> {
    let name = DisplayName::parse(name).map_err(invalid)?;
    if name.as_str().eq_ignore_ascii_case(crate::auth::users::DELETED_NAME) {
        return Err(AppError::bad_request(ErrorCode::InvalidDisplayName, "this display name is reserved"));
    }
    Ok(name)
}

fn bad_credentials() -> AppError {
    AppError::unauthorized(ErrorCode::InvalidCredentials, "wrong username or password")
}

fn invalid_token() -> AppError {
    AppError::unauthorized(ErrorCode::InvalidToken, "missing, invalid, expired or revoked token")
}

fn disabled() -> AppError {
    AppError::forbidden(ErrorCode::AccountDisabled, "this account is disabled; ask the operator")
}

fn gone() -> AppError {
    AppError::unauthorized(ErrorCode::InvalidToken, "the account no longer exists")
}

/// A login's refresh secret as clients hold it: `<login id>.<64 hex digits>`.
struct RefreshToken {
    session: SessionId,
    secret: String,
}

impl RefreshToken {
    fn parse(s: &str) -> Option<Self> {
        let (id, secret) = s.split_once('.')?;
        if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) || id.len() > 36 {
            return None;
        }
        Some(Self { session: SessionId(uuid::Uuid::try_parse(id).ok()?), secret: secret.to_ascii_lowercase() })
    }
}

impl std::fmt::Display for RefreshToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.session.0.simple(), self.secret)
    }
}

/// A new refresh secret for the login `session`, and the hash the database keeps.
fn refresh_secret(session: SessionId) -> (RefreshToken, String) {
    use rand::Rng;
    let bytes: [u8; 32] = rand::rng().random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let hash = hash_secret(&secret);
    (RefreshToken { session, secret }, hash)
}

fn hash_secret(secret: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_tokens_round_trip_and_reject_malformed_ones() {
        let (t, hash) = refresh_secret(SessionId::new());
        let parsed = RefreshToken::parse(&t.to_string()).expect("parses");
        assert_eq!(parsed.session, t.session);
        assert_eq!(hash_secret(&parsed.secret), hash);
        let s = t.to_string();
        for bad in [
            "",
            ".",
            "x.y",
            &s[..s.len() - 1],
            &format!("{s}0"),
            &s.replace('.', "-"),
            &format!("{}.{}", "z".repeat(32), &s[33..]),
        ] {
            assert!(RefreshToken::parse(bad).is_none(), "{bad:?}");
        }
        assert_ne!(refresh_secret(t.session).1, hash, "each secret is new");
    }
}
