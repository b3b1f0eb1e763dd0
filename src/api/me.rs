//! `/me`: the caller's profile, export and erasure; `/users/{id}`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::validate;
use crate::api::extract::AuthUser;
use crate::db::{AuditAction, AuditEvent, Export, MessageKey, NewPassword, User};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::net::ClientAddr;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/me", get(get_me).patch(patch_me).delete(delete_me))
        .route("/me/export", get(export_me))
        .route("/users/{id}", get(get_user))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchMe {
    /// As at registration: 1–64 characters.
    #[schema(min_length = 1, max_length = 64)]
    pub display_name: Option<String>,
    /// Changing the password requires `current_password`; 8 characters to
    /// 256 bytes.
    #[schema(min_length = 8)]
    pub password: Option<String>,
    pub current_password: Option<String>,
}

/// What anyone signed in may see of another user.
#[derive(Serialize, ToSchema)]
pub struct PublicUser {
    pub id: String,
    pub display_name: String,
    pub created_at: i64,
    /// True for an erased account.
    pub deleted: bool,
}

#[utoipa::path(get, path = "/api/v1/me", tag = "me", security(("bearer" = [])),
    responses((status = 200, body = User), (status = 401, body = ErrorBody)))]
pub async fn get_me(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<User>> {
    Ok(Json(state.store.get_user(&user.user_id).await?))
}

/// Updates the display name and/or the password. A new password ends
/// every other session of the account (refresh and access tokens, unused
/// tickets, sockets closed with 4001); the caller's session stays.
#[utoipa::path(patch, path = "/api/v1/me", tag = "me", security(("bearer" = [])), request_body = PatchMe,
    responses((status = 200, body = User), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody, description = "current_password is wrong")))]
pub async fn patch_me(
    State(state): State<AppState>,
    client: ClientAddr,
    user: AuthUser,
    ApiJson(req): ApiJson<PatchMe>,
) -> ApiResult<Json<User>> {
    let name = req.display_name.as_deref().map(validate::display_name).transpose()?;
    let hash = match req.password {
        None => None,
        Some(new) => {
            validate::password(&new)?;
            let current = req
                .current_password
                .ok_or_else(|| ApiError::bad_request("current_password: required to change the password"))?;
            let stored = state.store.password_hash(&user.user_id).await?;
            if !state.passwords.verify(current, Some(stored)).await? {
                return Err(ApiError::Forbidden("current_password is wrong"));
            }
            Some(state.passwords.hash(new).await?)
        }
    };
    if name.is_none() && hash.is_none() {
        return Err(ApiError::bad_request("nothing to update"));
    }
    let password = hash.as_deref().map(|hash| NewPassword { hash, keep_session: &user.session_id });
    let (updated, ended) = state.store.update_user(&user.user_id, name.as_deref(), password).await?;
    if hash.is_some() {
        audit::record(&state, AuditEvent::by_user(AuditAction::PasswordChanged, &user.user_id, client.0)).await;
        // Whoever else held the old password is out: every other session's
        // sockets close with 4001 on every instance, as at logout.
        for session in &ended {
            state.hub.session_revoked(&user.user_id, session);
        }
        tracing::info!(user_id = %user.user_id, sessions_ended = ended.len(), "password changed");
    }
    Ok(Json(updated))
}

/// Erases the account: credentials and sessions deleted, profile anonymised,
/// messages turned into tombstones (empty body, seq kept; each gets a
/// `delete` event in its room's stream shortly after), owned rooms handed
/// to the longest-standing member or deleted when empty.
#[utoipa::path(delete, path = "/api/v1/me", tag = "me", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn delete_me(State(state): State<AppState>, client: ClientAddr, user: AuthUser) -> ApiResult<StatusCode> {
    state.store.erase_user(&user.user_id).await?;
    // Kept after the erasure: it holds the id only, nothing erased.
    audit::record(&state, AuditEvent::by_user(AuditAction::Erasure, &user.user_id, client.0)).await;
    state.hub.close_user(&user.user_id, crate::protocol::close::AUTH, "account erased");
    // Each message's `delete` event (reason `erased`), in the background.
    state.hub.finish_erasure(&user.user_id);
    tracing::info!(user_id = %user.user_id, "account erased");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ExportParams {
    /// The `messages_next` of the previous page.
    pub messages_after: Option<String>,
}

/// All the caller's data: profile, rooms with roles and read markers,
/// their messages (10,000 per page, oldest first; `messages_next` asks for
/// the next page), their sessions, and the audit records where they are the
/// actor or the target.
#[utoipa::path(get, path = "/api/v1/me/export", tag = "me", security(("bearer" = [])), params(ExportParams),
    responses((status = 200, body = Export), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn export_me(
    State(state): State<AppState>,
    user: AuthUser,
    ApiQuery(params): ApiQuery<ExportParams>,
) -> ApiResult<Json<Export>> {
    let after = match params.messages_after.as_deref() {
        None => None,
        Some(c) => Some(
            MessageKey::parse(c)
                .ok_or_else(|| ApiError::bad_request("messages_after: not a cursor from messages_next"))?,
        ),
    };
    Ok(Json(state.store.export_user(&user.user_id, after.as_ref()).await?))
}

#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = String, Path, description = "User id")),
    responses((status = 200, body = PublicUser), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_user(
    State(state): State<AppState>,
    _caller: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<PublicUser>> {
    validate::id("id", &id)?;
    let u = state.store.get_user(&id).await.map_err(|e| match e {
        crate::db::DbError::NotFound => ApiError::NotFound("user"),
        e => e.into(),
    })?;
    Ok(Json(PublicUser {
        deleted: u.deleted_at.is_some(),
        id: u.id,
        display_name: u.display_name,
        created_at: u.created_at,
    }))
}
