//! A real cluster for tests: `switchboard auth`, N `switchboard messaging` nodes and
//! `switchboard gateway`, each its own process (the binary under test), sharing one SQLite
//! file (or a fresh PostgreSQL database, [`Backend::Postgres`]) and a RabbitMQ broker under
//! a prefix of its own. And [`PrivateBroker`]: a RabbitMQ
//! node a test starts (and restarts) itself, on its own port and node name, so other tests
//! keep the machine's shared broker.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Client;
use tempfile::TempDir;

use crate::helpers::{Api, Backend, TEST_JWT_SECRET, create_pg_database, drop_pg_database, eventually};

/// The machine's shared broker.
pub const SHARED_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

struct Proc {
    child: Child,
    addr: SocketAddr,
}

/// The cluster's `bus.node_ttl_secs`: a killed node leaves the bus directory this long
/// after its last heartbeat.
pub const NODE_TTL_SECS: u64 = 4;

pub struct Cluster {
    pub dir: TempDir,
    /// Prefix of this cluster's broker objects.
    pub prefix: String,
    pub amqp_url: String,
    /// The PostgreSQL database the processes share (`None`: the SQLite file), and its URL.
    pg: Option<(String, String)>,
    procs: HashMap<String, Proc>,
    /// Addresses of killed processes.
    killed: HashMap<String, SocketAddr>,
    http: Client,
}

impl Cluster {
    /// Auth, `nodes` messaging nodes and the gateway, on the shared broker.
    pub fn start(nodes: usize) -> Cluster {
        Self::start_on(nodes, SHARED_AMQP)
    }

    pub fn start_on(nodes: usize, amqp_url: &str) -> Cluster {
        Self::start_with(nodes, amqp_url, "")
    }

    /// As [`Cluster::start_on`], with `gateway_extra` appended to the gateway's
    /// `[gateway]` table.
    pub fn start_with(nodes: usize, amqp_url: &str, gateway_extra: &str) -> Cluster {
        Self::start_full(nodes, amqp_url, gateway_extra, Backend::Sqlite)
    }

    /// As [`Cluster::start_on`], on `backend`'s database.
    pub fn start_on_backend(nodes: usize, amqp_url: &str, backend: Backend) -> Cluster {
        Self::start_full(nodes, amqp_url, "", backend)
    }

    fn start_full(nodes: usize, amqp_url: &str, gateway_extra: &str, backend: Backend) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let prefix = format!("sbtest-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let http = Client::builder().timeout(Duration::from_secs(30)).build().expect("client");
        let pg = (backend == Backend::Postgres).then(create_pg_database);
        let mut c = Cluster {
            dir,
            prefix,
            amqp_url: amqp_url.to_owned(),
            pg,
            procs: HashMap::new(),
            killed: HashMap::new(),
            http,
        };
        std::fs::write(c.dir.path().join("cluster.toml"), c.config_toml()).expect("write config");
        c.spawn("auth", "auth", "cluster.toml", None);
        c.spawn("notify", "notify", "cluster.toml", None);
        for i in 1..=nodes {
            c.spawn(&format!("messaging-{i}"), "messaging", "cluster.toml", None);
        }
        let upstream = |name: &str| format!("\"http://{}\"", c.addr(name));
        let nodes_list: Vec<String> = (1..=nodes).map(|i| upstream(&format!("messaging-{i}"))).collect();
        let gateway = format!(
            "{}\n[gateway]\nauth = [{}]\nnotify = [{}]\nmessaging = [{}]\n{}requests_per_ip_per_minute = 1000000\n{gateway_extra}\n",
            c.config_toml(),
            upstream("auth"),
            upstream("notify"),
            nodes_list.join(", "),
            if gateway_extra.contains("health_interval_ms") { "" } else { "health_interval_ms = 200\n" }
        );
        std::fs::write(c.dir.path().join("gateway.toml"), gateway).expect("write config");
        c.spawn("gateway", "gateway", "gateway.toml", None);
        c
    }

    /// The database every process of the cluster shares.
    pub fn database_url(&self) -> String {
        match &self.pg {
            Some((_, url)) => url.clone(),
            None => format!("sqlite://{}/switchboard.db", self.dir.path().join("data").display()),
        }
    }

