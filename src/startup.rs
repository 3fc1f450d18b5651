//! Building and running one process: `Application::build(config, mount)` → `local_addr()`
//! → `run_until_stopped(shutdown)`.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use salvo::catcher::Catcher;
use salvo::conn::tcp::TcpAcceptor;
use salvo::prelude::*;

use switchboard_actors::bridge::InProcessBus;
use switchboard_actors::faults::Faults;
use switchboard_actors::node::{Node, NodeCtx};
use switchboard_actors::ports::Bus;

use crate::auth::service::AuthService;
use crate::auth::tokens::TokenKeys;
use crate::bus::RabbitBus;
use crate::config::{Config, Secret};
use crate::error::json_catcher;
use crate::notify::Notifier;
use crate::ratelimit::KeyedLimiter;
use crate::storage;
use crate::web::Repos;
use crate::web::{self, AppState, Mount};
use tokio_util::sync::CancellationToken;

/// Pending connections the kernel queues for us. Tokio's default (128) drops SYNs in a
/// reconnect storm, and every dropped SYN costs the client a one-second retry.
const LISTEN_BACKLOG: u32 = 4096;
/// How long a graceful shutdown waits for open requests before closing them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long a starting node waits for the broker before serving without it.
const BROKER_WAIT: Duration = Duration::from_secs(5);
/// After the actor system's root exits, how long the process keeps answering (with a
/// failing `/readyz`) before it drains and exits: a couple of health-check periods.
const ROOT_FAILURE_NOTICE: Duration = Duration::from_secs(2);
/// How often expired sessions and idle rate-limit keys are cleaned up.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);
/// How often a node reads the revocation feed ([`revocation_feed`]).
const REVOCATION_FEED_EVERY: Duration = Duration::from_secs(2);
/// How far back each read of the feed looks beyond the last one: other processes stamp
/// revocations with their own clocks, which may run behind ours.
const REVOCATION_FEED_OVERLAP_MS: i64 = 10_000;
/// Revocations read per pass at most (the next pass goes on from the last one read).
const REVOCATION_FEED_BATCH: u64 = 5_000;

/// One running process: its listener, state and router.
pub struct Application {
    acceptor: TcpAcceptor,
    local_addr: SocketAddr,
    state: AppState,
    service: Service,
    mount: Mount,
    rabbit: Option<RabbitBus>,
    /// Stops the background consumers (notify) at shutdown.
    stop: CancellationToken,
}

/// Data exports a user may start per minute (each reads all their messages).
const EXPORTS_PER_MINUTE: u32 = 2;

impl Application {
    /// The process's actor system (tests inspect supervisors and inject faults).
    pub fn node(&self) -> Arc<Node> {
        self.state.node.clone()
    }
}

