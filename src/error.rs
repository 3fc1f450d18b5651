//! Errors at the HTTP boundary.
//!
//! [`AppError`] is the one place an error becomes a response: `{"error": {"code",
//! "message"}}` with the right status. Messages are written for the client; internal
//! errors show a generic text and their full cause chain goes to the log, once.

use salvo::http::{ParseError, StatusCode};
use salvo::prelude::*;
use serde::Serialize;
pub use switchboard_actors::codes::ErrorCode;

/// An error a handler returns; rendered by its [`Writer`] impl.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The request is malformed or a field is invalid (400).
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    /// No valid credentials, or the token is expired or revoked (401).
    #[error("{message}")]
    Unauthorized { code: ErrorCode, message: String },
    /// Authenticated, but not allowed to do this (403).
    #[error("{message}")]
    Forbidden { code: ErrorCode, message: String },
    /// The thing does not exist, or the caller may not know it exists (404).
    #[error("{message}")]
    NotFound { code: ErrorCode, message: String },
    /// The request conflicts with the current state, e.g. a taken username (409).
    #[error("{message}")]
    Conflict { code: ErrorCode, message: String },
    /// The body is larger than the route allows (413).
    #[error("request body too large (limit {limit} bytes)")]
    PayloadTooLarge { limit: usize },
    /// The body is not JSON (415).
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// Too many requests; retry after the given number of seconds (429).
    #[error("too many requests, retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The user has as many chat sockets open on this node as allowed (429).
    #[error("too many open connections for this user (limit {limit})")]
    TooManyConnections { limit: usize },
    /// A dependency (database, broker) is unavailable (503).
    #[error("{0}")]
    Unavailable(&'static str),
    /// Anything unexpected. Logged with its cause chain; the client sees a generic text.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AppError {
    pub fn bad_request(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }
    pub fn unauthorized(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Unauthorized { code, message: message.into() }
    }
    pub fn forbidden(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Forbidden { code, message: message.into() }
    }
    pub fn not_found(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::NotFound { code, message: message.into() }
    }
    pub fn conflict(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Conflict { code, message: message.into() }
    }

    /// The HTTP status this error maps to.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } | Self::TooManyConnections { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable, machine-readable code clients switch on.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::BadRequest { code, .. }
            | Self::Unauthorized { code, .. }
            | Self::Forbidden { code, .. }
            | Self::NotFound { code, .. }
            | Self::Conflict { code, .. } => *code,
            Self::PayloadTooLarge { .. } => ErrorCode::PayloadTooLarge,
            Self::UnsupportedMediaType => ErrorCode::UnsupportedMediaType,
            Self::RateLimited { .. } => ErrorCode::RateLimited,
            Self::TooManyConnections { .. } => ErrorCode::TooManyConnections,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// Text safe to show the client.
    pub fn client_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal server error".to_owned(),
            other => other.to_string(),
        }
    }

    /// Maps a body-parsing failure to a client error that says what was wrong.
    pub fn from_parse(err: ParseError, limit: usize) -> Self {
        match err {
            ParseError::PayloadTooLarge => Self::PayloadTooLarge { limit },
            ParseError::InvalidContentType => Self::UnsupportedMediaType,
            ParseError::SerdeJson(e) => Self::bad_request(ErrorCode::InvalidJson, format!("invalid request body: {e}")),
            ParseError::EmptyBody => Self::bad_request(ErrorCode::InvalidJson, "request body is empty"),
            other => Self::bad_request(ErrorCode::BadRequest, format!("could not read request: {other}")),
        }
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(e: sea_orm::DbErr) -> Self {
        Self::Internal(anyhow::Error::new(e).context("database error"))
    }
}

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Serialize, salvo::oapi::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// `{code, message}`: `code` is stable, `message` is for people.
#[derive(Debug, Serialize, salvo::oapi::ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `invalid_json`, `not_found`, `rate_limited`, ... (docs/api.md).
    #[salvo(schema(value_type = String))]
    pub code: ErrorCode,
    /// For people.
    pub message: String,
}

/// Writes the JSON error body with `status`.
pub fn write_error(res: &mut Response, status: StatusCode, code: ErrorCode, message: &str) {
    res.status_code(status);
    res.render(Json(ErrorBody { error: ErrorDetail { code, message: message.to_owned() } }));
}

/// Formats an error with its whole cause chain on one line, for the log.
pub fn error_chain(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

#[async_trait]
impl Writer for AppError {
    async fn write(self, req: &mut Request, _depot: &mut Depot, res: &mut Response) {
        let status = self.status();
        match &self {
            Self::Internal(e) => {
                tracing::error!(method = %req.method(), path = %req.uri().path(), error = %error_chain(e), "request failed");
            }
            Self::Unavailable(what) => {
                tracing::warn!(path = %req.uri().path(), what, "dependency unavailable");
            }
            _ => {}
        }
        if let Self::RateLimited { retry_after_secs } = &self
            && let Ok(v) = retry_after_secs.to_string().parse()
        {
            res.headers_mut().insert(salvo::http::header::RETRY_AFTER, v);
        }
        write_error(res, status, self.code(), &self.client_message());
    }
}

/// Catcher hoop: any error status without a body (404 for an unknown path, 405, salvo's
/// own 413 ...) gets the same JSON error shape as handler errors; a browser asking for a
/// page that does not exist gets an HTML page instead.
#[handler]
pub async fn json_catcher(req: &mut Request, res: &mut Response, ctrl: &mut FlowCtrl) {
    let status = res.status_code.unwrap_or(StatusCode::NOT_FOUND);
    if !(status.is_client_error() || status.is_server_error()) {
        return;
    }
    if status == StatusCode::NOT_FOUND && crate::web::pages::html_not_found(req, res) {
        ctrl.skip_rest();
        return;
    }
    let (code, message) = match status {
        StatusCode::NOT_FOUND => (ErrorCode::NotFound, "no such resource"),
        StatusCode::METHOD_NOT_ALLOWED => (ErrorCode::MethodNotAllowed, "method not allowed"),
        StatusCode::PAYLOAD_TOO_LARGE => (ErrorCode::PayloadTooLarge, "request body too large"),
        StatusCode::RANGE_NOT_SATISFIABLE => (ErrorCode::RangeNotSatisfiable, "range not satisfiable"),
        StatusCode::BAD_REQUEST => (ErrorCode::BadRequest, "bad request"),
        s if s.is_server_error() => (ErrorCode::Internal, "internal server error"),
        _ => (ErrorCode::Error, "request failed"),
    };
    write_error(res, status, code, message);
    ctrl.skip_rest();
}

/// Handlers document their error responses in their `#[endpoint]` attributes (with the
/// `ErrorBody` schema); the error type itself adds nothing to the spec.
impl salvo::oapi::EndpointOutRegister for AppError {
    fn register(_components: &mut salvo::oapi::Components, _operation: &mut salvo::oapi::Operation) {}
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    #[test]
    fn every_error_code_is_documented() {
        let docs = [include_str!("../docs/api.md"), include_str!("../docs/protocol.md")].concat();
        let missing: Vec<&str> =
            ErrorCode::ALL.iter().map(|c| c.as_str()).filter(|c| !docs.contains(&format!("`{c}`"))).collect();
        assert!(missing.is_empty(), "error codes not in docs/api.md or docs/protocol.md: {missing:?}");
    }
}
