//! `/api/transfers` (chunked, resumable uploads) and `/api/files/{id}` (downloads), for
//! the participants of the file's conversation only.

use salvo::fs::NamedFile;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};
use switchboard_actors::ids::{FileId, TransferId};
use switchboard_actors::ports::ChatStore;
use switchboard_actors::states::TransferState;
use uuid::Uuid;

use crate::auth::routes::{caller, json_body, require_auth};
use crate::domain::ConversationId;
use crate::error::{AppError, ErrorCode};
use crate::messaging::files::{ChunkError, LimitExceeded, NewTransfer, TransferLimits, chunk_len, is_sha256_hex};
use crate::storage::entities::transfer;
use crate::web::openapi::{ErrorBody, errors};
use crate::web::state;

pub fn router() -> Router {
    Router::new()
        .push(
            Router::with_path("api/transfers")
                .hoop(require_auth)
                .post(create)
                .push(Router::with_path("{id}").get(status))
                .push(Router::with_path("{id}/chunks/{index}").put(put_chunk)),
        )
        .push(Router::with_path("api/files/{id}").hoop(require_auth).get(download))
}

#[derive(Debug, Deserialize, salvo::oapi::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// A conversation of the caller's (UUID).
    conversation_id: String,
    /// 1-255 bytes; no control characters, `/` or `\\`; not `.` or `..`.
    #[salvo(schema(min_length = 1, max_length = 255))]
    name: String,
    /// Bytes, 1 to `files.max_file_bytes`.
    #[salvo(schema(minimum = 1))]
    size: i64,
    /// SHA-256 of the whole file, 64 hex digits.
    #[salvo(schema(pattern = "^[0-9a-fA-F]{64}$"))]
    sha256: String,
    /// `type/subtype`; anything else is stored as `application/octet-stream`.
    #[serde(default)]
    #[salvo(schema(max_length = 255))]
    mime: Option<String>,
}

/// Checks a file name: 1–255 bytes, no control characters, no path separators, not `.`
/// or `..`. Names are shown to people and sent back in `Content-Disposition`, never used
/// as a path.
pub fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name.len() > 255 {
        return Err("name must be 1 to 255 bytes");
    }
    if name.chars().any(|c| c.is_control()) {
        return Err("name must not contain control characters");
    }
    if crate::domain::check_visible_name(name).is_err() {
        return Err("name must not contain invisible or text-direction characters (such as U+202E), nor be blank");
    }
    if name.contains(['/', '\\']) || name == "." || name == ".." {
        return Err("name must not contain / or \\ or be . or ..");
    }
    if name.trim() != name {
        return Err("name must not start or end with spaces");
    }
    Ok(())
}

/// A MIME type like `image/png`: `type/subtype` of token characters, at most 127 bytes;
/// parameters are dropped. Anything else is `application/octet-stream`.
fn clean_mime(mime: Option<&str>) -> String {
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    let m = mime.and_then(|m| m.split(';').next()).map(|m| m.trim().to_ascii_lowercase()).unwrap_or_default();
    match m.split_once('/') {
        Some((t, s)) if m.len() <= 127 && token(t) && token(s) => m,
        _ => "application/octet-stream".into(),
    }
}

/// A transfer as its participants see it.
#[derive(Serialize, ToSchema)]
struct TransferOut {
    #[salvo(schema(value_type = String))]
    id: Uuid,
    #[salvo(schema(value_type = String))]
    conversation_id: Uuid,
    #[salvo(schema(value_type = String))]
    uploader_id: Uuid,
    name: String,
    mime: String,
    size: i64,
    sha256: String,
    chunk_size: i64,
    chunk_count: i64,
    /// `uploading`, `complete`, `failed` or `expired`.
    state: String,
    #[salvo(schema(value_type = Option<String>))]
    file_id: Option<Uuid>,
    received_chunks: i64,
    /// Chunk indexes still to send.
    missing: Vec<i64>,
    expires_at: i64,
}

impl TransferOut {
    /// `t` with the chunks received so far.
    fn of(t: transfer::Model, received: &[i64]) -> Self {
        let have: std::collections::HashSet<i64> = received.iter().copied().collect();
        let chunk_count = i64::from(t.chunk_count);
        let missing: Vec<i64> =
            if t.file_id.is_some() { vec![] } else { (0..chunk_count).filter(|i| !have.contains(i)).collect() };
        Self {
            id: t.id,
            conversation_id: t.conversation_id,
            uploader_id: t.uploader_id,
            name: t.name,
            mime: t.mime,
            size: t.size,
            sha256: t.sha256,
            chunk_size: i64::from(t.chunk_size),
            chunk_count,
            state: t.state,
            file_id: t.file_id,
            received_chunks: chunk_count - missing.len() as i64,
            missing,
            expires_at: t.expires_at,
        }
    }
}

