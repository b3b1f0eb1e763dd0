//! `/rooms`: rooms, members and history.
//!
//! Access rule, the same everywhere: a caller who is not a member gets 404
//! for the room and everything under it (its existence is not revealed); a
//! member who is not the owner gets 403 for owner-only actions.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{ApiJson, ApiPath, ApiQuery};
use super::validate;
use crate::api::extract::AuthUser;
use crate::db::{HistoryPage, Member, Retention, Role, RoomForUser};
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::net::ClientAddr;
use crate::state::AppState;

/// Routes under `/rooms`; the create routes take an `Idempotency-Key`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rooms", get(list_rooms))
        .route("/rooms/{id}", get(get_room).patch(patch_room).delete(delete_room))
        .route("/rooms/{id}/members/{user_id}", delete(remove_member))
        .route("/rooms/{id}/messages", get(history))
}

/// The POST routes that create things, wrapped by the idempotency layer.
pub fn create_router() -> Router<AppState> {
    Router::new().route("/rooms", post(create_room)).route("/rooms/{id}/members", post(add_member))
}

pub const HISTORY_DEFAULT_LIMIT: i64 = 50;
pub const HISTORY_MAX_LIMIT: i64 = 200;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRoom {
    /// 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: String,
    /// Other users to add as members (at most 1000 user ids).
    #[serde(default)]
    #[schema(max_items = 1000)]
    pub members: Vec<String>,
    /// Other users to add as members, by the email they signed up with (at
    /// most 20, and 1000 together with `members`): what a person knows of
    /// another. Each entry is a look-up charged to the caller's budget
    /// (`EMAIL_LOOKUPS_PER_MINUTE`; 429 beyond it).
    #[serde(default)]
    #[schema(max_items = 20)]
    pub member_emails: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchRoom {
    /// 1–100 characters.
    #[schema(min_length = 1, max_length = 100)]
    pub name: Option<String>,
    /// The room's retention override: each field `null` to follow the
    /// server's setting, 0 to keep forever, or a limit. Replaces the whole
    /// override.
    pub retention: Option<Retention>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// The user to add: give exactly one of `user_id` and `email`.
    #[schema(pattern = "^[A-Za-z0-9_-]{1,64}$")]
    pub user_id: Option<String>,
    /// The email the user signed up with (any case); a look-up charged to
    /// the caller's budget (`EMAIL_LOOKUPS_PER_MINUTE`; 429 beyond it).
    pub email: Option<String>,
}

/// A room with its member list.
#[derive(Serialize, ToSchema)]
pub struct RoomDetail {
    #[serde(flatten)]
    pub room: RoomForUser,
    pub members: Vec<Member>,
}

#[derive(Serialize, ToSchema)]
pub struct RoomList {
    pub rooms: Vec<RoomForUser>,
}

#[derive(Serialize, ToSchema)]
pub struct Membership {
    pub room_id: String,
    pub user_id: String,
    pub role: Role,
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Messages with seq greater than this, ascending.
    pub after_seq: Option<i64>,
    /// Messages with seq less than this (default: the newest).
    pub before_seq: Option<i64>,
    /// 1–200, default 50.
    pub limit: Option<i64>,
}

/// The caller's role in `room`; 404 when not a member (or no such room).
async fn role_of(state: &AppState, room: &str, user: &AuthUser) -> ApiResult<Role> {
    validate::id("room id", room)?;
    state.store.role_in(room, &user.user_id).await?.ok_or(ApiError::NotFound("room"))
}

/// A missing room (or one the caller is not in) is 404; a database failure
/// stays 503/500: a client told 404 would drop a room it still belongs to.
fn room_not_found(e: crate::db::DbError) -> ApiError {
    match e {
        crate::db::DbError::NotFound => ApiError::NotFound("room"),
        other => other.into(),
    }
}

async fn require_owner(state: &AppState, room: &str, user: &AuthUser) -> ApiResult<()> {
    match role_of(state, room, user).await? {
        Role::Owner => Ok(()),
        Role::Member => Err(ApiError::Forbidden("only the room owner may do this")),
    }
}

#[utoipa::path(post, path = "/api/v1/rooms", tag = "rooms", security(("bearer" = [])), request_body = CreateRoom,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for a retried request")),
    responses((status = 201, body = RoomForUser), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 429, body = ErrorBody, description = "the caller's budget of look-ups by email is spent (Retry-After)")))]
