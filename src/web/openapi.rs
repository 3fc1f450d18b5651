//! `GET /api/openapi.json`: the REST API's OpenAPI document, generated from the routers:
//! every handler under `/api` is an `#[endpoint]` naming its parameters, body and
//! responses, and renders a typed response whose schema is derived from the type
//! (`ToSchema`), so the document describes what the code sends. Where a body is the actors'
//! type (a message, a notification), the slice has a mirror with a schema and a `From` that
//! names every field, so a new field does not compile until the API decides on it.
//! [`errors`] holds the error responses most operations share. `scripts/fuzz-api`
//! (schemathesis, run by `scripts/test`) checks every response against the document.

use std::sync::LazyLock;

use salvo::oapi::OpenApi;
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
        .push(crate::messaging::messages::router())
        .push(crate::messaging::search::router())
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

pub use crate::error::ErrorBody;
