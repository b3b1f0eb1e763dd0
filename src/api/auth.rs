//! `/auth`: register, login, refresh, logout, WebSocket tickets.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::{Json, Router, routing::post};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::audit;
use super::extract::ApiJson;
use super::validate;
use crate::api::extract::AuthUser;
use crate::auth::tokens::{REFRESH_PREFIX, TICKET_PREFIX, hash_token, looks_like, new_token};
use crate::clock::now_ms;
use crate::db::{AuditAction, AuditEvent, DbError, RefreshOutcome, User};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::net::ClientAddr;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/auth/register", post(register))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/ws-ticket", post(ws_ticket))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// One `@` and a dotted domain, at most 254 bytes.
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    /// 8 characters to 256 bytes.
    #[schema(min_length = 8)]
    pub password: String,
    /// 1–64 characters (after trimming), no control, bidi or zero-width
    /// characters.
    #[schema(min_length = 1, max_length = 64)]
    pub display_name: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// Tokens for a session. The refresh token is single-use: each refresh
/// returns a new one and spends the old.
#[derive(Serialize, ToSchema)]
pub struct AuthResponse {
    pub user: User,
    pub access_token: String,
    pub refresh_token: String,
    /// Seconds until `access_token` expires (OAuth 2.0's `expires_in`,
    /// hence seconds; the one exception to "durations are milliseconds").
    pub expires_in: u64,
    /// The same in milliseconds, like every other chatgw duration.
    pub expires_in_ms: u64,
    pub token_type: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct TicketResponse {
    /// Pass as `GET /ws?ticket=…`; valid once, for `expires_in` seconds.
    pub ticket: String,
    /// Seconds (OAuth-style, like the token responses).
    pub expires_in: u64,
    /// The same in milliseconds.
    pub expires_in_ms: u64,
}

async fn start_session(state: &AppState, user: User) -> ApiResult<AuthResponse> {
    let refresh_token = new_token(REFRESH_PREFIX);
    let expires_at = now_ms() + state.config.refresh_token_ttl.as_millis() as i64;
    let session = state.store.create_session(&user.id, &hash_token(&refresh_token), expires_at).await?;
    let access_token = state.keys.issue(&user.id, &session)?;
    Ok(AuthResponse {
        user,
        access_token,
        refresh_token,
        expires_in: state.keys.ttl().as_secs(),
        expires_in_ms: state.keys.ttl().as_millis() as u64,
        token_type: "Bearer",
    })
}

/// Creates an account and logs it in.
///
/// The only endpoint that says whether an email is taken (409): without an
/// email-verification channel there is no way to register without telling.
/// It is throttled per IP like login to make enumeration slow.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = AuthResponse), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn register(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> ApiResult<impl IntoResponse> {
    let email = validate::email(&req.email)?;
    validate::password(&req.password)?;
    let display_name = validate::display_name(&req.display_name)?;
    state.limits.check_register(client.0).map_err(ApiError::rate_limited)?;
    let hash = state.passwords.hash(req.password).await?;
    let user = state.store.create_user(&email, &display_name, &hash).await.map_err(|e| match e {
        DbError::Conflict(_) => ApiError::Conflict("email already registered"),
        e => e.into(),
    })?;
    tracing::info!(user_id = %user.id, "user registered");
    Ok((StatusCode::CREATED, Json(start_session(&state, user).await?)))
}

/// Logs in. Unknown email and wrong password give the same 401 after the
/// same work (a dummy hash is verified), so the answer reveals nothing.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = AuthResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(req): ApiJson<LoginRequest>,
) -> ApiResult<Json<AuthResponse>> {
    const FAILED: ApiError = ApiError::Unauthorized("invalid email or password");
    if req.email.len() > validate::EMAIL_MAX_BYTES || req.password.len() > validate::PASSWORD_MAX_BYTES {
        return Err(ApiError::bad_request("email or password too long"));
    }
    state.limits.check_login(&req.email.trim().to_lowercase(), client.0).map_err(ApiError::rate_limited)?;
    let found = state.store.find_login(req.email.trim()).await?;
    // A banned or erased account is named in the audit record (its id,
    // never the email); an unknown email leaves the target empty.
    let known = found.as_ref().map(|(u, _)| u.id.clone());
    let (user, hash) = match found {
        Some((u, h)) if u.is_active() => (Some(u), Some(h)),
        _ => (None, None),
    };
    let user = if state.passwords.verify(req.password, hash).await? { user } else { None };
    let Some(user) = user else {
        audit::record(&state, AuditEvent::about(AuditAction::LoginFailed, known.as_deref(), client.0)).await;
        return Err(FAILED);
    };
    tracing::info!(user_id = %user.id, "login");
    let user_id = user.id.clone();
    let session = start_session(&state, user).await?;
    // Recorded once the session exists: a login that failed to start one
    // did not succeed.
    audit::record(&state, AuditEvent::by_user(AuditAction::LoginSucceeded, &user_id, client.0)).await;
    Ok(Json(session))
}

