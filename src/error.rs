//! The one error type of the HTTP edge and its JSON shape.
//!
//! Every failure a client can see is an [`ApiError`]; each variant has one
//! status and one stable `code`, from the protocol's one list of codes
//! ([`ErrorCode`], shared with the WebSocket's `error` frames).
//! Internal causes are logged here and never returned.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::db::DbError;
use crate::protocol::ErrorCode;

/// A client-visible failure.
#[derive(thiserror::Error)]
pub enum ApiError {
    /// Malformed or invalid input; the message says which field and why.
    #[error("{0}")]
    BadRequest(String),
    /// Missing, invalid or expired credentials.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(&'static str),
    /// Unknown resource, or one the caller may not know exists.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request conflicts with existing state.
    #[error("{0}")]
    Conflict(&'static str),
    /// The body exceeds the configured limit.
    #[error("request body is too large")]
    TooLarge,
    /// The body is not `application/json`.
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    /// Too many attempts; retry after the given number of milliseconds.
    #[error("too many requests")]
    RateLimited { retry_after_ms: u64 },
    /// The request did not finish within the request timeout.
    #[error("the request timed out")]
    Timeout,
    /// A dependency is down or the process is draining.
    #[error("{0}")]
    Unavailable(String),
    /// A per-user cap (sockets open at once) is reached: 429 with
    /// `Retry-After`, and a code of its own so clients tell it from a rate.
    #[error("too many {what}")]
    LimitExceeded { what: &'static str, retry_after_ms: u64 },
    /// A bounded resource (password hashing) is saturated; answered at once
    /// with `Retry-After` rather than queued.
    #[error("{what} is busy; retry later")]
    Busy { what: &'static str, retry_after_ms: u64 },
    /// The database failed: unreachable (503 `unavailable`) or otherwise
    /// (500 `internal`). Kept apart so operators see storage errors in
    /// `chatgw_db_errors_total{source="http"}`.
    #[error("{}", if matches!(.0, DbError::Unavailable(_)) { "the database is unavailable" } else { "internal error" })]
    Storage(DbError),
    /// Anything else; the cause is logged, never returned.
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl std::fmt::Debug for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        match self {
            ApiError::Internal(e) => write!(f, ": {e:#}")?,
            ApiError::Storage(e) => write!(f, ": {e}")?,
            _ => {}
        }
        Ok(())
    }
}

/// The body of every error response: `{"error": {"code", "message"}}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// Machine-readable `code` plus a human-readable `message`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    // One of the protocol's `ErrorCode::REST`. (A `//` comment: the doc
    // comment below is the OpenAPI description, kept as served.)
    /// Stable identifier: bad_request, unauthorized, forbidden, not_found,
    /// conflict, too_large, unsupported_media_type, rate_limited,
    /// limit_exceeded, timeout, unavailable, internal.
    pub code: &'static str,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ApiError {
    /// The status and the stable code, in one place (the code's spelling
    /// lives in the protocol's one list, [`ErrorCode`]).
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        let (status, code) = match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ErrorCode::Conflict),
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge),
            ApiError::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::UnsupportedMediaType),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            ApiError::LimitExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::LimitExceeded),
            ApiError::Timeout => (StatusCode::REQUEST_TIMEOUT, ErrorCode::Timeout),
            ApiError::Unavailable(_) | ApiError::Busy { .. } => {
                (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable)
            }
            ApiError::Storage(DbError::Unavailable(_)) => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable),
            ApiError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal),
        };
        (status, code.as_str())
    }

    /// For `map_err` on a rate limiter's verdict.
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        ApiError::RateLimited { retry_after_ms }
    }

    pub fn bad_request(msg: impl Into<String>) -> Self {
        ApiError::BadRequest(msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            ApiError::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            ApiError::Storage(DbError::Unavailable(e)) => tracing::warn!(error = %e, "database unavailable"),
            ApiError::Storage(e) => tracing::error!(error = %e, "database error"),
            _ => {}
        }
        let retry_after_ms = match &self {
            ApiError::RateLimited { retry_after_ms }
            | ApiError::Busy { retry_after_ms, .. }
            | ApiError::LimitExceeded { retry_after_ms, .. } => Some(*retry_after_ms),
            _ => None,
        };
        let body = ErrorBody { error: ErrorDetail { code, message: self.to_string(), retry_after_ms } };
        let mut resp = (status, axum::Json(body)).into_response();
        if matches!(self, ApiError::Storage(_)) {
            resp.extensions_mut().insert(StorageFailure);
        }
        if let Some(ms) = retry_after_ms {
            let secs = ms.div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::NotFound => ApiError::NotFound("resource"),
            DbError::Conflict(what) => ApiError::Conflict(what),
            e @ (DbError::Unavailable(_) | DbError::Other(_)) => ApiError::Storage(e),
        }
    }
}

impl From<crate::auth::HashError> for ApiError {
    fn from(e: crate::auth::HashError) -> Self {
        match e {
            crate::auth::HashError::Busy { retry_after_ms } => ApiError::Busy { what: "sign-in", retry_after_ms },
            crate::auth::HashError::Failed(e) => ApiError::Internal(e),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

/// Marks a response caused by a storage failure, for the metrics layer.
#[derive(Clone, Copy)]
pub struct StorageFailure;

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;