    fn config_toml(&self) -> String {
        let data = self.dir.path().join("data");
        let database_url = self.database_url();
        format!(
            r#"data_dir = "{data}"
database_url = "{database_url}"
amqp_url = "{amqp}"
log = "warn"
trusted_proxies = ["127.0.0.1"]
fault_injection = true

[auth]
jwt_secret = "{secret}"
login_per_ip_per_minute = 100000
login_per_username_per_minute = 100000
register_per_ip_per_minute = 100000

[limits]
search_per_minute = 100000
contact_requests_per_minute = 100000

[messaging]
sends_per_second = 100000
send_burst = 100000
opens_per_minute = 100000

[bus]
prefix = "{prefix}"
reconnect_max_ms = 500
node_ttl_secs = {NODE_TTL_SECS}
"#,
            data = data.display(),
            amqp = self.amqp_url,
            secret = TEST_JWT_SECRET,
            prefix = self.prefix,
        )
    }

    /// Runs the operator's `switchboard user …` on this cluster's configuration (its
    /// database and broker): `(exit code, stdout, stderr)`.
    pub fn user_command(&self, args: &[&str]) -> (i32, String, String) {
        let config = self.dir.path().join("cli.toml");
        std::fs::write(&config, self.config_toml()).expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&config)
            .arg("user")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("the binary runs");
        let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
        (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
    }

    /// Starts one process (on `addr`, or any free port) and waits for its "listening on"
    /// line.
    fn spawn(&mut self, name: &str, service: &str, config: &str, addr: Option<SocketAddr>) {
        let log_path = self.dir.path().join(format!("{name}.log"));
        let listen = addr.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--config", &self.dir.path().join(config).display().to_string(), "--listen", &listen, service])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start switchboard");
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        for stream in [
            child.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let tx = tx.clone();
            let log_path = log_path.clone();
            std::thread::spawn(move || {
                let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).ok();
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addr) = line.split("listening on http://").nth(1).and_then(|a| a.trim().parse().ok()) {
                        let _ = tx.send(addr);
                    }
                    if let Some(f) = log.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                }
            });
        }
        let addr = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("{name} did not start; log:\n{}", std::fs::read_to_string(&log_path).unwrap_or_default())
        });
        self.procs.insert(name.to_owned(), Proc { child, addr });
    }

    pub fn addr(&self, name: &str) -> SocketAddr {
        self.procs.get(name).unwrap_or_else(|| panic!("no process {name}")).addr
    }

    pub fn gateway(&self) -> SocketAddr {
        self.addr("gateway")
    }

    /// SIGKILL: the process dies at once, as in a crash.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut p) = self.procs.remove(name) {
            let _ = p.child.kill();
            let _ = p.child.wait();
            self.killed.insert(name.to_owned(), p.addr);
        }
    }

    /// Waits (up to 60 s) for `name` to exit by itself; its exit status. It then counts
    /// as killed (it can be restarted).
    pub fn wait_exit(&mut self, name: &str) -> std::process::ExitStatus {
        let mut p = self.procs.remove(name).unwrap_or_else(|| panic!("no process {name}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = p.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = p.child.kill();
                panic!("{name} did not exit; log:\n{}", self.log(name));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        self.killed.insert(name.to_owned(), p.addr);
        status
    }

    /// Starts a killed process again, on its old address (the gateway's list is fixed).
    pub fn restart(&mut self, name: &str) {
        let addr = *self.killed.get(name).expect("killed before");
        let (service, config) = match name {
            "gateway" => ("gateway", "gateway.toml"),
            n if n.starts_with("messaging") => ("messaging", "cluster.toml"),
            n => (n, "cluster.toml"),
        };
        self.spawn(name, service, config, Some(addr));
        self.killed.remove(name);
    }

    /// The log of one process so far (for failure messages).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Waits until the gateway's health check has marked `name` down.
    pub async fn wait_marked_down(&self, name: &str) {
        let url = format!("http://{}", self.killed.get(name).expect("killed before"));
        eventually("the gateway to mark the upstream down", || async {
            let r = self.http.get(self.url("/readyz")).send().await.ok()?;
            let v: serde_json::Value = r.json().await.ok()?;
            let all = v["services"].as_object()?.values().flat_map(|m| m.as_array().cloned().unwrap_or_default());
            all.into_iter().any(|m| m["url"] == url.as_str() && m["healthy"] == false).then_some(())
        })
        .await;
    }
}

impl Api for Cluster {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway(), path)
    }

    fn client(&self) -> &Client {
        &self.http
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // A failed test shows what each process logged.
            let mut names: Vec<&String> = self.procs.keys().chain(self.killed.keys()).collect();
            names.sort();
            for name in names {
                let log = self.log(name);
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- {name} (last lines):");
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
        }
        for p in self.procs.values_mut() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
        delete_broker_objects(&self.amqp_url, &self.prefix);
        if let Some((name, _)) = self.pg.take() {
            drop_pg_database(name);
        }
    }
}

