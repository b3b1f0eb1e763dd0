//! Operator endpoints under `/admin`, enabled by `ADMIN_TOKEN`: bans, the
//! live view (this instance's numbers, a user's sockets across the
//! cluster, disconnecting them) and the audit log. `chatgw admin …` calls
//! these.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::{Router, extract::FromRequestParts};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::audit;
use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::validate;
use crate::api::stats::InstanceStats;
use crate::db::{AppendOutcome, AuditAction, AuditEvent, AuditQuery, AuditRecord, Deleter, NewKind, NewMessage};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::hub::live::UserConnections;
use crate::net::ClientAddr;
use crate::protocol::close;
use crate::state::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/users/{id}/ban", post(ban).delete(unban))
        .route("/admin/stats", get(stats))
        .route("/admin/users/{id}/connections", get(connections))
        .route("/admin/users/{id}/disconnect", post(disconnect))
        .route("/admin/audit", get(audit_log))
        .route("/admin/rooms/{id}/messages/{seq}", delete(delete_message))
        .route("/admin/rooms/{id}/reset-history", post(reset_history))
}

/// The answer to a history reset.
#[derive(Serialize, ToSchema)]
pub struct HistoryReset {
    pub room_id: String,
    /// The room's new epoch.
    pub epoch: String,
    /// Seqs keep counting: the next message gets `last_seq + 1`.
    pub last_seq: i64,
    /// Messages deleted.
    pub deleted: u64,
}

/// Deletes every message of a room and gives it a new epoch (protocol
/// §17): clients resuming with the old epoch get `reset` and drop their
/// copy; sockets joined now get a `reset` frame at once. Seqs continue
/// from `last_seq`, so no seq ever names two messages.
#[utoipa::path(post, path = "/api/v1/admin/rooms/{id}/reset-history", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = HistoryReset), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn reset_history(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<HistoryReset>> {
    validate::id("id", &id)?;
    let (epoch, last_seq) = state.store.reset_history(&id).await.map_err(|e| match e {
        crate::db::DbError::NotFound => ApiError::NotFound("room"),
        other => other.into(),
    })?;
    let frame = crate::protocol::ServerFrame::Reset { room: &id, reason: "epoch", epoch: &epoch, last_seq }.encode();
    state.hub.broadcast(&id, frame, None);
    let deleted = crate::retention::delete_unretained(&state.store, &id, state.config.retention.batch).await?;
    tracing::info!(room_id = %id, deleted, "room history reset by an operator");
    Ok(Json(HistoryReset { room_id: id, epoch, last_seq, deleted }))
}

/// Proof that the caller presented `ADMIN_TOKEN`.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(expected) = &state.config.admin_token else {
            return Err(ApiError::NotFound("admin endpoint"));
        };
        let given = crate::api::extract::bearer(parts).ok_or(ApiError::Unauthorized("missing admin token"))?;
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
pub async fn ban(
    State(state): State<AppState>,
    client: ClientAddr,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    validate::id("id", &id)?;
    state.store.set_banned(&id, true).await.map_err(not_found_or_storage)?;
    audit::record(&state, AuditEvent::about(AuditAction::Ban, Some(&id), client.0)).await;
    state.hub.close_user(&id, close::FORBIDDEN, "banned");
    tracing::info!(user_id = %id, "user banned");
    Ok(StatusCode::NO_CONTENT)
}

/// Lifts a ban.
#[utoipa::path(delete, path = "/api/v1/admin/users/{id}/ban", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn unban(
    State(state): State<AppState>,
    client: ClientAddr,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    validate::id("id", &id)?;
    state.store.set_banned(&id, false).await.map_err(not_found_or_storage)?;
    audit::record(&state, AuditEvent::about(AuditAction::Unban, Some(&id), client.0)).await;
    Ok(StatusCode::NO_CONTENT)
}

