//! The transfer actor: one per file upload in progress on this node.
//!
//! The web layer stores chunks (hash-checked, on disk) and tells the actor; the actor
//! reports progress to both users of the conversation and, once every chunk is in, has
//! the file assembled and verified, then posts the `file` message through the room (with
//! a fixed `client_msg_id`, so a repeated completion posts it once). Its state is the
//! database and the disk: a restarted actor reads the transfer again and carries on.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde::{Deserialize, Serialize};

use crate::NORMAL_EXIT;
use crate::codes::ErrorCode;
use crate::ids::{ConversationId, FileId, TransferId, UserId};
use crate::node::NodeCtx;
use crate::ports::{Envelope, Event, NewMessage, StoreError};
use crate::room::RoomMsg;
use crate::states::{MessageKind, TransferState};

/// A transfer's state, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferStatus {
    pub id: TransferId,
    pub uploader: UserId,
    pub conversation_id: ConversationId,
    pub name: String,
    pub size: i64,
    pub mime: String,
    pub chunk_count: i64,
    pub received_chunks: i64,
    pub state: TransferState,
    pub file_id: Option<FileId>,
}

/// Progress of an upload, for both users of its conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferProgress {
    pub transfer_id: TransferId,
    pub conversation_id: ConversationId,
    pub uploader_id: UserId,
    pub name: String,
    pub size: i64,
    pub received_chunks: i64,
    pub chunk_count: i64,
    pub state: TransferState,
    pub file_id: Option<FileId>,
}

impl From<&TransferStatus> for TransferProgress {
    fn from(s: &TransferStatus) -> Self {
        Self {
            transfer_id: s.id,
            conversation_id: s.conversation_id,
            uploader_id: s.uploader,
            name: s.name.clone(),
            size: s.size,
            received_chunks: s.received_chunks,
            chunk_count: s.chunk_count,
            state: s.state,
            file_id: s.file_id,
        }
    }
}

/// An assembled, recorded file, as its `file` message describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssembledFile {
    pub id: FileId,
    /// The recorded type: for an image, the one its bytes show.
    pub mime: String,
    /// For an image (PNG, JPEG, GIF or WebP by its bytes, within the node's limits): its
    /// size as shown.
    pub width: Option<u32>,
    pub height: Option<u32>,
}

impl AssembledFile {
    /// The `file` message's body: name, size and type, and the size of an image.
    pub fn message_body(&self, name: &str, size: i64) -> String {
        let mut body = serde_json::json!({"name": name, "size": size, "mime": self.mime});
        if let (Some(w), Some(h)) = (self.width, self.height) {
            body["width"] = w.into();
            body["height"] = h.into();
        }
        body.to_string()
    }
}

/// What the transfer actor needs from storage (the main crate implements it).
#[async_trait::async_trait]
pub trait TransferStore: Send + Sync + 'static {
    async fn status(&self, id: TransferId) -> Result<Option<TransferStatus>, StoreError>;
    /// Joins the chunks into the stored file, verifies the whole-file hash, and records
    /// the file; idempotent. `Forbidden` when the hash does not match (the transfer is
    /// then failed and its chunks deleted).
    async fn assemble(&self, id: TransferId) -> Result<AssembledFile, StoreError>;
    /// Marks the transfer complete (its message is posted).
    async fn complete(&self, id: TransferId) -> Result<(), StoreError>;
    /// Gives up a transfer whose file may not be posted (the uploader was blocked, or is
    /// no longer a contact, while it went up): failed, and its file record removed, so it
    /// counts against no quota and no one can fetch it.
    async fn refuse(&self, id: TransferId) -> Result<(), StoreError>;
}

pub enum TransferMsg {
    /// A chunk was stored (or the upload was looked at): report and maybe finish.
    ChunkStored,
    /// Periodic: send throttled progress; stop when idle.
    Tick,
}

pub struct TransferActor;

pub struct TransferArgs {
    pub ctx: Arc<NodeCtx>,
    pub id: TransferId,
}

