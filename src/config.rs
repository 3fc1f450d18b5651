//! Configuration: defaults < config file < environment < flags, validated at start.
//!
//! - File: TOML, given by `--config FILE` or `SWITCHBOARD_CONFIG` (a sample with every
//!   field is `deploy/switchboard.sample.toml`).
//! - Environment: `SWITCHBOARD_<FIELD>`, nested fields joined by a double underscore,
//!   e.g. `SWITCHBOARD_DATABASE_URL`, `SWITCHBOARD_AUTH__JWT_SECRET`.
//! - Flags: the common fields (`--listen`, `--data-dir`, `--database-url`, `--amqp-url`,
//!   `--log`) override everything.
//!
//! Every value is checked by [`Config::validate`]; a bad one stops start-up with a message
//! that names the field and says what is expected.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use switchboard_actors::node::Limits;

/// A secret string (JWT key, URL with a password): usable, never printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The whole configuration of one process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server listens on. Port 0 picks a free port (tests).
    pub listen: SocketAddr,
    /// Directory for the SQLite database, the generated JWT key and stored files.
    pub data_dir: PathBuf,
    /// `sqlite://…` or `postgres://…`. Unset: `sqlite://<data_dir>/switchboard.db`.
    pub database_url: Option<Secret>,
    /// RabbitMQ URL (`amqp://user:pass@host:5672/vhost`). Unset: the in-process bus.
    pub amqp_url: Option<Secret>,
    /// Log filter in `tracing_subscriber::EnvFilter` syntax; `RUST_LOG` overrides it.
    pub log: String,
    /// Authentication: tokens, cookies, password hashing, login limits.
    pub auth: AuthConfig,
    /// Request limits.
    pub limits: LimitsConfig,
    /// Real-time messaging: WebSocket and actor limits.
    pub messaging: MessagingConfig,
    /// The RabbitMQ bus (used when `amqp_url` is set).
    pub bus: BusConfig,
    /// The gateway (`switchboard gateway`): where the services are.
    pub gateway: GatewayConfig,
    /// Notifications: retention.
    pub notify: NotifyConfig,
    /// File transfers: sizes, quotas, expiry.
    pub files: FilesConfig,
    /// Addresses of proxies (the gateway, and any proxy in front of it) whose
    /// `X-Forwarded-For` names the real client: the right-most address none of them
    /// wrote, for per-address limits. Requests from any other peer use the peer's address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Enable fault injection (`POST /api/debug/faults`): kill or panic a named actor.
    /// For tests and drills only; never on a public server.
    pub fault_injection: bool,
}

/// Authentication settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC key for access tokens, at least 32 bytes; every node of a cluster needs the
    /// same one. Unset on embedded defaults (SQLite, no broker): generated once and kept in
    /// `<data_dir>/jwt.key` so that restarts do not log everyone out. Required otherwise.
    pub jwt_secret: Option<Secret>,
    /// Lifetime of an access token, in seconds (60 s to 1 day). Clients renew it from
    /// their login (`POST /api/auth/refresh`; browsers by their refresh cookie) while the
    /// login lasts, so it can be short.
    pub token_ttl_secs: u64,
    /// A login ends after this many seconds without use (a request, a refresh or an open
    /// socket, which counts every 5 minutes), 15 minutes to 1 year.
    pub session_idle_secs: u64,
    /// A login ends this many seconds after it began however much it is used (the
    /// absolute maximum), 1 hour to 1 year and at least `session_idle_secs`.
    pub session_max_secs: u64,
    /// Mark the session cookie `Secure` (set this when served over HTTPS).
    pub cookie_secure: bool,
    /// Argon2id memory cost in KiB (OWASP: 19456 KiB with 2 passes).
    pub argon2_memory_kib: u32,
    /// Argon2id passes over memory.
    pub argon2_iterations: u32,
    /// Argon2id lanes.
    pub argon2_parallelism: u32,
    /// Password hashes computed at once; the rest wait. Bounds CPU and memory under a
    /// login flood. 0 means one per core.
    pub max_concurrent_hashes: usize,
    /// Login attempts per client address per minute.
    pub login_per_ip_per_minute: u32,
    /// Failed logins per (username, client address) per minute; ten times as many per
    /// username from all addresses hold back only addresses that have failed too. Only
    /// failures count, so no one can lock an account's owner out by failing on purpose.
    pub login_per_username_per_minute: u32,
    /// Registrations per client address per minute.
    pub register_per_ip_per_minute: u32,
}

