//! A database the test stops itself: every REST route and every socket
//! frame that needs storage answers `unavailable` (503), never 404 or 500,
//! and everything works again once the database is back.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Db, eventually, spawn_app_with};
use crate::procs::PgProc;
use crate::ws_client::WsClient;

const ADMIN: &str = "admin-token-0123456789-abcdefghijklmnop";

/// Routes that answer without the database, by design: the document, the
/// liveness probe, and the admin live view (sockets on this instance).
const WITHOUT_DB: &[(&str, &str)] = &[
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/healthz"),
    ("GET", "/readyz"), // its own shape, checked below
    ("GET", "/api/v1/admin/users/{id}/connections"),
    ("POST", "/api/v1/admin/users/{id}/disconnect"),
    ("POST", "/api/v1/admin/debug/sentry-test"),
    ("GET", "/api/v1/admin/stats"),
];

#[tokio::test]
async fn a_stopped_database_is_unavailable_on_every_route_and_frame_then_recovers() {
    let pg = PgProc::start().await;
    let app = spawn_app_with(Db::Postgres, |v| {
        v.insert("DATABASE_URL".into(), pg.url());
        v.insert("ADMIN_TOKEN".into(), ADMIN.into());
        v.insert("REQUEST_TIMEOUT_SECS".into(), "30".into());
        // The socket is not read while the REST routes are tried.
        v.insert("WS_HEARTBEAT_MS".into(), "300000".into());
        v.insert("WS_IDLE_TIMEOUT_MS".into(), "600000".into());
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&alice, "ops", &[&bob]).await;
    let mut ws = WsClient::connect(&app, &alice.access).await;
    ws.join(&room, None).await;
    ws.send_msg(&room, "before", "before the outage").await;
    assert_eq!(ws.next_of("ack").await["seq"], 1);

    // Every operation of the served document, with ids that exist and
    // bodies that pass validation: only storage can make them fail.
    let doc = app.send(app.http.get(app.url("/api/v1/openapi.json"))).await.body;
    let ops: Vec<(Method, String, Option<Value>, bool)> = vec![
        (
            Method::POST,
            "/api/v1/auth/register".into(),
            Some(json!({"email": "carol@example.com", "password": "correct horse battery", "display_name": "carol"})),
            false,
        ),
        (
            Method::POST,
            "/api/v1/auth/login".into(),
            Some(json!({"email": alice.email, "password": "correct horse battery"})),
            false,
        ),
        (Method::POST, "/api/v1/auth/refresh".into(), Some(json!({"refresh_token": alice.refresh})), false),
        (Method::POST, "/api/v1/auth/logout".into(), None, true),
        (Method::POST, "/api/v1/auth/ws-ticket".into(), None, true),
        (Method::GET, "/api/v1/me".into(), None, true),
        (Method::PATCH, "/api/v1/me".into(), Some(json!({"display_name": "Alice"})), true),
        (Method::DELETE, "/api/v1/me".into(), None, true),
        (Method::GET, "/api/v1/me/export".into(), None, true),
        (Method::GET, format!("/api/v1/users/{}", bob.user_id), None, true),
        (Method::GET, "/api/v1/rooms".into(), None, true),
        (Method::POST, "/api/v1/rooms".into(), Some(json!({"name": "new"})), true),
        (Method::GET, format!("/api/v1/rooms/{room}"), None, true),
        (Method::PATCH, format!("/api/v1/rooms/{room}"), Some(json!({"name": "renamed"})), true),
        (Method::DELETE, format!("/api/v1/rooms/{room}"), None, true),
        (Method::POST, format!("/api/v1/rooms/{room}/members"), Some(json!({"user_id": bob.user_id})), true),
        (Method::DELETE, format!("/api/v1/rooms/{room}/members/{}", bob.user_id), None, true),
        (Method::GET, format!("/api/v1/rooms/{room}/messages"), None, true),
        (Method::POST, format!("/api/v1/admin/users/{}/ban", bob.user_id), None, false),
        (Method::DELETE, format!("/api/v1/admin/users/{}/ban", bob.user_id), None, false),
        (Method::GET, "/api/v1/admin/audit".into(), None, false),
        (Method::DELETE, format!("/api/v1/admin/rooms/{room}/messages/1"), None, false),
        (Method::POST, format!("/api/v1/admin/rooms/{room}/reset-history"), None, false),
    ];
    // The list covers the document: a new route must be added here.
    let templ = |p: &str| {
        p.replace(&room, "{id}")
            .replace(&bob.user_id, "{id}")
            .replacen("members/{id}", "members/{user_id}", 1)
            .replacen("messages/1", "messages/{seq}", 1)
    };
    let covered: BTreeSet<(String, String)> = ops
        .iter()
        .map(|(m, p, _, _)| (m.as_str().to_owned(), templ(p)))
        .chain(WITHOUT_DB.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())))
        .collect();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("operations").keys() {
            let key = (method.to_uppercase(), path.clone());
            assert!(covered.contains(&key), "{key:?} is not exercised by the outage test");
        }
    }

    pg.stop().await;

    // Concurrently: each waits out the pool's acquire timeout.
    let answers = futures_util::future::join_all(ops.iter().map(|(method, path, body, bearer)| {
        let mut req = app.http.request(method.clone(), app.url(path));
        if *bearer {
            req = req.bearer_auth(&alice.access);
        }
        if path.contains("/admin/") {
            req = req.bearer_auth(ADMIN);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        app.send(req)
    }))
    .await;
    for ((method, path, _, _), r) in ops.iter().zip(&answers) {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path} with the database down: {}", r.body);
        assert_eq!(r.error_code(), "unavailable", "{method} {path}");
    }
    let ready = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!((ready.status, &ready.body["status"]), (StatusCode::SERVICE_UNAVAILABLE, &json!("unavailable")));

    // Frames that need storage say so; the socket stays open.
    ws.send(json!({"type": "send", "id": 1, "room": room, "client_msg_id": "during", "body": "during"})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(1), Some("unavailable")), "send: {e}");
    ws.send(json!({"type": "edit", "id": 5, "room": room, "target_seq": 1, "client_msg_id": "e", "body": "x"})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(5), Some("unavailable")), "edit: {e}");
    ws.send(json!({"type": "read", "id": 2, "room": room, "seq": 1})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(2), Some("unavailable")), "read: {e}");
    ws.send(json!({"type": "join", "id": 3, "room": room, "since_seq": 0})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(3), Some("unavailable")), "join: {e}");
    ws.send(json!({"type": "sync", "id": 5, "rooms": [{"room": room, "since_seq": 0}]})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["room"].as_str(), e["code"].as_str()), (Some(room.as_str()), Some("unavailable")), "sync: {e}");
    let done = ws.next_of("synced").await;
    assert_eq!((done["id"].as_i64(), done["failed"].as_i64()), (Some(5), Some(1)), "sync: {done}");
    ws.send(json!({"type": "auth", "id": 4, "token": alice.access})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(4), Some("unavailable")), "auth: {e}");
    // A new socket cannot be authenticated: 503, not 401.
    match WsClient::try_connect(&app, Some(&bob.access), None, None).await {
        Err(crate::ws_client::Refused::Http(status, body)) => {
            assert_eq!(status, 503, "handshake with the database down: {body}");
            assert_eq!(body["error"]["code"], "unavailable");
        }
        Ok(_) => panic!("a handshake was accepted without a session check"),
    }

    pg.start_again().await;
    eventually(Duration::from_secs(30), || async {
        (app.send(app.http.get(app.url("/readyz"))).await.status == StatusCode::OK).then_some(())
    })
    .await;
    // The same socket sends again; the failed send was never stored.
    ws.send(json!({"type": "send", "id": 5, "room": room, "client_msg_id": "after", "body": "after"})).await;
    let ack = ws.next_of("ack").await;
    assert_eq!((ack["id"].as_i64(), ack["seq"].as_i64()), (Some(5), Some(2)), "{ack}");
    let h = app.get(&alice.access, &format!("/api/v1/rooms/{room}/messages")).await;
    assert_eq!(h.status, StatusCode::OK, "{}", h.body);
    let bodies: Vec<&str> =
        h.body["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap()).collect();
    assert_eq!(bodies.iter().filter(|b| **b != "during").count(), bodies.len(), "{bodies:?}");
    assert_eq!(app.register("dave").await.user_id.len(), 36);
    app.stop().await;
}
