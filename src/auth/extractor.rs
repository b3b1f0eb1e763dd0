//! [`AuthUser`]: an extractor that guarantees a live, authenticated caller.

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::TokenError;
use crate::db::SessionIdentity;
use crate::error::ApiError;
use crate::state::AppState;

/// The caller of a request, proven by a valid `Authorization: Bearer` access
/// token whose session is not revoked and whose user is neither erased nor
/// banned.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user_id: String,
    pub session_id: String,
}

impl AuthUser {
    pub fn identity(&self) -> SessionIdentity {
        SessionIdentity { user_id: self.user_id.clone(), session_id: self.session_id.clone() }
    }
}

/// Extracts the bearer token of a request, if any.
pub fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// Verifies an access token and its session: shared by REST and `/ws`.
///
/// # Errors
/// `Unauthorized` for any invalid, expired or revoked credential.
pub async fn authenticate(state: &AppState, token: &str) -> Result<AuthUser, ApiError> {
    let claims = state.keys.verify(token).map_err(|e| match e {
        TokenError::Expired => ApiError::Unauthorized("access token expired"),
        TokenError::Invalid => ApiError::Unauthorized("invalid access token"),
    })?;
    if !state.store.session_active(&claims.sub, &claims.sid).await? {
        return Err(ApiError::Unauthorized("session revoked"));
    }
    Ok(AuthUser { user_id: claims.sub, session_id: claims.sid })
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = bearer(parts).ok_or(ApiError::Unauthorized("missing bearer token"))?;
        authenticate(state, token).await
    }
}
