//! Running the process: the sample configuration, restarts on the same data, the
//! generated JWT key, and the command line.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use switchboard::config::{Config, Overrides};

use crate::helpers::{Api, Backend, PASSWORD, spawn_app_with};

fn repo_file(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn sample_config_parses_and_matches_the_defaults() {
    let path = repo_file("deploy/switchboard.sample.toml");
    let c = Config::load(Some(&path), Vec::<(String, String)>::new(), &Overrides::default()).expect("sample parses");
    // The sample documents the defaults; if a default changes, the sample must too.
    let mut expected = Config::default();
    expected.auth.jwt_secret = c.auth.jwt_secret.clone();
    assert_eq!(c, expected);
}

#[tokio::test]
async fn restart_keeps_users_and_sessions_with_the_generated_key() {
    let app = spawn_app_with(Backend::Sqlite, |c| c.auth.jwt_secret = None).await;
    let token = app.signup("lena").await;
    let key_path = app.data_dir.path().join("jwt.key");
    let key = std::fs::read_to_string(&key_path).expect("key generated");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    }
    let app = app.restart().await;
    assert_eq!(std::fs::read_to_string(&key_path).expect("key kept"), key);
    assert_eq!(app.me(&token).await.status(), StatusCode::OK, "token survives a restart");
    assert_eq!(app.login("lena", PASSWORD).await.status(), StatusCode::OK);
    assert_eq!(app.logout(&token).await.status(), StatusCode::NO_CONTENT);
    let app = app.restart().await;
    assert_eq!(app.me(&token).await.status(), StatusCode::UNAUTHORIZED, "revocation survives a restart");
}

#[tokio::test]
async fn postgres_without_a_jwt_secret_is_refused() {
    let c = Config {
        database_url: Some(switchboard::config::Secret::new("postgres://postgres@127.0.0.1:5432/postgres")),
        ..Config::default()
    };
    let err = switchboard::startup::resolve_jwt_secret(&c).expect_err("must refuse");
    assert!(err.to_string().contains("auth.jwt_secret"), "{err}");
}

fn switchboard(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    cmd.args(args).current_dir(dir.path());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("binary runs")
}

#[test]
fn a_gateway_without_upstreams_says_what_to_configure() {
    let out = switchboard(&["gateway", "--listen", "127.0.0.1:0"], &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gateway.messaging"), "{err}");
    let out = switchboard(&["gateway"], &[("SWITCHBOARD_GATEWAY__AUTH", "[\"ftp://x\"]")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gateway.auth entries"), "names the field");
}

#[test]
fn bad_configuration_stops_start_up_naming_the_field() {
    let out = switchboard(&["--listen", "127.0.0.1:0"], &[("SWITCHBOARD_AUTH__TOKEN_TTL_SECS", "1")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("auth.token_ttl_secs"), "{err}");

    let out = switchboard(&["--config", "/nonexistent/switchboard.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));

    let out = switchboard(&["--listen", "not-an-address"], &[]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a bad flag");
}

#[test]
fn migrate_applies_the_schema_and_exits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8 path");
    let out = switchboard(&["migrate", "--data-dir", data_arg], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(data.join("switchboard.db").exists());
    // Idempotent.
    let out = switchboard(&["migrate", "--data-dir", data_arg], &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Hosts of a cluster start at once, each process migrating the shared PostgreSQL schema
/// at start: they take turns, and every one of them starts.
#[test]
fn postgres_processes_migrating_at_once_all_succeed() {
    let (name, url) = crate::helpers::create_pg_database();
    let migrators: Vec<_> = (0..6)
        .map(|_| {
            let dir = tempfile::tempdir().expect("tempdir");
            let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
                .args(["migrate", "--database-url", &url, "--data-dir"])
                .arg(dir.path().join("data"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("binary runs");
            (dir, child)
        })
        .collect();
    let outcomes: Vec<_> =
        migrators.into_iter().map(|(_dir, child)| child.wait_with_output().expect("migrate exits")).collect();
    crate::helpers::drop_pg_database(name);
    for out in outcomes {
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

#[tokio::test]
async fn auth_and_messaging_run_apart_on_one_database() {
    use crate::helpers::test_config;
    use crate::ws_client::Client;
    use switchboard::startup::Application;
    use switchboard::web::Mount;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut started = vec![];
    for mount in [Mount::Auth, Mount::Messaging] {
        let app = Application::build(test_config(&dir), mount).await.expect("builds");
        let addr = app.local_addr();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        started.push((addr, tx, task));
    }
    let (auth_addr, messaging_addr) = (started[0].0, started[1].0);
    let http = reqwest::Client::new();
    let body = serde_json::json!({"username": "mona", "password": PASSWORD});
    let r = http.post(format!("http://{auth_addr}/api/auth/register")).json(&body).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = http.post(format!("http://{auth_addr}/api/auth/login")).json(&body).send().await.expect("sent");
    let token = r.json::<serde_json::Value>().await.expect("json")["access_token"].as_str().expect("token").to_owned();
    // The messaging service has no auth routes, but accepts the auth service's tokens.
    let r = http.post(format!("http://{messaging_addr}/api/auth/login")).json(&body).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r =
        http.get(format!("http://{messaging_addr}/api/conversations")).bearer_auth(&token).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::OK);
    let r = http.get(format!("http://{auth_addr}/api/conversations")).bearer_auth(&token).send().await.expect("sent");
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "the auth service does not serve messaging");
    let mut ws = Client::connect_addr(messaging_addr, &token).await;
    ws.send(serde_json::json!({"type": "ping"})).await;
    ws.next_of("pong").await;
    for (_, tx, task) in started {
        let _ = tx.send(());
        task.await.expect("joined").expect("ran");
    }
}

/// Issue 16: the root supervisor was spawned and forgotten. Killed (or past its restart
/// intensity), nothing restarted it, `/readyz` still said ready and every new socket was
/// closed. Now readiness fails at once and the process stops with an error.
#[tokio::test]
async fn the_root_supervisor_exiting_fails_readiness_and_stops_the_process() {
    let mut app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |c| c.fault_injection = true).await;
    let token = app.signup("alice").await;
    let r = app
        .client
        .post(app.url("/api/debug/faults"))
        .bearer_auth(&token)
        .json(&serde_json::json!({"kind": "sup", "id": "node", "fault": "kill"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::NO_CONTENT);
    let r = crate::helpers::eventually("/readyz to fail", || async {
        let r = app.client.get(app.url("/readyz")).send().await.ok()?;
        (r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE).then_some(r)
    })
    .await;
    assert_eq!(crate::helpers::error_code(r, reqwest::StatusCode::SERVICE_UNAVAILABLE).await, "unavailable");
    let result = app.exited().await;
    let err = result.expect_err("the process reports the failure");
    assert!(format!("{err:#}").contains("root supervisor"), "{err:#}");
}
