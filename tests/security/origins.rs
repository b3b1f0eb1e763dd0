//! Browser origins: CORS on REST and `Origin` on the WebSocket handshake,
//! both from `ALLOWED_ORIGINS` (README "Configuration", protocol/README.md
//! 2.3).
//!
//! REST: a listed origin gets `Access-Control-Allow-Origin` (its own value,
//! or `*` when `*` is configured), an unlisted one gets no
//! `Access-Control-Allow-Origin` (a page of theirs cannot read the answer),
//! and no response ever carries `Access-Control-Allow-Credentials`:
//! the API authenticates with bearer tokens, which a browser never attaches
//! on its own, so there is nothing for a foreign page to ride on and `*`
//! stays safe. The handshake: no Origin (a native client) is accepted, a
//! listed one is accepted, any other is 403 `forbidden`, before the ticket
//! is looked at (a refused handshake does not spend it).

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::json;

use super::{Bystander, refused};
use crate::helpers::{Db, TestApp, spawn_app_with};
use crate::ws::client::WsClient;

const APP: &str = "https://app.example.com";

/// Origins that must never pass for `APP`.
const HOSTILE: [&str; 7] = [
    "https://evil.example",
    "null",
    "https://app.example.com.evil.example",
    "https://evil-app.example.com",
    "http://app.example.com",
    "https://app.example.com:8443",
    "https://app.example.co",
];

fn no_credentials(h: &HeaderMap, what: &str) {
    assert!(!h.contains_key("access-control-allow-credentials"), "{what}: never credentials mode");
}

async fn preflight(app: &TestApp, origin: &str, method: &str) -> (StatusCode, HeaderMap) {
    let r = app
        .send(
            app.http
                .request(reqwest::Method::OPTIONS, app.url("/api/v1/rooms"))
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header("access-control-request-headers", "authorization, content-type, idempotency-key"),
        )
        .await;
    (r.status, r.headers)
}

async fn get_with_origin(app: &TestApp, token: &str, origin: &str) -> (StatusCode, HeaderMap) {
    let r = app.send(app.http.get(app.url("/api/v1/me")).bearer_auth(token).header("origin", origin)).await;
    (r.status, r.headers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_only_listed_origins_and_never_allows_credentials() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("ALLOWED_ORIGINS".into(), format!("{APP},https://admin.example.com"));
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;

    let (status, h) = get_with_origin(&app, &ann.access, APP).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h["access-control-allow-origin"], APP);
    assert!(
        h.get_all("vary").iter().any(|v| v.to_str().unwrap().to_ascii_lowercase().contains("origin")),
        "Vary: Origin"
    );
    no_credentials(&h, "allowed GET");
    let (status, h) = preflight(&app, APP, "POST").await;
    assert!(status.is_success(), "{status}");
    assert_eq!(h["access-control-allow-origin"], APP);
    let methods = h["access-control-allow-methods"].to_str().unwrap().to_ascii_uppercase();
    assert!(methods.contains("POST") && methods.contains("DELETE"), "{methods}");
    let headers = h["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    for needed in ["authorization", "content-type", "idempotency-key"] {
        assert!(headers.contains(needed), "{needed} in {headers}");
    }
    no_credentials(&h, "allowed preflight");

    for origin in HOSTILE {
        let (status, h) = get_with_origin(&app, &ann.access, origin).await;
        // CORS is read by the browser: the request is answered, without
        // any header that would let a foreign page read the answer.
        assert_eq!(status, StatusCode::OK);
        assert!(!h.contains_key("access-control-allow-origin"), "{origin}: not readable by the page: {h:?}");
        no_credentials(&h, origin);
        let (_, h) = preflight(&app, origin, "DELETE").await;
        assert!(!h.contains_key("access-control-allow-origin"), "{origin}: preflight refused");
        no_credentials(&h, origin);
    }
    // An error answer to a listed origin is readable too (so the page can
    // show it), still without credentials.
    let r = app.send(app.http.get(app.url("/api/v1/me")).header("origin", APP)).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(r.headers["access-control-allow-origin"], APP);
    no_credentials(&r.headers, "401");
    bystander.still_fine(&app).await;
}

