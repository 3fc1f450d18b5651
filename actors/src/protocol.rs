//! WebSocket frames: JSON text frames with a `type` (docs/protocol.md).
//!
//! Parsing is two-step: the frame is read as JSON first, so that a frame with a bad shape
//! still yields its `type` and reference for the `error` frame that answers it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::ids::{ConversationId, MessageId, UserId};
use crate::ports::{ContactChange, NotificationView, Receipt, StoredMessage, Unread};

/// Longest accepted `client_msg_id`.
pub const MAX_CLIENT_MSG_ID: usize = 64;
/// Most conversations one `sync` may name.
pub const MAX_SYNC_CONVERSATIONS: usize = 10_000;

/// A frame from the client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Send a message into a conversation, or to a user (opening the conversation).
    Send {
        client_msg_id: String,
        #[serde(default)]
        conversation_id: Option<ConversationId>,
        #[serde(default)]
        to_user_id: Option<UserId>,
        body: String,
    },
    /// Deliver what was missed: per conversation, the last seq the client has (absent
    /// conversations: the client has nothing).
    Sync {
        #[serde(default)]
        since: HashMap<ConversationId, i64>,
    },
    /// Typing started or stopped.
    Typing { conversation_id: ConversationId, active: bool },
    /// Everything up to `seq` was read.
    Read { conversation_id: ConversationId, seq: i64 },
    /// Liveness probe; answered with `pong`.
    Ping,
}

/// A frame to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Sent once on connect: who the server thinks you are, and the limits in force.
    /// `node` names the messaging node serving this connection (for diagnostics).
    /// `edit_window_secs`: how long after sending a text message it may be edited (0: no
    /// edits).
    Hello { user_id: UserId, node: String, max_body_bytes: usize, max_frame_bytes: usize, edit_window_secs: u64 },
    /// The message is committed: its id and sequence number.
    Ack { client_msg_id: String, message_id: MessageId, conversation_id: ConversationId, seq: i64 },
    /// A message (live, or in answer to `sync`).
    Message(StoredMessage),
    /// A participant's delivered/read markers.
    Receipt(Receipt),
    /// A peer is typing (or stopped).
    Typing { conversation_id: ConversationId, user_id: UserId, active: bool },
    /// A peer came online or went offline.
    Presence {
        user_id: UserId,
        online: bool,
        /// When an offline contact was last connected, if known.
        #[serde(skip_serializing_if = "Option::is_none")]
        last_seen_at: Option<i64>,
    },
    /// A contact request involving you changed.
    Contact(ContactChange),
    /// A contact (or you, on another device) changed their display name.
    Profile { user_id: UserId, display_name: String },
    /// An upload in one of your conversations progressed, completed or failed.
    Transfer(crate::transfer::TransferProgress),
    /// A new notification (or `null`) and your unread counts now.
    Notification { notification: Option<NotificationView>, unread: Unread },
    /// The answer to `sync` is complete.
    SyncDone { messages: u64 },
    /// A request failed; `ref` names it (its `id` or `client_msg_id`).
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
    /// Answer to `ping`.
    Pong,
}

impl ServerFrame {
    pub fn error(code: ErrorCode, message: impl Into<String>, reference: Option<String>) -> Self {
        ServerFrame::Error { code, message: message.into(), reference }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| {
            format!(r#"{{"type":"error","code":"{}","message":"cannot encode frame"}}"#, ErrorCode::Internal)
        })
    }
}

/// Whether `body` may be a message's text (sent, or an edit): not blank, no NUL (text
/// cannot hold it on PostgreSQL, and it is no character a person types), at most
/// `max_bytes`. Otherwise the code and message to answer with.
pub fn check_body(body: &str, max_bytes: usize) -> Result<(), (ErrorCode, String)> {
    if body.trim().is_empty() {
        return Err((ErrorCode::EmptyBody, "message body is empty".into()));
    }
    if body.contains('\0') {
        return Err((ErrorCode::InvalidBody, "message body must not contain NUL characters".into()));
    }
    if body.len() > max_bytes {
        return Err((ErrorCode::BodyTooLarge, format!("message body is over {max_bytes} bytes")));
    }
    Ok(())
}

