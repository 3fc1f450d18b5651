//! Liveness and readiness.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde::Serialize;

use crate::error::AppError;
use crate::web::openapi::ErrorBody;
use crate::web::state;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ready`.
    pub status: &'static str,
    pub database: &'static str,
    /// `up`, `down`, or `in-process` without RabbitMQ.
    pub broker: &'static str,
    /// The messaging node id.
    pub node: String,
}

pub fn router() -> Router {
    Router::new().push(Router::with_path("healthz").get(healthz)).push(Router::with_path("readyz").get(readyz))
}

/// Liveness: the process answers.
#[endpoint(
    operation_id = "health.healthz",
    tags("health"),
    responses(
        (status_code = 200, description = "alive", body = Health),
    ),
)]
async fn healthz(res: &mut Response) {
    res.render(Json(Health { status: "ok" }));
}

/// Readiness: the actor system runs and the database answers. 503 otherwise, so a load
/// balancer stops routing here.
/// The broker link is reported but does not decide: without it local chat still works
/// and the node catches its sessions up when the link returns.
#[endpoint(
    operation_id = "health.readyz",
    tags("health"),
    responses(
        (status_code = 200, description = "ready", body = Ready),
        (status_code = 503, description = "not ready (database down, or the actor system stopped)", body = ErrorBody),
    ),
)]
async fn readyz(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    let st = state(depot)?;
    if st.node.is_failed() {
        // The actor tree is gone: the process is draining to exit (see startup).
        return Err(AppError::Unavailable("actor system"));
    }
    if st.repos.ping().await {
        let broker = match &st.rabbit {
            None => "in-process",
            Some(bus) if bus.is_connected() => "up",
            Some(_) => "down",
        };
        res.render(Json(Ready { status: "ready", database: "ok", broker, node: st.node.ctx.node_id.clone() }));
        Ok(())
    } else {
        Err(AppError::Unavailable("database"))
    }
}