impl Application {
    /// Prepares the data directory, the database (migrations included), the services of
    /// `mount`, and binds the listener.
    pub async fn build(config: Config, mount: Mount) -> anyhow::Result<Self> {
        prepare_data_dir(&config)?;
        let secret = resolve_jwt_secret(&config)?;
        let db = storage::connect(&config.database_url()).await?;
        let repos = Repos::new(db, crate::auth::sessions::Lifetimes::from_config(&config.auth));
        let auth =
            AuthService::new(repos.users.clone(), repos.sessions.clone(), &config.auth, TokenKeys::new(&secret))?;
        let files = crate::messaging::files::FileRepo::new(repos.db.clone(), &config.data_dir)
            .with_image_limits(config.files.image_limits());
        let (node, rabbit, tap) = start_node(&config, &repos, &files, mount).await?;
        let node = Arc::new(node);
        let auth = auth.with_bus(node.ctx.bus.clone());
        let stop = CancellationToken::new();
        let notifier = Notifier::new(repos.notifications.clone(), node.ctx.bus.clone(), config.notify.clone());
        if mount.notifies() {
            tokio::spawn(notifier.clone().run_retention(HOUSEKEEPING_EVERY));
            match (&config.amqp_url, tap) {
                (Some(url), _) => {
                    tokio::spawn(notifier.clone().run_amqp(
                        url.clone(),
                        node.ctx.node_id.clone(),
                        config.bus.clone(),
                        stop.clone(),
                    ));
                }
                (None, Some(rx)) => {
                    tokio::spawn(notifier.clone().run_tap(rx, stop.clone()));
                }
                (None, None) => {}
            }
        }
        let contacts = crate::contacts::service::ContactsService::new(
            repos.contacts.clone(),
            repos.users.clone(),
            Arc::new(repos.chat.clone()),
            Arc::new(files.clone()),
            node.ctx.bus.clone(),
        );
        let transfers = crate::messaging::transfer_service::TransferService::new(
            files.clone(),
            Arc::new(repos.chat.clone()),
            node.clone(),
            config.files.clone(),
        );
        let state = AppState {
            transfers,
            notifier,
            contacts,
            search_limiter: Arc::new(KeyedLimiter::per_minute(config.limits.search_per_minute)),
            contact_limiter: Arc::new(KeyedLimiter::per_minute(config.limits.contact_requests_per_minute)),
            opens_limiter: Arc::new(KeyedLimiter::per_minute(config.messaging.opens_per_minute)),
            config: Arc::new(config.clone()),
            repos,
            auth,
            node,
            files,
            rabbit: rabbit.clone(),
            sockets: Arc::default(),
            streams: Arc::default(),
            export_limiter: Arc::new(KeyedLimiter::per_minute(EXPORTS_PER_MINUTE)),
            change_limiter: Arc::new(KeyedLimiter::per_minute(config.messaging.changes_per_minute)),
        };
        let router = web::router(state.clone(), mount);
        let service = Service::new(router).catcher(Catcher::default().hoop(json_catcher));
        let listener = bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listener.local_addr()?;
        let acceptor = TcpAcceptor::try_from(listener)?;
        Ok(Self { acceptor, local_addr, state, service, mount, rabbit, stop })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves, then stops gracefully.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let server = crate::config::http_server(self.acceptor, &self.state.config.limits);
        let handle = server.handle();
        let auth = self.state.auth.clone();
        let limiters = [
            self.state.opens_limiter.clone(),
            self.state.search_limiter.clone(),
            self.state.contact_limiter.clone(),
            self.state.export_limiter.clone(),
            self.state.change_limiter.clone(),
        ];
        let node = self.state.node.clone();
        let files = self.state.files.clone();
        let tmp_max_age = Duration::from_secs(self.state.config.files.transfer_ttl_secs);
        let housekeeping = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
            loop {
                tick.tick().await;
                if let Err(e) = auth.housekeeping().await {
                    tracing::warn!(error = %format!("{e:#}"), "housekeeping failed");
                }
                // Users back to a full budget are forgotten (one entry per active user).
                limiters.iter().for_each(|l| l.prune());
                node.ctx.prune_limiters();
                match files.expire(crate::now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(expired = n, "abandoned uploads removed"),
                    Err(e) => tracing::warn!(error = %e, "upload expiry failed"),
                }
                match files.sweep_tmp(tmp_max_age).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "stale temporary files removed"),
                    Err(e) => tracing::warn!(error = %e, "temporary file sweep failed"),
                }
            }
        });
        let feed = (self.mount != Mount::Auth)
            .then(|| tokio::spawn(revocation_feed(self.state.repos.sessions.clone(), self.state.node.clone())));
        // Stop on the shutdown signal, or when the actor system's root supervisor has
        // gone: then `/readyz` already fails, open requests drain, and the process exits
        // non-zero so that whatever supervises it restarts it.
        let node = self.state.node.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown => tracing::info!("shutting down"),
                _ = node.failed() => {
                    tracing::error!("the actor system stopped; draining and exiting");
                    // Keep answering (`/readyz` says 503) long enough for health
                    // checks to see it, then stop taking connections.
                    tokio::time::sleep(ROOT_FAILURE_NOTICE).await;
                }
            }
            handle.stop_graceful(SHUTDOWN_GRACE);
        });
        announce(self.mount.name(), self.local_addr);
        server.serve(self.service).await;
        housekeeping.abort();
        if let Some(feed) = feed {
            feed.abort();
        }
        // Read before our own shutdown of the tree, which is not a failure.
        let root_failed = self.state.node.is_failed();
        self.stop.cancel();
        self.state.node.shutdown();
        if let Some(bus) = &self.rabbit {
            bus.close().await;
        }
        self.state.repos.db.clone().close().await.ok();
        tracing::info!("stopped");
        anyhow::ensure!(
            !root_failed,
            "the actor system's root supervisor exited (killed, or too many restarts below it)"
        );
        Ok(())
    }
}