/// A frame that could not be parsed: what to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    pub code: ErrorCode,
    pub message: String,
    pub reference: Option<String>,
}

impl From<FrameError> for ServerFrame {
    fn from(e: FrameError) -> Self {
        ServerFrame::Error { code: e.code, message: e.message, reference: e.reference }
    }
}

/// Parses a text frame into a [`ClientFrame`], or says what is wrong with it.
pub fn parse_client_frame(text: &str) -> Result<(ClientFrame, Option<String>), FrameError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| FrameError {
        code: ErrorCode::InvalidJson,
        message: format!("frame is not valid JSON: {e}"),
        reference: None,
    })?;
    let reference = value
        .get("id")
        .or_else(|| value.get("client_msg_id"))
        .and_then(|v| v.as_str())
        .map(|s| s.chars().take(MAX_CLIENT_MSG_ID).collect::<String>());
    let Some(kind) = value.get("type").and_then(|t| t.as_str()).map(str::to_owned) else {
        return Err(FrameError {
            code: ErrorCode::InvalidFrame,
            message: "frame must be a JSON object with a string `type`".into(),
            reference,
        });
    };
    if !matches!(kind.as_str(), "send" | "sync" | "typing" | "read" | "ping") {
        return Err(FrameError {
            code: ErrorCode::UnknownType,
            message: format!("unknown frame type {:?}", kind.chars().take(32).collect::<String>()),
            reference,
        });
    }
    let frame: ClientFrame = serde_json::from_value(value).map_err(|e| FrameError {
        code: ErrorCode::InvalidFrame,
        message: format!("bad {kind} frame: {e}"),
        reference: reference.clone(),
    })?;
    Ok((frame, reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send_and_keeps_reference() {
        let c = ConversationId::new();
        let text = format!(r#"{{"type":"send","client_msg_id":"m1","conversation_id":"{c}","body":"hi"}}"#);
        let (frame, r) = parse_client_frame(&text).expect("parses");
        assert_eq!(r.as_deref(), Some("m1"));
        assert!(matches!(frame, ClientFrame::Send { conversation_id: Some(id), .. } if id == c));
    }

    #[test]
    fn bad_frames_say_why_and_name_the_request() {
        let e = parse_client_frame("{nope").expect_err("bad json");
        assert_eq!(e.code, ErrorCode::InvalidJson);
        let e = parse_client_frame(r#"{"type":"fly","id":"r7"}"#).expect_err("unknown");
        assert_eq!((e.code, e.reference.as_deref()), (ErrorCode::UnknownType, Some("r7")));
        let e = parse_client_frame(r#"{"type":"send","client_msg_id":"m2","body":5}"#).expect_err("type");
        assert_eq!((e.code, e.reference.as_deref()), (ErrorCode::InvalidFrame, Some("m2")));
        let e = parse_client_frame(r#"[1,2]"#).expect_err("array");
        assert_eq!(e.code, ErrorCode::InvalidFrame);
        let deep = "[".repeat(10_000) + &"]".repeat(10_000);
        assert_eq!(parse_client_frame(&deep).expect_err("deep").code, ErrorCode::InvalidJson);
        let e = parse_client_frame(r#"{"type":"read","conversation_id":"x","seq":1}"#).expect_err("id");
        assert_eq!(e.code, ErrorCode::InvalidFrame);
    }

    #[test]
    fn server_frames_have_a_type() {
        let f = ServerFrame::error(ErrorCode::RateLimited, "slow down", Some("m1".into()));
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).expect("json");
        assert_eq!(v["type"], "error");
        assert_eq!(v["ref"], "m1");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&ServerFrame::Pong.to_json()).expect("json")["type"],
            "pong"
        );
    }
}
