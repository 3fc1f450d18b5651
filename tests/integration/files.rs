//! File transfers: chunked, hash-checked, resumable uploads; downloads with ranges for the
//! conversation's participants only; limits refused up front.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{Api, Backend, TEST_JWT_SECRET, error_code, eventually, spawn_app_with};
use crate::ws_client::{Client, alice_and_bob, make_contacts, user};

const CHUNK: usize = 1 << 20;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Deterministic bytes of chunk `i` of a test file (xorshift, seeded by the index).
fn chunk_bytes(i: u64, len: usize) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (i + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `(whole-file sha256, per-chunk sha256)` of a test file of `size` bytes.
fn file_hashes(size: u64) -> (String, Vec<String>) {
    let mut whole = Sha256::new();
    let mut chunks = vec![];
    let mut i = 0;
    let mut left = size;
    while left > 0 {
        let len = left.min(CHUNK as u64) as usize;
        let data = chunk_bytes(i, len);
        whole.update(&data);
        chunks.push(hex(&Sha256::digest(&data)));
        left -= len as u64;
        i += 1;
    }
    (hex(&whole.finalize()), chunks)
}

async fn create(api: &impl Api, token: &str, body: Value) -> reqwest::Response {
    api.client().post(api.url("/api/transfers")).bearer_auth(token).json(&body).send().await.unwrap()
}

/// Creates a transfer that must be accepted; returns its id.
async fn create_id(api: &impl Api, token: &str, body: Value) -> String {
    let r = create(api, token, body).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let t: Value = r.json().await.unwrap();
    t["id"].as_str().unwrap().to_owned()
}

/// Reads `transfer` frames until one is no longer `uploading`; returns it.
async fn settled(ws: &mut Client) -> Value {
    loop {
        let f = ws.next_of("transfer").await;
        if f["state"] != "uploading" {
            return f;
        }
    }
}

async fn put_chunk(api: &impl Api, token: &str, id: &str, i: u64, data: Vec<u8>, sha: &str) -> reqwest::Response {
    api.client()
        .put(api.url(&format!("/api/transfers/{id}/chunks/{i}")))
        .bearer_auth(token)
        .header("x-chunk-sha256", sha)
        .body(data)
        .send()
        .await
        .unwrap()
}

async fn transfer(api: &impl Api, token: &str, id: &str) -> Value {
    api.get_json(&format!("/api/transfers/{id}"), token).await
}

/// Opens the conversation between Alice and Bob; returns its id.
async fn conversation(alice: &mut Client, bob_id: &str) -> String {
    alice.send_to_user("hello", bob_id, "hello").await;
    alice.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_file_goes_up_in_chunks_and_comes_down_whole_or_in_ranges() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let (carol, _) = user(&app, "carol").await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;

    let size = 2 * CHUNK as u64 + 12345;
    let (sha, chunks) = file_hashes(size);
    let r = create(
        &app,
        &alice,
        json!({"conversation_id": conv, "name": "report <b>final<b> & co.pdf", "size": size, "sha256": sha, "mime": "application/pdf"}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let t: Value = r.json().await.unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    assert_eq!((t["chunk_size"].as_u64(), t["chunk_count"].as_u64()), (Some(CHUNK as u64), Some(3)));
    assert_eq!(t["missing"], json!([0, 1, 2]));

    // Out of order, one twice: the status says what is missing.
    let r = put_chunk(&app, &alice, &id, 2, chunk_bytes(2, 12345), &chunks[2]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = put_chunk(&app, &alice, &id, 2, chunk_bytes(2, 12345), &chunks[2]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT, "a stored chunk again is a no-op");
    assert_eq!(transfer(&app, &bob, &id).await["missing"], json!([0, 1]), "Bob may watch the progress");
    // Carol is not in the conversation: the transfer does not exist for her.
    let r = app.get_as(&format!("/api/transfers/{id}"), &carol).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    for i in 0..2 {
        let r = put_chunk(&app, &alice, &id, i, chunk_bytes(i, CHUNK), &chunks[i as usize]).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    // The file message reaches both, with name, size and type; progress came over the socket.
    let file_msg = loop {
        let m = bob_ws.next_of("message").await;
        if m["kind"] == "file" {
            break m;
        }
    };
    let meta: Value = serde_json::from_str(file_msg["body"].as_str().unwrap()).unwrap();
    assert_eq!(meta, json!({"name": "report <b>final<b> & co.pdf", "size": size, "mime": "application/pdf"}));
    // Bob's notification names the file (issue 20), not its JSON description.
    let note = crate::helpers::eventually("bob's notification of the file", || async {
        let page = app.get_json("/api/notifications", &bob).await;
        page["notifications"].as_array()?.iter().find(|n| n["payload"]["message_kind"] == "file").cloned()
    })
    .await;
    assert_eq!(note["payload"]["file_name"], "report <b>final<b> & co.pdf");
    assert_eq!(note["payload"]["preview"], "report <b>final<b> & co.pdf");
    let file_id = file_msg["file_id"].as_str().unwrap().to_owned();
    let progress = alice_ws.next_of("transfer").await;
    assert_eq!(progress["transfer_id"], id.as_str());
    loop {
        let f = bob_ws.next_of("transfer").await;
        assert_eq!(f["transfer_id"], id.as_str());
        if f["state"] == "complete" {
            assert_eq!(f["file_id"], file_id.as_str());
            break;
        }
    }
    eventually("the transfer to complete", || async {
        (transfer(&app, &alice, &id).await["state"] == "complete").then_some(())
    })
    .await;

    // Whole download by Bob: same bytes, as an attachment, never sniffed.
    let r = app.get_as(&format!("/api/files/{file_id}"), &bob).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert!(r.headers()["content-security-policy"].to_str().unwrap().contains("sandbox"));
    let disposition = r.headers()["content-disposition"].to_str().unwrap().to_owned();
    assert!(disposition.starts_with("attachment;"), "{disposition}");
    assert!(disposition.contains(r#"filename="report <b>final<b> & co.pdf""#), "{disposition}");
    let body = r.bytes().await.unwrap();
    assert_eq!(hex(&Sha256::digest(&body)), sha);
    // A range: the second chunk's first 100 bytes.
    let r = app
        .client()
        .get(app.url(&format!("/api/files/{file_id}")))
        .bearer_auth(&bob)
        .header("range", format!("bytes={}-{}", CHUNK, CHUNK + 99))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &chunk_bytes(1, 100)[..]);
    // A range past the end: 416 with the error shape and its own code.
    let r = app
        .client()
        .get(app.url(&format!("/api/files/{file_id}")))
        .bearer_auth(&bob)
        .header("range", "bytes=999999999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(error_code(r, StatusCode::RANGE_NOT_SATISFIABLE).await, "range_not_satisfiable");
    // Carol cannot download it; nor can anyone by a made-up id.
    for (who, fid) in [(&carol, file_id.as_str()), (&bob, "00000000-0000-0000-0000-000000000000"), (&bob, "nope")] {
        let r = app.get_as(&format!("/api/files/{fid}"), who).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    // A file cannot be edited; deleted, it is gone for both, and so is its name.
    let msg_id = file_msg["id"].as_str().unwrap();
    let url = app.url(&format!("/api/messages/{msg_id}"));
    let r = app.client.patch(&url).bearer_auth(&alice).json(&json!({"body": "x"})).send().await.unwrap();
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "conflict");
    let r = app.client.delete(&url).bearer_auth(&alice).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    for who in [&alice, &bob] {
        let r = app.get_as(&format!("/api/files/{file_id}"), who).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "a deleted file cannot be downloaded");
        let r = app.get_as(&format!("/api/transfers/{id}"), who).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "nor its upload's name and hash seen");
    }
    let blob = app.config.data_dir.join("files").join("blobs").join(&sha[..2]).join(&sha);
    assert!(!blob.exists(), "its bytes are gone: {}", blob.display());
    let page = app.get_json(&format!("/api/conversations/{conv}/messages"), &bob).await;
    let gone = page["messages"].as_array().unwrap().iter().find(|m| m["id"] == msg_id).unwrap().clone();
    assert_eq!(
        (gone["deleted"].as_bool(), gone["body"].as_str(), gone["file_id"].is_null()),
        (Some(true), Some(""), true)
    );
    let note = crate::helpers::eventually("bob's notification forgets the file", || async {
        let page = app.get_json("/api/notifications", &bob).await;
        let n = page["notifications"].as_array()?.iter().find(|n| n["payload"]["message_kind"] == "file").cloned()?;
        (n["payload"]["deleted"] == true).then_some(n)
    })
    .await;
    assert!(note["payload"].get("file_name").is_none() && note["payload"]["preview"] == "", "{note}");
}

async fn alice_ws_user_id(app: &impl Api, token: &str) -> String {
    let me: Value = app.me(token).await.json().await.unwrap();
    me["id"].as_str().unwrap().to_owned()
}

/// `token`'s holder blocks `user_id` (204).
async fn block(api: &impl Api, token: &str, user_id: &str) {
    let r =
        api.client().post(api.url(&format!("/api/contacts/{user_id}/block"))).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out
}

/// Also the regression test for path traversal through file names (`../../etc/passwd`,
/// control characters, separators): nothing is written outside the data directory.
#[tokio::test]
async fn hole_path_traversal_through_file_names_and_other_bad_uploads() {
    let app = spawn_app_with(Backend::Sqlite, |c| {
        c.files.max_file_bytes = 3 << 20;
        c.files.quota_bytes = 4 << 20;
        c.files.max_concurrent_transfers = 2;
    })
    .await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let (carol, _) = user(&app, "carol").await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let (sha, chunks) = file_hashes(CHUNK as u64 + 10);
    let good = |name: &str| json!({"conversation_id": conv, "name": name, "size": CHUNK + 10, "sha256": sha});

    for (name, why) in [
        ("../../etc/passwd", "separator"),
        ("a\u{0}b", "NUL"),
        ("line\nbreak", "newline"),
        ("..", "dot-dot"),
        ("", "empty"),
    ] {
        let r = create(&app, &alice, good(name)).await;
        assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_name", "{why}");
    }
    let r =
        create(&app, &alice, json!({"conversation_id": conv, "name": "big.bin", "size": 3 * CHUNK + 1, "sha256": sha}))
            .await;
    assert_eq!(error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await, "payload_too_large", "refused before any byte");
    let r = create(&app, &alice, json!({"conversation_id": conv, "name": "x", "size": 10, "sha256": "abc"})).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_sha256");
    let r = create(&app, &carol, good("x.bin")).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found", "not her conversation");

    let t: Value = create(&app, &alice, good("ok.bin")).await.json().await.unwrap();
    let id = t["id"].as_str().unwrap().to_owned();
    let r = put_chunk(&app, &alice, &id, 0, chunk_bytes(0, CHUNK), &chunks[1]).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "chunk_hash_mismatch");
    let r = put_chunk(&app, &alice, &id, 2, vec![1, 2, 3], &chunks[0]).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_index");
    let r = put_chunk(&app, &alice, &id, 1, vec![7; 11], &chunks[1]).await;
    assert_eq!(error_code(r, StatusCode::PAYLOAD_TOO_LARGE).await, "payload_too_large", "chunk over its size");
    let r = put_chunk(&app, &alice, &id, 1, vec![7; 9], &chunks[1]).await;
    assert_eq!(error_code(r, StatusCode::BAD_REQUEST).await, "invalid_chunk", "chunk under its size");
    let r = put_chunk(&app, &bob, &id, 0, chunk_bytes(0, CHUNK), &chunks[0]).await;
    assert_eq!(error_code(r, StatusCode::FORBIDDEN).await, "forbidden", "only the uploader sends chunks");
    let r = put_chunk(&app, &carol, &id, 0, chunk_bytes(0, CHUNK), &chunks[0]).await;
    assert_eq!(error_code(r, StatusCode::NOT_FOUND).await, "not_found");
    assert_eq!(transfer(&app, &alice, &id).await["missing"], json!([0, 1]), "nothing bad was stored");

    // Limits at creation: concurrent uploads...
    let r = create(&app, &alice, good("two.bin")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = create(&app, &alice, good("three.bin")).await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "too_many_transfers");
    // ...and the quota (4 MiB): Dave's 3 MiB upload fits, 2 MiB more does not.
    let (dave, _) = user(&app, "dave").await;
    make_contacts(&app, &dave, &alice, "alice").await;
    let alice_id = alice_ws_user_id(&app, &alice).await;
    let mut dave_ws = Client::connect(&app, &dave).await;
    let dave_conv = conversation(&mut dave_ws, &alice_id).await;
    let sized = |size: u64| json!({"conversation_id": dave_conv, "name": "d.bin", "size": size, "sha256": sha});
    assert_eq!(create(&app, &dave, sized(3 * CHUNK as u64)).await.status(), StatusCode::CREATED);
    let r = create(&app, &dave, sized(2 * CHUNK as u64)).await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "quota_exceeded");

    // Nothing outside the data directory; inside, only the database, the key and files/.
    let data = app.data_dir.path();
    for f in files_under(data) {
        assert!(
            f.starts_with("files/") || f.starts_with("switchboard.db") || f == "jwt.key",
            "unexpected file {f} in the data directory"
        );
        assert!(!f.contains("passwd") && !f.contains("etc"), "{f}");
    }
    let parent = data.parent().unwrap();
    assert!(!parent.join("etc").exists());
}

/// A `switchboard` process of the test's own, so its memory can be measured alone (or it
/// can be killed).
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) addr: std::net::SocketAddr,
    http: reqwest::Client,
}

impl ServerProcess {
    pub(crate) fn start(dir: &Path, addr: Option<std::net::SocketAddr>) -> ServerProcess {
        let config = dir.join("server.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nlog = \"warn\"\nfault_injection = true\n[auth]\njwt_secret = \"{TEST_JWT_SECRET}\"\n\
                 register_per_ip_per_minute = 100000\nlogin_per_ip_per_minute = 100000\n[limits]\ncontact_requests_per_minute = 100000\n",
                dir.join("data").display()
            ),
        )
        .unwrap();
        let listen = addr.map_or("127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--config", &config.display().to_string(), "--listen", &listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.split("listening on http://").nth(1).and_then(|a| a.trim().parse().ok()) {
                    let _ = tx.send(a);
                }
            }
        });
        let addr = rx.recv_timeout(Duration::from_secs(60)).expect("server starts");
        ServerProcess { child, addr, http: reqwest::Client::new() }
    }

    /// Peak resident memory since the last reset, in KiB.
    fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM")
    }

    /// A `/proc/<pid>/status` value in KiB (`VmHWM`: peak since the last reset; `VmRSS`: now).
    fn status_kib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim_start_matches(':').trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5").unwrap();
    }

    /// SIGKILL, and waits for the process to be gone.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Api for ServerProcess {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
    fn client(&self) -> &reqwest::Client {
        &self.http
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

/// Also the regression test for uploads that grow memory without bound: peak RSS growth
/// while 200 MiB go through stays under a bound far below the file size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hole_uploads_that_grow_memory_without_bound_200_mib_across_a_restart_and_a_killed_actor() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path(), None);
    let (alice, bob, bob_id) = alice_and_bob(&server).await;
    let (mut alice_ws, _) = crate::cluster::connect(server.addr, &alice).await.expect("alice connects");
    let conv = conversation(&mut alice_ws, &bob_id).await;
    const SIZE: u64 = 200 << 20;
    let (sha, chunks) = file_hashes(SIZE);
    let id =
        create_id(&server, &alice, json!({"conversation_id": conv, "name": "big.bin", "size": SIZE, "sha256": sha}))
            .await;
    let n = chunks.len() as u64;
    server.reset_peak();
    let base_first = server.status_kib("VmRSS");
    for i in 0..n / 2 {
        let r = put_chunk(&server, &alice, &id, i, chunk_bytes(i, CHUNK), &chunks[i as usize]).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let peak_first = server.peak_kib();
    // The whole server process dies and comes back on the same data.
    let addr = server.addr;
    drop(alice_ws);
    server.kill();
    let server = ServerProcess::start(dir.path(), Some(addr));
    server.reset_peak();
    let base_second = server.status_kib("VmRSS");
    let status = transfer(&server, &alice, &id).await;
    let missing: Vec<u64> = status["missing"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(missing, (n / 2..n).collect::<Vec<_>>(), "the first half survived the restart");
    for i in missing {
        let r = put_chunk(&server, &alice, &id, i, chunk_bytes(i, CHUNK), &chunks[i as usize]).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        if i == n * 3 / 4 {
            // Kill the upload's actor mid-way; its supervisor restarts it on the next chunk.
            let r = server
                .client()
                .post(server.url("/api/debug/faults"))
                .bearer_auth(&alice)
                .json(&json!({"kind": "transfer", "id": id, "fault": "kill"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::NO_CONTENT, "the upload's actor is running");
        }
    }
    let done = eventually("the transfer to complete", || async {
        let t = transfer(&server, &alice, &id).await;
        (t["state"] == "complete").then_some(t)
    })
    .await;
    let file_id = done["file_id"].as_str().unwrap().to_owned();
    let peak_upload = server.peak_kib();
    let sups = server.get_json("/api/debug/supervisors", &alice).await;
    assert!(sups["transfers"]["restarts"].as_u64().unwrap() >= 1, "the killed actor was restarted: {sups}");
    // Bob downloads it, streamed; the hashes agree.
    let mut r =
        server.client().get(server.url(&format!("/api/files/{file_id}"))).bearer_auth(&bob).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut h = Sha256::new();
    let mut got = 0u64;
    while let Some(c) = r.chunk().await.unwrap() {
        got += c.len() as u64;
        h.update(&c);
    }
    assert_eq!(got, SIZE);
    assert_eq!(hex(&h.finalize()), sha);
    let peak_second = server.peak_kib();
    eprintln!(
        "server RSS: {base_first} KiB before the upload, peak {peak_first} KiB during the first half; \
         after the restart {base_second} KiB, peak {peak_upload} KiB to the end of the upload, {peak_second} KiB with the download"
    );
    // Memory does not follow the file: the growth over the idle server stays well under
    // the 200 MiB that went through it (twice). Observed in this debug build: a few MiB
    // for the first half (the allocator has slack left from registration) and 28-52 MiB
    // after the restart (from a cold start; where it goes is not yet profiled). A release
    // server moving 256 MiB peaked at its registration (argon2) baseline.
    for (base, peak) in [(base_first, peak_first), (base_second, peak_second)] {
        let growth = peak.saturating_sub(base);
        assert!(growth < 80 * 1024, "server RSS grew by {growth} KiB for a 200 MiB file");
    }
}

#[tokio::test]
async fn an_abandoned_upload_expires_and_its_chunks_are_removed() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, _, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let (sha, chunks) = file_hashes(2 * CHUNK as u64);
    let id =
        create_id(&app, &alice, json!({"conversation_id": conv, "name": "left.bin", "size": 2 * CHUNK, "sha256": sha}))
            .await;
    assert_eq!(
        put_chunk(&app, &alice, &id, 0, chunk_bytes(0, CHUNK), &chunks[0]).await.status(),
        StatusCode::NO_CONTENT
    );
    let parts = app.data_dir.path().join("files/parts");
    assert_eq!(files_under(&parts).len(), 1, "the chunk is on disk");
    // The housekeeping pass, a day and a bit later (the same repository call the server
    // makes every minute, on the same database file).
    let db = switchboard::storage::connect(&app.config.database_url()).await.unwrap();
    let repo = switchboard::messaging::files::FileRepo::new(db, app.data_dir.path());
    assert_eq!(repo.expire(switchboard::now_ms() + 25 * 3600 * 1000).await.unwrap(), 1);
    assert!(files_under(&parts).is_empty(), "its chunks are gone");
    assert_eq!(transfer(&app, &alice, &id).await["state"], "expired");
    let r = put_chunk(&app, &alice, &id, 1, chunk_bytes(1, CHUNK), &chunks[1]).await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "transfer_closed");
}

#[tokio::test]
async fn a_file_that_does_not_match_its_announced_hash_is_refused_whole() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, _, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let (_, chunks) = file_hashes(CHUNK as u64 + 1);
    let lie = "ab".repeat(32);
    let id =
        create_id(&app, &alice, json!({"conversation_id": conv, "name": "x.bin", "size": CHUNK + 1, "sha256": lie}))
            .await;
    for i in 0..2 {
        let len = if i == 0 { CHUNK } else { 1 };
        let r = put_chunk(&app, &alice, &id, i, chunk_bytes(i, len), &chunks[i as usize]).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    let f = settled(&mut alice_ws).await;
    assert_eq!(f["state"], "failed");
    assert_eq!(transfer(&app, &alice, &id).await["state"], "failed");
    assert!(files_under(&app.data_dir.path().join("files")).is_empty(), "no file kept, no chunk left");
}

/// Alice (connected, her first message to Bob sent) has announced an upload of one whole
/// chunk and 10 bytes into their conversation, and sent nothing of it yet.
struct Upload {
    app: crate::helpers::TestApp,
    alice: String,
    bob: String,
    alice_id: String,
    alice_ws: Client,
    id: String,
    chunks: Vec<String>,
}

async fn alice_starts_an_upload_to_bob(name: &str) -> Upload {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let alice_id = alice_ws_user_id(&app, &alice).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let size = CHUNK as u64 + 10;
    let (sha, chunks) = file_hashes(size);
    let id = create_id(&app, &alice, json!({"conversation_id": conv, "name": name, "size": size, "sha256": sha})).await;
    Upload { app, alice, bob, alice_id, alice_ws, id, chunks }
}

#[tokio::test]
async fn a_file_whose_uploader_is_blocked_while_it_goes_up_is_not_posted_and_costs_no_quota() {
    let Upload { app, alice, bob, alice_id, mut alice_ws, id, chunks } =
        alice_starts_an_upload_to_bob("late.bin").await;
    let r = put_chunk(&app, &alice, &id, 0, chunk_bytes(0, CHUNK), &chunks[0]).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Bob blocks Alice before her last chunk.
    block(&app, &bob, &alice_id).await;
    // The block failed the upload: the last chunk is refused.
    let r = put_chunk(&app, &alice, &id, 1, chunk_bytes(1, 10), &chunks[1]).await;
    assert_eq!(error_code(r, StatusCode::CONFLICT).await, "transfer_closed");
    let f = settled(&mut alice_ws).await;
    assert_eq!(f["state"], "failed");
    assert_eq!(transfer(&app, &alice, &id).await["state"], "failed", "the record says so too, not `uploading`");
    assert_eq!(alice_ws.messages.len(), 1, "nothing posted but the first text: {:?}", alice_ws.messages);
    // Neither an upload in progress nor stored bytes count against Alice any more.
    let db = switchboard::storage::connect(&app.config.database_url()).await.unwrap();
    let repo = switchboard::messaging::files::FileRepo::new(db, app.data_dir.path());
    let me = switchboard::domain::UserId(alice_id.parse().unwrap());
    assert_eq!(repo.usage(me).await.unwrap(), (0, 0));
}

/// A chunk that was still streaming in when its transfer failed (here: a block) used to be
/// put in place and answered 204, leaving its bytes on disk for a transfer that would never
/// complete. The state is checked again when the chunk is recorded.
#[tokio::test]
async fn hole_a_chunk_streaming_in_when_its_transfer_fails_is_refused_and_not_kept() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Upload { app, alice, bob, alice_id, id, chunks, .. } = alice_starts_an_upload_to_bob("slow.bin").await;
    // Alice's first chunk, by hand: the headers and half the body...
    let data = chunk_bytes(0, CHUNK);
    let mut tcp = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    let head = format!(
        "PUT /api/transfers/{id}/chunks/0 HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {alice}\r\n\
         X-Chunk-Sha256: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {CHUNK}\r\n\r\n",
        app.addr, chunks[0]
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&data[..CHUNK / 2]).await.unwrap();
    // ...until the server streams it to a temporary file (past every check up front)...
    let tmp = app.data_dir.path().join("files").join("tmp");
    eventually("the chunk streaming to a temporary file", || async {
        (tmp.is_dir() && !files_under(&tmp).is_empty()).then_some(())
    })
    .await;
    // ...when Bob blocks Alice, which fails the upload; then the rest of the chunk.
    block(&app, &bob, &alice_id).await;
    assert_eq!(transfer(&app, &alice, &id).await["state"], "failed");
    tcp.write_all(&data[CHUNK / 2..]).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("transfer_closed") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the server closed without a 409: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 409"), "{}", String::from_utf8_lossy(&answer));
    let t = transfer(&app, &alice, &id).await;
    assert_eq!((t["state"].as_str(), t["received_chunks"].as_i64()), (Some("failed"), Some(0)), "{t}");
    let files = app.data_dir.path().join("files");
    eventually("no bytes of the failed upload left on disk", || async { files_under(&files).is_empty().then_some(()) })
        .await;
}

/// Issue 16, hole 1: assembly used to reuse a stored blob whenever the declared SHA-256
/// matched, without hashing what was uploaded, so anyone who knew a file's hash could
/// fetch it (and learn that it exists) by uploading one byte.
#[tokio::test]
async fn hole_a_known_sha256_does_not_yield_someone_elses_file() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let size = CHUNK as u64 + 10;
    let (sha, chunks) = file_hashes(size);
    let id =
        create_id(&app, &alice, json!({"conversation_id": conv, "name": "secret.bin", "size": size, "sha256": sha}))
            .await;
    for i in 0..2u64 {
        let len = if i == 0 { CHUNK } else { 10 };
        assert_eq!(put_chunk(&app, &alice, &id, i, chunk_bytes(i, len), &chunks[i as usize]).await.status(), 204);
    }
    let done = settled(&mut alice_ws).await;
    assert_eq!(done["state"], "complete");
    let alice_file = done["file_id"].as_str().expect("file id").to_owned();

    // Carol, in her own conversation with Dave, knows the hash.
    let (carol, _) = user(&app, "carol").await;
    let (dave, dave_id) = user(&app, "dave").await;
    make_contacts(&app, &carol, &dave, "dave").await;
    let mut carol_ws = Client::connect(&app, &carol).await;
    let carol_conv = conversation(&mut carol_ws, &dave_id).await;
    let one = vec![b'x'];
    let one_sha = hex(&Sha256::digest(&one));
    // (a) the known hash with one byte; (b) the known hash and size with other bytes;
    // (c) a hash nobody stored, the same way: all three end alike, so the answer says
    // nothing about whether a file exists.
    let unknown = "cd".repeat(32);
    let attempts = [(sha.clone(), 1u64), (sha.clone(), size), (unknown, 1)];
    for (declared, declared_size) in attempts {
        let t = create_id(
            &app,
            &carol,
            json!({"conversation_id": carol_conv, "name": "mine.bin", "size": declared_size, "sha256": declared}),
        )
        .await;
        if declared_size == 1 {
            assert_eq!(put_chunk(&app, &carol, &t, 0, one.clone(), &one_sha).await.status(), 204);
        } else {
            for i in 0..2u64 {
                let len = if i == 0 { CHUNK } else { 10 };
                let data = vec![b'z'; len];
                let h = hex(&Sha256::digest(&data));
                assert_eq!(put_chunk(&app, &carol, &t, i, data, &h).await.status(), 204);
            }
        }
        let f = settled(&mut carol_ws).await;
        assert_eq!(f["state"], "failed", "declared {declared_size} bytes: {f}");
        assert!(f["file_id"].is_null(), "no file for Carol: {f}");
        let status = transfer(&app, &carol, &t).await;
        assert_eq!((status["state"].as_str(), status["file_id"].is_null()), (Some("failed"), true));
    }
    let history = app.get_json(&format!("/api/conversations/{carol_conv}/messages"), &carol).await;
    let kinds: Vec<&Value> = history["messages"].as_array().unwrap().iter().map(|m| &m["kind"]).collect();
    assert_eq!(kinds, [&json!("text")], "no file message in Carol's conversation");
    // Alice's file is intact for Bob, and honest duplicates are still shared: Bob sends
    // the same bytes back and gets a file of their own with the same contents.
    let r = app.get_as(&format!("/api/files/{alice_file}"), &bob).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(hex(&Sha256::digest(r.bytes().await.unwrap())), sha);
    let mut bob_ws = Client::connect(&app, &bob).await;
    let back =
        create_id(&app, &bob, json!({"conversation_id": conv, "name": "again.bin", "size": size, "sha256": sha})).await;
    for i in 0..2u64 {
        let len = if i == 0 { CHUNK } else { 10 };
        assert_eq!(put_chunk(&app, &bob, &back, i, chunk_bytes(i, len), &chunks[i as usize]).await.status(), 204);
    }
    let f = settled(&mut bob_ws).await;
    assert_eq!(f["state"], "complete");
    let r = app.get_as(&format!("/api/files/{}", f["file_id"].as_str().unwrap()), &alice).await;
    // Nothing in the headers tells that the bytes were stored before, or when: each file
    // has its own validator, and the blob's time is not shown.
    let first = app.get_as(&format!("/api/files/{alice_file}"), &bob).await;
    assert_ne!(r.headers().get("etag"), first.headers().get("etag"), "each file its own ETag");
    assert!(r.headers().get("last-modified").is_none() && first.headers().get("last-modified").is_none());
    assert_eq!(hex(&Sha256::digest(r.bytes().await.unwrap())), sha);
    let blobs = files_under(&app.data_dir.path().join("files/blobs"));
    assert_eq!(blobs.len(), 1, "one stored copy of the shared bytes: {blobs:?}");
}

