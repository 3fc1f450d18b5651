//! The transfers service: the rules of chunked uploads and downloads, for the routes in
//! [`super::transfers`] (which parse, call this, and shape the answer) over the file
//! repository ([`super::files`]).
//!
//! - Only a participant of a conversation sees its transfers and files: anything else is
//!   "not found", never "forbidden", so ids reveal nothing.
//! - An upload starts only between users who may message each other, within the size,
//!   concurrency and quota limits (`files.*` in the configuration), checked before any byte.
//! - Only the uploader sends chunks, only while the transfer is uploading; each chunk's
//!   size and SHA-256 are checked as it streams to disk (a chunk stored before is a no-op),
//!   and the transfer actor is told, which assembles and posts the file when all are in.
//! - File names are shown to people and sent back in `Content-Disposition`, never used as
//!   a path (the bytes live under their SHA-256).

use std::path::PathBuf;
use std::sync::Arc;

use sea_orm::DbErr;
use switchboard_actors::ids::{ConversationId, FileId, TransferId, UserId};
use switchboard_actors::node::Node;
use switchboard_actors::ports::{ChatStore, ConversationInfo};
use switchboard_actors::states::TransferState;

use crate::config::FilesConfig;
use crate::messaging::files::{
    ChunkError, FileRepo, LimitExceeded, NewTransfer, ThumbnailWait, TransferLimits, chunk_len, is_sha256_hex,
};
use crate::storage::entities::{file, transfer};

/// Why a transfer request was refused; [`crate::error::AppError`] maps each to its status
/// and code (in the routes, once).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error("{0}")]
    InvalidName(&'static str),
    #[error("sha256 must be 64 hexadecimal digits")]
    InvalidSha256,
    #[error("size must be at least 1 byte")]
    InvalidSize,
    /// The file or chunk is larger than `limit` bytes.
    #[error("larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no such conversation")]
    NoConversation,
    #[error("no such transfer")]
    NoTransfer,
    #[error("no such file")]
    NoFile,
    #[error("this file is not an image with a thumbnail")]
    NoThumbnail,
    #[error("{}", crate::messaging::files::ThumbnailWait::Busy)]
    ThumbnailsBusy,
    #[error("{}", crate::messaging::files::ThumbnailWait::Slow)]
    ThumbnailSlow,
    #[error("you may not send files to this user")]
    NotAllowed,
    #[error("only the uploader sends chunks")]
    NotUploader,
    #[error("this transfer is {0}")]
    Closed(String),
    #[error("chunk index must be 0 to {last}")]
    InvalidIndex { last: i64 },
    #[error("X-Chunk-Sha256 must be 64 hexadecimal digits")]
    InvalidChunkSha256,
    #[error("at most {0} uploads at once; finish or wait for one")]
    TooManyTransfers(u64),
    #[error("this upload would pass your storage quota of {0} bytes")]
    QuotaExceeded(u64),
    /// A chunk of the wrong size, or a body that broke off.
    #[error("{0}")]
    InvalidChunk(String),
    #[error("{}", ChunkError::HashMismatch)]
    ChunkHashMismatch,
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error("{0}")]
    Store(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// An upload as asked for (`POST /api/transfers`), not yet checked.
#[derive(Debug)]
pub struct NewUpload {
    pub conversation_id: String,
    pub name: String,
    pub size: i64,
    pub sha256: String,
    pub mime: Option<String>,
}

/// A chunk as sent (`PUT /api/transfers/{id}/chunks/{index}`), not yet checked.
#[derive(Debug)]
pub struct ChunkUpload {
    /// The index in the path, if it is a number.
    pub index: Option<i64>,
    /// `X-Chunk-Sha256`, if present and text.
    pub sha256: Option<String>,
    /// `Content-Length`, if given.
    pub content_length: Option<u64>,
    pub body: salvo::http::ReqBody,
}

#[derive(Clone)]
pub struct TransferService {
    files: FileRepo,
    chat: Arc<dyn ChatStore>,
    node: Arc<Node>,
    limits: FilesConfig,
}

impl std::fmt::Debug for TransferService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferService").field("limits", &self.limits).finish_non_exhaustive()
    }
}

impl TransferService {
    pub fn new(files: FileRepo, chat: Arc<dyn ChatStore>, node: Arc<Node>, limits: FilesConfig) -> Self {
        Self { files, chat, node, limits }
    }

    /// Starts an upload into one of `me`'s conversations, with a peer `me` may message,
    /// within the limits.
    pub async fn create(&self, me: UserId, up: NewUpload) -> Result<transfer::Model, TransferError> {
        check_name(&up.name).map_err(TransferError::InvalidName)?;
        let sha = up.sha256.to_ascii_lowercase();
        if !is_sha256_hex(&sha) {
            return Err(TransferError::InvalidSha256);
        }
        if up.size < 1 {
            return Err(TransferError::InvalidSize);
        }
        if up.size as u64 > self.limits.max_file_bytes {
            return Err(TransferError::TooLarge { limit: self.limits.max_file_bytes });
        }
        let id = ConversationId::parse(&up.conversation_id).ok_or(TransferError::NoConversation)?;
        let conv = self.conversation_of(id, me).await?.ok_or(TransferError::NoConversation)?;
        if let Some(peer) = conv.peer_of(me) {
            self.chat.may_message(me, peer).await.map_err(|_| TransferError::NotAllowed)?;
        }
        let new = NewTransfer {
            uploader: me,
            conversation_id: id,
            name: up.name,
            mime: clean_mime(up.mime.as_deref()),
            size: up.size,
            sha256: sha,
            chunk_size: self.limits.chunk_bytes as i64,
        };
        let caps = TransferLimits {
            max_concurrent: self.limits.max_concurrent_transfers,
            quota_bytes: self.limits.quota_bytes,
        };
        let ttl = self.limits.transfer_ttl_secs as i64 * 1000;
        match self.files.create_within_limits(new, caps, ttl, crate::now_ms()).await? {
            Ok(t) => Ok(t),
            Err(LimitExceeded::TooManyTransfers) => {
                Err(TransferError::TooManyTransfers(self.limits.max_concurrent_transfers))
            }
            Err(LimitExceeded::Quota) => Err(TransferError::QuotaExceeded(self.limits.quota_bytes)),
        }
    }

