//! The browser chat demo (`DEMO`): three static files at `/demo/`, built by
//! `npm run demo:build` in `clients/typescript` and compiled into the binary,
//! so `cargo run --release` and a browser show a working chat with nothing
//! else to install.
//!
//! The page talks to this same gateway (REST and `/ws`), which is why the
//! handshake accepts the gateway's own origin while the demo is on
//! (`api::ws`). Its strict CSP allows nothing but this origin.

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};

use crate::{config::DemoConfig, error::ApiError, state::AppState};

/// One file of the page: its name under `/demo/`, media type and the copy
/// built into the binary.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    embedded: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        embedded: include_bytes!("../../clients/typescript/demo/dist/index.html"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        embedded: include_bytes!("../../clients/typescript/demo/dist/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        embedded: include_bytes!("../../clients/typescript/demo/dist/app.css"),
    },
];

/// Same origin only: REST and the socket go back to this gateway, and the
/// page runs no inline code.
const CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; style-src 'self'; \
                   script-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `/`, `/demo` and `/demo/{file}`; merged into the app only when the demo
/// is on, so a production gateway answers 404 there as before.
pub fn router() -> Router<AppState> {
    let to_demo = || async { Redirect::to("/demo/") };
    Router::new()
        .route("/", get(to_demo))
        .route("/demo", get(to_demo))
        .route("/demo/", get(|state: State<AppState>| serve(state, "index.html")))
        .route("/demo/{file}", get(|state: State<AppState>, Path(file): Path<String>| serve(state, file)))
}

async fn serve(State(state): State<AppState>, file: impl AsRef<str>) -> Result<Response, ApiError> {
    let file = file.as_ref();
    let asset = ASSETS.iter().find(|a| a.name == file).ok_or(ApiError::NotFound("route"))?;
    let body = match &state.config.demo {
        Some(DemoConfig::Dir(dir)) => tokio::fs::read(dir.join(asset.name))
            .await
            .map(Bytes::from)
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("DEMO_DIR: reading {}: {e}", asset.name)))?,
        _ => Bytes::from_static(asset.embedded),
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            // Revalidate every time: a rebuilt gateway must not serve a
            // browser the old script.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        ],
        body,
    )
        .into_response())
}
