//! Profile, export and erasure.

use chatgw::db::{NewKind, NewMessage};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

use crate::both_backends;
use crate::helpers::{Db, eventually, spawn_app};
use crate::ws::client::{Refused, WsClient};

both_backends!(
    profile_update_and_public_view,
    export_holds_all_of_the_callers_data,
    export_pages_a_large_history,
    erasure_anonymises_and_keeps_tombstones,
    password_change_ends_every_other_session,
    password_change_closes_sockets_on_every_instance
);

async fn profile_update_and_public_view(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;

    let p = app.patch(&ann.access, "/api/v1/me", json!({"display_name": "  Ann B.  "})).await;
    assert_eq!(p.status, StatusCode::OK, "{}", p.body);
    assert_eq!(p.body["display_name"], "Ann B.");

    let public = app.get(&bob.access, &format!("/api/v1/users/{}", ann.user_id)).await;
    assert_eq!(public.status, StatusCode::OK);
    assert_eq!(public.body["display_name"], "Ann B.");
    assert!(public.body.get("email").is_none(), "email is private");

    // Password change needs the current password.
    let no_current = app.patch(&ann.access, "/api/v1/me", json!({"password": "brand new password"})).await;
    assert_eq!(no_current.status, StatusCode::BAD_REQUEST);
    let wrong = app
        .patch(&ann.access, "/api/v1/me", json!({"password": "brand new password", "current_password": "nope nope"}))
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    let ok = app
        .patch(
            &ann.access,
            "/api/v1/me",
            json!({"password": "brand new password", "current_password": "correct horse battery"}),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let login =
        app.post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": "brand new password"})).await;
    assert_eq!(login.status, StatusCode::OK);

    let missing = app.get(&bob.access, "/api/v1/users/00000000-0000-0000-0000-000000000000").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.error_code(), "not_found");
}

async fn export_holds_all_of_the_callers_data(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "general", &[&bob]).await;
    let msg = |sender: &str, id: &str| NewMessage {
        room_id: room.clone(),
        sender_id: sender.into(),
        client_msg_id: id.into(),
        body: format!("hello from {sender}"),
        sent_at: 1,
        kind: NewKind::Message,
    };
    app.store
        .append_messages(&[msg(&ann.user_id, "a1"), msg(&bob.user_id, "b1"), msg(&ann.user_id, "a2")])
        .await
        .unwrap();

    let e = app.get(&ann.access, "/api/v1/me/export").await;
    assert_eq!(e.status, StatusCode::OK);
    assert_eq!(e.body["profile"]["email"], ann.email.as_str());
    assert_eq!(e.body["rooms"][0]["id"], room.as_str());
    assert_eq!(e.body["rooms"][0]["role"], "owner");
    let msgs = e.body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "only the caller's own messages");
    assert!(msgs.iter().all(|m| m["sender"] == ann.user_id.as_str()));
    assert_eq!(e.body["sessions"].as_array().unwrap().len(), 1);
}

