//! `/healthz` (the process answers) and `/readyz` (its dependencies do).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
    /// Why the instance is not ready, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok", reason: None })
}

/// 200 only when the database really answers, the bus is connected (Redis
/// answers its health check) and the instance is not draining; 503 with the
/// reason otherwise.
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Health), (status = 503, body = Health)))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let not_ready = |reason: &str| {
        (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable", reason: Some(reason.to_owned()) }))
    };
    if state.readiness.is_draining() {
        return not_ready("shutting down");
    }
    let db = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
    let db_ok = matches!(db, Ok(Ok(())));
    state.metrics.db_up.set(db_ok as i64);
    if !db_ok {
        return not_ready("database unreachable");
    }
    if let Err(why) = state.hub.bus().health() {
        return not_ready(&format!("bus ({}): {why}", state.hub.bus().name()));
    }
    (StatusCode::OK, Json(Health { status: "ok", reason: None }))
}
