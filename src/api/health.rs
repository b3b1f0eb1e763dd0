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
    match check(&state).await {
        Ok(()) => (StatusCode::OK, Json(Health { status: "ok", reason: None })),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, Json(Health { status: "unavailable", reason: Some(reason) })),
    }
}

/// The readiness verdict (`/readyz`, the `chatgw_ready` gauge and the
/// admin view agree because they share it); sets the database and
/// readiness gauges on the way.
pub async fn check(state: &AppState) -> Result<(), String> {
    let verdict = async {
        if state.readiness.is_draining() {
            return Err("shutting down".to_owned());
        }
        let db = tokio::time::timeout(std::time::Duration::from_secs(2), state.store.ping()).await;
        let db_ok = matches!(db, Ok(Ok(())));
        state.metrics.db_up.set(db_ok as i64);
        if !db_ok {
            return Err("database unreachable".to_owned());
        }
        if let Err(why) = state.hub.bus().health() {
            return Err(format!("bus ({}): {why}", state.hub.bus().name()));
        }
        Ok(())
    }
    .await;
    state.metrics.ready.set(verdict.is_ok() as i64);
    verdict
}
