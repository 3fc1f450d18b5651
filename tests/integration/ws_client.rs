//! A WebSocket test client speaking the chat protocol, with the bookkeeping a real client
//! keeps: messages deduplicated by id, per-conversation seq order, unacked sends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::helpers::{Api, TestApp};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a test waits for any one expected frame.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Client {
    pub ws: Ws,
    /// Message frames received: id → (conversation, seq).
    pub messages: HashMap<String, (String, i64)>,
    /// Per conversation, seq → message id, for gap and duplicate checks.
    pub by_seq: HashMap<String, BTreeMap<i64, String>>,
    /// Message frames received, in arrival order (duplicates included).
    pub arrivals: Vec<(String, i64)>,
    /// The message frames themselves, in arrival order.
    pub message_frames: Vec<Value>,
    /// Acks received: client_msg_id → (message id, seq).
    pub acks: HashMap<String, (String, i64)>,
    /// Other frames, in order.
    pub others: Vec<Value>,
    pub closed: Option<(u16, String)>,
}

/// Opens `/ws` with a request built by `f` (headers), returning the raw stream or the
/// HTTP status of a refused upgrade.
pub async fn connect_with(
    addr: SocketAddr,
    f: impl FnOnce(&mut tokio_tungstenite::tungstenite::handshake::client::Request),
) -> Result<Ws, u16> {
    let mut req = format!("ws://{addr}/ws").into_client_request().expect("request");
    f(&mut req);
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("connect failed: {e}"),
    }
}

impl Client {
    /// Connects with a bearer token and waits for `hello`.
    pub async fn connect(app: &TestApp, token: &str) -> Client {
        Self::connect_addr(app.addr, token).await
    }

    /// Connects to the server at `addr` with a bearer token and waits for `hello`.
    pub async fn connect_addr(addr: SocketAddr, token: &str) -> Client {
        let auth = HeaderValue::from_str(&format!("Bearer {token}")).expect("header");
        let ws = connect_with(addr, |r| {
            r.headers_mut().insert("authorization", auth);
        })
        .await
        .expect("upgrade accepted");
        let mut c = Client::from_ws(ws);
        let hello = c.next_of("hello").await;
        assert!(hello["user_id"].is_string());
        c
    }