/// Request limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest JSON request body, in bytes.
    pub max_json_body_bytes: usize,
    /// Largest request line plus headers, in bytes (431 past it).
    pub max_header_bytes: usize,
    /// Most header fields in one request (431 past it).
    pub max_headers: usize,
    /// User searches per user per minute.
    pub search_per_minute: u32,
    /// Contact requests sent per user per minute.
    pub contact_requests_per_minute: u32,
}

/// Real-time messaging settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    /// Largest message body in bytes.
    pub max_body_bytes: usize,
    /// Largest WebSocket message (frame) a client may send, in bytes.
    pub max_frame_bytes: usize,
    /// Frames queued for one connection before it counts as not reading and is closed.
    pub outbound_queue: usize,
    /// Chat sockets one user may have open on one messaging node at once.
    pub max_connections_per_user: usize,
    /// Chat sockets and notification streams one user may open per minute on one node
    /// (bursts of as many): a client reconnecting in a loop costs a session start, its
    /// reads and a bus directory write each time.
    pub opens_per_minute: u32,
    /// Messages a user may send per second, and the burst allowed above that.
    pub sends_per_second: u32,
    pub send_burst: u32,
    /// Invalid frames a connection may send before it is closed.
    pub max_violations: u32,
    /// Seconds between server pings.
    pub heartbeat_secs: u64,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout_secs: u64,
    /// A conversation's actor stops after this many quiet seconds (restarts on demand).
    pub room_idle_secs: u64,
    /// Origins (scheme://host[:port]) allowed to open a cookie-authenticated WebSocket,
    /// besides the server's own. Bearer-token clients are not origin-checked.
    pub allowed_origins: Vec<String>,
    /// How long after sending a text message its sender may still edit it, in seconds
    /// (0: no edits). Deleting has no time limit.
    pub edit_window_secs: u64,
    /// Edits and deletions one user may make per minute.
    pub changes_per_minute: u32,
    /// A connection's session actor hibernates after this many idle seconds (its socket
    /// stays open; the next frame or event wakes it), checked at each heartbeat. 0:
    /// never.
    pub hibernate_secs: u64,
}

/// A server with the HTTP/1 header limits of `limits` (request line plus headers, and
/// the number of header fields; 431 past either).
pub fn http_server(
    acceptor: salvo::conn::tcp::TcpAcceptor,
    limits: &LimitsConfig,
) -> salvo::Server<salvo::conn::tcp::TcpAcceptor> {
    let mut server = salvo::Server::new(acceptor);
    server.http1_mut().max_buf_size(limits.max_header_bytes).max_headers(limits.max_headers);
    server
}

/// RabbitMQ settings. The broker objects' names all start with `prefix` (see
/// docs/broker.md), so several deployments (or tests) can share one broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Unacknowledged deliveries a consumer holds at once.
    pub prefetch: u16,
    /// Declare the durable queues as quorum queues (replicated; for a broker cluster).
    pub quorum_queues: bool,
    /// Longest wait between reconnect attempts, in milliseconds (backoff doubles from 100).
    pub reconnect_max_ms: u64,
    /// A node that has not written its heartbeat for this many seconds (3 to 3600) is
    /// taken for dead: its rows leave the bus directory (it writes one every third).
    pub node_ttl_secs: u64,
    /// How long, in microseconds (0 to 20000), the publisher waits after the first event
    /// of a batch for more to join it while events keep coming (an event after a quiet
    /// spell as long leaves at once): fewer, larger AMQP messages (less broker CPU per
    /// event) against up to that much more latency across nodes under load.
    pub batch_linger_us: u64,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            prefix: "switchboard".to_owned(),
            prefetch: 512,
            quorum_queues: false,
            reconnect_max_ms: 5000,
            node_ttl_secs: 30,
            batch_linger_us: 5000,
        }
    }
}