/// Removes a test's exchanges and queues (node queues go with their connections).
pub fn delete_broker_objects(amqp_url: &str, prefix: &str) {
    let url = amqp_url.to_owned();
    let prefix = prefix.to_owned();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        // Bounded as a whole: a broker that accepts the connection but never answers must
        // not hang the test's drop.
        let work = async move {
            let Ok(Ok(conn)) =
                tokio::time::timeout(Duration::from_secs(5), lapin::Connection::connect(&url, Default::default()))
                    .await
            else {
                return;
            };
            if let Ok(ch) = conn.create_channel().await {
                let _ = ch.queue_delete(format!("{prefix}.dead").into(), Default::default()).await;
                let _ = ch.queue_delete(format!("{prefix}.notify").into(), Default::default()).await;
                let _ = ch.exchange_delete(format!("{prefix}.dead").into(), Default::default()).await;
                let _ = ch.exchange_delete(format!("{prefix}.events").into(), Default::default()).await;
            }
            let _ = conn.close(200, "bye".into()).await;
        };
        let _ = rt.block_on(async move { tokio::time::timeout(Duration::from_secs(20), work).await });
    })
    .join();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(200)).is_ok()
}

/// A RabbitMQ node of the test's own: own node name, ports, data and cookie.
pub struct PrivateBroker {
    dir: TempDir,
    pub port: u16,
    dist_port: u16,
    name: String,
    child: Option<Child>,
}

impl PrivateBroker {
    pub fn start() -> PrivateBroker {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let mut b = PrivateBroker {
            port,
            dist_port: free_port(),
            name: format!("sbtest{}@localhost", &uuid::Uuid::new_v4().simple().to_string()[..10]),
            dir,
            child: None,
        };
        std::fs::write(b.dir.path().join("rabbitmq.conf"), format!("listeners.tcp.local = 127.0.0.1:{port}\n"))
            .expect("conf");
        std::fs::write(b.dir.path().join("enabled_plugins"), "[].\n").expect("plugins");
        std::fs::write(b.dir.path().join("env.conf"), "").expect("env");
        b.boot();
        b
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the node and waits until it accepts AMQP connections.
    pub fn boot(&mut self) {
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", self.dir.path())
            .env("RABBITMQ_CONF_ENV_FILE", self.path("env.conf"))
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_CONFIG_FILE", self.path("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", self.path("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", self.path("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.path("log"))
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS", "-kernel inet_dist_use_interface {127,0,0,1}")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start rabbitmq-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        while !port_open(self.port) {
            assert!(Instant::now() < deadline, "private RabbitMQ did not start within 90 s; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the node (SIGTERM to its whole process group) and waits until the process has
    /// exited and the port is closed; panics (with the broker's log) if it takes over 60 s,
    /// so a test never runs its "outage" against a broker that is still up.
    pub fn halt(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        if let Some(mut child) = self.child.take() {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
                    outcome => {
                        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                        let _ = child.wait();
                        panic!(
                            "private RabbitMQ {} did not exit within 60 s of SIGTERM ({outcome:?}); log:\n{}",
                            self.name,
                            self.log()
                        );
                    }
                }
            }
            while port_open(self.port) {
                if Instant::now() >= deadline {
                    let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
                    panic!(
                        "private RabbitMQ {} exited but port {} still accepts connections after 60 s; log:\n{}",
                        self.name,
                        self.port,
                        self.log()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The last lines of each of the node's log files (for failure messages).
    pub fn log(&self) -> String {
        let mut out = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.path("log"))
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {}\n", file.display()));
            for line in &lines[lines.len().saturating_sub(60)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        if out.is_empty() { format!("(no log files in {})", self.path("log").display()) } else { out }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
        }
    }
}
