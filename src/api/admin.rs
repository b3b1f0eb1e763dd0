//! Operator endpoints under `/admin`, enabled by `ADMIN_TOKEN`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::post;
use axum::{Router, extract::FromRequestParts};
use secrecy::ExposeSecret;

use super::validate;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::hub::frames::close;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/users/{id}/ban", post(ban).delete(unban))
}

/// Proof that the caller presented `ADMIN_TOKEN`.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.config.admin_token else {
            return Err(ApiError::NotFound("admin endpoint"));
        };
        let given = crate::auth::extractor::bearer(parts).ok_or(ApiError::Unauthorized("missing admin token"))?;
        // Compare hashes: constant-time with respect to the secret.
        use sha2::{Digest, Sha256};
        if Sha256::digest(given.as_bytes()) == Sha256::digest(expected.expose_secret().as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::Unauthorized("invalid admin token"))
        }
    }
}

/// Bans a user: they can no longer log in, refresh or connect, and their
/// open sockets close with 4003 on every instance.
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/ban", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn ban(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    validate::id("id", &id)?;
    state.store.set_banned(&id, true).await.map_err(|_| ApiError::NotFound("user"))?;
    state.hub.close_user(&id, close::FORBIDDEN, "banned");
    tracing::info!(user_id = %id, "user banned");
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban.
#[utoipa::path(delete, path = "/api/v1/admin/users/{id}/ban", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unban(State(state): State<AppState>, _admin: Admin, Path(id): Path<String>) -> ApiResult<StatusCode> {
    validate::id("id", &id)?;
    state.store.set_banned(&id, false).await.map_err(|_| ApiError::NotFound("user"))?;
    Ok(StatusCode::NO_CONTENT)
}
