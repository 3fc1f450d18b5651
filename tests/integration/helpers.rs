//! The test harness: start the real application on port 0 with its own data directory
//! and database, and talk to it over HTTP.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, Response, StatusCode};
use sea_orm::{ConnectionTrait, Database};
use serde_json::{Value, json};
use switchboard::config::{Config, Secret};
use switchboard::startup::Application;
use switchboard::web::Mount;
use tempfile::TempDir;
use tokio::sync::oneshot;

/// The key every test app signs with, so tests can forge tokens on purpose.
pub const TEST_JWT_SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const PASSWORD: &str = "correct horse battery";

/// Which database a test app uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A fresh SQLite file in the test's temporary directory.
    Sqlite,
    /// A fresh database on the local PostgreSQL, dropped when the app is.
    Postgres,
}

/// Maintenance URL of the local PostgreSQL (trust auth); override with
/// `SB_TEST_PG_URL`.
fn pg_admin_url() -> String {
    std::env::var("SB_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: Client,
    pub config: Config,
    /// The app's actor system, for supervisor statistics and fault injection.
    pub node: std::sync::Arc<switchboard_actors::node::Node>,
    /// Keeps the data directory alive for the app's lifetime.
    pub data_dir: TempDir,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pg_database: Option<String>,
}

/// Test configuration: port 0, its own data directory, generous rate limits.
pub fn test_config(data_dir: &TempDir) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: data_dir.path().to_path_buf(),
        log: "error".into(),
        ..Config::default()
    };
    c.auth.jwt_secret = Some(Secret::new(TEST_JWT_SECRET));
    c.auth.login_per_ip_per_minute = 100_000;
    c.auth.login_per_username_per_minute = 100_000;
    c.auth.register_per_ip_per_minute = 100_000;
    c.limits.search_per_minute = 100_000;
    c.limits.contact_requests_per_minute = 100_000;
    c.messaging.sends_per_second = 100_000;
    c.messaging.send_burst = 100_000;
    c.messaging.opens_per_minute = 100_000;
    c
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |_| {}).await
}

/// Starts an app on `backend`, after `tweak` has adjusted its configuration.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(&data_dir);
    let mut pg_database = None;
    if backend == Backend::Postgres {
        let (name, url) = create_pg_database();
        config.database_url = Some(Secret::new(url));
        pg_database = Some(name);
    }
    tweak(&mut config);
    start(config, data_dir, pg_database).await
}

async fn start(config: Config, data_dir: TempDir, pg_database: Option<String>) -> TestApp {
    switchboard::telemetry::init(&config.log);
    let app = Application::build(config.clone(), Mount::All).await.expect("app builds");
    let addr = app.local_addr();
    let node = app.node();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    let client = Client::builder()
        .timeout(Duration::from_secs(30))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    TestApp { addr, client, config, node, data_dir, shutdown: Some(tx), server: Some(server), pg_database }
}

impl TestApp {
    /// A second node on this app's database (its own port and data directory; no bus
    /// between the two): for races between processes that write the same rows.
    pub async fn beside(&self) -> TestApp {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let mut config = self.config.clone();
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.data_dir = data_dir.path().to_path_buf();
        start(config, data_dir, None).await
    }

    /// Stops the server and waits until it has stopped; returns the data directory so a
    /// test can start a new app on the same data.
    pub async fn stop(mut self) -> (Config, TempDir) {
        self.stop_server().await;
        let data_dir = std::mem::replace(&mut self.data_dir, tempfile::tempdir().expect("tempdir"));
        (self.config.clone(), data_dir)
    }

    async fn stop_server(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(20), server)
                .await
                .expect("server stops within 20 s")
                .expect("server task joined")
                .expect("server ran without error");
        }
    }

    /// Waits (up to 30 s) for the server to stop by itself; its result.
    pub async fn exited(&mut self) -> anyhow::Result<()> {
        let server = self.server.take().expect("the server was running");
        tokio::time::timeout(Duration::from_secs(30), server)
            .await
            .expect("the server stops by itself within 30 s")
            .expect("server task joined")
    }

    /// Restarts on the same data directory and configuration (a new port).
    pub async fn restart(self) -> TestApp {
        let pg = self.pg_database.clone();
        let mut me = self;
        me.pg_database = None; // keep the database across the restart
        let (mut config, data_dir) = me.stop().await;
        config.listen = "127.0.0.1:0".parse().expect("addr");
        start(config, data_dir, pg).await
    }
}