/// File transfer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Largest file, in bytes (refused when the transfer is created).
    pub max_file_bytes: u64,
    /// Chunk size the server asks for, in bytes (64 KiB to 8 MiB).
    pub chunk_bytes: u64,
    /// Uploads in progress per user at once.
    pub max_concurrent_transfers: u64,
    /// Bytes a user may have stored and in progress, in all.
    pub quota_bytes: u64,
    /// An upload with no chunk for this long expires and its chunks are deleted.
    pub transfer_ttl_secs: u64,
    /// An uploaded PNG, JPEG, GIF or WebP (by its bytes) gets a thumbnail if neither side
    /// is longer than this (1 to 65,535 px)...
    pub image_max_side: u32,
    /// ...and it has at most this many pixels (1 to 200 million; one decode takes up to 8
    /// bytes a pixel, one at a time per node). Past either limit it is an attachment.
    pub image_max_pixels: u64,
}

impl FilesConfig {
    pub fn image_limits(&self) -> crate::messaging::images::ImageLimits {
        crate::messaging::images::ImageLimits { max_side: self.image_max_side, max_pixels: self.image_max_pixels }
    }
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 << 30,
            chunk_bytes: 1 << 20,
            max_concurrent_transfers: 5,
            quota_bytes: 20 << 30,
            transfer_ttl_secs: 24 * 3600,
            image_max_side: 16_384,
            image_max_pixels: 50_000_000,
        }
    }
}

/// Notification settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NotifyConfig {
    /// Notifications older than this many days are deleted.
    pub retention_days: u32,
    /// Notifications kept per user; older ones are deleted as new ones arrive.
    pub max_per_user: u64,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        Self { retention_days: 30, max_per_user: 1000 }
    }
}

/// The gateway: upstream services, health checks and edge limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// Base URLs (`http://host:port`) of the auth service instances.
    pub auth: Vec<String>,
    /// Base URLs of the messaging nodes; WebSocket clients are spread over them.
    pub messaging: Vec<String>,
    /// Base URLs of the notify service instances.
    pub notify: Vec<String>,
    /// Milliseconds between health checks of each upstream.
    pub health_interval_ms: u64,
    /// Largest request body passed on, in bytes (by `Content-Length`; the services check
    /// the bytes themselves too).
    pub max_body_bytes: u64,
    /// Requests per client address per minute, over all routes.
    pub requests_per_ip_per_minute: u32,
    /// Seconds a proxied WebSocket may go without a byte moving either way before the
    /// gateway drops it (a client that stops reading would otherwise hold both sockets;
    /// a live one carries a ping every `messaging.heartbeat_secs`).
    pub socket_stall_secs: u64,
    /// Addresses of proxies in front of the gateway (a TLS terminator, a load balancer)
    /// whose `X-Forwarded-For` names the client: the edge limit counts per client, and
    /// the chain is passed on with the proxy appended. Anyone else's header is replaced.
    /// The services' own `trusted_proxies` must then list these too, with the gateway.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            auth: vec![],
            messaging: vec![],
            notify: vec![],
            health_interval_ms: 1000,
            max_body_bytes: 8 * 1024 * 1024,
            requests_per_ip_per_minute: 6000,
            socket_stall_secs: 90,
            trusted_proxies: vec![],
        }
    }
}

impl Default for MessagingConfig {
    /// The actor system's own defaults ([`Limits`]), so each value is written once.
    fn default() -> Self {
        let l = Limits::default();
        Self {
            max_body_bytes: l.max_body_bytes,
            max_frame_bytes: l.max_frame_bytes,
            outbound_queue: l.outbound_queue,
            max_connections_per_user: 32,
            opens_per_minute: 120,
            sends_per_second: l.sends_per_second,
            send_burst: l.send_burst,
            max_violations: l.max_violations,
            heartbeat_secs: 20,
            idle_timeout_secs: 60,
            room_idle_secs: l.room_idle.as_secs(),
            allowed_origins: vec![],
            edit_window_secs: l.edit_window.as_secs(),
            changes_per_minute: 60,
            hibernate_secs: l.hibernate_after.as_secs(),
        }
    }
}

