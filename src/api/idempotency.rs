//! `Idempotency-Key` for POSTs that create things: a retried request (a
//! mobile network that lost the response) gets the first response replayed
//! instead of creating twice.

use axum::body::{Body, to_bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::api::extract::AuthUser;
use crate::db::IdempotencyRecord;
use crate::error::ApiError;
use crate::state::AppState;

pub const HEADER: &str = "idempotency-key";
/// Set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// Middleware: without the header the request passes through untouched.
///
/// With it, the key is claimed for the caller before the handler runs (so
/// two concurrent retries cannot both run it); a finished 2xx response is
/// stored and replayed; a failed one releases the key so the retry runs
/// again. Reusing a key for a different request is a 400.
pub async fn layer(
    State(state): State<AppState>,
    user: AuthUser,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(key) = req.headers().get(HEADER) else {
        return Ok(next.run(req).await);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 128 && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| ApiError::bad_request("Idempotency-Key: 1-128 visible ASCII characters"))?
        .to_owned();

    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, state.config.max_body_bytes).await.map_err(|_| ApiError::TooLarge)?;
    let mut h = Sha256::new();
    h.update(parts.method.as_str());
    h.update(b" ");
    h.update(parts.uri.path());
    h.update(b"\n");
    h.update(&bytes);
    let fingerprint = hex::encode(h.finalize());

    match state.store.claim_idempotency_key(&user.user_id, &key, &fingerprint).await? {
        None => {}
        Some(IdempotencyRecord::Done { fingerprint: f, status, body }) if f == fingerprint => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut resp = (status, [(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response();
            resp.headers_mut().insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
            return Ok(resp);
        }
        Some(IdempotencyRecord::InFlight { fingerprint: f }) if f == fingerprint => {
            return Err(ApiError::Conflict("a request with this Idempotency-Key is still in progress"));
        }
        Some(_) => {
            return Err(ApiError::bad_request("Idempotency-Key was already used for a different request"));
        }
    }

    let resp = next.run(Request::from_parts(parts, Body::from(bytes))).await;
    let (parts, body) = resp.into_parts();
    let body = match to_bytes(body, 1 << 20).await {
        Ok(b) => b,
        Err(e) => {
            state.store.release_idempotency_key(&user.user_id, &key).await?;
            return Err(ApiError::Internal(anyhow::anyhow!("buffering response: {e}")));
        }
    };
    if parts.status.is_success() {
        let text = String::from_utf8_lossy(&body);
        state.store.complete_idempotency_key(&user.user_id, &key, parts.status.as_u16(), &text).await?;
    } else {
        state.store.release_idempotency_key(&user.user_id, &key).await?;
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}
