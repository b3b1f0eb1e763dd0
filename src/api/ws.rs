//! `GET /ws`, the HTTP edge of the socket: everything is checked before the
//! upgrade, so a refused client gets a plain HTTP error and never a socket.
//! This is the one place of the socket path that knows `AppState`; the
//! connection (`hub::conn`) gets only what it needs.

use std::net::IpAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use crate::auth::tokens::{TICKET_PREFIX, hash_token, looks_like};
use crate::error::ApiError;
use crate::hub::conn::{self, Authenticated};
use crate::net::ClientAddr;
use crate::protocol::{self, Heartbeat};
use crate::state::AppState;

/// Bytes read per socket read: client frames are small; a larger frame just
/// takes more reads.
const READ_BUFFER: usize = 512;

/// Bytes of frames gathered before a socket write (a flush writes sooner).
const WRITE_BUFFER: usize = 16 * 1024;

/// The query parameters `/ws` reads. Each may appear once; a repeated one
/// is refused rather than resolved, since no choice between two values is
/// the one the client meant (`heartbeat=app&heartbeat=ws`). Parameters of
/// other names are ignored (cache busters, a newer client's options), as
/// everywhere on the web.
#[derive(Default)]
struct WsParams {
    ticket: Option<String>,
    /// `app` for app-level heartbeats, `ws` (the default) for WebSocket pings.
    heartbeat: Option<String>,
}

impl WsParams {
    /// From the decoded `name=value` pairs, in order.
    ///
    /// # Errors
    /// A message for the 400 answer naming the repeated parameter (never
    /// its values: one may be a ticket).
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<WsParams, String> {
        let mut params = WsParams::default();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "ticket" => &mut params.ticket,
                "heartbeat" => &mut params.heartbeat,
                _ => continue,
            };
            if slot.replace(value).is_some() {
                return Err(format!("query parameter {name:?} appears more than once"));
            }
        }
        Ok(params)
    }
}

/// The handshake, in order: draining, Origin, subprotocol and options,
/// per-IP rate, credentials, ban, capacity; then the upgrade with small
/// buffers, selecting `chatgw.v1` when the client offered it.
pub async fn handler(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    // Refused in `admit`, in its place in the order of checks: a query
    // that cannot be read is never served with defaults.
    let params = match query {
        Ok(Query(pairs)) => WsParams::from_pairs(pairs),
        Err(e) => Err(format!("query string: {}", e.body_text())),
    };
    match admit(&state, client.0, &headers, params).await {
        Ok((who, place, heartbeat)) => {
            let upgrade = match upgrade {
                Ok(u) => u,
                Err(_) => {
                    count(&state, "not_websocket");
                    return ApiError::bad_request("expected a WebSocket upgrade request").into_response();
                }
            };
            count(&state, "ok");
            let limits = &state.hub.settings().limits;
            // The connection gets the hub and the keys `auth` renewals
            // check, never the whole state: the hub knows nothing of the
            // composition root.
            let (hub, keys) = (state.hub.clone(), state.keys.clone());
            upgrade
                .protocols([protocol::SUBPROTOCOL])
                // tungstenite's defaults (128 KiB buffers, 64 MiB messages)
                // would cost >100 KiB per idle socket; chat frames are small.
                // The write buffer lets the writer coalesce queued frames
                // into one write per flush (hub/conn/socket.rs); it grows only on
                // sockets that receive bursts.
                .read_buffer_size(READ_BUFFER)
                .write_buffer_size(WRITE_BUFFER)
                .max_write_buffer_size(limits.max_frame_bytes * 4 + 64 * 1024)
                .max_message_size(limits.max_frame_bytes)
                .max_frame_size(limits.max_frame_bytes)
                .on_upgrade(move |socket| async move {
                    let task = conn::run(socket, hub.clone(), keys, who, place, client.0, heartbeat);
                    tracing::trace!(task_bytes = std::mem::size_of_val(&task), "connection task");
                    hub.spawn_conn(task);
                })
        }
        Err((reason, e)) => {
            count(&state, reason);
            // Logged once per refusal, with the cause; accepted handshakes
            // log "connected" in the connection's span.
            tracing::info!(outcome = reason, client = %client, status = e.status_and_code().0.as_u16(), "handshake refused");
            e.into_response()
        }
    }
}