/// Issue 16, hole 4: the upload limits were checked, then reserved, in separate steps, so
/// 30 concurrent creations of 4 GiB uploads got 7-8 through against 5 at once and a
/// 20 GiB quota. Checked on both databases (SQLite's write lock, PostgreSQL's row lock).
async fn concurrent_uploads_cannot_pass_the_limits(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let (alice, _, bob_id) = alice_and_bob(&app).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let size: u64 = 4 << 30;
    let attempts = (0..30).map(|i| {
        let body =
            json!({"conversation_id": conv, "name": format!("big-{i}.bin"), "size": size, "sha256": "ab".repeat(32)});
        let (app, alice) = (&app, &alice);
        async move { create(app, alice, body).await.status() }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let accepted = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    assert_eq!(accepted, 5, "exactly the limit gets through: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == StatusCode::CREATED || *s == StatusCode::CONFLICT), "{statuses:?}");
}

#[tokio::test]
async fn hole_concurrent_uploads_pass_the_limits_sqlite() {
    concurrent_uploads_cannot_pass_the_limits(Backend::Sqlite).await;
}

#[tokio::test]
async fn hole_concurrent_uploads_pass_the_limits_postgres() {
    concurrent_uploads_cannot_pass_the_limits(Backend::Postgres).await;
}

/// Issue 16, hole 5: a blocked user could keep re-sending a chunk of an upload started
/// before the block, and each one put a `transfer` frame, with a file name of their
/// choosing, in front of the blocker.
#[tokio::test]
async fn hole_a_blocked_user_still_reaches_the_blocker_through_upload_progress() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let alice_id = alice_ws_user_id(&app, &alice).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let size = 3 * CHUNK as u64;
    let (sha, chunks) = file_hashes(size);
    let name = "CLICK evil.example NOW.txt";
    let id = create_id(&app, &alice, json!({"conversation_id": conv, "name": name, "size": size, "sha256": sha})).await;
    assert_eq!(put_chunk(&app, &alice, &id, 0, chunk_bytes(0, CHUNK), &chunks[0]).await.status(), 204);
    // Before the block Bob sees the progress (the test can tell frames reach him).
    assert_eq!(bob_ws.next_of("transfer").await["name"], name);
    block(&app, &bob, &alice_id).await;
    // The block failed the upload at once: Alice is told, and every chunk is refused.
    assert_eq!(settled(&mut alice_ws).await["state"], "failed");
    assert_eq!(transfer(&app, &alice, &id).await["state"], "failed");
    for i in [0u64, 0, 0, 1, 2] {
        let r = put_chunk(&app, &alice, &id, i, chunk_bytes(i, CHUNK), &chunks[i as usize]).await;
        assert_eq!(error_code(r, StatusCode::CONFLICT).await, "transfer_closed");
    }
    // Bob got no transfer frame since the block. The failure was published to Alice by
    // the block request itself, and a refused chunk publishes nothing; Bob's pong below
    // follows anything queued for him before it.
    let before = bob_ws.others.iter().filter(|f| f["type"] == "transfer").count();
    bob_ws.send(json!({"type": "ping"})).await;
    bob_ws.next_of("pong").await;
    let after = bob_ws.others.iter().filter(|f| f["type"] == "transfer").count();
    assert_eq!(after, before, "no transfer frame reached Bob after the block: {:?}", bob_ws.others);
    assert!(files_under(&app.data_dir.path().join("files")).is_empty(), "the chunks are gone");
}

/// Issue 16 (review): a block that landed while an upload was being assembled made the
/// assembly fail half-way, and its temporary copy stayed in `files/tmp` for ever (a way to
/// fill the disk past the quota). Whichever way the race goes, nothing is left behind.
#[tokio::test]
async fn hole_a_block_during_assembly_leaves_its_bytes_on_disk() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let alice_id = alice_ws_user_id(&app, &alice).await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let conv = conversation(&mut alice_ws, &bob_id).await;
    let size = 24 * CHUNK as u64;
    let (sha, chunks) = file_hashes(size);
    let id =
        create_id(&app, &alice, json!({"conversation_id": conv, "name": "big.bin", "size": size, "sha256": sha})).await;
    for i in 0..24u64 {
        assert_eq!(put_chunk(&app, &alice, &id, i, chunk_bytes(i, CHUNK), &chunks[i as usize]).await.status(), 204);
    }
    // The last chunk is in: assembly starts now; Bob blocks Alice at once.
    block(&app, &bob, &alice_id).await;
    let f = settled(&mut alice_ws).await;
    let tmp = app.data_dir.path().join("files/tmp");
    eventually("no temporary file left", || async { files_under_or_none(&tmp).is_empty().then_some(()) }).await;
    assert!(f["state"] == "failed" || f["state"] == "complete", "{f}");
    assert!(files_under_or_none(&app.data_dir.path().join("files/parts")).is_empty(), "no chunk left");
}

/// Every file under `dir` (none if it does not exist).
fn files_under_or_none(dir: &Path) -> Vec<String> {
    if dir.exists() { files_under(dir) } else { vec![] }
}