/// An unknown user is 404; a database failure stays a storage error (an
/// operator must not read "no such user" when the database is down).
fn not_found_or_storage(e: crate::db::DbError) -> ApiError {
    match e {
        crate::db::DbError::NotFound => ApiError::NotFound("user"),
        other => other.into(),
    }
}

/// This instance's numbers: connections, rooms, queue depths, bus and
/// database state, readiness. Answered by whichever instance the request
/// reaches (address one instance directly to see it).
#[utoipa::path(get, path = "/api/v1/admin/stats", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = InstanceStats), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn stats(State(state): State<AppState>, _admin: Admin) -> Json<InstanceStats> {
    Json(InstanceStats::gather(&state).await)
}

/// A user's live sockets on every instance (each instance answers for its
/// own within a second; `instances` lists who answered).
#[utoipa::path(get, path = "/api/v1/admin/users/{id}/connections", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = UserConnections), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn connections(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<UserConnections>> {
    validate::id("id", &id)?;
    Ok(Json(state.hub.connections_of(&id).await))
}

/// How to close a user's sockets.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Disconnect {
    /// The close code clients see: 4000–4999 (default 4000, "disconnected
    /// by an operator"), or 1000/1001/1008. 4001 and 4003 tell clients
    /// not to reconnect with the same credentials (protocol/README.md).
    #[serde(default = "default_disconnect_code")]
    pub code: u16,
    /// The close reason (at most 120 bytes).
    #[serde(default = "default_disconnect_reason")]
    pub reason: String,
}

fn default_disconnect_code() -> u16 {
    close::OPERATOR
}

fn default_disconnect_reason() -> String {
    "disconnected by an operator".into()
}

#[derive(Serialize, ToSchema)]
pub struct Disconnected {
    /// Sockets closed on the instance that took the request; the others
    /// close theirs as the event reaches them.
    pub closed_here: usize,
}

/// Closes every socket of a user on every instance with the given code and
/// reason. The user may reconnect (ban them to prevent it).
#[utoipa::path(post, path = "/api/v1/admin/users/{id}/disconnect", tag = "admin", security(("bearer" = [])), params(("id" = String, Path)),
    request_body = Disconnect,
    responses((status = 202, body = Disconnected), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn disconnect(
    State(state): State<AppState>,
    client: ClientAddr,
    _admin: Admin,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<Disconnect>,
) -> ApiResult<(StatusCode, Json<Disconnected>)> {
    validate::id("id", &id)?;
    if !matches!(req.code, 1000 | 1001 | 1008 | 4000..=4999) {
        return Err(ApiError::bad_request("code: must be 1000, 1001, 1008 or 4000-4999"));
    }
    if req.reason.len() > 120 {
        return Err(ApiError::bad_request("reason: at most 120 bytes"));
    }
    let closed_here = state.hub.close_user(&id, req.code, &req.reason);
    // The reason is operator free text: it stays out of the audit record.
    audit::record(&state, AuditEvent::about(AuditAction::AdminDisconnect, Some(&id), client.0)).await;
    tracing::info!(user_id = %id, code = req.code, closed_here, "user disconnected by an operator");
    Ok((StatusCode::ACCEPTED, Json(Disconnected { closed_here })))
}

/// Records per page of `GET /admin/audit` by default, and at most.
pub const AUDIT_DEFAULT_LIMIT: i64 = 100;
pub const AUDIT_MAX_LIMIT: i64 = 1_000;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    /// Only records where this user is the actor or the target.
    pub user_id: Option<String>,
    /// Only this action (`login_succeeded`, `login_failed`,
    /// `refresh_token_reused`, `logout`, `erasure`, `password_changed`,
    /// `ban`, `unban`, `admin_disconnect`, `message_deleted`).
    pub action: Option<String>,
    /// Only records older than this id: the previous page's `next_before`.
    pub before: Option<i64>,
    /// 1–1000, default 100.
    pub limit: Option<i64>,
}

