//! File transfers and stored files: the database rows and the bytes on disk.
//!
//! Disk layout under `<data_dir>/files/` (only ids and hex hashes the server made or
//! checked ever become path components; a client's file name never does):
//!
//! - `parts/<transfer id>/<index>`: a verified chunk of an upload in progress.
//! - `blobs/<sha256[0..2]>/<sha256>`: a complete file, content-addressed.
//! - `thumbs/<file id[0..2]>/<file id>`: the thumbnail of an image file (a JPEG or PNG
//!   the server wrote), made on first request; `<file id>.none` marks one whose header
//!   passed but whose pixels did not decode, so it is not tried again.
//! - `tmp/<random>`: a chunk or file being written; renamed into place when verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait,
    QueryFilter, QuerySelect, TransactionTrait,
};
use sha2::{Digest, Sha256};
use switchboard_actors::ids::{ConversationId, FileId, TransferId, UserId};
use switchboard_actors::ports::{Event, StoreError};
use switchboard_actors::states::TransferState;
use switchboard_actors::states::TransferState::{Complete, Expired, Failed, Uploading};
use switchboard_actors::transfer::{AssembledFile, TransferStatus, TransferStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

use crate::messaging::images::{self, ImageInfo, ImageLimits};
use crate::storage::entities::{file, transfer, transfer_chunk, user};
use crate::storage::is_unique_violation;

/// A new upload, validated by the caller.
#[derive(Debug, Clone)]
pub struct NewTransfer {
    pub uploader: UserId,
    pub conversation_id: ConversationId,
    pub name: String,
    pub mime: String,
    pub size: i64,
    pub sha256: String,
    pub chunk_size: i64,
}

/// Why an assembly stopped when its transfer was failed meanwhile (the peer blocked).
const STOPPED: &str = "the upload was stopped while it was being assembled";

/// A user's upload limits.
#[derive(Debug, Clone, Copy)]
pub struct TransferLimits {
    pub max_concurrent: u64,
    pub quota_bytes: u64,
}

/// Why a new upload was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitExceeded {
    TooManyTransfers,
    Quota,
}

/// Why a chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("the chunk is larger than {expected} bytes")]
    TooLarge { expected: u64 },
    #[error("the chunk has {got} bytes, expected {expected}")]
    WrongSize { got: u64, expected: u64 },
    #[error("the chunk's SHA-256 does not match X-Chunk-Sha256")]
    HashMismatch,
    #[error("the upload body failed: {0}")]
    Body(String),
    /// The transfer stopped uploading (failed, expired or complete) while the chunk came.
    #[error("the transfer is no longer uploading")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A temporary file that is removed when dropped, unless it was kept (renamed into
/// place): no error path, and no cancelled request, leaves bytes behind in `tmp/`.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn kept(mut self) {
        self.keep = true;
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Longest wait for the next piece of a chunk's body before the upload of that chunk fails.
const CHUNK_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Transfers, chunks and files. Cheap to clone.
#[derive(Clone, Debug)]
pub struct FileRepo {
    db: DatabaseConnection,
    root: PathBuf,
    images: ImageLimits,
    /// One image decode at a time per node: each may take a few hundred MiB and a core.
    decoding: Arc<tokio::sync::Semaphore>,
    /// Thumbnails being made or waiting, per user and in all.
    thumbnailing: Arc<Thumbnailing>,
}

/// Thumbnails being made or waiting.
#[derive(Debug, Default)]
struct Thumbnailing {
    per_user: dashmap::DashMap<UserId, usize>,
    all: std::sync::atomic::AtomicUsize,
}

/// Thumbnails one user may have being made or waiting at once (more: 429).
pub const THUMBNAILS_PER_USER: usize = 2;

/// Thumbnails a node has being made or waiting at once (more: 503 at once): the wait of
/// the last in line stays within a few decodes, however many users ask.
pub const THUMBNAILS_QUEUED: usize = 8;