    pub fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            messages: HashMap::new(),
            by_seq: HashMap::new(),
            arrivals: vec![],
            message_frames: vec![],
            acks: HashMap::new(),
            others: vec![],
            closed: None,
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send frame");
    }

    pub async fn send_to_user(&mut self, cid: &str, to: &str, body: &str) {
        self.send(json!({"type": "send", "client_msg_id": cid, "to_user_id": to, "body": body})).await;
    }

    pub async fn send_to_conv(&mut self, cid: &str, conv: &str, body: &str) {
        self.send(json!({"type": "send", "client_msg_id": cid, "conversation_id": conv, "body": body})).await;
    }

    /// Reads one frame (recording messages and acks); `None` on close or timeout.
    pub async fn read_one(&mut self, timeout: Duration) -> Option<Value> {
        // One deadline for the whole call: pings and other control frames do not extend it.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()?;
            match next {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("server sends JSON");
                    self.record(&v);
                    return Some(v);
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed =
                        Some(frame.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())));
                    return None;
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    self.closed.get_or_insert((1006, String::new()));
                    return None;
                }
            }
        }
    }

    fn record(&mut self, v: &Value) {
        match v["type"].as_str() {
            Some("message") => {
                let id = v["id"].as_str().expect("id").to_owned();
                let conv = v["conversation_id"].as_str().expect("conv").to_owned();
                let seq = v["seq"].as_i64().expect("seq");
                self.arrivals.push((conv.clone(), seq));
                let prev = self.by_seq.entry(conv.clone()).or_default().insert(seq, id.clone());
                assert!(prev.is_none() || prev.as_deref() == Some(id.as_str()), "two messages with seq {seq}");
                self.messages.insert(id, (conv, seq));
                self.message_frames.push(v.clone());
            }
            Some("ack") => {
                let cid = v["client_msg_id"].as_str().expect("cid").to_owned();
                let id = v["message_id"].as_str().expect("id").to_owned();
                let seq = v["seq"].as_i64().expect("seq");
                if let Some(prev) = self.acks.insert(cid, (id.clone(), seq)) {
                    assert_eq!(prev, (id, seq), "a resend was acked with a different id or seq");
                }
            }
            _ => self.others.push(v.clone()),
        }
    }

    /// Reads until a frame of `type` arrives (panics on timeout or close).
    pub async fn next_of(&mut self, ty: &str) -> Value {
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.read_one(left).await.unwrap_or_else(|| panic!("no {ty} frame (closed: {:?})", self.closed));
            if v["type"] == ty {
                return v;
            }
        }
    }

    /// Reads until `cond` holds (panics after `FRAME_TIMEOUT` or on close).
    pub async fn read_until(&mut self, what: &str, mut cond: impl FnMut(&Client) -> bool) {
        let deadline = tokio::time::Instant::now() + FRAME_TIMEOUT;
        while !cond(self) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if self.read_one(left).await.is_none() {
                panic!("gave up waiting for {what}: closed {:?}, {} messages", self.closed, self.messages.len());
            }
        }
    }

    /// Reads (and records) frames until the server closes the socket; its close code and
    /// reason, or `None` if it is still open after `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> Option<(u16, String)> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.closed.is_none() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self.read_one(left).await;
        }
        self.closed.clone()
    }

    /// Asserts the conversation's messages are exactly seqs 1..=n, one id each.
    pub fn assert_complete(&self, conv: &str, n: i64) {
        let seqs = self.by_seq.get(conv).expect("conversation seen");
        let got: Vec<i64> = seqs.keys().copied().collect();
        let want: Vec<i64> = (1..=n).collect();
        assert_eq!(got, want, "gaps or extra seqs");
        let ids: HashSet<&String> = seqs.values().collect();
        assert_eq!(ids.len() as i64, n, "distinct message ids");
    }

    /// Asserts live arrivals came in strictly increasing seq order per conversation.
    pub fn assert_in_order(&self) {
        let mut last: HashMap<&str, i64> = HashMap::new();
        for (conv, seq) in &self.arrivals {
            let l = last.entry(conv.as_str()).or_insert(0);
            assert!(*seq > *l, "seq {seq} arrived after {l}");
            *l = *seq;
        }
    }
}

/// `(access token, user id)` of a new user.
pub async fn user(app: &impl Api, name: &str) -> (String, String) {
    let token = app.signup(name).await;
    let me: Value = app.me(&token).await.json().await.expect("json");
    (token, me["id"].as_str().expect("id").to_owned())
}

/// Sends `body` from `dev` into `conv` (or to user `to` when `conv` is empty) and waits
/// for its ack; returns the message id and the conversation id.
pub async fn say(dev: &mut Client, cid: &str, conv: &str, to: &str, body: &str) -> (String, String) {
    if conv.is_empty() {
        dev.send_to_user(cid, to, body).await;
    } else {
        dev.send_to_conv(cid, conv, body).await;
    }
    loop {
        let ack = dev.next_of("ack").await;
        if ack["client_msg_id"] == cid {
            let field = |k: &str| ack[k].as_str().expect("ack field").to_owned();
            return (field("message_id"), field("conversation_id"));
        }
    }
}

/// Makes two users contacts: `a` requests, `b` accepts. Returns the request id.
pub async fn make_contacts(app: &impl Api, a_token: &str, b_token: &str, b_username: &str) -> String {
    let r = app
        .client()
        .post(app.url("/api/contacts/requests"))
        .bearer_auth(a_token)
        .json(&json!({ "username": b_username }))
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), reqwest::StatusCode::CREATED);
    let id = r.json::<Value>().await.expect("json")["id"].as_str().expect("id").to_owned();
    let r = app
        .client()
        .post(app.url(&format!("/api/contacts/requests/{id}/accept")))
        .bearer_auth(b_token)
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    id
}

/// Alice and Bob, registered and contacts: `(alice token, bob token, bob id)`.
pub async fn alice_and_bob(app: &impl Api) -> (String, String, String) {
    let (alice, _) = user(app, "alice").await;
    let (bob, bob_id) = user(app, "bob").await;
    make_contacts(app, &alice, &bob, "bob").await;
    (alice, bob, bob_id)
}