/// The in-process notify consumer's feed: every event published in this process.
type Tap = tokio::sync::mpsc::Receiver<switchboard_actors::ports::Envelope>;

/// Starts this process's actor tree, with the RabbitMQ bus when `amqp_url` is set and
/// the in-process bus otherwise (with a tap for the notify consumer when this process
/// runs it).
async fn start_node(
    config: &Config,
    repos: &Repos,
    files: &crate::messaging::files::FileRepo,
    mount: Mount,
) -> anyhow::Result<(Node, Option<RabbitBus>, Option<Tap>)> {
    let node_id = format!("n{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let limits = config.messaging.limits();
    let faults = if config.fault_injection { Faults::enabled() } else { Faults::disabled() };
    let (bus, rabbit): (Arc<dyn Bus>, _) = match &config.amqp_url {
        Some(url) => {
            let rabbit = RabbitBus::start(url.clone(), &node_id, config.bus.clone(), repos.db.clone()).await;
            // Wait briefly so a healthy broker is in use from the first request; without
            // one the node starts anyway (local chat works) and keeps trying.
            if !rabbit.wait_connected(BROKER_WAIT).await {
                tracing::warn!("the broker is not reachable yet; starting without it and retrying");
            }
            (Arc::new(rabbit.clone()), Some(rabbit))
        }
        None => (Arc::new(InProcessBus::new(&node_id)), None),
    };
    let mut tap = None;
    let mut chat = repos.chat.clone();
    let bus: Arc<dyn Bus> = if rabbit.is_none() && mount.notifies() {
        let (tx, rx) = tokio::sync::mpsc::channel(crate::notify::TAP_QUEUE);
        tap = Some(rx);
        // The notify consumer here reads this process's events: each message's own
        // notification is written with the message instead.
        chat = chat.with_inline_notifications(config.notify.max_per_user);
        Arc::new(InProcessBus::new(&node_id).with_tap(tx, crate::notify::wants))
    } else {
        bus
    };
    let mut ctx = NodeCtx::new(node_id, Arc::new(chat), bus, faults, limits);
    if mount.notifies() {
        ctx = ctx.with_notifications(Arc::new(repos.notifications.clone()));
    }
    if matches!(mount, Mount::All | Mount::Messaging) {
        ctx = ctx.with_transfers(Arc::new(files.clone()));
    }
    let node = Node::start(ctx).await.map_err(|e| anyhow::anyhow!("cannot start the actor system: {e}"))?;
    Ok((node, rabbit, tap))
}

pub fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Creates the data directory readable by this user only (0700), and the SQLite database
/// file in it 0600 (SQLite gives its `-wal` and `-shm` files the database's mode): they
/// hold password hashes and every message. An existing directory or database is
/// tightened the same way; one we cannot change (another owner) is left with a warning.
fn prepare_data_dir(config: &Config) -> anyhow::Result<()> {
    let dir = &config.data_dir;
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).with_context(|| format!("cannot create data directory {}", dir.display()))?;
    restrict(dir, 0o700);
    let url = config.database_url();
    // sqlx's own parser: `sqlite://path`, `sqlite:path` and options all name the file.
    let file = url
        .starts_with("sqlite:")
        .then(|| <sea_orm::sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&url).ok())
        .flatten()
        .map(|o| o.get_filename().to_path_buf())
        .filter(|p| !p.as_os_str().is_empty() && p.as_os_str() != ":memory:");
    if let Some(path) = file {
        let path = path.as_path();
        if !path.exists() {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            match opts.open(path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", path.display())),
            }
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut p = path.as_os_str().to_owned();
            p.push(suffix);
            let p = std::path::PathBuf::from(p);
            if p.exists() {
                restrict(&p, 0o600);
            }
        }
    }
    Ok(())
}

