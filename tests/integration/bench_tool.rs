//! Smoke tests of the load tool (`switchboard-bench`): each scenario runs briefly against
//! a real server and reports what it measured. Timing is never asserted here; the
//! numbers live in docs/benchmarks.md.

use std::process::Command;

use serde_json::Value;

use crate::helpers::{Backend, spawn_app_with};

/// Runs the tool and returns its JSON summary (the last line of its output).
fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench")).args(args).output().expect("run switchboard-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a JSON summary");
    serde_json::from_str(last).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_of_the_load_tool_runs() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let url = format!("http://{}", app.addr);
    let pid = std::process::id().to_string();
    let url2 = url.clone();
    let pairs = tokio::task::spawn_blocking(move || {
        bench(&["--url", &url2, "--scenario", "pairs", "--pairs", "2", "--rate", "20", "--duration", "1"])
    })
    .await
    .unwrap();
    assert_eq!((pairs["scenario"].as_str(), pairs["pairs"].as_u64()), (Some("pairs"), Some(2)));
    assert!(pairs["sent"].as_u64().unwrap() > 0, "{pairs}");
    assert_eq!(pairs["delivered"], pairs["sent"], "every message measured arrived");
    assert_eq!(pairs["errors"], 0);
    assert!(pairs["latency_ms"]["p99"].is_number() && pairs["throughput_msg_s"].is_number(), "{pairs}");

    // `ramp` steps the rate up (10, then 15 msg/s) while p99 holds; the bound here is out
    // of any run's reach, so only errors or lost messages could stop it: correctness.
    let url2 = url.clone();
    let ramp = tokio::task::spawn_blocking(move || {
        bench(&[
            "--url",
            &url2,
            "--scenario",
            "ramp",
            "--pairs",
            "2",
            "--rate",
            "10",
            "--duration",
            "1",
            "--max-steps",
            "2",
            "--p99-bound-ms",
            "1e12",
        ])
    })
    .await
    .unwrap();
    let steps = ramp["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{ramp}");
    assert_eq!((steps[0]["target_rate"].as_f64(), steps[1]["target_rate"].as_f64()), (Some(10.0), Some(15.0)));
    for step in steps {
        assert_eq!((step["errors"].as_u64(), &step["delivered"]), (Some(0), &step["sent"]), "{step}");
    }
    assert_eq!(ramp["highest_sustained_msg_s"], 15.0, "both steps held: no errors, nothing lost");

    // `commit`: the storage layer alone, on a database file of its own.
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}?mode=rwc", dir.path().join("commit.db").display());
    let commit = tokio::task::spawn_blocking(move || {
        bench(&[
            "--scenario",
            "commit",
            "--database-url",
            &db,
            "--rooms",
            "7",
            "--messages",
            "300",
            "--in-flight",
            "20",
        ])
    })
    .await
    .unwrap();
    assert_eq!((commit["messages"].as_u64(), commit["failed"].as_u64()), (Some(300), Some(0)));
    assert_eq!((commit["rooms"].as_u64(), commit["in_flight"].as_u64()), (Some(7), Some(20)));
    assert!(commit["appends_per_s"].is_number() && commit["latency_ms"]["p99"].is_number(), "{commit}");

    let url2 = url.clone();
    let notify = tokio::task::spawn_blocking(move || {
        bench(&["--url", &url2, "--scenario", "notify", "--pairs", "2", "--rate", "10", "--duration", "1"])
    })
    .await
    .unwrap();
    assert!(notify["sent"].as_u64().unwrap() > 0, "{notify}");
    assert_eq!(notify["delivered"], notify["sent"], "a notification for every message");
    assert_eq!(notify["errors"], 0);

    let url2 = url.clone();
    let idle = tokio::task::spawn_blocking(move || {
        bench(&["--url", &url2, "--scenario", "idle", "--connections", "20", "--server-pid", &pid])
    })
    .await
    .unwrap();
    // Memory is measured, not judged here (a debug build says nothing about it).
    assert_eq!(idle["steps"].as_array().unwrap().len(), 1, "{idle}");
    assert_eq!(idle["steps"][0]["connections"], 20);
    assert!(idle["steps"][0]["server_rss_kib"].is_u64() && idle["steps"][0]["kib_per_connection"].is_number());

    let url2 = url.clone();
    let files = tokio::task::spawn_blocking(move || bench(&["--url", &url2, "--scenario", "files", "--file-mib", "3"]))
        .await
        .unwrap();
    // The tool fails unless the file came back whole (its size, downloaded by the peer).
    assert_eq!(files["file_mib"], 3);
    assert!(files["upload_mib_s"].is_number() && files["download_mib_s"].is_number(), "{files}");

    // `actors`: the actor runtime alone, in the tool's own process.
    let actors =
        tokio::task::spawn_blocking(|| bench(&["--scenario", "actors", "--connections", "200"])).await.unwrap();
    assert_eq!(actors["rows"].as_array().unwrap().len(), 2);
    assert!(actors["rows"].as_array().unwrap().iter().all(|r| r["actors"] == 200 && r["kib_each"].is_number()));

    // `cluster` needs two nodes: it refuses one address with a clear message.
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["--url", &url, "--scenario", "cluster", "--duration", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("different messaging nodes"));
}