/// How long a request waits for its thumbnail (it goes on being made after that).
const THUMBNAIL_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Why a thumbnail request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ThumbnailWait {
    /// The user has [`THUMBNAILS_PER_USER`] being made already.
    #[error("wait for your other thumbnails first")]
    Busy,
    /// The node has [`THUMBNAILS_QUEUED`] being made or waiting.
    #[error("the server is busy making thumbnails; try again")]
    Full,
    /// Not made within [`THUMBNAIL_WAIT`] (the node is busy making others).
    #[error("the thumbnail is not ready yet; try again")]
    Slow,
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// One of a user's [`THUMBNAILS_PER_USER`] and of the node's [`THUMBNAILS_QUEUED`]; given
/// back when dropped (with the task that makes the thumbnail, not with the request).
struct ThumbnailSlot {
    queue: Arc<Thumbnailing>,
    user: UserId,
}

impl ThumbnailSlot {
    fn take(queue: &Arc<Thumbnailing>, user: UserId) -> Result<Self, ThumbnailWait> {
        use std::sync::atomic::Ordering::SeqCst;
        let mut n = queue.per_user.entry(user).or_default();
        if *n >= THUMBNAILS_PER_USER {
            return Err(ThumbnailWait::Busy);
        }
        if queue.all.fetch_update(SeqCst, SeqCst, |all| (all < THUMBNAILS_QUEUED).then_some(all + 1)).is_err() {
            drop(n);
            queue.per_user.remove_if(&user, |_, n| *n == 0);
            return Err(ThumbnailWait::Full);
        }
        *n += 1;
        drop(n);
        Ok(Self { queue: queue.clone(), user })
    }
}

impl Drop for ThumbnailSlot {
    fn drop(&mut self) {
        self.queue.all.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        self.queue.per_user.remove_if_mut(&self.user, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// Types a browser would show inline: a file declared as one of them whose bytes are not
/// an image is recorded as `application/octet-stream`.
const RASTER_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The type recorded for an assembled file: the sniffed one for an image, the declared
/// one otherwise unless it claims an image the bytes are not.
fn recorded_mime(declared: &str, image: Option<&ImageInfo>) -> String {
    match image {
        Some(i) => i.mime().to_owned(),
        None if RASTER_TYPES.contains(&declared) => "application/octet-stream".to_owned(),
        None => declared.to_owned(),
    }
}

/// What a file message says about its file.
fn assembled(f: &file::Model) -> AssembledFile {
    let dim = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok());
    AssembledFile { id: FileId(f.id), mime: f.mime.clone(), width: dim(f.image_width), height: dim(f.image_height) }
}

pub fn chunk_count(size: i64, chunk_size: i64) -> i64 {
    (size + chunk_size - 1) / chunk_size
}

/// The size chunk `index` must have.
pub fn chunk_len(t: &transfer::Model, index: i64) -> i64 {
    let start = index * t.chunk_size as i64;
    (t.size - start).min(t.chunk_size as i64)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// True for 64 lower-case hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl FileRepo {
    pub fn new(db: DatabaseConnection, data_dir: &Path) -> Self {
        let images = crate::config::FilesConfig::default().image_limits();
        Self {
            db,
            root: data_dir.join("files"),
            images,
            decoding: Arc::new(tokio::sync::Semaphore::new(1)),
            thumbnailing: Arc::default(),
        }
    }

    /// What counts as an image (for thumbnails); the defaults are `files.image_*`'s.
    pub fn with_image_limits(mut self, images: ImageLimits) -> Self {
        self.images = images;
        self
    }

    /// Where the thumbnail of file `id` lives. Per file record, not per content: a
    /// thumbnail made for someone else's copy of the same bytes would answer at once and
    /// tell that those bytes were stored (and looked at) before.
    fn thumb_path(&self, id: FileId) -> PathBuf {
        let id = id.0.simple().to_string();
        self.root.join("thumbs").join(&id[..2]).join(id)
    }

    fn no_thumb_path(&self, id: FileId) -> PathBuf {
        self.thumb_path(id).with_extension("none")
    }

    /// The thumbnail of the image file `f` for `user`, made now if it is not stored yet;
    /// `None` if `f` is not an image or its pixels do not decode within the limits.
    ///
    /// A thumbnail is made by a task of its own that holds the node's one decode permit
    /// from before the decode until its result is stored: a request that goes away (a
    /// client that hangs up) neither frees the permit early nor wastes the decode. Each
    /// user has at most [`THUMBNAILS_PER_USER`] being made or waiting, so one user's
    /// expensive images cannot fill the queue in front of everyone else's.
    pub async fn thumbnail(&self, user: UserId, f: &file::Model) -> Result<Option<PathBuf>, ThumbnailWait> {
        if f.image_width.is_none() {
            return Ok(None);
        }
        let id = FileId(f.id);
        let (thumb, none) = (self.thumb_path(id), self.no_thumb_path(id));
        if tokio::fs::try_exists(&thumb).await.unwrap_or(false) {
            return Ok(Some(thumb));
        }
        if tokio::fs::try_exists(&none).await.unwrap_or(false) {
            return Ok(None);
        }
        let Some(blob) = self.blob_path(&f.sha256) else { return Ok(None) };
        let slot = ThumbnailSlot::take(&self.thumbnailing, user)?;
        let (repo, sha) = (self.clone(), f.sha256.clone());
        let made = tokio::spawn(async move {
            let _slot = slot;
            repo.make_thumbnail(id, &sha, &blob).await
        });
        match tokio::time::timeout(THUMBNAIL_WAIT, made).await {
            Ok(Ok(Ok(made))) => Ok(made),
            Ok(Ok(Err(e))) => Err(ThumbnailWait::Failed(e)),
            Ok(Err(e)) => Err(ThumbnailWait::Failed(e.into())),
            Err(_) => Err(ThumbnailWait::Slow),
        }
    }

    /// Makes and stores the thumbnail of file `id` (bytes at `blob`), holding the decode
    /// permit; see [`Self::thumbnail`].
    async fn make_thumbnail(&self, id: FileId, sha256: &str, blob: &Path) -> anyhow::Result<Option<PathBuf>> {
        let (thumb, none) = (self.thumb_path(id), self.no_thumb_path(id));
        let _permit = self.decoding.clone().acquire_owned().await?;
        // Made (or found not to decode) while this one waited: the same file asked for twice.
        if tokio::fs::try_exists(&thumb).await.unwrap_or(false) {
            return Ok(Some(thumb));
        }
        if tokio::fs::try_exists(&none).await.unwrap_or(false) {
            return Ok(None);
        }
        let (blob, limits) = (blob.to_owned(), self.images);
        let result = tokio::task::spawn_blocking(move || images::thumbnail(&blob, &limits)).await?;
        if let Some(parent) = thumb.parent() {
            tokio::fs::create_dir_all(parent).await?;
        }
        let kept = match result {
            Ok(bytes) => {
                let (tmp, mut out) = self.temp_file().await?;
                out.write_all(&bytes).await?;
                out.sync_all().await?;
                drop(out);
                tokio::fs::rename(&tmp.path, &thumb).await?;
                tmp.kept();
                Some(thumb.clone())
            }
            Err(images::ThumbnailError::NotAnImage(why)) => {
                tracing::info!(file = %id, why, "no thumbnail");
                tokio::fs::write(&none, b"").await?;
                None
            }
            Err(images::ThumbnailError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(images::ThumbnailError::Io(e)) => return Err(e.into()),
        };
        // Deleted while it was made: the deletion removed what was there before this was
        // written, so this removes what it wrote (written first, checked after: one of the
        // two always sees the other).
        if self.file(id).await?.is_none_or(|f| f.sha256 != sha256) {
            self.remove_thumbnail(id).await?;
            return Ok(None);
        }
        Ok(kept)
    }

    /// Removes the thumbnail of file `id` (and the mark of one that could not be made).
    async fn remove_thumbnail(&self, id: FileId) -> std::io::Result<()> {
        for path in [self.thumb_path(id), self.no_thumb_path(id)] {
            match tokio::fs::remove_file(&path).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes the thumbnail of file `id`, whose record went; a failure is logged (the
    /// thumbnail is served to no one without its record).
    async fn forget_thumbnail(&self, id: FileId) {
        if let Err(e) = self.remove_thumbnail(id).await {
            tracing::warn!(file = %id, error = %e, "cannot remove a thumbnail");
        }
    }

    /// After the file record `id` went (its message was deleted): removes its thumbnail,
    /// and its bytes unless another file or upload shares them. Returns whether the bytes
    /// went.
    pub async fn remove_file_bytes(&self, id: FileId, sha256: &str) -> anyhow::Result<bool> {
        self.remove_thumbnail(id).await?;
        self.remove_blob_if_unused(sha256).await
    }

    /// Whether the blob at `path` is an image, from its header (on a blocking thread).
    async fn probe(&self, path: &Path) -> anyhow::Result<Option<ImageInfo>> {
        let (path, limits) = (path.to_owned(), self.images);
        Ok(tokio::task::spawn_blocking(move || images::probe(&path, &limits)).await??)
    }

    fn part_dir(&self, t: TransferId) -> PathBuf {
        self.root.join("parts").join(t.0.simple().to_string())
    }

    fn part_path(&self, t: TransferId, index: i64) -> PathBuf {
        self.part_dir(t).join(index.to_string())
    }

    /// Where a file with this (checked) hash lives.
    pub fn blob_path(&self, sha256: &str) -> Option<PathBuf> {
        is_sha256_hex(sha256).then(|| self.root.join("blobs").join(&sha256[..2]).join(sha256))
    }

    /// Removes the stored bytes with this SHA-256 (a deleted message's file) unless a file
    /// record still uses them or an upload of the same content is under way (its assembly
    /// shares a stored blob before its record exists, and it is `uploading` until then).
    /// Returns whether it removed them.
    pub async fn remove_blob_if_unused(&self, sha256: &str) -> anyhow::Result<bool> {
        let Some(path) = self.blob_path(sha256) else { return Ok(false) };
        if file::Entity::find().filter(file::Column::Sha256.eq(sha256)).count(&self.db).await? > 0 {
            return Ok(false);
        }
        let uploading = transfer::Entity::find()
            .filter(transfer::Column::Sha256.eq(sha256))
            .filter(transfer::Column::State.eq(Uploading.as_str()))
            .count(&self.db)
            .await?;
        if uploading > 0 {
            return Ok(false);
        }
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn temp_file(&self) -> std::io::Result<(TempFile, tokio::fs::File)> {
        let dir = self.root.join("tmp");
        tokio::fs::create_dir_all(&dir).await?;
        let path = dir.join(Uuid::new_v4().simple().to_string());
        let mut opts = tokio::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        // Chunks and files are people's data: readable by this user only.
        #[cfg(unix)]
        opts.mode(0o600);
        let f = opts.open(&path).await?;
        Ok((TempFile { path, keep: false }, f))
    }

    /// Records a new upload if `uploader` is within both limits: fewer than
    /// `max_concurrent` uploads in progress, and stored plus in-progress bytes plus this
    /// one within `quota`. The check and the insert are one transaction that first locks
    /// the uploader's row (SQLite: the write lock; PostgreSQL: the row lock), so
    /// concurrent creations by one user are decided one after another, on every node.
    pub async fn create_within_limits(
        &self,
        new: NewTransfer,
        limits: TransferLimits,
        ttl_ms: i64,
        now: i64,
    ) -> Result<Result<transfer::Model, LimitExceeded>, DbErr> {
        let txn = self.db.begin().await?;
        user::Entity::update_many()
            .col_expr(user::Column::Id, Expr::col(user::Column::Id))
            .filter(user::Column::Id.eq(new.uploader.0))
            .exec(&txn)
            .await?;
        let (uploading, used) = usage_in(&txn, new.uploader).await?;
        if uploading >= limits.max_concurrent {
            return Ok(Err(LimitExceeded::TooManyTransfers));
        }
        if used.saturating_add(new.size) as u64 > limits.quota_bytes {
            return Ok(Err(LimitExceeded::Quota));
        }
        let row = Self::row(new, ttl_ms, now);
        let t = transfer::Entity::insert(row).exec_with_returning(&txn).await?;
        txn.commit().await?;
        Ok(Ok(t))
    }

    fn row(new: NewTransfer, ttl_ms: i64, now: i64) -> transfer::ActiveModel {
        transfer::ActiveModel {
            id: Set(Uuid::now_v7()),
            uploader_id: Set(new.uploader.0),
            conversation_id: Set(new.conversation_id.0),
            name: Set(new.name),
            mime: Set(new.mime),
            size: Set(new.size),
            sha256: Set(new.sha256),
            chunk_size: Set(new.chunk_size as i32),
            chunk_count: Set(chunk_count(new.size, new.chunk_size) as i32),
            state: Set(Uploading.to_string()),
            file_id: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            expires_at: Set(now + ttl_ms),
        }
    }

    pub async fn transfer(&self, id: TransferId) -> Result<Option<transfer::Model>, DbErr> {
        transfer::Entity::find_by_id(id.0).one(&self.db).await
    }

    /// `(uploads in progress, bytes stored or in progress)` of `user`.
    pub async fn usage(&self, user: UserId) -> Result<(u64, i64), DbErr> {
        usage_in(&self.db, user).await
    }

    /// Indexes of the chunks stored so far.
    pub async fn received(&self, id: TransferId) -> Result<Vec<i64>, DbErr> {
        let rows: Vec<i32> = transfer_chunk::Entity::find()
            .filter(transfer_chunk::Column::TransferId.eq(id.0))
            .select_only()
            .column(transfer_chunk::Column::Idx)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows.into_iter().map(i64::from).collect())
    }

    pub async fn has_chunk(&self, id: TransferId, index: i64) -> Result<bool, DbErr> {
        Ok(transfer_chunk::Entity::find_by_id((id.0, index as i32)).one(&self.db).await?.is_some())
    }

    /// Streams a chunk body to disk, checking its size and hash as it goes; on success the
    /// chunk is in place and recorded. Memory use is one body frame, whatever the size.
    pub async fn store_chunk(
        &self,
        t: &transfer::Model,
        index: i64,
        expected_sha: &str,
        mut body: salvo::http::ReqBody,
        now: i64,
        ttl_ms: i64,
    ) -> Result<(), ChunkError> {
        use http_body_util::BodyExt;
        let expected = chunk_len(t, index) as u64;
        let (tmp, mut f) = self.temp_file().await?;
        let result = async {
            let mut hasher = Sha256::new();
            let mut got: u64 = 0;
            loop {
                // A client that stops sending mid-chunk must not hold the connection and
                // its temporary file for ever.
                let next = tokio::time::timeout(CHUNK_IDLE, body.frame()).await.map_err(|_| {
                    ChunkError::Body(format!("no data for {} s; send the chunk again", CHUNK_IDLE.as_secs()))
                })?;
                let Some(frame) = next else { break };
                let frame = frame.map_err(|e| ChunkError::Body(e.to_string()))?;
                let Ok(data) = frame.into_data() else { continue };
                got += data.len() as u64;
                if got > expected {
                    return Err(ChunkError::TooLarge { expected });
                }
                hasher.update(&data);
                f.write_all(&data).await?;
            }
            if got != expected {
                return Err(ChunkError::WrongSize { got, expected });
            }
            if hex(&hasher.finalize()) != expected_sha {
                return Err(ChunkError::HashMismatch);
            }
            f.sync_all().await?;
            Ok(())
        }
        .await;
        drop(f);
        result?;
        let db_err = |e: DbErr| ChunkError::Io(std::io::Error::other(e.to_string()));
        // The transfer may have failed or expired while the chunk streamed in (a block, the
        // whole-file check, the sweeper): the chunk goes into place only if it is still
        // uploading, checked and recorded in one transaction whose row update holds off
        // the writes that end a transfer until the part is in place (they then remove it).
        let txn = self.db.begin().await.map_err(db_err)?;
        let still_open = transfer::Entity::update_many()
            .col_expr(transfer::Column::UpdatedAt, Expr::value(now))
            .col_expr(transfer::Column::ExpiresAt, Expr::value(now + ttl_ms))
            .filter(transfer::Column::Id.eq(t.id))
            .filter(transfer::Column::State.eq(Uploading.as_str()))
            .filter(transfer::Column::FileId.is_null())
            .exec(&txn)
            .await
            .map_err(db_err)?
            .rows_affected
            > 0;
        if !still_open {
            return Err(ChunkError::Closed);
        }
        let id = TransferId(t.id);
        tokio::fs::create_dir_all(self.part_dir(id)).await?;
        tokio::fs::rename(&tmp.path, self.part_path(id, index)).await?;
        tmp.kept();
        let row = transfer_chunk::ActiveModel {
            transfer_id: Set(t.id),
            idx: Set(index as i32),
            sha256: Set(expected_sha.to_owned()),
            size: Set(expected as i32),
            created_at: Set(now),
        };
        match transfer_chunk::Entity::insert(row).exec_without_returning(&txn).await {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {} // the same chunk, stored twice: fine
            Err(e) => return Err(db_err(e)),
        }
        txn.commit().await.map_err(db_err)?;
        Ok(())
    }

    pub async fn file(&self, id: FileId) -> Result<Option<file::Model>, DbErr> {
        file::Entity::find_by_id(id.0).one(&self.db).await
    }

    /// Fails every upload in progress in the conversation between `a` and `b` (one of them
    /// blocked the other): their chunks go, any file assembled but not yet posted is
    /// removed, and nothing more of them reaches either user. Returns the failed uploads.
    pub async fn fail_between(&self, a: UserId, b: UserId) -> Result<Vec<TransferStatus>, DbErr> {
        let Some(conv) = crate::messaging::chat::between(a, b).one(&self.db).await? else {
            return Ok(vec![]);
        };
        let open = transfer::Entity::find()
            .filter(transfer::Column::ConversationId.eq(conv.id))
            .filter(transfer::Column::State.eq(Uploading.as_str()))
            .all(&self.db)
            .await?;
        let mut failed = Vec::with_capacity(open.len());
        for mut t in open {
            // Only an upload still in progress is failed (one completing this instant
            // keeps its state; its post is refused by the block in any case).
            let changed = transfer::Entity::update_many()
                .col_expr(transfer::Column::State, Expr::value(Failed.as_str()))
                .col_expr(transfer::Column::FileId, Expr::value(Option::<Uuid>::None))
                .col_expr(transfer::Column::UpdatedAt, Expr::value(crate::now_ms()))
                .filter(transfer::Column::Id.eq(t.id))
                .filter(transfer::Column::State.eq(Uploading.as_str()))
                .exec(&self.db)
                .await?
                .rows_affected;
            if changed == 0 {
                continue;
            }
            self.drop_parts(TransferId(t.id)).await?;
            if let Some(f) = t.file_id.take() {
                file::Entity::delete_by_id(f).exec(&self.db).await?;
                self.forget_thumbnail(FileId(f)).await;
            }
            t.state = Failed.to_string();
            failed.push(status_of(t, 0)?);
        }
        Ok(failed)
    }

    /// Removes temporary files older than `max_age` (left by a process that died while
    /// writing them); returns how many. Younger ones may be in use by a live process
    /// sharing the data directory.
    pub async fn sweep_tmp(&self, max_age: std::time::Duration) -> std::io::Result<u64> {
        let mut removed = 0;
        let mut dir = match tokio::fs::read_dir(self.root.join("tmp")).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        while let Some(entry) = dir.next_entry().await? {
            let old = entry.metadata().await?.modified()?.elapsed().is_ok_and(|age| age > max_age);
            if old && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes uploads whose time ran out: their chunks, and marks them expired.
    pub async fn expire(&self, now: i64) -> Result<u64, DbErr> {
        let stale = transfer::Entity::find()
            .filter(transfer::Column::State.eq(Uploading.as_str()))
            .filter(transfer::Column::ExpiresAt.lt(now))
            .all(&self.db)
            .await?;
        for t in &stale {
            self.drop_parts(TransferId(t.id)).await?;
            transfer::Entity::update_many()
                .col_expr(transfer::Column::State, Expr::value(Expired.as_str()))
                .filter(transfer::Column::Id.eq(t.id))
                .exec(&self.db)
                .await?;
        }
        Ok(stale.len() as u64)
    }

    async fn drop_parts(&self, id: TransferId) -> Result<(), DbErr> {
        transfer_chunk::Entity::delete_many()
            .filter(transfer_chunk::Column::TransferId.eq(id.0))
            .exec(&self.db)
            .await?;
        let _ = tokio::fs::remove_dir_all(self.part_dir(id)).await;
        Ok(())
    }

    async fn set_state(&self, id: TransferId, state: TransferState, file_id: Option<Uuid>) -> Result<(), DbErr> {
        let mut q = transfer::Entity::update_many()
            .col_expr(transfer::Column::State, Expr::value(state.as_str()))
            .col_expr(transfer::Column::UpdatedAt, Expr::value(crate::now_ms()));
        if let Some(f) = file_id {
            q = q.col_expr(transfer::Column::FileId, Expr::value(f));
        }
        q.filter(transfer::Column::Id.eq(id.0)).exec(&self.db).await?;
        Ok(())
    }

    /// Joins the parts into a temp file while hashing, verifies, and moves it to its
    /// content address; records the file. Idempotent (a recorded file is returned).
    ///
    /// The uploaded bytes are always hashed, even when a blob with the declared hash is
    /// stored already: deduplicating on the declared hash alone would hand anyone who
    /// knows a file's SHA-256 its contents (and tell them it exists). Only bytes that
    /// verified against the declared hash and size may be swapped for the stored blob.
    async fn assemble_inner(&self, id: TransferId) -> Result<Result<AssembledFile, &'static str>, anyhow::Error> {
        let t = self.transfer(id).await?.ok_or_else(|| anyhow::anyhow!("no transfer {id}"))?;
        if let Some(f) = t.file_id {
            return self.recorded(f).await;
        }
        if t.state != Uploading.as_str() {
            return Ok(Err(STOPPED));
        }
        let blob = self.blob_path(&t.sha256).ok_or_else(|| anyhow::anyhow!("bad hash on record"))?;
        let (tmp, mut out) = self.temp_file().await?;
        let mut hasher = Sha256::new();
        let mut total: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        for index in 0..t.chunk_count as i64 {
            let mut part = match tokio::fs::File::open(self.part_path(id, index)).await {
                Ok(p) => p,
                // Failed meanwhile (a block): its chunks went.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Err(STOPPED)),
                Err(e) => return Err(e.into()),
            };
            loop {
                let n = part.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                total += n as u64;
                out.write_all(&buf[..n]).await?;
            }
        }
        if total != t.size as u64 || hex(&hasher.finalize()) != t.sha256 {
            return Ok(Err("the file's SHA-256 does not match the one given at creation"));
        }
        let stored_len = tokio::fs::metadata(&blob).await.ok().map(|m| m.len());
        if stored_len == Some(total) {
            // The same bytes are stored already (verified above): share them; the
            // temporary copy goes with its guard.
            drop(out);
        } else {
            // New, or a stored blob of the wrong length (a torn write from before): the
            // verified bytes take its place.
            out.sync_all().await?;
            drop(out);
            if let Some(parent) = blob.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            tokio::fs::rename(&tmp.path, &blob).await?;
            tmp.kept();
        }
        let image = self.probe(&blob).await?;
        let dim = |v: u32| i32::try_from(v).ok();
        let file_id = Uuid::now_v7();
        let row = file::ActiveModel {
            id: Set(file_id),
            owner_id: Set(t.uploader_id),
            conversation_id: Set(t.conversation_id),
            name: Set(t.name.clone()),
            mime: Set(recorded_mime(&t.mime, image.as_ref())),
            size: Set(t.size),
            sha256: Set(t.sha256.clone()),
            created_at: Set(crate::now_ms()),
            image_width: Set(image.as_ref().and_then(|i| dim(i.width))),
            image_height: Set(image.as_ref().and_then(|i| dim(i.height))),
        };
        file::Entity::insert(row).exec_without_returning(&self.db).await?;
        // Claim the transfer for this file (state stays `uploading` until the message is
        // posted). Two nodes finishing the same upload at once: the second finds it
        // claimed, removes its own row and answers with the first one's file.
        let claimed = transfer::Entity::update_many()
            .col_expr(transfer::Column::FileId, Expr::value(file_id))
            .filter(transfer::Column::Id.eq(id.0))
            .filter(transfer::Column::FileId.is_null())
            .filter(transfer::Column::State.eq(Uploading.as_str()))
            .exec(&self.db)
            .await?
            .rows_affected;
        if claimed == 0 {
            // Claimed by another node first (answer with its file), or failed meanwhile.
            file::Entity::delete_by_id(file_id).exec(&self.db).await?;
            return match self.transfer(id).await?.and_then(|t| t.file_id) {
                Some(winner) => self.recorded(winner).await,
                None => Ok(Err(STOPPED)),
            };
        }
        self.drop_parts(id).await?;
        self.recorded(file_id).await
    }

    /// The recorded file `id`, as its message describes it.
    async fn recorded(&self, id: Uuid) -> Result<Result<AssembledFile, &'static str>, anyhow::Error> {
        let f = self.file(FileId(id)).await?.ok_or_else(|| anyhow::anyhow!("file {id} is not recorded"))?;
        Ok(Ok(assembled(&f)))
    }
}

/// `(uploads in progress, bytes stored or in progress)` of `user`, read through `db`.
async fn usage_in(db: &impl ConnectionTrait, user: UserId) -> Result<(u64, i64), DbErr> {
    let uploading = transfer::Entity::find()
        .filter(transfer::Column::UploaderId.eq(user.0))
        .filter(transfer::Column::State.eq(Uploading.as_str()));
    let count = uploading.clone().count(db).await?;
    let pending: Option<i64> = uploading
        .select_only()
        .column_as(crate::storage::sum_bigint(transfer::Column::Size), "s")
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    let stored: Option<i64> = file::Entity::find()
        .filter(file::Column::OwnerId.eq(user.0))
        .select_only()
        .column_as(crate::storage::sum_bigint(file::Column::Size), "s")
        .into_tuple::<Option<i64>>()
        .one(db)
        .await?
        .flatten();
    Ok((count, pending.unwrap_or(0) + stored.unwrap_or(0)))
}

/// A transfer row as the actors see it, with `received` chunks stored (an assembled
/// upload, its file recorded, counts as all of them).
fn status_of(t: transfer::Model, received: i64) -> Result<TransferStatus, DbErr> {
    let received = if t.file_id.is_some() { t.chunk_count as i64 } else { received };
    Ok(TransferStatus {
        id: TransferId(t.id),
        uploader: UserId(t.uploader_id),
        conversation_id: ConversationId(t.conversation_id),
        name: t.name,
        size: t.size,
        mime: t.mime,
        chunk_count: t.chunk_count as i64,
        received_chunks: received,
        state: crate::storage::stored(TransferState::parse, "transfers.state", &t.state)?,
        file_id: t.file_id.map(FileId),
    })
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl crate::contacts::service::Uploads for FileRepo {
    async fn fail_between(&self, a: UserId, b: UserId) -> Result<Vec<Event>, DbErr> {
        let failed = FileRepo::fail_between(self, a, b).await?;
        Ok(failed.iter().map(|t| Event::Transfer { to: t.uploader, progress: t.into() }).collect())
    }
}

#[async_trait::async_trait]
impl TransferStore for FileRepo {
    async fn status(&self, id: TransferId) -> Result<Option<TransferStatus>, StoreError> {
        let Some(t) = self.transfer(id).await.map_err(unavailable)? else { return Ok(None) };
        let received = self.received(id).await.map_err(unavailable)?.len() as i64;
        Ok(Some(status_of(t, received).map_err(unavailable)?))
    }

    async fn assemble(&self, id: TransferId) -> Result<AssembledFile, StoreError> {
        match self.assemble_inner(id).await {
            Ok(Ok(f)) => Ok(f),
            Ok(Err(why)) => {
                self.drop_parts(id).await.map_err(unavailable)?;
                self.set_state(id, Failed, None).await.map_err(unavailable)?;
                Err(StoreError::Forbidden(why))
            }
            Err(e) => Err(unavailable(format!("{e:#}"))),
        }
    }

    async fn complete(&self, id: TransferId) -> Result<(), StoreError> {
        self.set_state(id, Complete, None).await.map_err(unavailable)
    }

    /// The file row goes; its blob stays: blobs are content-addressed and may be shared
    /// with another file of the same bytes (one being assembled at this moment, too), so
    /// removing it here could lose someone else's file.
    async fn refuse(&self, id: TransferId) -> Result<(), StoreError> {
        let Some(t) = self.transfer(id).await.map_err(unavailable)? else { return Ok(()) };
        transfer::Entity::update_many()
            .col_expr(transfer::Column::State, Expr::value(Failed.as_str()))
            .col_expr(transfer::Column::FileId, Expr::value(Option::<Uuid>::None))
            .col_expr(transfer::Column::UpdatedAt, Expr::value(crate::now_ms()))
            .filter(transfer::Column::Id.eq(id.0))
            .exec(&self.db)
            .await
            .map_err(unavailable)?;
        if let Some(f) = t.file_id {
            file::Entity::delete_by_id(f).exec(&self.db).await.map_err(unavailable)?;
            self.forget_thumbnail(FileId(f)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_has_at_most_two_thumbnails_in_the_making_and_a_node_eight() {
        let queue = Arc::new(Thumbnailing::default());
        let me = UserId(Uuid::now_v7());
        let first = ThumbnailSlot::take(&queue, me).expect("a first");
        let second = ThumbnailSlot::take(&queue, me).expect("a second");
        assert!(matches!(ThumbnailSlot::take(&queue, me), Err(ThumbnailWait::Busy)), "no third");
        let others: Vec<_> =
            (0..6).map(|_| ThumbnailSlot::take(&queue, UserId(Uuid::now_v7())).expect("others go on")).collect();
        let late = UserId(Uuid::now_v7());
        assert!(matches!(ThumbnailSlot::take(&queue, late), Err(ThumbnailWait::Full)), "the ninth waits for none");
        drop(first);
        let third = ThumbnailSlot::take(&queue, me).expect("one was given back");
        drop((second, third, others));
        assert!(queue.per_user.is_empty(), "nothing left behind");
        assert_eq!(queue.all.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(ThumbnailSlot::take(&queue, late).is_ok());
    }
}
