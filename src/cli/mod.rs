//! The command line: `switchboard [all|auth|gateway|messaging|notify|migrate]`, and the
//! operator's `switchboard user …` ([`admin`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, Overrides};
use crate::startup::{Application, shutdown_signal};
use crate::web::Mount;

#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about = "Switchboard: distributed one-to-one chat")]
pub struct Cli {
    /// TOML configuration file (see deploy/switchboard.sample.toml).
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on, e.g. 127.0.0.1:8080.
    #[arg(long, global = true)]
    pub listen: Option<SocketAddr>,
    /// Data directory (SQLite file, generated key, files).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… database URL.
    #[arg(long, global = true)]
    pub database_url: Option<String>,
    /// amqp://… RabbitMQ URL; unset means the in-process bus.
    #[arg(long, global = true)]
    pub amqp_url: Option<String>,
    /// Log filter, e.g. "info" or "switchboard=debug".
    #[arg(long, global = true)]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Every service in one process (the default).
    All,
    /// The auth service: users, logins, contacts, search.
    Auth,
    /// The public gateway in front of the services.
    Gateway,
    /// The messaging service: conversations, messages, files, WebSocket.
    Messaging,
    /// The notification service.
    Notify,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage accounts (on the configured database; a running cluster sees the change).
    #[command(subcommand)]
    User(UserCommand),
}

/// `switchboard user …`. Passwords are read from standard input (`--password-stdin`),
/// never from the command line; without it a random one is generated and printed once.
#[derive(Debug, Clone, PartialEq, Eq, Subcommand)]
pub enum UserCommand {
    /// List accounts (username, display name, id, state, created), by username.
    List {
        /// Only usernames or display names starting with this (case-insensitive).
        #[arg(long)]
        query: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Create an account.
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Set a new password; every login of the user ends.
    ResetPassword {
        name: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Disable an account: it cannot log in, and its logins end at once (sockets close).
    Disable { name: String },
    /// Enable a disabled account.
    Enable { name: String },
    /// Delete an account (what stays: docs/api.md, "Deleting an account").
    Delete { name: String },
}

impl Cli {
    fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            amqp_url: self.amqp_url.clone(),
            log: self.log.clone(),
        }
    }
}

/// Every connection is a file descriptor: take the hard limit, not the (often 1024) soft
/// one. Logged so an operator sees the ceiling.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open files"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
}

/// The runtime's worker threads: one per core, less the one the SQLite writer thread
/// keeps busy where this process runs it (messaging or notify on a SQLite database). On
/// two cores a second worker only contended with the writer for its core: every wake-up
/// between them a context switch, 15% more CPU per message at the same throughput
/// (docs/benchmarks.md). `TOKIO_WORKER_THREADS` overrides it.
fn worker_threads(config: &Config, mount: Option<Mount>) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let writer = matches!(mount, Some(Mount::All | Mount::Messaging | Mount::Notify))
        && matches!(config.database_kind(), Ok(crate::config::DatabaseKind::Sqlite));
    if writer { cores.saturating_sub(1).max(1) } else { cores }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.clone().unwrap_or(Command::All);
    let mount = match command {
        Command::All => Some(Mount::All),
        Command::Auth => Some(Mount::Auth),
        Command::Messaging => Some(Mount::Messaging),
        Command::Notify => Some(Mount::Notify),
        Command::Migrate | Command::Gateway | Command::User(_) => None,
    };
    let config = match Config::load(cli.config.as_deref(), std::env::vars(), &cli.overrides()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            return ExitCode::from(2);
        }
    };
    if command == Command::Gateway {
        let g = &config.gateway;
        if g.auth.is_empty() && g.messaging.is_empty() && g.notify.is_empty() {
            eprintln!(
                "switchboard: the gateway needs upstreams: set gateway.auth, gateway.messaging and \
                 gateway.notify (base URLs such as http://127.0.0.1:8081) in the config file"
            );
            return ExitCode::from(2);
        }
    }
    if let Command::User(action) = command {
        return admin::run(config, action);
    }
    crate::telemetry::init(&config.log);
    raise_open_file_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        builder.worker_threads(worker_threads(&config, mount));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match mount {
            None if command == Command::Gateway => {
                let gateway = crate::gateway::Gateway::build(config).await?;
                gateway.run_until_stopped(shutdown_signal()).await
            }
            Some(mount) => {
                let app = Application::build(config, mount).await?;
                app.run_until_stopped(shutdown_signal()).await
            }
            None => {
                std::fs::create_dir_all(&config.data_dir)?;
                crate::storage::connect(&config.database_url()).await?;
                println!("migrations applied");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub mod admin;
