//! Fault injection (mounted only when `fault_injection = true`): kill, panic or fail a
//! named actor of this node, and read the supervisors' restart counters.

use salvo::prelude::*;
use serde::Deserialize;
use serde_json::json;
use switchboard_actors::faults::Fault;
use switchboard_actors::node::SUPERVISORS;

use crate::auth::routes::require_auth;
use crate::error::{AppError, ErrorCode};
use crate::web::state;

pub fn router() -> Router {
    Router::with_path("api/debug")
        .hoop(require_auth)
        .push(Router::with_path("faults").post(inject))
        .push(Router::with_path("supervisors").get(supervisors))
}

#[derive(Debug, Deserialize)]
struct FaultBody {
    /// `session`, `room`, `nstream` (a user's notification stream actor), `bridge` or `sup`.
    kind: String,
    /// The actor's id (connection id, conversation id, `bus`, or a supervisor's name).
    id: String,
    /// `kill`, `panic` or `error`.
    fault: String,
}

/// `POST /api/debug/faults {kind, id, fault}` → 204, or 404 if no such actor runs.
#[handler]
async fn inject(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let body: FaultBody = crate::auth::routes::json_body(req, depot).await?;
    let st = state(depot)?;
    if !matches!(body.kind.as_str(), "session" | "room" | "nstream" | "transfer" | "bridge" | "sup") {
        return Err(AppError::bad_request(
            ErrorCode::InvalidKind,
            "kind must be session, room, nstream, transfer, bridge or sup",
        ));
    }
    let fault = Fault::parse(&body.fault)
        .ok_or_else(|| AppError::bad_request(ErrorCode::InvalidFault, "fault must be kill, panic or error"))?;
    let name = st.node.ctx.name(&body.kind, &body.id);
    if !st.node.ctx.faults.inject(&name, fault) {
        return Err(AppError::not_found(ErrorCode::NotFound, "no such actor"));
    }
    res.status_code(StatusCode::NO_CONTENT);
    Ok(())
}

/// `GET /api/debug/supervisors` → children and restarts of each supervisor.
#[handler]
async fn supervisors(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let st = state(depot)?;
    let mut out = serde_json::Map::new();
    for which in std::iter::once("node").chain(SUPERVISORS) {
        if let Some(s) = st.node.stats(which).await {
            out.insert(which.into(), json!({"children": s.children, "restarts": s.restarts}));
        }
    }
    res.render(Json(out));
    Ok(())
}