/// `*` answers `*` (never the echoed origin with credentials); no
/// configuration means no CORS headers at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_wildcard_and_unset() {
    let any = spawn_app_with(Db::Sqlite, |v| {
        v.insert("ALLOWED_ORIGINS".into(), "*".into());
    })
    .await;
    let ann = any.register("ann").await;
    for origin in [APP, "https://evil.example", "null"] {
        let (_, h) = get_with_origin(&any, &ann.access, origin).await;
        assert_eq!(h["access-control-allow-origin"], "*", "{origin}");
        no_credentials(&h, origin);
        let (_, h) = preflight(&any, origin, "PATCH").await;
        assert_eq!(h["access-control-allow-origin"], "*", "{origin}");
        no_credentials(&h, origin);
    }
    let none = spawn_app_with(Db::Sqlite, |_| {}).await;
    let bob = none.register("bob").await;
    let (status, h) = get_with_origin(&none, &bob.access, APP).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!h.keys().any(|k| k.as_str().starts_with("access-control-")), "{h:?}");
    let (_, h) = preflight(&none, APP, "POST").await;
    assert!(!h.contains_key("access-control-allow-origin"));
    super::assert_healthy(&any).await;
    super::assert_healthy(&none).await;
}

/// The handshake: no Origin and a listed one are accepted, everything else
/// is 403 `forbidden`, and a ticket offered with a refused Origin is not
/// spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_origin_allowlist() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("ALLOWED_ORIGINS".into(), APP.into());
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;

    let mut native = WsClient::try_connect(&app, Some(&ann.access), None, None).await.ok().expect("no Origin: native");
    let mut browser = WsClient::try_connect(&app, Some(&ann.access), None, Some(APP)).await.ok().expect("listed");
    let mut slash = WsClient::try_connect(&app, Some(&ann.access), None, Some("https://app.example.com/"))
        .await
        .ok()
        .expect("the same origin serialised with a trailing slash");
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    let ticket = t.body["ticket"].as_str().unwrap().to_owned();
    for origin in HOSTILE {
        assert_eq!(refused(&app, Some(&ann.access), None, Some(origin)).await, (403, "forbidden".into()), "{origin}");
        assert_eq!(refused(&app, None, Some(&ticket), Some(origin)).await, (403, "forbidden".into()), "{origin}");
    }
    // The ticket survived the refused attempts.
    let mut ticketed = WsClient::try_connect(&app, None, Some(&ticket), Some(APP)).await.ok().expect("ticket unspent");
    for c in [&mut native, &mut browser, &mut slash, &mut ticketed] {
        assert!(c.drain_until_pong().await.is_empty());
    }
    bystander.still_fine(&app).await;

    // Without ALLOWED_ORIGINS, any browser Origin is refused; native is fine.
    let closed = spawn_app_with(Db::Sqlite, |_| {}).await;
    let bob = closed.register("bob").await;
    assert_eq!(refused(&closed, Some(&bob.access), None, Some(APP)).await, (403, "forbidden".into()));
    let mut n = WsClient::try_connect(&closed, Some(&bob.access), None, None).await.ok().expect("native");
    assert!(n.drain_until_pong().await.is_empty());
}

/// With the demo on (the development default), the page the gateway serves
/// may open a socket: its Origin is the gateway's own `Host`. Other origins
/// stay refused, and with `DEMO=0` the own origin is just another origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_accepts_the_gateways_own_origin_only_with_the_demo() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let ann = app.register("ann").await;
    let own = format!("http://{}", app.addr);
    let mut page = WsClient::try_connect(&app, Some(&ann.access), None, Some(&own)).await.ok().expect("own origin");
    assert!(page.drain_until_pong().await.is_empty());
    let other_port = format!("http://{}:{}", app.addr.ip(), app.addr.port() + 1);
    for origin in HOSTILE.iter().copied().chain([other_port.as_str()]) {
        assert_eq!(refused(&app, Some(&ann.access), None, Some(origin)).await, (403, "forbidden".into()), "{origin}");
    }

    let off = spawn_app_with(Db::Sqlite, |v| {
        v.insert("DEMO".into(), "0".into());
    })
    .await;
    let bob = off.register("bob").await;
    let own = format!("http://{}", off.addr);
    assert_eq!(refused(&off, Some(&bob.access), None, Some(&own)).await, (403, "forbidden".into()));
    super::assert_healthy(&app).await;
    super::assert_healthy(&off).await;
}