impl MessagingConfig {
    /// The limits the actor system enforces.
    pub fn limits(&self) -> Limits {
        Limits {
            max_body_bytes: self.max_body_bytes,
            max_frame_bytes: self.max_frame_bytes,
            outbound_queue: self.outbound_queue,
            sends_per_second: self.sends_per_second,
            send_burst: self.send_burst,
            max_violations: self.max_violations,
            room_idle: std::time::Duration::from_secs(self.room_idle_secs),
            edit_window: std::time::Duration::from_secs(self.edit_window_secs),
            hibernate_after: std::time::Duration::from_secs(self.hibernate_secs),
            ..Limits::default()
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            amqp_url: None,
            log: "info".to_owned(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            messaging: MessagingConfig::default(),
            bus: BusConfig::default(),
            gateway: GatewayConfig::default(),
            notify: NotifyConfig::default(),
            files: FilesConfig::default(),
            trusted_proxies: vec![],
            fault_injection: false,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            token_ttl_secs: 15 * 60,
            session_idle_secs: 14 * 24 * 3600,
            session_max_secs: 90 * 24 * 3600,
            cookie_secure: false,
            argon2_memory_kib: 19_456,
            argon2_iterations: 2,
            argon2_parallelism: 1,
            max_concurrent_hashes: 0,
            login_per_ip_per_minute: 30,
            login_per_username_per_minute: 10,
            register_per_ip_per_minute: 10,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_json_body_bytes: 64 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            search_per_minute: 120,
            contact_requests_per_minute: 30,
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers in force.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amqp_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log: Option<String>,
}

/// The database behind a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl Config {
    /// Loads the layers in order, then validates. `file` is the `--config` path, if any;
    /// `env` is the process environment (passed in so tests need not touch global state).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            anyhow::ensure!(path.is_file(), "config file {} does not exist", path.display());
            fig = fig.merge(Toml::file_exact(path));
        }
        let env: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| k.starts_with("SWITCHBOARD_") && k != "SWITCHBOARD_CONFIG").collect();
        fig = fig.merge(StaticEnv(env));
        fig = fig.merge(Serialized::defaults(flags));
        let config: Config = fig.extract().map_err(|e| anyhow::anyhow!(describe_figment_error(e)))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the field and the accepted range.
    pub fn validate(&self) -> anyhow::Result<()> {
        let a = &self.auth;
        anyhow::ensure!(
            (60..=24 * 3600).contains(&a.token_ttl_secs),
            "auth.token_ttl_secs must be between 60 and 86400 (1 day), got {}",
            a.token_ttl_secs
        );
        const YEAR: u64 = 365 * 24 * 3600;
        anyhow::ensure!(
            (900..=YEAR).contains(&a.session_idle_secs),
            "auth.session_idle_secs must be between 900 and 31536000 (1 year), got {}",
            a.session_idle_secs
        );
        anyhow::ensure!(
            (3600..=YEAR).contains(&a.session_max_secs) && a.session_max_secs >= a.session_idle_secs,
            "auth.session_max_secs must be between 3600 and 31536000 (1 year) and at least \
             auth.session_idle_secs, got {}",
            a.session_max_secs
        );
        if let Some(secret) = &a.jwt_secret {
            anyhow::ensure!(
                secret.expose().len() >= 32,
                "auth.jwt_secret must be at least 32 bytes long (got {})",
                secret.expose().len()
            );
        }
        anyhow::ensure!(
            (8 * 1024..=4 * 1024 * 1024).contains(&a.argon2_memory_kib),
            "auth.argon2_memory_kib must be between 8192 and 4194304, got {}",
            a.argon2_memory_kib
        );
        anyhow::ensure!(
            (1..=16).contains(&a.argon2_iterations),
            "auth.argon2_iterations must be between 1 and 16, got {}",
            a.argon2_iterations
        );
        anyhow::ensure!(
            (1..=16).contains(&a.argon2_parallelism),
            "auth.argon2_parallelism must be between 1 and 16, got {}",
            a.argon2_parallelism
        );
        anyhow::ensure!(
            a.max_concurrent_hashes <= 256,
            "auth.max_concurrent_hashes must be at most 256 (0 = one per core), got {}",
            a.max_concurrent_hashes
        );
        for (name, v) in [
            ("auth.login_per_ip_per_minute", a.login_per_ip_per_minute),
            ("auth.login_per_username_per_minute", a.login_per_username_per_minute),
            ("auth.register_per_ip_per_minute", a.register_per_ip_per_minute),
            ("limits.search_per_minute", self.limits.search_per_minute),
            ("limits.contact_requests_per_minute", self.limits.contact_requests_per_minute),
        ] {
            anyhow::ensure!((1..=1_000_000).contains(&v), "{name} must be between 1 and 1000000, got {v}");
        }
        let l = &self.limits;
        anyhow::ensure!(
            (1024..=16 * 1024 * 1024).contains(&l.max_json_body_bytes),
            "limits.max_json_body_bytes must be between 1024 and 16777216, got {}",
            l.max_json_body_bytes
        );
        anyhow::ensure!(
            (8 * 1024..=1024 * 1024).contains(&l.max_header_bytes),
            "limits.max_header_bytes must be between 8192 and 1048576, got {}",
            l.max_header_bytes
        );
        anyhow::ensure!(
            (16..=1000).contains(&l.max_headers),
            "limits.max_headers must be between 16 and 1000, got {}",
            l.max_headers
        );
        let m = &self.messaging;
        anyhow::ensure!(
            (1..=1024 * 1024).contains(&m.max_body_bytes),
            "messaging.max_body_bytes must be between 1 and 1048576, got {}",
            m.max_body_bytes
        );
        anyhow::ensure!(
            m.max_frame_bytes >= m.max_body_bytes + 1024 && m.max_frame_bytes <= 16 * 1024 * 1024,
            "messaging.max_frame_bytes must be at least max_body_bytes + 1024 and at most 16777216, got {}",
            m.max_frame_bytes
        );
        anyhow::ensure!(
            (16..=1_000_000).contains(&m.outbound_queue),
            "messaging.outbound_queue must be between 16 and 1000000, got {}",
            m.outbound_queue
        );
        anyhow::ensure!(m.sends_per_second >= 1, "messaging.sends_per_second must be at least 1");
        anyhow::ensure!(m.send_burst >= 1, "messaging.send_burst must be at least 1");
        anyhow::ensure!(
            m.heartbeat_secs >= 1 && m.idle_timeout_secs > m.heartbeat_secs,
            "messaging.heartbeat_secs must be at least 1 and below messaging.idle_timeout_secs"
        );
        anyhow::ensure!(m.room_idle_secs >= 1, "messaging.room_idle_secs must be at least 1");
        anyhow::ensure!(
            (1..=10_000).contains(&m.max_connections_per_user),
            "messaging.max_connections_per_user must be between 1 and 10000, got {}",
            m.max_connections_per_user
        );
        anyhow::ensure!(
            (1..=1_000_000).contains(&m.opens_per_minute),
            "messaging.opens_per_minute must be between 1 and 1000000, got {}",
            m.opens_per_minute
        );
        anyhow::ensure!(
            m.edit_window_secs <= 366 * 86_400,
            "messaging.edit_window_secs must be at most 31622400 (a year), got {}",
            m.edit_window_secs
        );
        anyhow::ensure!(
            m.hibernate_secs <= 86_400,
            "messaging.hibernate_secs must be at most 86400 (a day; 0 turns hibernation off), got {}",
            m.hibernate_secs
        );
        anyhow::ensure!(
            (1..=10_000).contains(&m.changes_per_minute),
            "messaging.changes_per_minute must be between 1 and 10000, got {}",
            m.changes_per_minute
        );
        for o in &m.allowed_origins {
            anyhow::ensure!(
                o.starts_with("http://") || o.starts_with("https://"),
                "messaging.allowed_origins: {o:?} must start with http:// or https://"
            );
        }
        self.database_kind()?;
        let b = &self.bus;
        anyhow::ensure!(
            !b.prefix.is_empty()
                && b.prefix.len() <= 64
                && b.prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "bus.prefix must be 1 to 64 characters of a-z, A-Z, 0-9, '-', '_' or '.', got {:?}",
            b.prefix
        );
        anyhow::ensure!(
            (1..=10_000).contains(&b.prefetch),
            "bus.prefetch must be between 1 and 10000, got {}",
            b.prefetch
        );
        anyhow::ensure!(
            (100..=600_000).contains(&b.reconnect_max_ms),
            "bus.reconnect_max_ms must be between 100 and 600000, got {}",
            b.reconnect_max_ms
        );
        anyhow::ensure!(
            (3..=3600).contains(&b.node_ttl_secs),
            "bus.node_ttl_secs must be between 3 and 3600, got {}",
            b.node_ttl_secs
        );
        anyhow::ensure!(
            b.batch_linger_us <= 20_000,
            "bus.batch_linger_us must be between 0 and 20000, got {}",
            b.batch_linger_us
        );
        let n = &self.notify;
        anyhow::ensure!(
            (1..=3650).contains(&n.retention_days),
            "notify.retention_days must be between 1 and 3650, got {}",
            n.retention_days
        );
        anyhow::ensure!(
            (10..=1_000_000).contains(&n.max_per_user),
            "notify.max_per_user must be between 10 and 1000000, got {}",
            n.max_per_user
        );
        let f = &self.files;
        anyhow::ensure!(
            (64 * 1024..=8 << 20).contains(&f.chunk_bytes),
            "files.chunk_bytes must be between 65536 and 8388608, got {}",
            f.chunk_bytes
        );
        anyhow::ensure!(
            f.max_file_bytes >= 1 && f.max_file_bytes <= f.chunk_bytes * 1_000_000,
            "files.max_file_bytes must be at least 1 and at most a million chunks, got {}",
            f.max_file_bytes
        );
        anyhow::ensure!(
            (1..=1000).contains(&f.max_concurrent_transfers),
            "files.max_concurrent_transfers must be between 1 and 1000, got {}",
            f.max_concurrent_transfers
        );
        anyhow::ensure!(f.quota_bytes >= f.max_file_bytes, "files.quota_bytes must be at least files.max_file_bytes");
        anyhow::ensure!(
            (60..=30 * 24 * 3600).contains(&f.transfer_ttl_secs),
            "files.transfer_ttl_secs must be between 60 and 2592000, got {}",
            f.transfer_ttl_secs
        );
        anyhow::ensure!(
            (1..=65_535).contains(&f.image_max_side),
            "files.image_max_side must be between 1 and 65535, got {}",
            f.image_max_side
        );
        anyhow::ensure!(
            (1..=200_000_000).contains(&f.image_max_pixels),
            "files.image_max_pixels must be between 1 and 200000000, got {}",
            f.image_max_pixels
        );
        let g = &self.gateway;
        for (name, urls) in [("auth", &g.auth), ("messaging", &g.messaging), ("notify", &g.notify)] {
            for u in urls {
                anyhow::ensure!(
                    u.starts_with("http://") && u.len() > 7 && !u[7..].contains(['/', '?', '#', ' ']),
                    "gateway.{name} entries must be base URLs like http://127.0.0.1:8081, got {u:?}"
                );
            }
        }
        anyhow::ensure!(
            (50..=60_000).contains(&g.health_interval_ms),
            "gateway.health_interval_ms must be between 50 and 60000, got {}",
            g.health_interval_ms
        );
        anyhow::ensure!(
            (1024..=1 << 30).contains(&g.max_body_bytes),
            "gateway.max_body_bytes must be between 1024 and 1073741824, got {}",
            g.max_body_bytes
        );
        anyhow::ensure!(g.requests_per_ip_per_minute >= 1, "gateway.requests_per_ip_per_minute must be at least 1");
        anyhow::ensure!(
            (2..=3600).contains(&g.socket_stall_secs),
            "gateway.socket_stall_secs must be between 2 and 3600, got {}",
            g.socket_stall_secs
        );
        if let Some(url) = &self.amqp_url {
            let u = url.expose();
            // The AMQP client is built without TLS: an amqps:// URL would connect in plain
            // text, to the port the operator meant for TLS, without a word. Refused instead.
            anyhow::ensure!(
                !u.starts_with("amqps://"),
                "amqp_url: amqps:// (TLS) is not supported by this build; use amqp:// on a private network, or a \
                 TLS tunnel to the broker"
            );
            anyhow::ensure!(u.starts_with("amqp://"), "amqp_url must start with amqp://");
        }
        tracing_subscriber::EnvFilter::try_new(&self.log)
            .with_context(|| format!("log: {:?} is not a valid log filter", self.log))?;
        Ok(())
    }