/// A page of the audit log, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// Pass as `before` for the next (older) page; `null` on the last page.
    pub next_before: Option<i64>,
}

/// The audit log of security events, newest first, keyset-paged by id and
/// filtered by user (actor or target) and action.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", security(("bearer" = [])), params(AuditParams),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn audit_log(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(p): ApiQuery<AuditParams>,
) -> ApiResult<Json<AuditPage>> {
    let limit = p.limit.unwrap_or(AUDIT_DEFAULT_LIMIT);
    if !(1..=AUDIT_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit: must be between 1 and {AUDIT_MAX_LIMIT}")));
    }
    if let Some(u) = &p.user_id {
        validate::id("user_id", u)?;
    }
    let action = match p.action.as_deref() {
        None => None,
        Some(a) => {
            Some(AuditAction::parse(a).ok_or_else(|| ApiError::bad_request("action: not a known audit action"))?)
        }
    };
    if p.before.is_some_and(|b| b < 1) {
        return Err(ApiError::bad_request("before: must be >= 1"));
    }
    let records = state.store.audit_page(&AuditQuery { user_id: p.user_id, action, before: p.before, limit }).await?;
    // A full page may have a next one; a short page is the last.
    let next_before = if records.len() as i64 == limit { records.last().map(|r| r.id) } else { None };
    Ok(Json(AuditPage { records, next_before }))
}

/// The `delete` event an operator's deletion appended.
#[derive(Serialize, ToSchema)]
pub struct MessageDeleted {
    pub room: String,
    /// The `delete` event's own seq in the room's stream.
    pub seq: i64,
    /// The deleted message.
    pub target_seq: i64,
}

/// Deletes a message (moderation): its body is emptied and a `delete`
/// event (reason `operator`) is appended to the room's stream, live to
/// every member and to resuming clients. Audit-logged (`message_deleted`,
/// target = the author).
#[utoipa::path(delete, path = "/api/v1/admin/rooms/{id}/messages/{seq}", tag = "admin", security(("bearer" = [])),
    params(("id" = String, Path), ("seq" = i64, Path)),
    responses((status = 200, body = MessageDeleted), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_message(
    State(state): State<AppState>,
    client: ClientAddr,
    _admin: Admin,
    ApiPath((id, seq)): ApiPath<(String, i64)>,
) -> ApiResult<Json<MessageDeleted>> {
    validate::id("id", &id)?;
    if seq < 1 {
        return Err(ApiError::bad_request("seq: must be >= 1"));
    }
    let msg = NewMessage {
        room_id: id.clone(),
        sender_id: crate::db::OPERATOR.to_owned(),
        client_msg_id: format!("operator:{}", crate::db::new_id()),
        body: String::new(),
        sent_at: crate::clock::now_ms(),
        kind: NewKind::Delete { target_seq: seq, by: Deleter::Operator },
    };
    let outcome = state.hub.submit(msg).await.await.unwrap_or(Err(crate::db::Unavailable::CommitterGone.into()))?;
    let event = match outcome {
        AppendOutcome::Stored(m) | AppendOutcome::Duplicate(m) => m,
        AppendOutcome::NoSuchRoom => return Err(ApiError::NotFound("room")),
        _ => return Err(ApiError::NotFound("message")),
    };
    // The author, for the audit record (ids only, never the body).
    let author = match state.store.history(&id, Some(seq - 1), Some(seq + 1), 1).await {
        Ok(page) => page.messages.into_iter().next().map(|m| m.sender),
        Err(e) => {
            tracing::warn!(error = %e, "reading a deleted message's author failed");
            None
        }
    };
    audit::record(&state, AuditEvent::about(AuditAction::MessageDeleted, author.as_deref(), client.0)).await;
    tracing::info!(room = %id, target_seq = seq, seq = event.seq, "message deleted by an operator");
    Ok(Json(MessageDeleted { room: id, seq: event.seq, target_seq: seq }))
}