pub struct TransferActorState {
    ctx: Arc<NodeCtx>,
    id: TransferId,
    name: String,
    last_report: Option<Instant>,
    /// A chunk came since the last report.
    dirty: bool,
    last_activity: Instant,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

/// Progress reports per transfer at most this often (and always the last one).
const REPORT_EVERY: Duration = Duration::from_millis(250);
const TICK: Duration = Duration::from_millis(250);
/// A transfer actor with no chunk for this long stops (it restarts on the next chunk).
const IDLE: Duration = Duration::from_secs(60);

impl Actor for TransferActor {
    type Msg = TransferMsg;
    type State = TransferActorState;
    type Arguments = TransferArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TransferMsg>,
        args: TransferArgs,
    ) -> Result<TransferActorState, ActorProcessingErr> {
        let ticker = Some(myself.send_interval(TICK, || TransferMsg::Tick));
        // Whatever happened before a restart, look again: maybe every chunk is in.
        let _ = myself.cast(TransferMsg::ChunkStored);
        Ok(TransferActorState {
            name: args.ctx.name("transfer", args.id),
            ctx: args.ctx,
            id: args.id,
            last_report: None,
            dirty: false,
            last_activity: Instant::now(),
            ticker,
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TransferMsg>,
        state: &mut TransferActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.ticker.take() {
            t.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TransferMsg>,
        msg: TransferMsg,
        state: &mut TransferActorState,
    ) -> Result<(), ActorProcessingErr> {
        state.ctx.faults.check(&state.name)?;
        let Some(store) = state.ctx.transfers.clone() else { return Ok(()) };
        match msg {
            TransferMsg::ChunkStored => {
                state.last_activity = Instant::now();
                state.dirty = true;
                let Some(status) = store.status(state.id).await? else {
                    myself.stop(Some(NORMAL_EXIT.to_owned()));
                    return Ok(());
                };
                if status.state != TransferState::Uploading {
                    state.report(&status).await;
                    myself.stop(Some(NORMAL_EXIT.to_owned()));
                } else if status.received_chunks >= status.chunk_count {
                    state.finish(&store, status).await?;
                    myself.stop(Some(NORMAL_EXIT.to_owned()));
                } else if state.last_report.is_none_or(|t| t.elapsed() >= REPORT_EVERY) {
                    state.report(&status).await;
                }
            }
            TransferMsg::Tick => {
                if state.dirty
                    && state.last_report.is_some_and(|t| t.elapsed() >= REPORT_EVERY)
                    && let Some(status) = store.status(state.id).await?
                {
                    state.report(&status).await;
                }
                if state.last_activity.elapsed() >= IDLE {
                    myself.stop(Some(NORMAL_EXIT.to_owned()));
                }
            }
        }
        Ok(())
    }
}

impl TransferActorState {
    /// Tells the uploader how far the upload is, and the peer too while the uploader may
    /// message them (never across a block: the name is the uploader's to choose). The
    /// peer's copy goes first, so a client that saw the uploader's has had the peer's
    /// published before it.
    async fn report(&mut self, status: &TransferStatus) {
        self.last_report = Some(Instant::now());
        self.dirty = false;
        let progress = TransferProgress::from(status);
        let mut peer = match self.ctx.store.conversation(status.conversation_id).await {
            Ok(Some(c)) => c.peer_of(status.uploader),
            _ => None,
        };
        if let Some(p) = peer
            && self.ctx.store.may_message(status.uploader, p).await.is_err()
        {
            peer = None;
        }
        for to in peer.into_iter().chain(std::iter::once(status.uploader)) {
            let event = Event::Transfer { to, progress: progress.clone() };
            let _ = self.ctx.bus.publish(Envelope::new(event)).await;
        }
    }

    /// Assembles and verifies the file, posts the `file` message, completes.
    async fn finish(
        &mut self,
        store: &Arc<dyn TransferStore>,
        mut status: TransferStatus,
    ) -> Result<(), ActorProcessingErr> {
        let file = match store.assemble(self.id).await {
            Ok(f) => f,
            Err(StoreError::Forbidden(why)) => {
                tracing::warn!(transfer = %self.id, why, "upload failed verification");
                status.state = TransferState::Failed;
                self.report(&status).await;
                return Ok(());
            }
            Err(e) => return Err(format!("assemble {}: {e}", self.id).into()),
        };
        let (file_id, body) = (file.id, file.message_body(&status.name, status.size));
        let msg = NewMessage {
            conversation_id: status.conversation_id,
            sender_id: status.uploader,
            client_msg_id: format!("transfer:{}", self.id),
            kind: MessageKind::File,
            body,
            file_id: Some(file_id),
            target_id: None,
        };
        let room = self.ctx.room(status.conversation_id).await?;
        let posted = ractor::call_t!(room, |reply| RoomMsg::Send { msg: Box::new(msg), reply }, 30_000)?;
        match posted {
            Ok(_) => {}
            Err(e) if e.code == ErrorCode::Forbidden => {
                // Blocked (or no longer contacts) while the file went up: it is not posted.
                tracing::info!(transfer = %self.id, why = %e.message, "file not posted");
                store.refuse(self.id).await?;
                status.state = TransferState::Failed;
                status.file_id = None;
                self.report(&status).await;
                return Ok(());
            }
            Err(e) => return Err(format!("posting the file message: {}", e.message).into()),
        }
        store.complete(self.id).await?;
        status.state = TransferState::Complete;
        status.file_id = Some(file_id);
        self.report(&status).await;
        Ok(())
    }
}