    /// The transfer `id` and the chunk indexes received, if `me` takes part in its
    /// conversation.
    pub async fn status(&self, me: UserId, id: &str) -> Result<(transfer::Model, Vec<i64>), TransferError> {
        let t = self.visible_transfer(me, id).await?;
        let received = self.files.received(TransferId(t.id)).await?;
        Ok((t, received))
    }

    /// Stores one chunk of `me`'s upload `id` (a chunk stored before is a no-op) and tells
    /// the transfer actor.
    pub async fn put_chunk(&self, me: UserId, id: &str, chunk: ChunkUpload) -> Result<(), TransferError> {
        let t = self.visible_transfer(me, id).await?;
        if t.uploader_id != me.0 {
            return Err(TransferError::NotUploader);
        }
        if t.state != TransferState::Uploading.as_str() || t.file_id.is_some() {
            return Err(TransferError::Closed(t.state));
        }
        let chunks = i64::from(t.chunk_count);
        let index =
            chunk.index.filter(|i| (0..chunks).contains(i)).ok_or(TransferError::InvalidIndex { last: chunks - 1 })?;
        let sha = chunk
            .sha256
            .map(|s| s.to_ascii_lowercase())
            .filter(|s| is_sha256_hex(s))
            .ok_or(TransferError::InvalidChunkSha256)?;
        let id = TransferId(t.id);
        let expected = chunk_len(&t, index) as u64;
        if chunk.content_length.is_some_and(|len| len > expected) {
            return Err(TransferError::TooLarge { limit: expected });
        }
        if !self.files.has_chunk(id, index).await? {
            let ttl = self.limits.transfer_ttl_secs as i64 * 1000;
            match self.files.store_chunk(&t, index, &sha, chunk.body, crate::now_ms(), ttl).await {
                Ok(()) => {}
                Err(ChunkError::TooLarge { expected }) => return Err(TransferError::TooLarge { limit: expected }),
                Err(e @ (ChunkError::WrongSize { .. } | ChunkError::Body(_))) => {
                    return Err(TransferError::InvalidChunk(e.to_string()));
                }
                Err(ChunkError::HashMismatch) => return Err(TransferError::ChunkHashMismatch),
                Err(ChunkError::Io(e)) => return Err(TransferError::Io(e)),
                Err(ChunkError::Closed) => {
                    let now = self.files.transfer(id).await?.map_or_else(|| "gone".to_owned(), |t| t.state);
                    return Err(TransferError::Closed(now));
                }
            }
        }
        if let Err(e) = self.node.transfer_touched(id).await {
            // Stored; the next chunk or a status read starts the actor again.
            tracing::warn!(transfer = %id, error = %e, "cannot reach the transfer actor");
        }
        Ok(())
    }

    /// The stored file `id` and where its bytes are, if `me` takes part in its
    /// conversation.
    pub async fn download(&self, me: UserId, id: &str) -> Result<(file::Model, PathBuf), TransferError> {
        let id = uuid::Uuid::parse_str(id).map_err(|_| TransferError::NoFile)?;
        let f = self.files.file(FileId(id)).await?.ok_or(TransferError::NoFile)?;
        self.conversation_of(ConversationId(f.conversation_id), me).await?.ok_or(TransferError::NoFile)?;
        let path = self.files.blob_path(&f.sha256).ok_or(TransferError::NoFile)?;
        Ok((f, path))
    }

    /// The thumbnail of the image file `id` and the file, if `me` takes part in its
    /// conversation; `NoThumbnail` if the file is not an image (or its pixels did not
    /// decode within the limits).
    pub async fn thumbnail(&self, me: UserId, id: &str) -> Result<(file::Model, PathBuf), TransferError> {
        let (f, _) = self.download(me, id).await?;
        match self.files.thumbnail(me, &f).await {
            Ok(Some(path)) => Ok((f, path)),
            Ok(None) => Err(TransferError::NoThumbnail),
            Err(ThumbnailWait::Busy) => Err(TransferError::ThumbnailsBusy),
            Err(ThumbnailWait::Slow | ThumbnailWait::Full) => Err(TransferError::ThumbnailSlow),
            Err(ThumbnailWait::Failed(e)) => Err(TransferError::Store(format!("thumbnail of {}: {e:#}", f.id))),
        }
    }

    /// The transfer, if `me` takes part in its conversation.
    async fn visible_transfer(&self, me: UserId, id: &str) -> Result<transfer::Model, TransferError> {
        let id = uuid::Uuid::parse_str(id).map_err(|_| TransferError::NoTransfer)?;
        let t = self.files.transfer(TransferId(id)).await?.ok_or(TransferError::NoTransfer)?;
        self.conversation_of(ConversationId(t.conversation_id), me).await?.ok_or(TransferError::NoTransfer)?;
        Ok(t)
    }

    /// The conversation, if `me` takes part in it.
    async fn conversation_of(&self, id: ConversationId, me: UserId) -> Result<Option<ConversationInfo>, TransferError> {
        let conv = self.chat.conversation(id).await.map_err(|e| TransferError::Store(e.to_string()))?;
        Ok(conv.filter(|c| c.has(me)))
    }
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