/// `POST /api/transfers {conversation_id, name, size, sha256, mime?}` → 201 `{id,
/// chunk_size, chunk_count, missing, ...}`. Limits are checked here, before any byte.
#[endpoint(
    operation_id = "transfers.create",
    tags("files"),
    request_body = CreateBody,
    responses(
        (status_code = 201, description = "the transfer: chunk size and count, missing chunks", body = TransferOut),
        errors::BadInput,
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Conflict,
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn create(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let body: CreateBody = json_body(req, depot).await?;
    let st = state(depot)?;
    let limits = &st.config.files;
    check_name(&body.name).map_err(|m| AppError::bad_request(ErrorCode::InvalidName, m))?;
    let sha = body.sha256.to_ascii_lowercase();
    if !is_sha256_hex(&sha) {
        return Err(AppError::bad_request(ErrorCode::InvalidSha256, "sha256 must be 64 hexadecimal digits"));
    }
    if body.size < 1 {
        return Err(AppError::bad_request(ErrorCode::InvalidSize, "size must be at least 1 byte"));
    }
    if body.size as u64 > limits.max_file_bytes {
        return Err(AppError::PayloadTooLarge { limit: limits.max_file_bytes as usize });
    }
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such conversation");
    let conv_id = ConversationId::parse(&body.conversation_id).ok_or_else(not_found)?;
    let conv = participant_conversation(depot, conv_id, me).await?.ok_or_else(not_found)?;
    if let Some(peer) = conv.peer_of(me) {
        st.repos.chat.may_message(me, peer).await.map_err(|_| AppError::Forbidden {
            code: ErrorCode::Forbidden,
            message: "you may not send files to this user".into(),
        })?;
    }
    let new = NewTransfer {
        uploader: me,
        conversation_id: conv_id,
        name: body.name,
        mime: clean_mime(body.mime.as_deref()),
        size: body.size,
        sha256: sha,
        chunk_size: limits.chunk_bytes as i64,
    };
    let caps = TransferLimits { max_concurrent: limits.max_concurrent_transfers, quota_bytes: limits.quota_bytes };
    let ttl = limits.transfer_ttl_secs as i64 * 1000;
    let t = match st.files.create_within_limits(new, caps, ttl, crate::now_ms()).await? {
        Ok(t) => t,
        Err(LimitExceeded::TooManyTransfers) => {
            return Err(AppError::Conflict {
                code: ErrorCode::TooManyTransfers,
                message: format!("at most {} uploads at once; finish or wait for one", limits.max_concurrent_transfers),
            });
        }
        Err(LimitExceeded::Quota) => {
            return Err(AppError::Conflict {
                code: ErrorCode::QuotaExceeded,
                message: format!("this upload would pass your storage quota of {} bytes", limits.quota_bytes),
            });
        }
    };
    res.status_code(StatusCode::CREATED);
    res.render(Json(TransferOut::of(t, &[])));
    Ok(())
}

/// The transfer, if the caller takes part in its conversation (404 otherwise).
async fn visible_transfer(req: &Request, depot: &Depot) -> Result<transfer::Model, AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such transfer");
    let id = req.param::<String>("id").and_then(|s| uuid::Uuid::parse_str(&s).ok()).ok_or_else(not_found)?;
    let t = st.files.transfer(TransferId(id)).await?.ok_or_else(not_found)?;
    participant_conversation(depot, ConversationId(t.conversation_id), me).await?.ok_or_else(not_found)?;
    Ok(t)
}

/// The conversation, if `me` takes part in it.
async fn participant_conversation(
    depot: &Depot,
    id: ConversationId,
    me: crate::domain::UserId,
) -> Result<Option<switchboard_actors::ports::ConversationInfo>, AppError> {
    let conv =
        state(depot)?.repos.chat.conversation(id).await.map_err(|e| AppError::Internal(anyhow::anyhow!("{e}")))?;
    Ok(conv.filter(|c| c.has(me)))
}

/// `GET /api/transfers/{id}` → the transfer with `missing` chunk indexes (resume).
#[endpoint(
    operation_id = "transfers.status",
    tags("files"),
    parameters(
        ("id" = String, Path, description = "UUID"),
    ),
    responses(
        (status_code = 200, description = "the transfer and the chunks still missing", body = TransferOut),
        errors::Unauthenticated,
        errors::NotFound,
        errors::Unavailable,
    ),
)]
async fn status(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let t = visible_transfer(req, depot).await?;
    let received = state(depot)?.files.received(TransferId(t.id)).await?;
    res.render(Json(TransferOut::of(t, &received)));
    Ok(())
}

