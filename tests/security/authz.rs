//! Authorization (IDOR): every REST route and every client frame type
//! tried with another user's room, message (room + seq) and member ids, by
//! an outsider, by a user who left the room, by one who was removed from
//! it, and, for owner-only actions, by a plain member.
//!
//! The rule (src/api/rooms.rs, README "REST API"): a caller who is not a
//! member gets 404 `not_found` for the room and everything under it, the
//! same answer as for a room that does not exist; a member who is not the
//! owner gets 403 `forbidden` for owner-only actions. On the socket
//! (protocol/README.md 4): `join` and `send` to a room the user is not a
//! member of (or that does not exist) get `error forbidden` with the room;
//! `typing` / `read` to a room not joined on the socket get `not_joined`
//! (protocol 1.1); `leave` only ever affects the socket.
//!
//! The routes, from src/api/*.rs routers (the OpenAPI document lists the
//! same): ids in the path or body are taken by `/rooms/{id}` (GET, PATCH,
//! DELETE), `/rooms/{id}/members` (POST), `/rooms/{id}/members/{user_id}`
//! (DELETE), `/rooms/{id}/messages` (GET), `/users/{id}` (GET, public by
//! design) and the operator routes `/admin/...` (ADMIN_TOKEN only).
//! `/auth/*`, `/me`, `/me/export` and `GET|POST /rooms` act on the caller
//! only: they take no id another user's could replace.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::Bystander;
use crate::both_backends;
use crate::helpers::{Db, Resp, Session, TestApp, spawn_app_with};
use crate::operators::ADMIN_TOKEN;
use crate::ws::client::WsClient;

both_backends!(rest_routes_hide_other_rooms_and_refuse_members, socket_frames_cannot_reach_other_rooms);

/// Ann owns a room with Mem (a member) and three messages; Lea joined and
/// left; Kim was removed by Ann; Bob never belonged. Another room exists
/// that only Bob is in.
struct World {
    ann: Session,
    mem: Session,
    lea: Session,
    kim: Session,
    bob: Session,
    room: String,
    bobs_room: String,
}

async fn world(app: &TestApp) -> World {
    let ann = app.register("ann").await;
    let mem = app.register("mem").await;
    let lea = app.register("lea").await;
    let kim = app.register("kim").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "ann's room", &[&mem, &lea, &kim]).await;
    let bobs_room = app.create_room(&bob, "bob's room", &[]).await;
    let mut a = WsClient::connect(app, &ann.access).await;
    for i in 1..=3 {
        a.send_msg(&room, &format!("ann-{i}"), &format!("secret {i}")).await;
        assert_eq!(a.next_of("ack").await["seq"], i);
    }
    a.close().await;
    let left = app.delete(&lea.access, &format!("/api/v1/rooms/{room}/members/{}", lea.user_id)).await;
    assert_eq!(left.status, StatusCode::NO_CONTENT, "lea leaves: {}", left.body);
    let removed = app.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", kim.user_id)).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT, "ann removes kim: {}", removed.body);
    World { ann, mem, lea, kim, bob, room, bobs_room }
}

/// What the owner sees of the room: detail (name, members) and history.
async fn snapshot(app: &TestApp, w: &World) -> (Value, Value) {
    let detail = app.get(&w.ann.access, &format!("/api/v1/rooms/{}", w.room)).await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.body);
    let history = app.get(&w.ann.access, &format!("/api/v1/rooms/{}/messages?after_seq=0", w.room)).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.body);
    (detail.body, history.body)
}

async fn request(app: &TestApp, token: &str, method: &str, path: &str, body: Option<Value>) -> Resp {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut r = app.http.request(m, app.url(path)).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    app.send(r).await
}

