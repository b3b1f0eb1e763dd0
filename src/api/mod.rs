//! The REST layer under `/api/v1`, and the middleware every request passes:
//! request id, trace span, metrics, timeout, body limit, CORS, security
//! headers, JSON errors for unknown routes and methods.

pub mod admin;
pub mod audit;
pub mod auth;
pub mod debug;
pub mod demo;
pub mod extract;
pub mod health;
pub mod idempotency;
pub mod me;
pub mod openapi;
pub mod rooms;
pub mod stats;
pub mod validate;
pub mod ws;

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{BoxError, Router};
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

use crate::error::ApiError;
use crate::net::ClientAddr;
use crate::state::AppState;

pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the whole HTTP router. `extra` holds routes that live outside
/// `/api/v1` but share the middleware (the WebSocket endpoint).
pub fn router(state: AppState, extra: Router<AppState>) -> Router {
    let config = state.config.clone();
    let creates = rooms::create_router().route_layer(middleware::from_fn_with_state(state.clone(), idempotency::layer));

    // Timeouts apply to REST only: an upgraded socket lives on after its
    // handshake response, outside this layer.
    let timeout = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|e: BoxError| async move {
            if e.is::<tower::timeout::error::Elapsed>() {
                ApiError::Timeout
            } else {
                ApiError::Internal(anyhow::anyhow!("middleware: {e}"))
            }
        }))
        .timeout(config.request_timeout);

    let app = paths(v1(creates).layer(timeout))
        .merge(extra)
        .merge(if config.demo.is_some() { demo::router() } else { Router::new() })
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::bad_request("method not allowed on this route") })
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), refuse_announced_oversize))
        .layer(middleware::from_fn_with_state(state.clone(), track_metrics))
        .with_state(state);

    let app = match cors(&config.allowed_origins) {
        Some(c) => app.layer(c),
        None => app,
    };
    let trusted = config.trusted_proxies.clone();
    security_headers(app)
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |req: &Request| {
                    let id = req.headers().get(&REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
                    // The client behind trusted proxies, as the limits see it.
                    let client = ClientAddr::of(req.extensions(), req.headers(), &trusted);
                    // Path only: the query may carry a ws ticket.
                    tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id, client = %client)
                })
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// The routes under `/api/v1`; `creates` are the room-creating routes
/// (behind the idempotency layer in [`router`]).
fn v1(creates: Router<AppState>) -> Router<AppState> {
    Router::new()
        .merge(auth::router())
        .merge(admin::router())
        .merge(debug::router())
        .merge(me::router())
        .merge(rooms::router())
        .merge(creates)
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
}

/// `/api/v1` and the probes at the root.
fn paths(v1: Router<AppState>) -> Router<AppState> {
    Router::new().nest("/api/v1", v1).route("/healthz", get(health::healthz)).route("/readyz", get(health::readyz))
}

/// The REST routes of [`router`] (neither the WebSocket endpoint, which the
/// protocol document describes, nor the demo's static pages), without
/// middleware or state: what tests compare with the OpenAPI document, so
/// that a route added here and left out of it fails them. axum cannot list
/// a router's routes; its `Debug` output names each path and method.
pub fn rest_routes() -> Router<AppState> {
    paths(v1(rooms::create_router()))
}

/// CORS from `ALLOWED_ORIGINS`: only listed origins get CORS headers; no
/// credentials mode (the API uses bearer tokens, not cookies), so `*` is
/// safe when explicitly configured.
fn cors(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                HeaderName::from_static(idempotency::HEADER),
                REQUEST_ID,
            ])
            .expose_headers([REQUEST_ID, header::RETRY_AFTER])
            .max_age(Duration::from_secs(600)),
    )
}

/// What helmet would set for a JSON API. `no-store` everywhere: responses
/// carry tokens and private messages that no cache should keep.
fn security_headers(app: Router) -> Router {
    let headers: [(HeaderName, &'static str); 5] = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    headers.into_iter().fold(app, |app, (name, value)| {
        app.layer(SetResponseHeaderLayer::if_not_present(name, HeaderValue::from_static(value)))
    })
}

/// A body announced (`Content-Length`) larger than `MAX_BODY_BYTES` is 413
/// at once, before any of it is read: the body limit alone counts bytes as
/// they arrive, so a client announcing a gigabyte and sending nothing would
/// hold its request open until the request timeout.
async fn refuse_announced_oversize(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let announced = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > state.config.max_body_bytes as u64) {
        return ApiError::TooLarge.into_response();
    }
    next.run(req).await
}

/// Counts and times requests by route template (never the raw path: ids
/// would explode the label set), and counts storage failures.
async fn track_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let route =
        req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let m = &state.metrics;
    m.http_requests.with_label_values(&[method.as_str(), &route, resp.status().as_str()]).inc();
    m.http_duration.with_label_values(&[method.as_str(), &route]).observe(started.elapsed().as_secs_f64());
    if resp.extensions().get::<crate::error::StorageFailure>().is_some() {
        m.db_errors.inc("http");
    }
    resp.into_response()
}
