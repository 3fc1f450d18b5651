//! Authentication: who is calling.
//!
//! - [`passwords::PasswordHasher`]: argon2id hashing off the async threads, bounded.
//! - [`tokens::TokenKeys`]: signs and verifies JWT access tokens (`sub`, `jti`, `iat`,
//!   `exp`).
//! - [`service::AuthService`]: register, login, logout, and [`service::AuthService::authenticate`],
//!   which turns a token into an [`AuthUser`] only if its session is still active.
//!
//! - [`routes`]: `/api/auth/*` and the `require_auth` hoop every other service uses.
//! - [`users`], [`sessions`]: the repositories of accounts and login sessions.
//!
//! Identity comes from the verified token only, never from a field the client sends.

pub mod passwords;
pub mod routes;
pub mod service;
pub mod sessions;
pub mod tokens;
pub mod users;

use crate::domain::{SessionId, UserId};

/// The caller of a request, established from a verified, unrevoked token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthUser {
    pub user_id: UserId,
    pub session_id: SessionId,
    /// The absolute end of the login, in ms since the epoch: long-lived connections
    /// opened with it (WebSocket, notification stream) close then at the latest. (They
    /// outlive their access token: it only has to be valid when they open.)
    pub expires_at: i64,
}

/// Name of the browser's access-token cookie (HttpOnly, SameSite=Lax), as long-lived as
/// the token.
pub const SESSION_COOKIE: &str = "sb_session";
/// Name of the browser's refresh cookie (HttpOnly, SameSite=Lax): renews the access
/// cookie while the login lasts.
pub const REFRESH_COOKIE: &str = "sb_refresh";
