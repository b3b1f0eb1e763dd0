//! Error tracking end to end: a real gateway process reports to a local
//! stand-in for Sentry (`SENTRY_DSN=http://public@127.0.0.1:<port>/1`),
//! through the operator's test endpoint: an error event and a panic arrive,
//! tagged, with every secret scrubbed, and the gateway keeps serving.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::Uri;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, eventually};
use crate::procs::Gateway;
use crate::ws::client::WsClient;

const ADMIN_TOKEN: &str = "admin-token-0123456789-abcdefghijklmnop";

/// Every request received: its path and body.
type Received = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

/// An HTTP server standing in for Sentry: it keeps every request body.
struct FakeSentry {
    addr: SocketAddr,
    received: Received,
}

impl FakeSentry {
    async fn start() -> FakeSentry {
        let received = Received::default();
        let keep = received.clone();
        let app = axum::Router::new().fallback(move |uri: Uri, body: Bytes| {
            let keep = keep.clone();
            async move {
                keep.lock().unwrap().push((uri.path().to_owned(), body.to_vec()));
                "{}"
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeSentry { addr, received }
    }

    fn dsn(&self) -> String {
        format!("http://public@{}/1", self.addr)
    }

    /// Every event item of every envelope received so far.
    fn events(&self) -> Vec<Value> {
        let received = self.received.lock().unwrap();
        received
            .iter()
            .filter(|(path, _)| path == "/api/1/envelope/")
            .flat_map(|(_, body)| envelope_items(body))
            .filter(|(header, _)| header["type"] == "event")
            .map(|(_, payload)| serde_json::from_slice(&payload).expect("event payloads are JSON"))
            .collect()
    }

    /// Everything received, as text, for the secret checks.
    fn all_bytes(&self) -> String {
        let received = self.received.lock().unwrap();
        received.iter().map(|(p, b)| format!("{p}\n{}\n", String::from_utf8_lossy(b))).collect()
    }
}

/// Splits a Sentry envelope: a header line, then items, each a header line
/// and a payload of `length` bytes (or up to the next newline without one).
fn envelope_items(body: &[u8]) -> Vec<(Value, Vec<u8>)> {
    fn line(b: &[u8]) -> (&[u8], &[u8]) {
        match b.iter().position(|c| *c == b'\n') {
            Some(i) => (&b[..i], &b[i + 1..]),
            None => (b, &[]),
        }
    }
    let (envelope_header, mut rest) = line(body);
    serde_json::from_slice::<Value>(envelope_header).expect("envelope header is JSON");
    let mut items = Vec::new();
    while !rest.is_empty() {
        let (header, after) = line(rest);
        if header.is_empty() {
            rest = after;
            continue;
        }
        let header: Value = serde_json::from_slice(header).expect("item header is JSON");
        let (payload, after) = match header["length"].as_u64() {
            Some(n) => {
                let (p, r) = after.split_at(n as usize);
                (p, r.strip_prefix(b"\n").unwrap_or(r))
            }
            None => line(after),
        };
        items.push((header, payload.to_vec()));
        rest = after;
    }
    items
}

fn gateway_env(db_url: &str, dsn: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db_url),
        ("JWT_SECRET", "test-secret-0123456789-abcdefghijklmnop"),
        ("ADMIN_TOKEN", ADMIN_TOKEN),
        ("SENTRY_DSN", dsn),
        // INFO lines become breadcrumbs: they are scrubbed and checked too.
        ("RUST_LOG", "info"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_panics_reach_sentry_tagged_and_scrubbed() {
    let sentry = FakeSentry::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}/gw.db", dir.path().display());
    let gw = Gateway::start(&gateway_env(&db_url, &sentry.dsn())).await;
    let app = TestApp::remote(gw.addr, &db_url, Db::Sqlite).await;

    // Ordinary traffic first, whose secrets must not travel either.
    let alice = app.register("sentry-alice").await;
    let room = app.create_room(&alice, "private", &[]).await;
    let body = format!("a very private message body {}", uuid::Uuid::new_v4().simple());
    let mut ws = WsClient::connect(&app, &alice.access).await;
    ws.join(&room, None).await;
    ws.send_msg(&room, "m1", &body).await;
    assert_eq!(ws.next_of("ack").await["seq"], 1);

    let url = app.url("/api/v1/admin/debug/sentry-test");
    let unauthorized = app.send(app.http.post(&url)).await;
    assert_eq!(unauthorized.status, StatusCode::UNAUTHORIZED, "operator only");
    let r = app.send(app.http.post(&url).bearer_auth(ADMIN_TOKEN)).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.body);
    assert_eq!(r.body["sentry_enabled"], true);
    let test_id = r.body["test_id"].as_str().unwrap().to_owned();
    let fake: Vec<String> =
        r.body["fake_secrets"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().into()).collect();
    assert_eq!(fake.len(), 6);

    let is_panic = |e: &Value| e["exception"]["values"][0]["mechanism"]["type"] == "panic";
    let mentions = |e: &Value| e.to_string().contains(&test_id);
    let (error, panic) = eventually(Duration::from_secs(30), || async {
        let events = sentry.events();
        let error = events.iter().find(|e| mentions(e) && !is_panic(e))?.clone();
        let panic = events.iter().find(|e| mentions(e) && is_panic(e))?.clone();
        Some((error, panic))
    })
    .await;

    for (what, e) in [("error", &error), ("panic", &panic)] {
        assert_eq!(e["release"], format!("chatgw@{}", env!("CARGO_PKG_VERSION")), "{what}: {e}");
        assert_eq!(e["environment"], "development", "{what}: defaults to APP_ENV");
        let instance = e["tags"]["instance"].as_str().unwrap_or_else(|| panic!("{what} has no instance tag: {e}"));
        assert!(instance.ends_with(&format!(":{}", gw.pid())), "{what}: instance {instance} names the process");
        assert!(e.get("request").is_none() && e.get("user").is_none(), "{what}: no request or user data");
    }
    // `error` is Sentry's default level, left out of the JSON.
    assert!(error.get("level").is_none_or(|l| l == "error"), "{error}");
    assert_eq!(panic["level"], "fatal");
    assert!(panic["exception"]["values"][0]["value"].as_str().unwrap().contains(&test_id), "{panic}");
    // The secrets were there and were replaced, not silently lost with
    // the rest of the event.
    let error_text = error.to_string();
    assert!(error_text.contains("[redacted]"), "{error_text}");
    assert!(error_text.contains(&format!("sentry test error {test_id}")), "{error_text}");

    let everything = sentry.all_bytes();
    let mut secrets = fake.clone();
    secrets.extend([
        alice.access.clone(),
        alice.refresh.clone(),
        alice.email.clone(),
        "correct horse battery".into(),
        body.clone(),
        ADMIN_TOKEN.into(),
    ]);
    for s in &secrets {
        assert!(!everything.contains(s.as_str()), "a secret reached Sentry: {s}");
    }

    // The panic killed one task, not the gateway.
    let health = app.send(app.http.get(app.url("/healthz"))).await;
    assert_eq!(health.status, StatusCode::OK);
    ws.send(json!({"type": "ping", "id": "after"})).await;
    assert_eq!(ws.next_of("pong").await["id"], "after");
}

#[test]
fn a_bad_sentry_dsn_stops_start_up_naming_the_variable() {
    for (var, value) in [("SENTRY_DSN", "not-a-dsn-secretkey"), ("SENTRY_SAMPLE_RATE", "2")] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_chatgw"))
            .env_clear()
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env(var, value)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && !err.contains(value), "{err}");
    }
}