async fn rest_routes_hide_other_rooms_and_refuse_members(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let w = world(&app).await;
    let before = snapshot(&app, &w).await;
    let ghost = "0193a5c0-0000-7000-8000-000000000000";

    // Every room route, by everyone who is not a member, on the real room
    // and on one that does not exist: the same 404, body and all.
    let routes = |room: &str, target: &str| -> Vec<(&'static str, String, Option<Value>)> {
        vec![
            ("GET", format!("/api/v1/rooms/{room}"), None),
            ("PATCH", format!("/api/v1/rooms/{room}"), Some(json!({"name": "pwned"}))),
            ("DELETE", format!("/api/v1/rooms/{room}"), None),
            ("POST", format!("/api/v1/rooms/{room}/members"), Some(json!({"user_id": target}))),
            ("DELETE", format!("/api/v1/rooms/{room}/members/{target}"), None),
            ("GET", format!("/api/v1/rooms/{room}/messages"), None),
            ("GET", format!("/api/v1/rooms/{room}/messages?after_seq=0&limit=200"), None),
            ("GET", format!("/api/v1/rooms/{room}/messages?before_seq=2"), None),
        ]
    };
    for (who, s) in [("outsider", &w.bob), ("left", &w.lea), ("removed", &w.kim)] {
        for target in [&w.mem.user_id, &w.ann.user_id, &s.user_id] {
            let real = routes(&w.room, target);
            let fake = routes(ghost, target);
            for ((method, path, body), (_, ghost_path, ghost_body)) in real.into_iter().zip(fake) {
                let r = request(&app, &s.access, method, &path, body).await;
                assert_eq!((r.status, r.error_code()), (StatusCode::NOT_FOUND, "not_found"), "{who} {method} {path}");
                let g = request(&app, &s.access, method, &ghost_path, ghost_body).await;
                assert_eq!((g.status, &g.body), (r.status, &r.body), "{who} {method}: a real room looks like no room");
            }
        }
    }
    // The idempotency layer does not replay another user's response: Bob
    // reusing Ann's key and body on Ann's room gets the 404, not her 201.
    let add = |token: &str| {
        app.send(
            app.http
                .post(app.url(&format!("/api/v1/rooms/{}/members", w.room)))
                .bearer_auth(token.to_owned())
                .header("idempotency-key", "shared-key-1")
                .json(&json!({"user_id": w.lea.user_id})),
        )
    };
    let first = add(&w.ann.access).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let stolen = add(&w.bob.access).await;
    assert_eq!((stolen.status, stolen.error_code()), (StatusCode::NOT_FOUND, "not_found"), "{}", stolen.body);
    assert!(!stolen.headers.contains_key("idempotent-replayed"));
    let undo = app.delete(&w.ann.access, &format!("/api/v1/rooms/{}/members/{}", w.room, w.lea.user_id)).await;
    assert_eq!(undo.status, StatusCode::NO_CONTENT);

    // A plain member: reads are fine, owner-only actions are 403, and so
    // is removing anyone but themselves.
    let m = &w.mem.access;
    assert_eq!(app.get(m, &format!("/api/v1/rooms/{}", w.room)).await.status, StatusCode::OK);
    assert_eq!(app.get(m, &format!("/api/v1/rooms/{}/messages", w.room)).await.status, StatusCode::OK);
    let owner_only = [
        ("PATCH", format!("/api/v1/rooms/{}", w.room), Some(json!({"name": "pwned"}))),
        ("DELETE", format!("/api/v1/rooms/{}", w.room), None),
        ("POST", format!("/api/v1/rooms/{}/members", w.room), Some(json!({"user_id": w.bob.user_id}))),
        ("DELETE", format!("/api/v1/rooms/{}/members/{}", w.room, w.ann.user_id), None),
        ("DELETE", format!("/api/v1/rooms/{}/members/{}", w.room, w.bob.user_id), None),
    ];
    for (method, path, body) in owner_only {
        let r = request(&app, m, method, &path, body).await;
        assert_eq!((r.status, r.error_code()), (StatusCode::FORBIDDEN, "forbidden"), "member {method} {path}");
    }
    // The owner of another room cannot reach Ann's members through it.
    let via = app.delete(&w.bob.access, &format!("/api/v1/rooms/{}/members/{}", w.bobs_room, w.mem.user_id)).await;
    assert_eq!((via.status, via.error_code()), (StatusCode::NOT_FOUND, "not_found"), "{}", via.body);
    // Ann's own room: a non-member target is 404 `not_found` too.
    let absent = app.delete(&w.ann.access, &format!("/api/v1/rooms/{}/members/{}", w.room, w.bob.user_id)).await;
    assert_eq!((absent.status, absent.error_code()), (StatusCode::NOT_FOUND, "not_found"));

    // Public profiles are public by design, and only the public fields.
    let p = app.get(&w.bob.access, &format!("/api/v1/users/{}", w.ann.user_id)).await;
    assert_eq!(p.status, StatusCode::OK);
    let mut keys: Vec<&str> = p.body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["created_at", "deleted", "display_name", "id"], "no email or anything private");
    let nobody = app.get(&w.bob.access, &format!("/api/v1/users/{ghost}")).await;
    assert_eq!((nobody.status, nobody.error_code()), (StatusCode::NOT_FOUND, "not_found"));
    // Bob's own views hold nothing of Ann's room.
    let list = app.get(&w.bob.access, "/api/v1/rooms").await;
    let ids: Vec<&str> = list.body["rooms"].as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [w.bobs_room.as_str()]);
    let export = app.get(&w.kim.access, "/api/v1/me/export").await;
    assert_eq!(export.status, StatusCode::OK);
    assert!(!export.body.to_string().contains("secret 1"), "an export holds only the caller's own messages");
    // Operator routes take only ADMIN_TOKEN: a user's token is 401.
    for (method, path) in [
        ("POST", format!("/api/v1/admin/users/{}/ban", w.ann.user_id)),
        ("DELETE", format!("/api/v1/admin/users/{}/ban", w.ann.user_id)),
        ("GET", "/api/v1/admin/stats".to_owned()),
        ("GET", format!("/api/v1/admin/users/{}/connections", w.ann.user_id)),
        ("POST", format!("/api/v1/admin/users/{}/disconnect", w.ann.user_id)),
        ("POST", "/api/v1/admin/debug/sentry-test".to_owned()),
    ] {
        let body = (method == "POST").then(|| json!({}));
        let r = request(&app, &w.ann.access, method, &path, body).await;
        assert_eq!((r.status, r.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "user token on {path}");
    }

    assert_eq!(snapshot(&app, &w).await, before, "nothing about the room changed");
    assert_eq!(app.get(&w.ann.access, &format!("/api/v1/users/{}", w.ann.user_id)).await.status, StatusCode::OK);
    bystander.still_fine(&app).await;
}

