//! Liveness and readiness.

use salvo::prelude::*;
use serde_json::json;

use super::state;
use crate::error::AppError;

pub fn router() -> Router {
    Router::new().push(Router::with_path("healthz").get(healthz)).push(Router::with_path("readyz").get(readyz))
}

/// Liveness: the process answers.
#[handler]
async fn healthz(res: &mut Response) {
    res.render(Json(json!({"status": "ok"})));
}

/// Readiness: the database answers. 503 otherwise, so a load balancer stops routing here.
#[handler]
async fn readyz(depot: &mut Depot, res: &mut Response) -> Result<(), AppError> {
    if state(depot)?.storage.ping().await {
        res.render(Json(json!({"status": "ready", "database": "ok"})));
        Ok(())
    } else {
        Err(AppError::Unavailable("database"))
    }
}
