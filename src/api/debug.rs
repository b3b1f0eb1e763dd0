//! `POST /admin/debug/sentry-test`: lets an operator check error tracking
//! end to end on a running instance, without waiting for a real failure.
//!
//! It raises the two things Sentry is there for: an `ERROR` event (carrying
//! fake secrets, to show the scrubber removes them) and a panic in a spawned
//! task (tokio catches it; the instance keeps serving). Both carry a fresh
//! `test_id` to search for in Sentry. The fake secrets never reach the logs
//! (see [`crate::telemetry::SENTRY_TEST_TARGET`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::ToSchema;

use super::admin::Admin;
use crate::auth::tokens::{REFRESH_PREFIX, TICKET_PREFIX, new_token};
use crate::error::ErrorBody;
use crate::state::AppState;
use crate::telemetry::SENTRY_TEST_TARGET;

pub fn router() -> Router<AppState> {
    Router::new().route("/admin/debug/sentry-test", post(sentry_test))
}

/// What was sent, so the operator can find it and check it.
#[derive(Serialize, ToSchema)]
pub struct SentryTest {
    /// In both events: the error's `test_id` field and the panic message.
    pub test_id: String,
    /// Whether this instance reports to Sentry (`SENTRY_DSN`); when false
    /// the events went nowhere.
    pub sentry_enabled: bool,
    /// The fake secrets the error event carried; none of them may appear in
    /// Sentry (`[redacted]` stands in their place).
    pub fake_secrets: Vec<String>,
}

/// Sends a test error event and a test panic to Sentry (operator only).
#[utoipa::path(post, path = "/api/v1/admin/debug/sentry-test", tag = "admin", security(("bearer" = [])),
    responses((status = 202, body = SentryTest), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn sentry_test(State(state): State<AppState>, _admin: Admin) -> (StatusCode, Json<SentryTest>) {
    let test_id = uuid::Uuid::new_v4().simple().to_string();
    let suffix = &test_id[..12];
    // Shaped like the real thing, valid nowhere.
    let jwt = format!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ{suffix}.c2VudHJ5LXRlc3Qtc2lnbmF0dXJl");
    let refresh = new_token(REFRESH_PREFIX);
    let ticket = new_token(TICKET_PREFIX);
    let password = format!("sentry-test-password-{suffix}");
    let email = format!("sentry-test-{suffix}@example.com");
    let body = format!("a private message body {suffix}");
    tracing::error!(
        target: SENTRY_TEST_TARGET,
        test_id = %test_id,
        password = %password,
        token = %jwt,
        email = %email,
        body = %body,
        "sentry test error {test_id}: Authorization: Bearer {jwt}; refresh {refresh}; ticket {ticket}; \
         password={password}; from {email}; body=\"{body}\"",
    );
    // A real panic on a runtime worker: the panic hook reports it, tokio
    // catches it (the build unwinds; nothing sets panic = "abort") and the
    // task's JoinHandle is dropped.
    let in_panic = test_id.clone();
    tokio::spawn(async move { panic!("sentry test panic {in_panic}") });
    tracing::info!(test_id = %test_id, "sentry test event and panic raised");
    let response = SentryTest {
        test_id,
        sentry_enabled: state.config.sentry.is_some(),
        fake_secrets: vec![jwt, refresh, ticket, password, email, body],
    };
    (StatusCode::ACCEPTED, Json(response))
}