pub async fn create_room(
    State(state): State<AppState>,
    client: ClientAddr,
    user: AuthUser,
    ApiJson(req): ApiJson<CreateRoom>,
) -> ApiResult<(StatusCode, Json<RoomForUser>)> {
    let name = validate::room_name(&req.name)?;
    if req.member_emails.len() > validate::MAX_MEMBER_EMAILS {
        return Err(ApiError::bad_request(format!(
            "member_emails: at most {} per request",
            validate::MAX_MEMBER_EMAILS
        )));
    }
    if req.members.len() + req.member_emails.len() > validate::MAX_INITIAL_MEMBERS {
        return Err(ApiError::bad_request(format!("members: at most {} users", validate::MAX_INITIAL_MEMBERS)));
    }
    let mut members = req.members;
    for m in &members {
        validate::id("members", m)?;
    }
    members.sort();
    members.dedup();
    let known = state.store.addable_user_ids(&members).await?;
    if known.len() != members.len() {
        return Err(ApiError::bad_request("members: unknown user id"));
    }
    members.extend(users_by_email(&state, &user, client, &req.member_emails).await?);
    members.sort();
    members.dedup();
    let room = state.store.create_room(&user.user_id, &name, &members).await?;
    // Every member's sockets (the owner's other devices too) learn the room.
    let hub = &state.hub;
    hub.room_added(&room.room.id, &user.user_id, &name, "owner", 0);
    for m in members.iter().filter(|m| **m != user.user_id) {
        hub.room_added(&room.room.id, m, &name, "member", 0);
    }
    Ok((StatusCode::CREATED, Json(room)))
}

#[utoipa::path(get, path = "/api/v1/rooms", tag = "rooms", security(("bearer" = [])),
    responses((status = 200, body = RoomList), (status = 401, body = ErrorBody)))]
pub async fn list_rooms(State(state): State<AppState>, user: AuthUser) -> ApiResult<Json<RoomList>> {
    Ok(Json(RoomList { rooms: state.store.rooms_for_user(&user.user_id).await? }))
}

#[utoipa::path(get, path = "/api/v1/rooms/{id}", tag = "rooms", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 200, body = RoomDetail), (status = 404, body = ErrorBody)))]
pub async fn get_room(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<RoomDetail>> {
    validate::id("room id", &id)?;
    let room = state.store.room_for_member(&id, &user.user_id).await.map_err(room_not_found)?;
    let members = state.store.members(&id).await?;
    Ok(Json(RoomDetail { room, members }))
}

#[utoipa::path(patch, path = "/api/v1/rooms/{id}", tag = "rooms", security(("bearer" = [])), params(("id" = String, Path)), request_body = PatchRoom,
    responses((status = 200, body = RoomForUser), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn patch_room(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<PatchRoom>,
) -> ApiResult<Json<RoomForUser>> {
    require_owner(&state, &id, &user).await?;
    if req.name.is_none() && req.retention.is_none() {
        return Err(ApiError::bad_request("give name and/or retention"));
    }
    let name = req.name.as_deref().map(validate::room_name).transpose()?;
    if let Some(r) = &req.retention
        && (r.max_age_secs.is_some_and(|v| v < 0) || r.max_messages.is_some_and(|v| v < 0))
    {
        return Err(ApiError::bad_request("retention: values must be >= 0 or null"));
    }
    if let Some(name) = name {
        state.store.rename_room(&id, &name).await?;
        state.hub.room_renamed(&id, &name);
    }
    if let Some(r) = req.retention {
        state.store.set_retention(&id, r).await?;
    }
    Ok(Json(state.store.room_for_member(&id, &user.user_id).await?))
}

#[utoipa::path(delete, path = "/api/v1/rooms/{id}", tag = "rooms", security(("bearer" = [])), params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_room(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    require_owner(&state, &id, &user).await?;
    let members = state.store.members(&id).await?;
    state.store.delete_room(&id).await?;
    for m in members {
        state.hub.member_removed(&id, &m.user_id, "room_deleted");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The ids of the users with these emails; any unknown one is a 400
/// naming it, so a typo does not silently leave someone out. Every entry
/// (a repeat too) is charged to the caller's look-up budget.
async fn users_by_email(
    state: &AppState,
    user: &AuthUser,
    client: ClientAddr,
    emails: &[String],
) -> ApiResult<Vec<String>> {
    let emails = emails.iter().map(|e| validate::email(e).map(|e| e.to_lowercase())).collect::<Result<Vec<_>, _>>()?;
    charge_email_lookups(state, user, client, emails.len())?;
    let found = state.store.addable_user_ids_by_email(&emails).await?;
    if let Some(missing) = emails.iter().find(|e| !found.iter().any(|(f, _)| f == *e)) {
        return Err(ApiError::bad_request(format!("member_emails: no user with email {missing}")));
    }
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// Charges `n` look-ups by email to the caller's and the client address's
/// budgets: without it, rooms would answer "has this email an account?"
/// far faster than registration does.
fn charge_email_lookups(state: &AppState, user: &AuthUser, client: ClientAddr, n: usize) -> ApiResult<()> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    state.limits.check_email_lookups(&user.user_id, client.0, n).map_err(ApiError::rate_limited)
}

/// Adds a member (owner only). 201 when added, 200 when already a member.
#[utoipa::path(post, path = "/api/v1/rooms/{id}/members", tag = "rooms", security(("bearer" = [])), params(("id" = String, Path),
    ("Idempotency-Key" = Option<String>, Header, description = "Replays the first response for a retried request")), request_body = AddMember,
    responses((status = 201, body = Membership), (status = 200, body = Membership), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "a request with this Idempotency-Key is still in progress"),
        (status = 429, body = ErrorBody, description = "the caller's budget of look-ups by email is spent (Retry-After)")))]
