//! `/api/transfers` (chunked, resumable uploads) and `/api/files/{id}` (downloads), for
//! the participants of the file's conversation only. The rules are the transfers
//! service's ([`super::transfer_service`]); here requests are parsed and answers shaped,
//! and its errors become HTTP ones (`From<TransferError> for AppError`, at the end).

use salvo::fs::NamedFile;
use salvo::http::header::{self, HeaderValue};
use salvo::prelude::*;

use salvo::oapi::ToSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::routes::{caller, json_body, require_auth};
use crate::error::{AppError, ErrorCode};
use crate::messaging::transfer_service::{ChunkUpload, NewUpload, TransferError};
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
        .push(
            Router::with_path("api/files/{id}")
                .hoop(require_auth)
                .get(download)
                .push(Router::with_path("thumbnail").get(thumbnail)),
        )
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
    let CreateBody { conversation_id, name, size, sha256, mime } = json_body(req, depot).await?;
    let upload = NewUpload { conversation_id, name, size, sha256, mime };
    let t = state(depot)?.transfers.create(me, upload).await?;
    res.status_code(StatusCode::CREATED);
    res.render(Json(TransferOut::of(t, &[])));
    Ok(())
}

/// The path's `{id}` (empty if absent: no such transfer or file).
fn id_param(req: &Request) -> String {
    req.param::<String>("id").unwrap_or_default()
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
    let me = caller(depot)?.user_id;
    let (t, received) = state(depot)?.transfers.status(me, &id_param(req)).await?;
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
    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
    let chunk = ChunkUpload {
        index: req.param::<String>("index").and_then(|s| s.parse::<i64>().ok()),
        sha256: header(header::HeaderName::from_static("x-chunk-sha256")).map(str::to_owned),
        content_length: header(header::CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok()),
        body: req.take_body(),
    };
    state(depot)?.transfers.put_chunk(me, &id_param(req), chunk).await?;
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/files/{id}` → the file, with `Range` support; participants only (404
/// otherwise). Always `nosniff` and a sandboxing CSP; only images (by their bytes, see
/// [`crate::messaging::images`]) are inline, with the type their bytes show.
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
    let (f, path) = state(depot)?.transfers.download(me, &id_param(req)).await?;
    let inline = f.image_width.is_some();
    let mime = if inline { f.mime.parse().ok() } else { None };
    send_stored(req, res, &f, path, mime, true).await
}

/// `GET /api/files/{id}/thumbnail` → a small JPEG or PNG the server made of an image file
/// (at most 480 px a side, upright, nothing but pixels from the upload); participants
/// only (404 otherwise), 404 `no_thumbnail` for a file that is not an image.
#[endpoint(
    operation_id = "transfers.thumbnail",
    tags("files"),
    parameters(("id" = String, Path, description = "UUID")),
    responses(
        (status_code = 200, description = "the thumbnail", body = Vec<u8>, content_type = "image/jpeg"),
        errors::Unauthenticated,
        (status_code = 404, description = "no such file (`not_found`), or not an image (`no_thumbnail`)", body = ErrorBody),
        (status_code = 429, description = "two of the caller's thumbnails are being made already", body = ErrorBody),
        (status_code = 503, description = "the node has 8 thumbnails being made or waiting, or this one was not made within 20 s (it goes on being made)", body = ErrorBody),
    ),
)]
async fn thumbnail(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let (f, path) = state(depot)?.transfers.thumbnail(me, &id_param(req)).await?;
    let mut head = [0u8; 12];
    let n = {
        use tokio::io::AsyncReadExt;
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| AppError::Internal(e.into()))?;
        file.read(&mut head).await.map_err(|e| AppError::Internal(e.into()))?
    };
    let mime = crate::messaging::images::thumbnail_mime(&head[..n]).parse().ok();
    send_stored(req, res, &f, path, mime, false).await
}

/// Sends stored bytes of `f` with the download headers: `nosniff`, a sandboxing CSP,
/// private caching validated by the file record's id; inline as `mime` if given, else an
/// `application/octet-stream` attachment named as the file.
async fn send_stored(
    req: &mut Request,
    res: &mut Response,
    f: &crate::storage::entities::file::Model,
    path: std::path::PathBuf,
    mime: Option<salvo::http::mime::Mime>,
    whole_file: bool,
) -> Result<(), AppError> {
    let inline = mime.is_some();
    let file = NamedFile::builder(path)
        .content_type(mime.unwrap_or(salvo::http::mime::APPLICATION_OCTET_STREAM))
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
    let tag = if whole_file { format!("\"{}\"", f.id.simple()) } else { format!("\"{}-thumb\"", f.id.simple()) };
    if let Ok(tag) = HeaderValue::from_str(&tag) {
        res.headers_mut().insert(header::ETAG, tag);
    }
    file.send(req.headers(), res).await;
    Ok(())
}

impl From<TransferError> for AppError {
    fn from(e: TransferError) -> Self {
        use TransferError::*;
        let message = e.to_string();
        match e {
            InvalidName(_) => AppError::bad_request(ErrorCode::InvalidName, message),
            InvalidSha256 | InvalidChunkSha256 => AppError::bad_request(ErrorCode::InvalidSha256, message),
            InvalidSize => AppError::bad_request(ErrorCode::InvalidSize, message),
            InvalidIndex { .. } => AppError::bad_request(ErrorCode::InvalidIndex, message),
            InvalidChunk(_) => AppError::bad_request(ErrorCode::InvalidChunk, message),
            ChunkHashMismatch => AppError::bad_request(ErrorCode::ChunkHashMismatch, message),
            TooLarge { limit } => AppError::PayloadTooLarge { limit: usize::try_from(limit).unwrap_or(usize::MAX) },
            NoConversation | NoTransfer | NoFile => AppError::not_found(ErrorCode::NotFound, message),
            NoThumbnail => AppError::not_found(ErrorCode::NoThumbnail, message),
            ThumbnailsBusy => AppError::RateLimited { retry_after_secs: 1 },
            ThumbnailSlow => AppError::Unavailable("the thumbnail is not ready yet; try again"),
            NotAllowed | NotUploader => AppError::Forbidden { code: ErrorCode::Forbidden, message },
            Closed(_) => AppError::conflict(ErrorCode::TransferClosed, message),
            TooManyTransfers(_) => AppError::Conflict { code: ErrorCode::TooManyTransfers, message },
            QuotaExceeded(_) => AppError::Conflict { code: ErrorCode::QuotaExceeded, message },
            Db(e) => e.into(),
            Io(e) => AppError::Internal(e.into()),
            Store(e) => AppError::Internal(anyhow::anyhow!("{e}")),
        }
    }
}
