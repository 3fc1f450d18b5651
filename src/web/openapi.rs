//! `GET /api/openapi.json`: the REST API's OpenAPI document, generated from the routers
//! (every handler under `/api` is an `#[endpoint]` naming its parameters, body and
//! responses) and the schemas below.
//!
//! Several handlers build their JSON with `json!`; the schemas here describe those
//! shapes. `scripts/fuzz-api` (schemathesis, run by `scripts/test`) checks every response
//! the server gives against them, so a schema that drifts from the code fails the tests.

use std::sync::LazyLock;

use salvo::oapi::{OpenApi, ToSchema};
use salvo::prelude::*;

/// The document, built once.
static DOC: LazyLock<String> = LazyLock::new(|| {
    // Schemas are named by their type alone (`ErrorBody`, not
    // `switchboard.web.openapi.ErrorBody`): the document does not change when code moves
    // between modules, and generated clients get plain names.
    salvo::oapi::naming::set_namer(salvo::oapi::naming::FlexNamer::new().short_mode(true));
    let api = Router::new()
        .push(crate::web::health::router())
        .push(crate::auth::routes::router())
        .push(crate::contacts::routes::router())
        .push(crate::messaging::conversations::router())
        .push(crate::messaging::transfers::router())
        .push(crate::notify::routes::router());
    let mut doc = OpenApi::new("Switchboard", env!("CARGO_PKG_VERSION")).merge_router(&api);
    doc.info.description = Some(
        "One-to-one chat. Authenticate with `Authorization: Bearer <access token>` (from login) \
         or, in a browser, the session cookie plus the `X-CSRF-Token` header on state-changing \
         requests. Errors are `{\"error\": {\"code\", \"message\"}}`. Times are Unix milliseconds. \
         The chat itself is the WebSocket at `/ws` (docs/protocol.md)."
            .to_owned(),
    );
    let mut json = serde_json::to_value(&doc).unwrap_or_default();
    drop_implicit_ok(&mut json);
    serde_json::to_string_pretty(&json).unwrap_or_default()
});

/// A handler returning `Result<(), _>` gets a bare `200 Ok` response from salvo-oapi; on
/// operations whose attributes declare their own 2xx (201, 204, ...) it is not true.
fn drop_implicit_ok(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else { return };
    for item in paths.values_mut() {
        let Some(ops) = item.as_object_mut() else { continue };
        for op in ops.values_mut() {
            let Some(responses) = op.get_mut("responses").and_then(|r| r.as_object_mut()) else { continue };
            let other_success = responses.keys().any(|k| k.starts_with('2') && k != "200");
            let bare = responses.get("200").is_some_and(|r| r.get("content").is_none() && r["description"] == "Ok");
            if other_success && bare {
                responses.remove("200");
            }
        }
    }
}

pub fn router() -> Router {
    Router::with_path("api/openapi.json").get(spec)
}

#[handler]
async fn spec(res: &mut Response) {
    res.headers_mut()
        .insert(salvo::http::header::CACHE_CONTROL, salvo::http::HeaderValue::from_static("public, max-age=60"));
    res.render(Text::Json(DOC.as_str()));
}

/// The error responses most operations share, each a type an `#[endpoint]` lists by name
/// in `responses(...)` (`errors::Unauthenticated`), so the attributes say which errors an
/// operation has without repeating their description and body. Each is an [`ErrorBody`]
/// with its status; an operation with its own wording for one lists it as a tuple.
pub mod errors {
    use salvo::oapi::{Components, Content, RefOr, Response, Responses, ToResponses, ToSchema};

    use super::ErrorBody;

    fn error(components: &mut Components, description: &str) -> RefOr<Response> {
        Response::new(description)
            .add_content("application/json", Content::new(ErrorBody::to_schema(components)))
            .into()
    }

    macro_rules! error_responses {
        ($($(#[doc = $doc:literal])* $name:ident = $status:literal, $description:literal;)*) => {
            $(
                $(#[doc = $doc])*
                pub struct $name;

                impl ToResponses for $name {
                    fn to_responses(components: &mut Components) -> Responses {
                        Responses::new().response($status, error(components, $description))
                    }
                }
            )*
        };
    }

    error_responses! {
        /// 400: a body, field or parameter the operation refuses.
        BadInput = "400", "invalid JSON, fields or parameters";
        /// 401: no token, or an invalid, expired or revoked one.
        Unauthenticated = "401", "no valid session";
        /// 403: not the caller's to do (or a cross-site or CSRF-less cookie request).
        NotAllowed = "403", "not allowed (or a cross-site / CSRF-less cookie request)";
        /// 404: no such thing, or one the caller may not know exists.
        NotFound = "404", "no such thing, or not yours";
        /// 409: the thing is not in a state that allows this.
        Conflict = "409", "conflict with the current state";
        /// 413: the body is over the operation's limit.
        TooLarge = "413", "body over the limit";
        /// 415: the body is not JSON.
        NotJson = "415", "the body is not application/json";
        /// 429: too many requests (with `Retry-After`).
        RateLimited = "429", "rate limited (Retry-After)";
        /// 503: storage or another dependency is unavailable.
        Unavailable = "503", "storage or a dependency unavailable";
    }
}

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_json`, `not_found`, `rate_limited`, ...
    pub code: String,
    /// For people.
    pub message: String,
}

/// A stored message (as in the WebSocket `message` frame).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessageOut {
    pub id: String,
    pub conversation_id: String,
    pub seq: i64,
    pub sender_id: String,
    pub client_msg_id: String,
    /// `text` or `file`.
    pub kind: String,
    pub body: String,
    pub file_id: Option<String>,
    pub created_at: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConversationOut {
    pub id: String,
    pub peer: Option<crate::contacts::repo::PublicUser>,
    pub last_seq: i64,
    pub read_seq: i64,
    pub peer_delivered_seq: i64,
    pub peer_read_seq: i64,
    pub unread: i64,
    pub last_message: Option<MessageOut>,
    pub updated_at: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct ConversationList {
    pub conversations: Vec<ConversationOut>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct MessagePage {
    pub messages: Vec<MessageOut>,
    pub last_seq: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct TransferOut {
    pub id: String,
    pub conversation_id: String,
    pub uploader_id: String,
    pub name: String,
    pub mime: String,
    pub size: i64,
    pub sha256: String,
    pub chunk_size: i64,
    pub chunk_count: i64,
    /// `uploading`, `complete`, `failed` or `expired`.
    pub state: String,
    pub file_id: Option<String>,
    pub received_chunks: i64,
    /// Chunk indexes still to send.
    pub missing: Vec<i64>,
    pub expires_at: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NotificationOut {
    pub id: String,
    /// The stream cursor: every change takes the next number.
    pub n: i64,
    /// `message` (one per conversation, updated by each new message), `contact_request`
    /// or `contact_accepted`.
    pub kind: String,
    pub conversation_id: Option<String>,
    pub seq: Option<i64>,
    pub payload: serde_json::Value,
    pub read: bool,
    /// What it adds to the unread total while unread (unread messages of a message
    /// notification, 1 for the others); 0 once read.
    pub count: i64,
    /// When it last changed.
    pub created_at: i64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct UnreadOut {
    pub total: i64,
    /// Unread messages per conversation id.
    pub conversations: std::collections::BTreeMap<String, i64>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub struct NotificationPage {
    pub notifications: Vec<NotificationOut>,
    pub unread: UnreadOut,
    pub next_before: Option<i64>,
}