pub async fn add_member(
    State(state): State<AppState>,
    client: ClientAddr,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiJson(req): ApiJson<AddMember>,
) -> ApiResult<(StatusCode, Json<Membership>)> {
    require_owner(&state, &id, &user).await?;
    let user_id = match (req.user_id, req.email) {
        (Some(user_id), None) => {
            validate::id("user_id", &user_id)?;
            if state.store.addable_user_ids(std::slice::from_ref(&user_id)).await?.is_empty() {
                return Err(ApiError::NotFound("user"));
            }
            user_id
        }
        (None, Some(email)) => {
            let email = validate::email(&email)?;
            charge_email_lookups(&state, &user, client, 1)?;
            let found = state.store.addable_user_ids_by_email(std::slice::from_ref(&email)).await?;
            found.into_iter().next().map(|(_, id)| id).ok_or(ApiError::NotFound("user"))?
        }
        _ => return Err(ApiError::bad_request("give exactly one of user_id and email")),
    };
    let added = state.store.add_member(&id, &user_id).await?;
    let role = state.store.role_in(&id, &user_id).await?.unwrap_or(Role::Member);
    if added {
        // The new member's sockets learn the room at once, on every instance.
        let room = state.store.room_for_member(&id, &user_id).await?;
        state.hub.room_added(&id, &user_id, &room.room.name, role.as_str(), room.room.last_seq);
    }
    let status = if added { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(Membership { room_id: id, user_id, role })))
}

/// Removes a member. The owner may remove anyone but themselves (delete the
/// room instead); a member may remove only themselves (leave).
#[utoipa::path(delete, path = "/api/v1/rooms/{id}/members/{user_id}", tag = "rooms", security(("bearer" = [])),
    params(("id" = String, Path), ("user_id" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn remove_member(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath((id, member)): ApiPath<(String, String)>,
) -> ApiResult<StatusCode> {
    let role = role_of(&state, &id, &user).await?;
    validate::id("user_id", &member)?;
    let is_self = member == user.user_id;
    match (role, is_self) {
        (Role::Owner, true) => {
            return Err(ApiError::Conflict("the owner cannot leave; delete the room instead"));
        }
        (Role::Member, false) => {
            return Err(ApiError::Forbidden("only the room owner may remove other members"));
        }
        _ => {}
    }
    if !state.store.remove_member(&id, &member).await? {
        return Err(ApiError::NotFound("member"));
    }
    // Live sockets lose the room at once, on every instance.
    state.hub.member_removed(&id, &member, if is_self { "left" } else { "removed" });
    Ok(StatusCode::NO_CONTENT)
}

/// History, paged by seq (members only).
#[utoipa::path(get, path = "/api/v1/rooms/{id}/messages", tag = "rooms", security(("bearer" = [])),
    params(("id" = String, Path), HistoryParams),
    responses((status = 200, body = HistoryPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> ApiResult<Json<HistoryPage>> {
    role_of(&state, &id, &user).await?;
    let limit = p.limit.unwrap_or(HISTORY_DEFAULT_LIMIT);
    if !(1..=HISTORY_MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!("limit: must be between 1 and {HISTORY_MAX_LIMIT}")));
    }
    if p.after_seq.is_some_and(|s| s < 0) || p.before_seq.is_some_and(|s| s < 1) {
        return Err(ApiError::bad_request("after_seq must be >= 0 and before_seq >= 1"));
    }
    Ok(Json(state.store.history(&id, p.after_seq, p.before_seq, limit).await?))
}