/// Rotates a refresh token. Presenting an already-spent token revokes the
/// whole session (family): whoever holds it, attacker or victim, must log in
/// again. One exception keeps a client that lost the answer signed in: a
/// retry within `REFRESH_GRACE_SECS` of the spend, while the token that
/// answer carried is still unused, gets a fresh pair and that token is
/// spent unseen (`Store::rotate_refresh_token`).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = AuthResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn refresh(
    State(state): State<AppState>,
    client: ClientAddr,
    ApiJson(req): ApiJson<RefreshRequest>,
) -> ApiResult<Json<AuthResponse>> {
    if !looks_like(&req.refresh_token, REFRESH_PREFIX) {
        return Err(ApiError::Unauthorized("invalid refresh token"));
    }
    let new = new_token(REFRESH_PREFIX);
    let expires_at = now_ms() + state.config.refresh_token_ttl.as_millis() as i64;
    let old = hash_token(&req.refresh_token);
    match state.store.rotate_refresh_token(&old, &hash_token(&new), expires_at, state.config.refresh_grace).await? {
        RefreshOutcome::Rotated(who) => {
            let user = state.store.get_user(&who.user_id).await?;
            let access_token = state.keys.issue(&who.user_id, &who.session_id)?;
            Ok(Json(AuthResponse {
                user,
                access_token,
                refresh_token: new,
                expires_in: state.keys.ttl().as_secs(),
                expires_in_ms: state.keys.ttl().as_millis() as u64,
                token_type: "Bearer",
            }))
        }
        RefreshOutcome::Invalid => Err(ApiError::Unauthorized("invalid refresh token")),
        RefreshOutcome::Reused => {
            let who = state.store.session_of_refresh_token(&hash_token(&req.refresh_token)).await.ok().flatten();
            if let Some(who) = &who {
                state.hub.session_revoked(&who.user_id, &who.session_id);
            }
            // Whoever presented the token is unknown (the victim or the
            // thief): the record names the account, not an actor.
            let target = who.as_ref().map(|w| w.user_id.as_str());
            audit::record(&state, AuditEvent::about(AuditAction::RefreshTokenReused, target, client.0)).await;
            tracing::warn!("refresh token reuse detected; session revoked");
            Err(ApiError::Unauthorized("refresh token reuse detected; session revoked"))
        }
    }
}

/// Ends the caller's session: its refresh tokens and access tokens stop
/// working at once.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody)))]
pub async fn logout(State(state): State<AppState>, client: ClientAddr, user: AuthUser) -> ApiResult<StatusCode> {
    state.store.revoke_session(&user.user_id, &user.session_id).await?;
    audit::record(&state, AuditEvent::by_user(AuditAction::Logout, &user.user_id, client.0)).await;
    // Its sockets close with 4001 on every instance.
    state.hub.session_revoked(&user.user_id, &user.session_id);
    tracing::info!(user_id = %user.user_id, "logout");
    Ok(StatusCode::NO_CONTENT)
}

/// A single-use, short-lived ticket for `GET /ws?ticket=`, for clients that
/// cannot set an `Authorization` header on the upgrade request.
#[utoipa::path(post, path = "/api/v1/auth/ws-ticket", tag = "auth", security(("bearer" = [])),
    responses((status = 201, body = TicketResponse), (status = 401, body = ErrorBody)))]
pub async fn ws_ticket(State(state): State<AppState>, user: AuthUser) -> ApiResult<(StatusCode, Json<TicketResponse>)> {
    let ticket = new_token(TICKET_PREFIX);
    let ttl = state.config.ws_ticket_ttl;
    state.store.create_ws_ticket(&user.identity(), &hash_token(&ticket), now_ms() + ttl.as_millis() as i64).await?;
    Ok((
        StatusCode::CREATED,
        Json(TicketResponse { ticket, expires_in: ttl.as_secs(), expires_in_ms: ttl.as_millis() as u64 }),
    ))
}