/// A user with more messages than a page gets them all, once each, in
/// order, over bounded pages; a forged cursor is a 400.
async fn export_pages_a_large_history(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let rooms = [app.create_room(&ann, "a", &[]).await, app.create_room(&ann, "b", &[]).await];
    let total = chatgw::db::EXPORT_MESSAGES_PAGE + 7;
    let all: Vec<NewMessage> = (0..total)
        .map(|i| NewMessage {
            room_id: rooms[i % 2].clone(),
            sender_id: ann.user_id.clone(),
            client_msg_id: format!("m{i}"),
            body: format!("message {i}"),
            // Ties on sent_at across rooms: the cursor must order them too.
            sent_at: (i / 3) as i64,
            kind: NewKind::Message,
        })
        .collect();
    for chunk in all.chunks(1000) {
        app.store.append_messages(chunk).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut path = "/api/v1/me/export".to_owned();
    let mut pages = 0;
    loop {
        let e = app.get(&ann.access, &path).await;
        assert_eq!(e.status, StatusCode::OK, "{}", e.body);
        pages += 1;
        let msgs = e.body["messages"].as_array().unwrap();
        assert!(msgs.len() <= chatgw::db::EXPORT_MESSAGES_PAGE);
        seen.extend(msgs.iter().map(|m| m["client_msg_id"].as_str().unwrap().to_owned()));
        match e.body["messages_next"].as_str() {
            Some(next) => path = format!("/api/v1/me/export?messages_after={next}"),
            None => break,
        }
    }
    assert_eq!(pages, 2);
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!((seen.len(), sorted.len()), (total, total), "every message once");
    let bad = app.get(&ann.access, "/api/v1/me/export?messages_after=nonsense").await;
    assert_eq!((bad.status, bad.error_code()), (StatusCode::BAD_REQUEST, "bad_request"));
}

async fn erasure_anonymises_and_keeps_tombstones(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "general", &[&bob]).await;
    let solo = app.create_room(&ann, "solo", &[]).await;
    let m = |sender: &str, id: &str| NewMessage {
        room_id: room.clone(),
        sender_id: sender.into(),
        client_msg_id: id.into(),
        body: "secret words".into(),
        sent_at: 1,
        kind: NewKind::Message,
    };
    app.store.append_messages(&[m(&ann.user_id, "a1"), m(&bob.user_id, "b1")]).await.unwrap();

    assert_eq!(app.delete(&ann.access, "/api/v1/me").await.status, StatusCode::NO_CONTENT);

    // Tokens and credentials are gone.
    assert_eq!(app.get(&ann.access, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
    let login =
        app.post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": "correct horse battery"})).await;
    assert_eq!(login.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": ann.refresh})).await.status,
        StatusCode::UNAUTHORIZED
    );

    // The profile is anonymised; the email is free again.
    let public = app.get(&bob.access, &format!("/api/v1/users/{}", ann.user_id)).await;
    assert_eq!(public.body["display_name"], "Deleted user");
    assert_eq!(public.body["deleted"], true);
    let stored = app.store.get_user(&ann.user_id).await.unwrap();
    assert!(stored.email.is_none());
    app.register("ann").await;

    // History keeps the seq as a tombstone with no body; bob's message
    // stays; the tombstone's `delete` event (reason `erased`) follows it in
    // the stream, appended just after the erasure.
    let msgs = eventually(Duration::from_secs(20), || async {
        let h = app.get(&bob.access, &format!("/api/v1/rooms/{room}/messages")).await;
        h.body["messages"].as_array().filter(|m| m.len() == 3).cloned()
    })
    .await;
    assert_eq!(msgs[0]["seq"], 1);
    assert_eq!(msgs[0]["body"], "");
    assert_eq!(msgs[0]["deleted"], true);
    assert_eq!(msgs[1]["body"], "secret words");
    assert_eq!(
        (&msgs[2]["type"], &msgs[2]["target_seq"], &msgs[2]["reason"]),
        (&json!("delete"), &json!(1), &json!("erased"))
    );

    // Ownership passed to bob; the empty room is gone.
    let r = app.get(&bob.access, &format!("/api/v1/rooms/{room}")).await;
    assert_eq!(r.body["role"], "owner");
    assert_eq!(r.body["members"].as_array().unwrap().len(), 1);
    assert_eq!(app.store.last_seq(&solo).await.unwrap(), None);
}

/// Ann's second session: a login of its own, with two tickets it has not used.
struct OtherSession {
    access: String,
    refresh: String,
    ticket: String,
    second_ticket: String,
}

async fn other_session(app: &crate::helpers::TestApp, email: &str, password: &str) -> OtherSession {
    let login = app.post(None, "/api/v1/auth/login", json!({"email": email, "password": password})).await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    let access = login.body["access_token"].as_str().unwrap().to_owned();
    let mut tickets = Vec::new();
    for _ in 0..2 {
        let t = app.post(Some(&access), "/api/v1/auth/ws-ticket", json!({})).await;
        assert_eq!(t.status, StatusCode::CREATED, "{}", t.body);
        tickets.push(t.body["ticket"].as_str().unwrap().to_owned());
    }
    let second_ticket = tickets.pop().expect("two tickets");
    let ticket = tickets.pop().expect("two tickets");
    OtherSession { access, refresh: login.body["refresh_token"].as_str().unwrap().to_owned(), ticket, second_ticket }
}

const PASSWORD: &str = "correct horse battery";

fn new_password() -> serde_json::Value {
    json!({"password": "a brand new password", "current_password": PASSWORD})
}

/// A password change ends every other session of the account (its refresh
/// token, its access token, its unused ticket, its socket with 4001) and
/// leaves the caller's session working; it is audited once.
async fn password_change_ends_every_other_session(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let two = other_session(&app, &ann.email, PASSWORD).await;
    let mut mine = WsClient::connect(&app, &ann.access).await;
    let mut theirs = WsClient::connect(&app, &two.access).await;
    // Another account's session is none of this change's business.
    let mut bobs = WsClient::connect(&app, &bob.access).await;

    let r = app.patch(&ann.access, "/api/v1/me", new_password()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    let me = app.get(&two.access, "/api/v1/me").await;
    assert_eq!((me.status, me.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "session 2's access token");
    let refresh = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": two.refresh})).await;
    assert_eq!(refresh.status, StatusCode::UNAUTHORIZED, "session 2's refresh token: {}", refresh.body);
    match WsClient::try_connect(&app, None, Some(&two.ticket), None).await {
        Err(Refused::Http(status, _)) => assert_eq!(status, 401, "session 2's unused ticket"),
        Ok(_) => panic!("session 2's unused ticket still opens a socket"),
    }
    // Not only refused by the handshake's session check: gone from storage.
    let hash = chatgw::auth::tokens::hash_token(&two.second_ticket);
    assert!(app.store.consume_ws_ticket(&hash).await.unwrap().is_none(), "session 2's ticket is still stored");
    assert_eq!(theirs.until_close().await.0, 4001, "session 2's socket");

    // The caller's session goes on: socket, access token, refresh token.
    mine.drain_until_pong().await;
    bobs.drain_until_pong().await;
    assert_eq!(app.get(&ann.access, "/api/v1/me").await.status, StatusCode::OK);
    let r = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": ann.refresh})).await;
    assert_eq!(r.status, StatusCode::OK, "the caller's refresh token: {}", r.body);
    assert_eq!(app.get(&bob.access, "/api/v1/me").await.status, StatusCode::OK);

    // The new password signs in; the old one does not.
    let login = |pw: &str| app.post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": pw}));
    assert_eq!(login("a brand new password").await.status, StatusCode::OK);
    assert_eq!(login(PASSWORD).await.status, StatusCode::UNAUTHORIZED);

    let audit = app.store.audit_of_user(&ann.user_id).await.unwrap();
    let changed: Vec<_> = audit.iter().filter(|r| r.action == "password_changed").collect();
    assert_eq!(changed.len(), 1, "{audit:?}");
    assert_eq!(changed[0].actor_id.as_deref(), Some(ann.user_id.as_str()));
}

/// Two instances on a real Redis: session 2's socket on instance B closes
/// with 4001 when session 1 changes the password through instance A, and
/// session 1's socket on A stays open.
async fn password_change_closes_sockets_on_every_instance(db: Db) {
    let apps = crate::user_stream::spawn_redis_cluster(db).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let two = other_session(a, &ann.email, PASSWORD).await;
    let mut mine = WsClient::connect(a, &ann.access).await;
    let mut theirs = WsClient::connect(b, &two.access).await;
    crate::user_stream::until_control_events_cross(&apps, &bob, &ann, [&mut mine, &mut theirs]).await;

    let r = a.patch(&ann.access, "/api/v1/me", new_password()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(theirs.until_close().await.0, 4001, "session 2's socket on the other instance");
    mine.drain_until_pong().await;
    assert_eq!(b.get(&ann.access, "/api/v1/me").await.status, StatusCode::OK);
    assert_eq!(b.get(&two.access, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
}