/// `PUT /api/transfers/{id}/chunks/{index}` with the raw bytes and `X-Chunk-Sha256` →
/// 204 once stored; a stored chunk sent again is a no-op (204).
#[endpoint(
    operation_id = "transfers.put_chunk",
    tags("files"),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "the chunk's bytes"),
    parameters(
        ("id" = String, Path, description = "UUID"),
        ("index" = u32, Path, description = "chunk index, from 0"),
        ("x-chunk-sha256" = String, Header, description = "SHA-256 of the chunk, hex"),
    ),
    responses(
        (status_code = 204, description = "stored (or already stored)"),
        errors::BadInput,
        errors::Unauthenticated,
        errors::NotAllowed,
        errors::NotFound,
        errors::Conflict,
        errors::TooLarge,
        errors::Unavailable,
    ),
)]
async fn put_chunk(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let t = visible_transfer(req, depot).await?;
    let st = state(depot)?;
    if t.uploader_id != me.0 {
        return Err(AppError::Forbidden {
            code: ErrorCode::Forbidden,
            message: "only the uploader sends chunks".into(),
        });
    }
    if t.state != TransferState::Uploading.as_str() || t.file_id.is_some() {
        return Err(AppError::conflict(ErrorCode::TransferClosed, format!("this transfer is {}", t.state)));
    }
    let index = req
        .param::<String>("index")
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|i| (0..t.chunk_count as i64).contains(i))
        .ok_or_else(|| {
            AppError::bad_request(ErrorCode::InvalidIndex, format!("chunk index must be 0 to {}", t.chunk_count - 1))
        })?;
    let sha = req
        .headers()
        .get("x-chunk-sha256")
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .filter(|s| is_sha256_hex(s))
        .ok_or_else(|| {
            AppError::bad_request(ErrorCode::InvalidSha256, "X-Chunk-Sha256 must be 64 hexadecimal digits")
        })?;
    let id = TransferId(t.id);
    let expected = chunk_len(&t, index) as u64;
    if let Some(len) = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > expected
    {
        return Err(AppError::PayloadTooLarge { limit: expected as usize });
    }
    if !st.files.has_chunk(id, index).await? {
        let ttl = st.config.files.transfer_ttl_secs as i64 * 1000;
        let body = req.take_body();
        match st.files.store_chunk(&t, index, &sha, body, crate::now_ms(), ttl).await {
            Ok(()) => {}
            Err(ChunkError::TooLarge { expected }) => {
                return Err(AppError::PayloadTooLarge { limit: expected as usize });
            }
            Err(e @ (ChunkError::WrongSize { .. } | ChunkError::Body(_))) => {
                return Err(AppError::bad_request(ErrorCode::InvalidChunk, e.to_string()));
            }
            Err(ChunkError::HashMismatch) => {
                return Err(AppError::bad_request(ErrorCode::ChunkHashMismatch, ChunkError::HashMismatch.to_string()));
            }
            Err(ChunkError::Io(e)) => return Err(AppError::Internal(e.into())),
        }
    }
    if let Err(e) = st.node.transfer_touched(id).await {
        // Stored; the next chunk or a status read starts the actor again.
        tracing::warn!(transfer = %id, error = %e, "cannot reach the transfer actor");
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// Types a browser may show inline; everything else downloads as an attachment.
const INLINE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// `GET /api/files/{id}` → the file, with `Range` support; participants only (404
/// otherwise). Always `nosniff` and a sandboxing CSP; only plain images are inline.
#[endpoint(
    operation_id = "transfers.download",
    tags("files"),
    parameters(
        ("id" = String, Path, description = "UUID"),
        ("range" = Option<String>, Header),
    ),
    responses(
        (status_code = 200, description = "the file", body = Vec<u8>, content_type = "application/octet-stream"),
        (status_code = 206, description = "a range of the file", body = Vec<u8>, content_type = "application/octet-stream"),
        errors::Unauthenticated,
        errors::NotFound,
        (status_code = 416, description = "range not satisfiable", body = ErrorBody),
        errors::Unavailable,
    ),
)]
async fn download(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such file");
    let id = req.param::<String>("id").and_then(|s| uuid::Uuid::parse_str(&s).ok()).ok_or_else(not_found)?;
    let f = st.files.file(FileId(id)).await?.ok_or_else(not_found)?;
    participant_conversation(depot, ConversationId(f.conversation_id), me).await?.ok_or_else(not_found)?;
    let path = st.files.blob_path(&f.sha256).ok_or_else(not_found)?;
    let inline = INLINE_TYPES.contains(&f.mime.as_str());
    let mime: salvo::http::mime::Mime = if inline {
        f.mime.parse().unwrap_or(salvo::http::mime::APPLICATION_OCTET_STREAM)
    } else {
        salvo::http::mime::APPLICATION_OCTET_STREAM
    };
    let file = NamedFile::builder(path)
        .content_type(mime)
        .disposition_type(if inline { "inline" } else { "attachment" })
        .attached_name(f.name.clone())
        .use_content_type_options(true)
        // The blob's inode and mtime would tell whoever downloads a shared (deduplicated)
        // file that someone stored the same bytes before, and when: the file record's
        // own id is the validator instead, and no Last-Modified.
        .use_etag(false)
        .use_last_modified(false)
        .build()
        .await
        .map_err(|e| AppError::Internal(anyhow::anyhow!("open stored file: {e}")))?;
    res.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("sandbox; default-src 'none'"));
    res.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    if let Ok(tag) = HeaderValue::from_str(&format!("\"{}\"", f.id.simple())) {
        res.headers_mut().insert(header::ETAG, tag);
    }
    file.send(req.headers(), res).await;
    Ok(())
}