impl Api for TestApp {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    fn client(&self) -> &Client {
        &self.client
    }
}

/// A server reached over HTTP (one app, or a cluster's gateway), and the calls tests make.
#[allow(async_fn_in_trait)] // test code: no Send bound needed
pub trait Api {
    fn url(&self, path: &str) -> String;
    fn client(&self) -> &Client;

    async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client().post(self.url(path)).json(body).send().await.expect("request sent")
    }

    async fn register(&self, username: &str, password: &str) -> Response {
        self.post_json("/api/auth/register", &json!({"username": username, "password": password})).await
    }

    async fn login(&self, username: &str, password: &str) -> Response {
        self.post_json("/api/auth/login", &json!({"username": username, "password": password})).await
    }

    /// Registers `username` with [`PASSWORD`] and logs in; returns the access token.
    async fn signup(&self, username: &str) -> String {
        let r = self.register(username, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::CREATED, "register {username}");
        let r = self.login(username, PASSWORD).await;
        assert_eq!(r.status(), StatusCode::OK, "login {username}");
        let body: Value = r.json().await.expect("json");
        body["access_token"].as_str().expect("token").to_owned()
    }

    /// `GET path` as the holder of `token`.
    async fn get_as(&self, path: &str, token: &str) -> Response {
        self.client().get(self.url(path)).bearer_auth(token).send().await.expect("request sent")
    }

    /// `GET path` as the holder of `token`; asserts 200 and returns the JSON body.
    async fn get_json(&self, path: &str, token: &str) -> Value {
        let r = self.get_as(path, token).await;
        assert_eq!(r.status(), StatusCode::OK, "GET {path}");
        r.json().await.expect("JSON body")
    }

    async fn me(&self, token: &str) -> Response {
        self.client().get(self.url("/api/auth/me")).bearer_auth(token).send().await.expect("request sent")
    }

    async fn logout(&self, token: &str) -> Response {
        self.client().post(self.url("/api/auth/logout")).bearer_auth(token).send().await.expect("request sent")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(name) = self.pg_database.take() {
            drop_pg_database(name);
        }
    }
}

/// Runs `f` to completion on a runtime of its own, on a thread of its own: usable from
/// `Drop` (which cannot await, while the test's runtime may be shutting down) and from
/// synchronous set-up called inside a test's runtime.
fn on_own_runtime<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        Some(rt.block_on(f))
    })
    .join()
    .ok()
    .flatten()
}

/// Creates a fresh database on the local PostgreSQL: its name and URL.
pub fn create_pg_database() -> (String, String) {
    let name = format!("sb_test_{}", uuid::Uuid::new_v4().simple());
    let create = format!("CREATE DATABASE \"{name}\"");
    on_own_runtime(async move {
        let admin = Database::connect(pg_admin_url()).await.expect("connect to local PostgreSQL");
        admin.execute_unprepared(&create).await.expect("create test database");
        admin.close().await.ok();
    })
    .expect("create test database");
    let base = pg_admin_url();
    let base = base.rsplit_once('/').map(|(b, _)| b.to_owned()).expect("pg url has a path");
    let url = format!("{base}/{name}");
    (name, url)
}

/// Drops a database made by [`create_pg_database`] (its connections too).
pub fn drop_pg_database(name: String) {
    on_own_runtime(async move {
        if let Ok(admin) = Database::connect(pg_admin_url()).await {
            let _ = admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await;
            admin.close().await.ok();
        }
    });
}

/// Asserts the JSON error shape and returns the error code.
pub async fn error_code(resp: Response, status: StatusCode) -> String {
    assert_eq!(resp.status(), status, "unexpected status");
    let body: Value = resp.json().await.expect("error body is JSON");
    let code = body["error"]["code"].as_str().expect("error.code").to_owned();
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "error.message: {body}");
    code
}

/// Is the end at `local_port` of a TCP connection to/from `remote_port` open (ESTABLISHED
/// in /proc/net/tcp)?
pub fn tcp_established(local_port: u16, remote_port: u16) -> bool {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let (local, remote) = (format!(":{local_port:04X}"), format!(":{remote_port:04X}"));
    table.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() > 3 && f[1].ends_with(&local) && f[2].ends_with(&remote) && f[3] == "01"
    })
}

/// Waits until `probe` answers `Some` and returns it: polled every 50 ms for at most 30 s,
/// then the test fails naming `what`. The tests' one way to wait for a condition (a bare
/// sleep either waits too long or not long enough on a busy machine).
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after 30 s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
