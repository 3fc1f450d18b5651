//! The HTTP layer every service shares: the router of one process (which slices' routes
//! a [`Mount`] serves), the request state, and what is not one service's:
//!
//! - [`health`]: `GET /healthz`, `GET /readyz` (every service).
//! - [`csrf`]: the cross-site request forgery guard on every state-changing request.
//! - [`openapi`]: `GET /api/openapi.json`, the REST API's spec generated from the routes.
//! - [`pages`]: server-rendered pages and embedded static files (the web UI).
//!
//! The services' own routes live in their slices: [`crate::auth::routes`],
//! [`crate::contacts::routes`], [`crate::messaging`] (`ws`, `conversations`, `transfers`,
//! `debug`) and [`crate::notify::routes`].
//!
//! [`AppState`] is put in every request's depot by the [`InjectState`] hoop; handlers
//! take it from there with [`state`].

pub mod csrf;
pub mod health;
pub mod openapi;
pub mod pages;

use std::sync::Arc;

use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;
use sea_orm::DatabaseConnection;

use switchboard_actors::node::Node;

use crate::auth::service::AuthService;
use crate::config::Config;
use crate::error::{AppError, ErrorCode};
use crate::ratelimit::KeyedLimiter;

/// What every handler may need. Cheap to clone (handles and `Arc`s).
#[derive(Clone, Debug)]
pub struct AppState {
    pub config: Arc<Config>,
    pub repos: Repos,
    pub auth: AuthService,
    /// Notifications: changes for their user, each told to the user's devices.
    pub notifier: crate::notify::Notifier,
    /// The contact rules and their consequences.
    pub contacts: crate::contacts::service::ContactsService,
    /// The actor system of this process (messaging).
    pub node: Arc<Node>,
    /// User searches per user per minute.
    pub search_limiter: Arc<KeyedLimiter>,
    /// Contact requests per user per minute.
    pub contact_limiter: Arc<KeyedLimiter>,
    /// Chat sockets and notification streams opened per user per minute.
    pub opens_limiter: Arc<KeyedLimiter>,
    /// Transfers and stored files.
    pub files: crate::messaging::files::FileRepo,
    /// The rules of uploads and downloads.
    pub transfers: crate::messaging::transfer_service::TransferService,
    /// The RabbitMQ bus, when this process uses one (readiness reports its link).
    pub rabbit: Option<crate::bus::RabbitBus>,
    /// Open chat sockets per user on this node (`messaging.max_connections_per_user`).
    pub sockets: Arc<crate::messaging::ws::SocketCounts>,
    /// Open notification streams per user in this process (the same cap as sockets).
    pub streams: Arc<crate::messaging::ws::SocketCounts>,
    /// Data exports per user per minute.
    pub export_limiter: Arc<KeyedLimiter>,
    /// Message edits and deletions per user per minute.
    pub change_limiter: Arc<KeyedLimiter>,
}

impl AppState {
    /// One more chat socket or notification stream opened by `user`, within
    /// `messaging.opens_per_minute` (429 `rate_limited` with `Retry-After` past it).
    pub fn count_open(&self, user: crate::domain::UserId) -> Result<(), AppError> {
        self.opens_limiter
            .check(&user.to_string())
            .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })
    }

    /// The services an account's life touches (deleting it, exporting it).
    pub fn accounts(&self) -> crate::accounts::Accounts {
        crate::accounts::Accounts {
            auth: self.auth.clone(),
            users: self.repos.users.clone(),
            contacts: self.contacts.clone(),
            chat: self.repos.chat.clone(),
            notifications: self.repos.notifications.clone(),
        }
    }
}

/// The repositories of one process, sharing one connection pool and one committer.
#[derive(Clone, Debug)]
pub struct Repos {
    pub db: DatabaseConnection,
    pub users: crate::auth::users::UserRepo,
    pub sessions: crate::auth::sessions::SessionRepo,
    pub chat: crate::messaging::chat::ChatRepo,
    pub contacts: crate::contacts::repo::ContactRepo,
    pub notifications: crate::notify::repo::NotificationRepo,
}

