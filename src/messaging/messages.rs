//! `/api/messages/{id}`: a sender corrects or deletes their own message.
//!
//! Each change is itself an entry of the conversation's seq stream (a `message` of kind
//! `edit` or `delete` naming its `target_id`), committed through the conversation's room
//! like a sent message, so live delivery, `sync` and gap repair carry it to every device
//! of both participants with the same exactly-once rules (docs/protocol.md). The target's
//! stored row changes in the same transaction, so history shows each message as it is
//! now. The rules are checked here for a clear answer and again where the change is
//! committed ([`crate::messaging::chat::check_change`]), where no race gets past them.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Deserialize;
use switchboard_actors::ports::{NewMessage, StoredMessage};
use switchboard_actors::room::SendError;
use switchboard_actors::states::MessageKind;

use crate::auth::routes::{caller, json_body, require_auth};
use crate::domain::{MessageId, UserId};
use crate::error::{AppError, ErrorCode};
use crate::messaging::chat::{ALREADY_DELETED, MessageOut};
use crate::web::openapi::errors;
use crate::web::{AppState, state};

/// A message's new text.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EditBody {
    /// The whole new text (the same limits as a sent message).
    body: String,
}

pub fn router() -> Router {
    Router::with_path("api/messages/{id}").hoop(require_auth).patch(edit).delete(delete)
}

/// The caller's own message `id` (text or file, not an edit or deletion entry), or 404:
/// to anyone else a message is not there.
async fn own_message(req: &Request, st: &AppState, me: UserId) -> Result<StoredMessage, AppError> {
    let not_found = || AppError::not_found(ErrorCode::NotFound, "no such message");
    let id = req.param::<String>("id").and_then(|s| MessageId::parse(&s)).ok_or_else(not_found)?;
    st.repos.chat.message_for(me, id).await?.filter(|m| m.sender_id == me && !m.kind.is_change()).ok_or_else(not_found)
}

/// `messaging.changes_per_minute`: edits, deletions and mute changes of `me`.
pub(crate) fn limited(st: &AppState, me: UserId) -> Result<(), AppError> {
    st.change_limiter.check(&me.to_string()).map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })
}

/// Commits the change entry `kind` of `target` with `body`.
async fn commit(
    st: &AppState,
    me: UserId,
    target: &StoredMessage,
    kind: MessageKind,
    body: String,
) -> Result<StoredMessage, SendError> {
    st.node
        .post(NewMessage {
            conversation_id: target.conversation_id,
            sender_id: me,
            client_msg_id: format!("{kind}:{}", uuid::Uuid::new_v4().simple()),
            kind,
            body,
            file_id: None,
            target_id: Some(target.id),
        })
        .await
}

fn send_error(e: SendError) -> AppError {
    match e.code {
        ErrorCode::NotFound => AppError::not_found(ErrorCode::NotFound, "no such message"),
        ErrorCode::Forbidden => AppError::forbidden(ErrorCode::Forbidden, e.message),
        ErrorCode::Conflict => AppError::conflict(ErrorCode::Conflict, e.message),
        _ => AppError::Unavailable("the change was not committed; try again"),
    }
}

/// `PATCH /api/messages/{id} {body}` → 200 with the message as it is now.
#[endpoint(
    operation_id = "messages.edit",
    tags("conversations"),
    parameters(("id" = String, Path, description = "the message's UUID")),
    request_body = EditBody,
    responses(
        (status_code = 200, description = "the message, edited", body = MessageOut),
        errors::BadInput,
        errors::Unauthenticated,
        (status_code = 403, description = "no longer contacts (or a cross-site / CSRF-less cookie request)", body = crate::error::ErrorBody),
        (status_code = 404, description = "no such message, or not the caller's own", body = crate::error::ErrorBody),
        (status_code = 409, description = "deleted, not a text message, or past the edit window", body = crate::error::ErrorBody),
        errors::TooLarge,
        errors::NotJson,
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn edit(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let body: EditBody = json_body(req, depot).await?;
    let st = state(depot)?;
    limited(st, me)?;
    let max = st.config.messaging.max_body_bytes;
    switchboard_actors::protocol::check_body(&body.body, max)
        .map_err(|(code, why)| AppError::bad_request(code, why))?;
    let target = own_message(req, st, me).await?;
    // Deleted, or not a text: the committing transaction says so (`check_change`), with
    // 409 like the window here, which only this layer knows.
    let window = st.config.messaging.edit_window_secs;
    if window == 0 {
        return Err(AppError::conflict(ErrorCode::Conflict, "editing messages is turned off on this server"));
    }
    let window_ms = i64::try_from(window.saturating_mul(1000)).unwrap_or(i64::MAX);
    if crate::now_ms().saturating_sub(target.created_at) >= window_ms {
        return Err(AppError::conflict(ErrorCode::Conflict, "the message is past its edit window"));
    }
    let entry = commit(st, me, &target, MessageKind::Edit, body.body).await.map_err(send_error)?;
    let edited = StoredMessage { body: entry.body, edited_at: Some(entry.created_at), ..target };
    res.render(Json(MessageOut::from(edited)));
    Ok(())
}

/// `DELETE /api/messages/{id}` → 204: deleted for both participants (its text and file
/// are erased, a tombstone stays). Deleting a deleted message is done already (204).
#[endpoint(
    operation_id = "messages.delete",
    tags("conversations"),
    parameters(("id" = String, Path, description = "the message's UUID")),
    responses(
        (status_code = 204, description = "deleted"),
        errors::Unauthenticated,
        errors::NotAllowed,
        (status_code = 404, description = "no such message, or not the caller's own", body = crate::error::ErrorBody),
        errors::RateLimited,
        errors::Unavailable,
    ),
)]
async fn delete(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let me = caller(depot)?.user_id;
    let st = state(depot)?;
    limited(st, me)?;
    let target = own_message(req, st, me).await?;
    if !target.deleted {
        // A file's bytes go after the commit, if no other file shares them.
        let stored = match target.file_id {
            Some(f) => st.files.file(f).await?.map(|r| (f, r.sha256)),
            None => None,
        };
        match commit(st, me, &target, MessageKind::Delete, String::new()).await {
            Ok(_) => {}
            // Deleted meanwhile (another device, or an earlier try that was committed).
            Err(e) if e.code == ErrorCode::Conflict && e.message == ALREADY_DELETED => {}
            Err(e) => return Err(send_error(e)),
        }
        if let Some((file, sha256)) = stored
            && let Err(e) = st.files.remove_file_bytes(file, &sha256).await
        {
            tracing::warn!(error = %e, "cannot remove a deleted file's bytes");
        }
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}
