//! `auth`: a fresh access token of the same user extends the connection.
//!
//! The keys come from the HTTP edge (`api::ws`) at the upgrade: the hub
//! checks tokens without knowing the application's state.

use axum::extract::ws::Utf8Bytes;
use serde_json::value::RawValue;

use super::acks::error;
use crate::auth::{JwtKeys, TokenError};
use crate::db::Store;
use crate::hub::ConnShared;
use crate::metrics::Metrics;
use crate::protocol::ErrorCode;

/// Checks `token` for the user of `shared`: signature and expiry, the same
/// user, a session still active. On success the connection's session is
/// the token's from now on.
///
/// Returns the token's expiry (Unix milliseconds), the connection's new
/// deadline.
///
/// # Errors
/// The `error` frame to answer with (`unauthorized`, or `unavailable` when
/// storage cannot say).
pub(super) async fn renew(
    keys: &JwtKeys,
    store: &Store,
    metrics: &Metrics,
    shared: &ConnShared,
    id: Option<&RawValue>,
    token: &str,
) -> Result<i64, Utf8Bytes> {
    let refuse = |message: &str| error(metrics, id, ErrorCode::Unauthorized, message, None, None);
    let claims = match keys.verify(token) {
        Ok(c) => c,
        Err(TokenError::Expired) => return Err(refuse("token expired")),
        Err(TokenError::Invalid) => return Err(refuse("invalid token")),
    };
    if claims.sub != *shared.user {
        return Err(refuse("token belongs to another user"));
    }
    match store.session_active(&claims.sub, &claims.sid).await {
        Ok(true) => {}
        Ok(false) => return Err(refuse("session revoked")),
        Err(e) => {
            tracing::warn!(error = %e, "auth renewal check failed");
            let msg = "storage temporarily unavailable; retry";
            return Err(error(metrics, id, ErrorCode::Unavailable, msg, None, None));
        }
    }
    *shared.session.lock().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::from(claims.sid.as_str());
    Ok(claims.exp * 1000)
}
