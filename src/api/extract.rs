//! Extractors that turn every malformed input into the one error shape,
//! and [`AuthUser`], the one that guarantees a live, authenticated caller.
//!
//! `AuthUser` lives here, at the HTTP edge, rather than in `auth`: it needs
//! the application state and the HTTP error, and `auth` stays a component
//! that imports neither (tokens, passwords, keys only).

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use axum::http::header::AUTHORIZATION;

use crate::auth::TokenError;
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

/// `Json<T>` whose rejections are [`ApiError`]s: 415 without a JSON content
/// type, 413 over the body limit, 400 for syntax or shape errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::UnsupportedMediaType),
            Err(JsonRejection::JsonSyntaxError(_)) => Err(ApiError::bad_request("malformed JSON body")),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::bad_request(data_error_message(&e.body_text()))),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::TooLarge),
            Err(_) => Err(ApiError::bad_request("unreadable request body")),
        }
    }
}

/// Keeps serde's useful part ("missing field `email`") and drops axum's
/// prefix.
fn data_error_message(text: &str) -> String {
    let msg = text.rsplit_once(": ").map(|(_, m)| m).unwrap_or(text);
    format!("invalid JSON body: {msg}")
}

/// `Query<T>` with [`ApiError`] rejections.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state).await.map(|q| ApiQuery(q.0)).map_err(
            |e: QueryRejection| {
                ApiError::bad_request(format!(
                    "invalid query string: {}",
                    e.body_text().rsplit_once(": ").map(|(_, m)| m).unwrap_or("malformed")
                ))
            },
        )
    }
}

/// `Path<T>` with [`ApiError`] rejections: a segment that is not UTF-8 once
/// percent-decoded (`/rooms/%FF`) or does not fit `T` is a 400 in the one
/// error shape, not axum's plain-text rejection.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|_| ApiError::bad_request("invalid path: each segment must be UTF-8 and a valid id"))
    }
}

#[cfg(test)]
mod props {
    use axum::Router;
    use axum::body::{Body, to_bytes};
    use axum::extract::DefaultBodyLimit;
    use axum::http::{Request, StatusCode, header};
    use axum::routing::post;
    use proptest::prelude::*;
    use tower::ServiceExt;

    use super::*;
    use crate::api::auth::RegisterRequest;

    const LIMIT: usize = 256;

    /// Posts `body` through a router with the gateway's extractor and a
    /// body limit; returns the status and the JSON error code, if any.
    fn post_body(body: Vec<u8>, content_type: Option<&str>) -> (StatusCode, Option<String>) {
        let app = Router::new()
            .route("/", post(|ApiJson(_): ApiJson<RegisterRequest>| async { StatusCode::OK }))
            .layer(DefaultBodyLimit::max(LIMIT));
        let mut req = Request::builder().method("POST").uri("/");
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(Body::from(body)).expect("a valid request");
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let resp = app.oneshot(req).await.expect("infallible");
            let status = resp.status();
            let bytes = to_bytes(resp.into_body(), 1 << 16).await.expect("body");
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            (status, v["error"]["code"].as_str().map(str::to_owned))
        })
    }

    /// Nested arrays and objects, `depth` deep.
    fn nested(depth: usize, objects: bool) -> Vec<u8> {
        let (open, close) = if objects { (r#"{"a":"#, "}") } else { ("[", "]") };
        format!("{}1{}", open.repeat(depth), close.repeat(depth)).into_bytes()
    }

    fn status_for(code: &str) -> StatusCode {
        match code {
            "bad_request" => StatusCode::BAD_REQUEST,
            "too_large" => StatusCode::PAYLOAD_TOO_LARGE,
            "unsupported_media_type" => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Any bytes with a JSON content type: accepted, or refused with the
        /// one error shape as `bad_request` (or `too_large` over the limit).
        #[test]
        fn arbitrary_json_bodies(body in prop::collection::vec(any::<u8>(), 0..2 * LIMIT)) {
            let over = body.len() > LIMIT;
            let (status, code) = post_body(body, Some("application/json"));
            if status != StatusCode::OK {
                let code = code.expect("an error body");
                prop_assert_eq!(status, status_for(&code));
                prop_assert_eq!(code, if over { "too_large" } else { "bad_request" });
            }
        }

        /// Without a JSON content type: 415 `unsupported_media_type`.
        #[test]
        fn other_content_types(body in prop::collection::vec(any::<u8>(), 0..64), ct in prop::option::of("[a-z]{1,10}/[a-z+.-]{1,12}")) {
            prop_assume!(!ct.as_deref().is_some_and(|c| c == "application/json" || c.ends_with("+json")));
            let (status, code) = post_body(body, ct.as_deref());
            prop_assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
            prop_assert_eq!(code.as_deref(), Some("unsupported_media_type"));
        }

        /// Deeply nested JSON is refused as `bad_request` (or `too_large`),
        /// never a stack overflow or a 500.
        #[test]
        fn deep_nesting(depth in 0usize..2000, objects in any::<bool>()) {
            let body = nested(depth, objects);
            let over = body.len() > LIMIT;
            let (status, code) = post_body(body, Some("application/json"));
            prop_assert_eq!(code.as_deref(), Some(if over { "too_large" } else { "bad_request" }), "{}", status);
        }
    }
}