    /// The database URL in force: the configured one, or the SQLite file in `data_dir`.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.expose().to_owned(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("switchboard.db").display()),
        }
    }

    /// Which database the URL names; an error for any other scheme.
    pub fn database_kind(&self) -> anyhow::Result<DatabaseKind> {
        let url = self.database_url();
        if url.starts_with("sqlite:") {
            Ok(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseKind::Postgres)
        } else {
            anyhow::bail!("database_url must start with sqlite:// or postgres://")
        }
    }

    /// True on the embedded defaults (SQLite and the in-process bus): one node, so a
    /// generated JWT key kept on disk is safe.
    pub fn is_embedded(&self) -> bool {
        self.amqp_url.is_none() && matches!(self.database_kind(), Ok(DatabaseKind::Sqlite))
    }
}

/// An environment provider over given pairs (`SWITCHBOARD_AUTH__JWT_SECRET` →
/// `auth.jwt_secret`), with figment's usual value parsing.
struct StaticEnv(Vec<(String, String)>);

impl figment::Provider for StaticEnv {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(&self) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (k, v) in &self.0 {
            let Some(rest) = k.strip_prefix("SWITCHBOARD_") else { continue };
            let path: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let value: figment::value::Value = v.parse().unwrap_or_else(|_| v.clone().into());
            insert_path(&mut dict, &path, value);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn insert_path(dict: &mut figment::value::Dict, path: &[String], value: figment::value::Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry =
                dict.entry(first.clone()).or_insert_with(|| figment::value::Value::from(figment::value::Dict::new()));
            if let figment::value::Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

fn describe_figment_error(e: figment::Error) -> String {
    e.into_iter().map(|e| format!("configuration error: {e}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_are_valid_and_embedded() {
        let c = Config::load(None, env(&[]), &Overrides::default()).expect("defaults load");
        assert_eq!(c, Config::default());
        assert!(c.is_embedded());
        assert_eq!(c.listen.port(), 8080);
    }

    #[test]
    fn environment_overrides_defaults_and_flags_override_environment() {
        let vars = env(&[
            ("SWITCHBOARD_LISTEN", "127.0.0.1:9000"),
            ("SWITCHBOARD_AUTH__TOKEN_TTL_SECS", "120"),
            ("SWITCHBOARD_AUTH__JWT_SECRET", "0123456789abcdef0123456789abcdef"),
            ("UNRELATED", "x"),
        ]);
        let c = Config::load(None, vars.clone(), &Overrides::default()).expect("loads");
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.auth.token_ttl_secs, 120);
        let flags = Overrides { listen: Some("127.0.0.1:9100".parse().expect("addr")), ..Default::default() };
        let c = Config::load(None, vars, &flags).expect("loads");
        assert_eq!(c.listen.port(), 9100);
    }

    #[test]
    fn bad_values_name_the_field() {
        let err = |pairs: &[(&str, &str)]| {
            Config::load(None, env(pairs), &Overrides::default()).expect_err("must fail").to_string()
        };
        assert!(err(&[("SWITCHBOARD_AUTH__TOKEN_TTL_SECS", "5")]).contains("auth.token_ttl_secs"));
        assert!(err(&[("SWITCHBOARD_AUTH__TOKEN_TTL_SECS", "soon")]).contains("token_ttl_secs"));
        assert!(err(&[("SWITCHBOARD_AUTH__JWT_SECRET", "short")]).contains("at least 32 bytes"));
        assert!(err(&[("SWITCHBOARD_DATABASE_URL", "mysql://x")]).contains("database_url"));
        assert!(err(&[("SWITCHBOARD_AMQP_URL", "http://x")]).contains("amqp_url"));
        assert!(err(&[("SWITCHBOARD_AMQP_URL", "amqps://broker:5671")]).contains("TLS"), "never plain text for amqps");
        assert!(err(&[("SWITCHBOARD_LISTEN", "nowhere")]).contains("listen"));
        assert!(err(&[("SWITCHBOARD_NO_SUCH_FIELD", "1")]).contains("no_such_field"));
    }

    #[test]
    fn secrets_do_not_print() {
        let c = Config { amqp_url: Some(Secret::new("amqp://guest:hunter2@localhost")), ..Config::default() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn postgres_or_broker_is_not_embedded() {
        let c = Config { database_url: Some(Secret::new("postgres://localhost/x")), ..Config::default() };
        assert!(!c.is_embedded());
        let c = Config { amqp_url: Some(Secret::new("amqp://localhost")), ..Config::default() };
        assert!(!c.is_embedded());
    }
}