/// Every client frame type with someone else's room, on sockets of an
/// outsider, of a user who left and of one removed while joined.
async fn socket_frames_cannot_reach_other_rooms(db: Db) {
    let app = spawn_app_with(db, |_| {}).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let mem = app.register("mem").await;
    let kim = app.register("kim").await;
    let lea = app.register("lea").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "ann's room", &[&mem, &kim, &lea]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    a.join(&room, None).await;
    a.send_msg(&room, "ann-1", "secret 1").await;
    assert_eq!(a.next_of("ack").await["seq"], 1);
    a.drain_until_pong().await;

    // Kim is joined when Ann removes her: her socket gets `left removed`.
    let mut k = WsClient::connect(&app, &kim.access).await;
    k.join(&room, None).await;
    let removed = app.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", kim.user_id)).await;
    assert_eq!(removed.status, StatusCode::NO_CONTENT);
    let left = k.next_of("left").await;
    assert_eq!((left["room"].as_str(), left["reason"].as_str()), (Some(room.as_str()), Some("removed")));
    // Lea leaves over REST while connected (not joined).
    let mut l = WsClient::connect(&app, &lea.access).await;
    let gone = app.delete(&lea.access, &format!("/api/v1/rooms/{room}/members/{}", lea.user_id)).await;
    assert_eq!(gone.status, StatusCode::NO_CONTENT);
    let mut b = WsClient::connect(&app, &bob.access).await;
    a.drain_until_pong().await;

    let ghost = "0193a5c0-0000-7000-8000-000000000000";
    for (who, c) in [("outsider", &mut b), ("left", &mut l), ("removed", &mut k)] {
        for target in [room.as_str(), ghost] {
            let frames = [
                json!({"type": "join", "id": "j", "room": target}),
                json!({"type": "join", "id": "j0", "room": target, "since_seq": 0}),
                json!({"type": "send", "id": "s", "room": target, "client_msg_id": format!("{who}-x"), "body": "intrusion"}),
                // Typing and read need the room joined on this socket,
                // which these sockets could not do.
                json!({"type": "typing", "id": "t", "room": target}),
                json!({"type": "read", "id": "r", "room": target, "seq": 1}),
            ];
            for f in frames {
                c.send(f.clone()).await;
                let e = c.next_reply().await;
                let code =
                    if matches!(f["type"].as_str(), Some("typing" | "read")) { "not_joined" } else { "forbidden" };
                assert_eq!(
                    (e["code"].as_str(), e["id"].as_str(), e["room"].as_str()),
                    (Some(code), f["id"].as_str(), Some(target)),
                    "{who}: {f} -> {e}"
                );
            }
            // `leave` only concerns the socket: answered, harmless.
            c.send(json!({"type": "leave", "id": "l", "room": target})).await;
            let f = c.next_reply().await;
            assert_eq!((f["type"].as_str(), f["reason"].as_str()), (Some("left"), Some("requested")), "{f}");
        }
        // `auth` with another user's token: refused, the socket stays its own.
        c.send(json!({"type": "auth", "id": "x", "token": ann.access})).await;
        let e = c.next_reply().await;
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("unauthorized")), "{who}: {e}");
        c.send(json!({"type": "ping", "id": "p"})).await;
        assert_eq!(c.next_reply().await["type"], "pong");
        assert!(c.drain_until_pong().await.is_empty(), "{who}: no message of the room leaked");
    }

    // Ann's joined socket saw none of it: no message, typing or read.
    assert!(a.drain_until_pong().await.is_empty(), "the room's members saw nothing");
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(1), "nothing was stored");
    let h = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages")).await;
    assert_eq!(h.body["messages"].as_array().unwrap().len(), 1);
    let detail = app.get(&ann.access, &format!("/api/v1/rooms/{room}")).await;
    let mut members: Vec<&str> =
        detail.body["members"].as_array().unwrap().iter().map(|m| m["user_id"].as_str().unwrap()).collect();
    members.sort_unstable();
    let mut expected = vec![ann.user_id.as_str(), mem.user_id.as_str()];
    expected.sort_unstable();
    assert_eq!(members, expected, "the member list is unchanged");
    // The room still works for its members.
    let mut m = WsClient::connect(&app, &mem.access).await;
    m.send_msg(&room, "mem-1", "hi").await;
    assert_eq!(m.next_of("ack").await["seq"], 2);
    assert_eq!(a.next_of("message").await["seq"], 2);
    bystander.still_fine(&app).await;
}