/// Whether a browser's `Origin` may open a socket: listed in
/// `ALLOWED_ORIGINS` (or `*` listed), or, when `own_host` is given (the demo
/// is on), the request's own `Host` with any scheme: the page this gateway
/// served. A proxy that rewrites `Host` must pass the public one on.
fn origin_allowed(origin: &str, allowed: &[String], own_host: Option<&str>) -> bool {
    let origin = origin.trim_end_matches('/');
    if allowed.iter().any(|a| a == "*" || a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://"));
    matches!((host, own_host), (Some(h), Some(own)) if h.eq_ignore_ascii_case(own))
}

fn count(state: &AppState, outcome: &str) {
    state.metrics.ws_handshakes.inc(outcome);
}

async fn admit(
    state: &AppState,
    client: IpAddr,
    headers: &HeaderMap,
    params: Result<WsParams, String>,
) -> Result<(Authenticated, OwnedSemaphorePermit, Heartbeat), (&'static str, ApiError)> {
    if state.readiness.is_draining() || state.hub.is_draining() {
        return Err(("draining", ApiError::Unavailable("server is restarting; reconnect later".into())));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        // The demo page is served by this gateway, so its own origin is the
        // page's; without the demo, only ALLOWED_ORIGINS counts.
        let own_host = state.config.demo.as_ref().and_then(|_| headers.get(header::HOST)?.to_str().ok());
        let ok = origin.to_str().is_ok_and(|o| origin_allowed(o, &state.config.allowed_origins, own_host));
        if !ok {
            return Err(("origin", ApiError::Forbidden("origin not allowed")));
        }
    }
    // A client bug, not a credential problem: refused before any lookup.
    protocol::check_subprotocol(headers).map_err(|m| ("bad_request", ApiError::bad_request(m)))?;
    let params = params.map_err(|m| ("bad_request", ApiError::bad_request(m)))?;
    let heartbeat =
        Heartbeat::from_query(params.heartbeat.as_deref()).map_err(|m| ("bad_request", ApiError::bad_request(m)))?;
    let ticket = params.ticket;
    if let Err(retry_after_ms) = state.limits.check_handshake(client) {
        return Err(("rate_limited", ApiError::RateLimited { retry_after_ms }));
    }
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(s, _)| s.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_owned());
    let who = match (bearer, ticket) {
        (Some(token), _) => {
            let claims = state
                .keys
                .verify(&token)
                .map_err(|_| ("unauthorized", ApiError::Unauthorized("invalid or expired access token")))?;
            Authenticated { user_id: claims.sub, session_id: claims.sid, expires_at: claims.exp * 1000 }
        }
        (None, Some(ticket)) => {
            if !looks_like(&ticket, TICKET_PREFIX) {
                return Err(("unauthorized", ApiError::Unauthorized("invalid ticket")));
            }
            let who = state
                .store
                .consume_ws_ticket(&hash_token(&ticket))
                .await
                .map_err(|e| ("unavailable", e.into()))?
                .ok_or(("unauthorized", ApiError::Unauthorized("invalid, used or expired ticket")))?;
            // A ticketed socket lives as long as an access token would.
            let expires_at = crate::clock::now_ms() + state.keys.ttl().as_millis() as i64;
            Authenticated { user_id: who.user_id, session_id: who.session_id, expires_at }
        }
        (None, None) => return Err(("unauthorized", ApiError::Unauthorized("missing bearer token or ticket"))),
    };
    // Banned or erased is 403 (do not retry); logged out is 401. One query.
    let status = state
        .store
        .session_status(&who.user_id, &who.session_id)
        .await
        .map_err(|e| ("unavailable", e.into()))?
        .ok_or(("unauthorized", ApiError::Unauthorized("unknown session")))?;
    if status.banned {
        return Err(("banned", ApiError::Forbidden("user is banned")));
    }
    if status.erased {
        return Err(("erased", ApiError::Forbidden("account erased")));
    }
    if status.revoked {
        return Err(("unauthorized", ApiError::Unauthorized("session revoked")));
    }
    // A stolen or scripted account cannot hold an instance's sockets; a real
    // user's stale sockets (a phone that changed networks) vanish within the
    // idle timeout, hence the Retry-After.
    let cap = state.config.ws.max_sockets_per_user;
    if state.hub.user_connection_count(&who.user_id) >= cap {
        return Err((
            "user_cap",
            ApiError::LimitExceeded {
                what: "open sockets for this user (WS_MAX_SOCKETS_PER_USER)",
                retry_after_ms: state.config.ws.idle_timeout.as_millis() as u64,
            },
        ));
    }
    // Held by the connection task for the socket's life.
    let place = state
        .hub
        .try_reserve_connection()
        .ok_or(("capacity", ApiError::Unavailable("too many connections on this instance".into())))?;
    Ok((who, place, heartbeat))
}

#[cfg(test)]
mod tests {
    use super::{WsParams, origin_allowed};

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn known_parameters_appear_once_and_unknown_ones_are_ignored() {
        let p = WsParams::from_pairs(pairs(&[("x", "1"), ("heartbeat", "app"), ("x", "2"), ("ticket", "t")])).unwrap();
        assert_eq!((p.heartbeat.as_deref(), p.ticket.as_deref()), (Some("app"), Some("t")));
        for twice in [&[("heartbeat", "app"), ("heartbeat", "app")], &[("ticket", "wst_a"), ("ticket", "wst_b")]] {
            let e = WsParams::from_pairs(pairs(twice)).err().expect("refused");
            assert!(e.contains(twice[0].0) && !e.contains("wst_"), "{e}");
        }
    }

    #[test]
    fn origins_are_the_listed_ones_or_with_the_demo_the_gateways_own_host() {
        let listed = vec!["https://app.example.com".to_owned()];
        assert!(origin_allowed("https://app.example.com/", &listed, None));
        assert!(!origin_allowed("https://evil.example.com", &listed, None));
        assert!(!origin_allowed("http://127.0.0.1:8080", &listed, None));
        assert!(origin_allowed("http://127.0.0.1:8080", &listed, Some("127.0.0.1:8080")));
        assert!(origin_allowed("https://Chat.Example.com", &[], Some("chat.example.com")));
        // Same host, other port: another origin.
        assert!(!origin_allowed("http://127.0.0.1:9090", &[], Some("127.0.0.1:8080")));
        assert!(!origin_allowed("null", &[], Some("null")));
        assert!(origin_allowed("https://anything.example", &["*".to_owned()], None));
    }
}