impl Repos {
    /// The repositories on `db`, and the committer ([`crate::writer`]) their hot writes
    /// go through; logins slide by `lifetimes`.
    pub fn new(db: DatabaseConnection, lifetimes: crate::auth::sessions::Lifetimes) -> Self {
        let committer = Arc::new(crate::writer::Committer::start(db.clone()));
        Self {
            users: crate::auth::users::UserRepo::new(db.clone()),
            sessions: crate::auth::sessions::SessionRepo::new(db.clone())
                .with_lifetimes(lifetimes)
                .with_writes(committer.clone()),
            chat: crate::messaging::chat::ChatRepo::new(db.clone(), committer.clone())
                .with_login_lifetimes(lifetimes)
                .with_login_writes(committer.clone()),
            contacts: crate::contacts::repo::ContactRepo::new(db.clone()),
            notifications: crate::notify::repo::NotificationRepo::new(db.clone(), committer),
            db,
        }
    }

    /// Is the database answering? (For `/readyz`.)
    pub async fn ping(&self) -> bool {
        self.db.ping().await.is_ok()
    }
}

/// Which services' routes one process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mount {
    /// Everything (`switchboard all`).
    All,
    /// The auth service alone (`switchboard auth`).
    Auth,
    /// The messaging service alone (`switchboard messaging`).
    Messaging,
    /// The notify service alone (`switchboard notify`).
    Notify,
}

impl Mount {
    pub fn name(self) -> &'static str {
        match self {
            Mount::All => "all",
            Mount::Auth => "auth",
            Mount::Messaging => "messaging",
            Mount::Notify => "notify",
        }
    }

    /// Whether this process runs the notify service (consumer, streams, REST).
    pub fn notifies(self) -> bool {
        matches!(self, Mount::All | Mount::Notify)
    }
}

/// The router of one process.
pub fn router(state: AppState, mount: Mount) -> Router {
    let fault_injection = state.config.fault_injection;
    let state_cookie_secure = state.config.auth.cookie_secure;
    let mut root =
        Router::new().hoop(InjectState(state)).hoop(security_headers).hoop(csrf::csrf_guard).push(health::router());
    if matches!(mount, Mount::All | Mount::Auth) {
        root = root.push(crate::auth::routes::router()).push(crate::contacts::routes::router()).push(openapi::router());
    }
    if matches!(mount, Mount::All | Mount::Messaging) {
        use crate::messaging::{conversations, messages, search, transfers, ws};
        root = root
            .push(conversations::router())
            .push(messages::router())
            .push(search::router())
            .push(ws::router())
            .push(transfers::router());
    }
    if mount.notifies() {
        root = root.push(crate::notify::routes::router());
    }
    if fault_injection && mount != Mount::Auth {
        root = root.push(crate::messaging::debug::router());
    }
    if mount == Mount::All {
        root = root.push(pages::router(state_cookie_secure));
    }
    root
}

/// Takes the [`AppState`] out of the depot.
pub fn state(depot: &Depot) -> Result<&AppState, AppError> {
    depot.get_typed::<AppState>().map_err(|_| AppError::Internal(anyhow::anyhow!("AppState missing from depot")))
}

/// Hoop that puts the [`AppState`] in the depot.
pub struct InjectState(pub AppState);

#[async_trait]
impl Handler for InjectState {
    async fn handle(&self, _req: &mut Request, depot: &mut Depot, _res: &mut Response, _ctrl: &mut FlowCtrl) {
        depot.insert_typed(self.0.clone());
    }
}

/// Headers on every response: no MIME sniffing, no framing, no referrer leaks, and a
/// CSP that allows only our own scripts and styles.
#[handler]
pub async fn security_headers(req: &mut Request, depot: &mut Depot, res: &mut Response, ctrl: &mut FlowCtrl) {
    ctrl.call_next(req, depot, res).await;
    let h = res.headers_mut();
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    // A handler may have set a stricter one (file downloads are sandboxed).
    h.entry(header::CONTENT_SECURITY_POLICY).or_insert(HeaderValue::from_static(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    ));
}

/// `?limit=`: `default` when absent, else 1 to `max` (400 `invalid_query` otherwise).
pub fn query_limit(req: &Request, default: u64, max: u64) -> Result<u64, AppError> {
    match req.queries().get("limit") {
        None => Ok(default),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| AppError::bad_request(ErrorCode::InvalidQuery, format!("limit must be 1 to {max}"))),
    }
}

/// `?<key>=`: absent, or a non-negative integer (400 `invalid_query` otherwise).
pub fn query_i64(req: &Request, key: &str) -> Result<Option<i64>, AppError> {
    match req.queries().get(key) {
        None => Ok(None),
        Some(v) => v.parse::<i64>().ok().filter(|n| *n >= 0).map(Some).ok_or_else(|| {
            AppError::bad_request(ErrorCode::InvalidQuery, format!("{key} must be a non-negative integer"))
        }),
    }
}
