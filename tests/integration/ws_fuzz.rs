//! WebSocket fuzzing: thousands of random and malformed frames from one user, while two
//! others chat. The server must stay up, answer bad frames with `error` frames (or close
//! the offender's socket where the protocol says so), and never disturb anyone else.

use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Api, spawn_app};
use crate::ws_client::{Client, alice_and_bob, user};

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn string(&mut self, len: usize) -> String {
        (0..len).map(|_| char::from_u32(self.below(0x3000) as u32 + 1).unwrap_or('x')).collect()
    }
}

/// One bad (or odd) frame.
fn frame(rng: &mut Rng, bob_id: &str, alice_id: &str) -> Message {
    let some_id = if rng.below(2) == 0 { bob_id } else { alice_id };
    match rng.below(16) {
        0 => {
            let len = rng.below(2000);
            Message::binary((0..len).map(|_| rng.next() as u8).collect::<Vec<u8>>())
        }
        1 => {
            let len = rng.below(300) as usize;
            Message::text(rng.string(len))
        }
        2 => Message::text("{".repeat(rng.below(5000) as usize + 1)),
        3 => Message::text(format!("{}1{}", "[".repeat(20_000), "]".repeat(20_000))),
        4 => Message::text(json!({"type": "send", "client_msg_id": 12, "body": ["x"]}).to_string()),
        5 => Message::text(r#"{"type":"read","conversation_id":"00000000-0000-0000-0000-000000000000","seq":1e400}"#),
        6 => Message::text(r#"{"type":"read","conversation_id":"x","seq":18446744073709551616}"#),
        7 => Message::text(json!({"type": rng.string(8)}).to_string()),
        8 => Message::text(json!({"type": "send", "client_msg_id": "c".repeat(5000), "to_user_id": some_id, "body": "hi"}).to_string()),
        9 => Message::text(json!({"type": "send", "client_msg_id": format!("f{}", rng.next()), "to_user_id": some_id, "body": "x".repeat(20_000)}).to_string()),
        10 => Message::text(json!({"type": "send", "client_msg_id": format!("f{}", rng.next()), "to_user_id": some_id, "body": "not your contact"}).to_string()),
        11 => Message::text(json!({"type": "sync", "since": {"not-a-uuid": -5, some_id: "x"}}).to_string()),
        12 => Message::text(json!({"type": "typing", "conversation_id": some_id, "active": "yes"}).to_string()),
        13 => Message::text(json!({"type": "send", "client_msg_id": "", "conversation_id": null, "to_user_id": null, "body": ""}).to_string()),
        14 => Message::text("null"),
        _ => Message::text(json!({"type": "ping", "extra": {"nested": [1, 2, {"deep": true}]}}).to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_malformed_frames_harm_no_one() {
    let app = spawn_app().await;
    let (alice, bob, bob_id) = alice_and_bob(&app).await;
    let alice_id = {
        let me: Value = app.me(&alice).await.json().await.unwrap();
        me["id"].as_str().unwrap().to_owned()
    };
    let (mallory, _) = user(&app, "mallory").await;
    let mut alice_ws = Client::connect(&app, &alice).await;
    let mut bob_ws = Client::connect(&app, &bob).await;
    alice_ws.send_to_user("warm-up", &bob_id, "hello").await;
    let conv = alice_ws.next_of("ack").await["conversation_id"].as_str().unwrap().to_owned();

    let mut rng = Rng(0x5EED_2026_1128);
    let mut fuzz = Client::connect(&app, &mallory).await;
    let (mut sent, mut errors, mut reconnects, mut chat) = (0u32, 0u32, 0u32, 1usize);
    const FRAMES: u32 = 3000;
    while sent < FRAMES {
        if fuzz.closed.is_some() {
            // Closed for breaking the protocol (too many bad frames, an oversized frame):
            // a well-defined outcome. Come back and go on.
            let (code, _) = fuzz.closed.clone().unwrap();
            assert!([1008, 1009, 1002, 1003, 1006, 1007].contains(&code), "unexpected close code {code}");
            reconnects += 1;
            fuzz = Client::connect(&app, &mallory).await;
        }
        let m = frame(&mut rng, &bob_id, &alice_id);
        if fuzz.ws.send(m).await.is_err() {
            fuzz.closed.get_or_insert((1006, String::new()));
            continue;
        }
        sent += 1;
        if sent % 25 == 0 {
            while let Some(v) = fuzz.read_one(Duration::from_millis(5)).await {
                if v["type"] == "error" {
                    errors += 1;
                    assert!(v["code"].is_string() && v["message"].is_string(), "{v}");
                }
            }
            // Meanwhile, Alice and Bob chat as if nothing happened.
            if sent % 250 == 0 {
                alice_ws.send_to_conv(&format!("during-{sent}"), &conv, "still fine?").await;
                chat += 1;
                bob_ws.read_until("alice's message during the fuzzing", |c| c.messages.len() == chat).await;
            }
        }
    }
    // A flood of pings on a fresh connection (the last fuzz frames may just have got the old
    // one closed for breaking the protocol), every one answered.
    drop(fuzz);
    let mut fuzz = Client::connect(&app, &mallory).await;
    for _ in 0..500 {
        fuzz.send(json!({"type": "ping"})).await;
    }
    for _ in 0..500 {
        fuzz.next_of("pong").await;
    }
    assert!(errors >= 100, "bad frames get error frames ({errors} of {sent})");
    eprintln!("fuzz: {sent} frames, {errors} error frames, {reconnects} reconnects after protocol closes");

    // Nobody else was harmed, nothing from the fuzzer reached them, and the server is up.
    alice_ws.send_to_conv("after", &conv, "done").await;
    chat += 1;
    bob_ws.read_until("alice's last message", |c| c.messages.len() == chat).await;
    bob_ws.assert_complete(&conv, chat as i64);
    assert!(alice_ws.closed.is_none() && bob_ws.closed.is_none());
    assert!(bob_ws.others.iter().all(|f| f["type"] != "error"), "bob got no errors");
    let health = app.client().get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    let supervisors = app.node.stats("node").await.expect("the node supervisor is alive");
    assert_eq!(supervisors.restarts, 0, "no supervisor had to be restarted");
}