/// `storm`: a server process of its own (the scenario kills it and starts it again), a
/// few dozen synced sockets, every one of them back and synced after the restart, holding
/// every acked message exactly once.
#[test]
fn the_storm_scenario_restarts_the_server_and_every_socket_resyncs() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (server, data, pid_file, log) = (
        env!("CARGO_BIN_EXE_switchboard"),
        dir.path().join("data").display().to_string(),
        dir.path().join("pid").display().to_string(),
        dir.path().join("server.log").display().to_string(),
    );
    // The server's output goes to a file: a restarted server holding the tool's captured
    // stderr open would keep the tool's output from ending.
    let start = format!(
        "'{server}' --listen 127.0.0.1:{port} --data-dir '{data}' --log warn >>'{log}' 2>&1 & echo $! >'{pid_file}'"
    );
    let limits = [
        ("SWITCHBOARD_AUTH__REGISTER_PER_IP_PER_MINUTE", "100000"),
        ("SWITCHBOARD_AUTH__LOGIN_PER_IP_PER_MINUTE", "100000"),
        ("SWITCHBOARD_LIMITS__CONTACT_REQUESTS_PER_MINUTE", "100000"),
    ];
    let sh = |script: &str| {
        let status = Command::new("sh").arg("-c").arg(script).envs(limits).status().unwrap();
        assert!(status.success(), "{script}");
    };
    sh(&start);
    struct Stop(String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = Command::new("sh").arg("-c").arg(format!("kill $(cat '{}')", self.0)).status();
        }
    }
    let _stop = Stop(pid_file.clone());
    let url = format!("http://127.0.0.1:{port}");
    let up = (0..200).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(50));
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(up, "the server listens");
    let restart = format!(
        "kill -9 $(cat '{pid_file}'); while kill -0 $(cat '{pid_file}') 2>/dev/null; do sleep 0.01; done; {start}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_switchboard-bench"))
        .args(["--url", &url, "--scenario", "storm", "--connections", "24", "--restart-cmd", &restart])
        .envs(limits)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "storm failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let last = stdout.lines().rev().find(|l| l.starts_with('{')).expect("a JSON summary");
    let storm: Value = serde_json::from_str(last).unwrap();
    assert_eq!((storm["connections"].as_u64(), storm["synced"].as_u64()), (Some(24), Some(24)), "{storm}");
    assert_eq!((storm["lost"].as_u64(), storm["duplicated"].as_u64()), (Some(0), Some(0)), "{storm}");
    assert!(storm["all_synced_s"].is_number() && storm["connect_attempts"].as_u64() >= Some(24), "{storm}");
}
