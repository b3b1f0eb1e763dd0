//! A database the test stops itself: every REST route and every socket
//! frame that needs storage answers `unavailable` (503), never 404 or 500;
//! the routes that need no storage are called too and answer as usual; and
//! everything works again once the database is back. Every route the router
//! serves and every documented operation is called during the outage.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Db, eventually, spawn_app_with};
use crate::procs::PgProc;
use crate::ws::client::WsClient;

const ADMIN: &str = "admin-token-0123456789-abcdefghijklmnop";

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
    // Bob's socket, for the operator to close during the outage.
    let mut bob_ws = WsClient::connect(&app, &bob.access).await;

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
    // Routes that answer without the database, by design: the document,
    // the probes, and the operator's live view of this instance's sockets.
    // Each is called during the outage with the status it must give.
    let alice_id = alice.user_id.as_str();
    let without_db: Vec<(Method, &str, String, Option<Value>, StatusCode)> = vec![
        (Method::GET, "/api/v1/openapi.json", "/api/v1/openapi.json".into(), None, StatusCode::OK),
        (Method::GET, "/healthz", "/healthz".into(), None, StatusCode::OK),
        (Method::GET, "/api/v1/healthz", "/api/v1/healthz".into(), None, StatusCode::OK),
        (Method::GET, "/readyz", "/readyz".into(), None, StatusCode::SERVICE_UNAVAILABLE),
        (Method::GET, "/api/v1/readyz", "/api/v1/readyz".into(), None, StatusCode::SERVICE_UNAVAILABLE),
        (
            Method::GET,
            "/api/v1/admin/users/{id}/connections",
            format!("/api/v1/admin/users/{alice_id}/connections"),
            None,
            StatusCode::OK,
        ),
        (
            Method::POST,
            "/api/v1/admin/users/{id}/disconnect",
            format!("/api/v1/admin/users/{}/disconnect", bob.user_id),
            Some(json!({})),
            StatusCode::ACCEPTED,
        ),
        (
            Method::POST,
            "/api/v1/admin/debug/sentry-test",
            "/api/v1/admin/debug/sentry-test".into(),
            None,
            StatusCode::ACCEPTED,
        ),
        (Method::GET, "/api/v1/admin/stats", "/api/v1/admin/stats".into(), None, StatusCode::OK),
    ];
    // Every route the router serves and every documented operation is
    // called below: a route added anywhere fails this until it is.
    let templ = |p: &str| {
        p.replace(&room, "{id}")
            .replace(&bob.user_id, "{id}")
            .replacen("members/{id}", "members/{user_id}", 1)
            .replacen("messages/1", "messages/{seq}", 1)
    };
    let called: BTreeSet<(String, String)> = ops
        .iter()
        .map(|(m, p, _, _)| (m.as_str().to_owned(), templ(p)))
        .chain(without_db.iter().map(|(m, t, ..)| (m.as_str().to_owned(), (*t).to_owned())))
        .collect();
    let documented = doc["paths"].as_object().expect("paths").iter().flat_map(|(path, item)| {
        item.as_object().expect("operations").keys().map(|m| (m.to_uppercase(), path.clone())).collect::<Vec<_>>()
    });
    for key in crate::openapi::routed().into_iter().chain(documented) {
        assert!(called.contains(&key), "{key:?} is not called by the outage test");
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
    let mut answers = std::collections::HashMap::new();
    for (method, template, path, body, status) in &without_db {
        let mut req = app.http.request(method.clone(), app.url(path));
        if path.contains("/admin/") {
            req = req.bearer_auth(ADMIN);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = app.send(req).await;
        assert_eq!(r.status, *status, "{method} {path} with the database down: {}", r.body);
        answers.insert(*template, r.body);
    }
    assert!(answers["/api/v1/openapi.json"]["paths"].as_object().is_some_and(|p| !p.is_empty()));
    for probe in ["/healthz", "/api/v1/healthz"] {
        assert_eq!(answers[probe]["status"], "ok", "{probe}: alive with the database down");
    }
    for probe in ["/readyz", "/api/v1/readyz"] {
        assert_eq!(answers[probe]["status"], "unavailable", "{probe}: not ready with the database down");
    }
    let conns = &answers["/api/v1/admin/users/{id}/connections"];
    assert_eq!(conns["user_id"], alice_id, "{conns}");
    let live = conns["connections"].as_array().expect("connections");
    assert!(
        live.len() == 1 && live[0]["rooms"].as_array().is_some_and(|r| r.contains(&json!(room))),
        "Alice's one socket, joined to the room: {conns}"
    );
    assert_eq!(answers["/api/v1/admin/users/{id}/disconnect"]["closed_here"], 1);
    let (code, _, _) = bob_ws.until_close().await;
    assert_eq!(code, 4000, "Bob's socket is closed by the operator during the outage");
    let stats = &answers["/api/v1/admin/stats"];
    assert_eq!((&stats["ready"], &stats["database"]["up"]), (&json!(false), &json!(false)), "{stats}");
    assert!(stats["hub"].is_object(), "{stats}");
    let sentry = &answers["/api/v1/admin/debug/sentry-test"];
    assert!(sentry["test_id"].as_str().is_some_and(|t| !t.is_empty()) && sentry["sentry_enabled"] == false, "{sentry}");

    // Frames that need storage say so; the socket stays open.
    ws.send(json!({"type": "send", "id": 1, "room": room, "client_msg_id": "during", "body": "during"})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(1), Some("unavailable")), "send: {e}");
    ws.send(json!({"type": "edit", "id": 5, "room": room, "target_seq": 1, "client_msg_id": "e", "body": "x"})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(5), Some("unavailable")), "edit: {e}");
    ws.send(json!({"type": "delete", "id": 7, "room": room, "target_seq": 1, "client_msg_id": "d"})).await;
    let e = ws.next_of("error").await;
    assert_eq!((e["id"].as_i64(), e["code"].as_str()), (Some(7), Some("unavailable")), "delete: {e}");
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
        Err(crate::ws::client::Refused::Http(status, body)) => {
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
    // Neither the edit nor the delete of seq 1 was applied.
    assert_eq!(bodies, ["before the outage", "after"], "{}", h.body);
    assert_eq!(app.register("dave").await.user_id.len(), 36);
    app.stop().await;
}