/// Sets `path`'s mode (Unix), warning if it cannot.
fn restrict(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot restrict permissions");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// The JWT key: configured, or on embedded defaults generated once and kept in
/// `<data_dir>/jwt.key` (mode 0600) so restarts keep everyone logged in.
pub fn resolve_jwt_secret(config: &Config) -> anyhow::Result<Secret> {
    if let Some(s) = &config.auth.jwt_secret {
        return Ok(s.clone());
    }
    anyhow::ensure!(
        config.is_embedded(),
        "auth.jwt_secret (environment SWITCHBOARD_AUTH__JWT_SECRET) is required with PostgreSQL or \
         RabbitMQ: every node must verify the same tokens"
    );
    load_or_create_key(&config.data_dir.join("jwt.key"))
}

fn load_or_create_key(path: &Path) -> anyhow::Result<Secret> {
    let read = |path: &Path| -> anyhow::Result<Secret> {
        let s = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let s = s.trim();
        anyhow::ensure!(
            s.len() >= 32,
            "{} holds a key shorter than 32 bytes; delete it to make a new one",
            path.display()
        );
        Ok(Secret::new(s))
    };
    if path.exists() {
        return read(path);
    }
    let bytes: [u8; 32] = rand::random();
    let key: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    match opts.open(path) {
        Ok(mut f) => {
            f.write_all(key.as_bytes())?;
            f.sync_all()?;
            tracing::info!(path = %path.display(), "generated a new JWT key");
            Ok(Secret::new(key))
        }
        // Another process sharing the data directory made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}

/// Prints where a service listens, as one line on stdout that scripts and tests can wait
/// for: `switchboard <service> listening on http://<addr>`.
pub fn announce(service: &str, addr: SocketAddr) {
    tracing::info!(%addr, service, "listening");
    println!("switchboard {service} listening on http://{addr}");
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// The revocation feed: every [`REVOCATION_FEED_EVERY`], the logins revoked since the last
/// read (from the database, the record) are handed to this node's sockets and streams as
/// `SessionRevoked` events, so a revocation closes connections within seconds even when
/// no bus carried it: the operator's command line on embedded defaults (no broker), or a
/// node whose broker link was down. Delivering one twice is harmless (a closed
/// connection stays closed).
async fn revocation_feed(sessions: crate::auth::sessions::SessionRepo, node: Arc<Node>) {
    let mut after = (crate::now_ms() - REVOCATION_FEED_OVERLAP_MS, None);
    let mut tick = tokio::time::interval(REVOCATION_FEED_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = crate::now_ms();
        match sessions.revoked_after(after, REVOCATION_FEED_BATCH).await {
            Ok(rows) => {
                for (login, user, _) in &rows {
                    let event = switchboard_actors::ports::Event::SessionRevoked { to: *user, session_id: login.0 };
                    switchboard_actors::bridge::dispatch(&node.ctx, event);
                }
                after = match rows.last() {
                    // A full page: go on from its last row (by time, then id), at once.
                    Some((login, _, at)) if rows.len() as u64 == REVOCATION_FEED_BATCH => {
                        tick.reset_immediately();
                        (*at, Some(*login))
                    }
                    _ => (after.0.max(now - REVOCATION_FEED_OVERLAP_MS), None),
                };
            }
            Err(e) => tracing::debug!(error = %e, "revocation feed not read"),
        }
    }
}
