//! `switchboard user list | create | reset-password | disable | enable | delete`: the
//! operator's account commands, on the configured database (SQLite or PostgreSQL),
//! beside running nodes or without any.
//!
//! A change that ends logins (reset-password, disable, delete) revokes them in the
//! database, the record every request and socket check consults. Running nodes close
//! the connections of those logins within seconds: through the bus when one is configured
//! (RabbitMQ: the command publishes the revocations like the auth service does), and in
//! any case through each node's revocation feed, which reads recent revocations from the
//! database every 2 s (embedded defaults have no broker another process could reach).
//!
//! Passwords never appear on the command line or in logs: `--password-stdin` reads one
//! line from standard input; without it a random password is generated and printed once.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use switchboard_actors::ports::{Bus, BusError, Envelope};

use super::UserCommand;
use crate::auth::service::AuthService;
use crate::auth::sessions::Lifetimes;
use crate::auth::tokens::TokenKeys;
use crate::config::{Config, Secret};
use crate::domain::UserId;
use crate::web::Repos;

/// Runs one account command; the process's exit code (0 done, 1 refused or failed).
pub fn run(config: Config, action: UserCommand) -> ExitCode {
    crate::telemetry::init("warn");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("switchboard: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(execute(config, action)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(config: Config, action: UserCommand) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)?;
    let db = crate::storage::connect(&config.database_url()).await?;
    let repos = Repos::new(db, Lifetimes::from_config(&config.auth));
    let (bus, rabbit) = bus(&config, &repos.db).await;
    // This process signs no tokens: a throwaway key.
    let keys = TokenKeys::new(&Secret::new(uuid::Uuid::new_v4().simple().to_string().repeat(2)));
    let auth = AuthService::new(repos.users.clone(), repos.sessions.clone(), &config.auth, keys)?.with_bus(bus.clone());
    let result = match action {
        UserCommand::List { query, limit } => {
            let rows = repos.users.list(query.as_deref(), limit.clamp(1, 100_000)).await?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "username\tdisplay_name\tid\tstate\tcreated_at")?;
            for (u, disabled_at) in rows {
                let state = if disabled_at.is_some() { "disabled" } else { "active" };
                let created = chrono::DateTime::from_timestamp_millis(u.created_at)
                    .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_default();
                // Display names are the users' own text: no tabs or line breaks get through.
                let name: String = u.display_name.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
                writeln!(out, "{}\t{name}\t{}\t{state}\t{created}", u.username, u.id)?;
            }
            Ok(())
        }
        UserCommand::Create { name, display_name, password_stdin } => {
            let (password, generated) = password(password_stdin)?;
            let user = auth.register(None, &name, password.clone(), display_name.as_deref()).await?;
            println!("created {} ({})", user.username, user.id);
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
        UserCommand::ResetPassword { name, password_stdin } => {
            let (password, generated) = password(password_stdin)?;
            let user = auth.reset_password(&name, password.clone()).await?.ok_or_else(|| no_such(&name))?;
            println!("password of {} reset; every login of the account ended", user.username);
            if generated {
                println!("password: {password}");
            }
            Ok(())
        }
        UserCommand::Disable { name } => {
            let user = auth.set_disabled(&name, true).await?.ok_or_else(|| no_such(&name))?;
            println!("{} disabled; every login of the account ended", user.username);
            Ok(())
        }
        UserCommand::Enable { name } => {
            let user = auth.set_disabled(&name, false).await?.ok_or_else(|| no_such(&name))?;
            println!("{} enabled", user.username);
            Ok(())
        }
        UserCommand::Delete { name } => {
            let user = auth.find_user(&name).await?.ok_or_else(|| no_such(&name))?;
            let files = crate::messaging::files::FileRepo::new(repos.db.clone(), &config.data_dir);
            let contacts = crate::contacts::service::ContactsService::new(
                repos.contacts.clone(),
                repos.users.clone(),
                Arc::new(repos.chat.clone()),
                Arc::new(files),
                bus.clone(),
            );
            let accounts = crate::accounts::Accounts {
                auth: auth.clone(),
                users: repos.users.clone(),
                contacts,
                chat: repos.chat.clone(),
                notifications: repos.notifications.clone(),
            };
            anyhow::ensure!(accounts.delete(user.id).await?, "{name} was deleted meanwhile");
            println!("{} ({}) deleted", user.username, user.id);
            Ok(())
        }
    };
    if let Some(rabbit) = rabbit {
        // The publishes (revocations, contact changes) leave and are confirmed first.
        rabbit.close().await;
    }
    repos.db.clone().close().await.ok();
    result
}

fn no_such(name: &str) -> anyhow::Error {
    anyhow::anyhow!("no account named {name:?}")
}

/// The password to set: one line from standard input, or a new random one (`true`).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        let line = line.strip_suffix('\n').unwrap_or(&line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        anyhow::ensure!(!line.is_empty(), "no password on standard input");
        return Ok((line.to_owned(), false));
    }
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rng();
    Ok(((0..20).map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char).collect(), true))
}

/// The bus the command announces on: RabbitMQ when configured (so live nodes hear at
/// once), otherwise none (the nodes' revocation feed picks the change up).
async fn bus(config: &Config, db: &sea_orm::DatabaseConnection) -> (Arc<dyn Bus>, Option<crate::bus::RabbitBus>) {
    let Some(url) = &config.amqp_url else { return (Arc::new(NoBus), None) };
    let node_id = format!("cli-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let rabbit = crate::bus::RabbitBus::start(url.clone(), &node_id, config.bus.clone(), db.clone()).await;
    if !rabbit.wait_connected(Duration::from_secs(5)).await {
        eprintln!("switchboard: the broker is not reachable; nodes will see the change through the database");
    }
    (Arc::new(rabbit.clone()), Some(rabbit))
}

/// No bus: events go nowhere (the database is the record).
struct NoBus;

#[async_trait::async_trait]
impl Bus for NoBus {
    async fn publish(&self, _envelope: Envelope) -> Result<(), BusError> {
        Ok(())
    }
    async fn bind_user(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
    async fn unbind_user(&self, _user: UserId) -> Result<(), BusError> {
        Ok(())
    }
}
