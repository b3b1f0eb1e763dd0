//! Extractors that turn every malformed input into the one error shape.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

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
