//! Rooms CRUD, membership, history paging, IDOR attempts, idempotent POSTs.

use chatgw::db::{NewKind, NewMessage};
use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, Session, TestApp, spawn_app, spawn_app_with};

both_backends!(
    rooms_crud_and_membership,
    non_members_get_404_and_members_403,
    history_pages_by_seq,
    idempotency_key_replays_the_first_response,
    members_added_by_email,
    a_banned_user_is_answered_like_anyone_else
);

async fn rooms_crud_and_membership(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let cat = app.register("cat").await;

    let room = app.create_room(&ann, "general", &[&bob]).await;
    let list = app.get(&bob.access, "/api/v1/rooms").await;
    assert_eq!(list.body["rooms"][0]["id"], room.as_str());
    assert_eq!(list.body["rooms"][0]["role"], "member");
    assert_eq!(list.body["rooms"][0]["last_seq"], 0);
    assert_eq!(list.body["rooms"][0]["read_seq"], 0);

    // Unread counts without a socket: last_seq and the caller's read marker.
    let msgs: Vec<NewMessage> = (0..3)
        .map(|i| NewMessage {
            room_id: room.clone(),
            sender_id: ann.user_id.clone(),
            client_msg_id: format!("m{i}"),
            body: "hi".into(),
            sent_at: i,
            kind: NewKind::Message,
        })
        .collect();
    app.store.append_messages(&msgs).await.unwrap();
    app.store.set_read_marker(&room, &bob.user_id, 1).await.unwrap();
    assert_eq!(app.store.set_read_marker(&room, &bob.user_id, 0).await.unwrap(), 1, "markers never move back");
    let list = app.get(&bob.access, "/api/v1/rooms").await;
    assert_eq!(list.body["rooms"][0]["last_seq"], 3);
    assert_eq!(list.body["rooms"][0]["read_seq"], 1);

    // Owner adds and renames; add is idempotent (200 the second time).
    let add =
        app.post(Some(&ann.access), &format!("/api/v1/rooms/{room}/members"), json!({"user_id": cat.user_id})).await;
    assert_eq!(add.status, StatusCode::CREATED, "{}", add.body);
    let again =
        app.post(Some(&ann.access), &format!("/api/v1/rooms/{room}/members"), json!({"user_id": cat.user_id})).await;
    assert_eq!(again.status, StatusCode::OK);
    let renamed = app.patch(&ann.access, &format!("/api/v1/rooms/{room}"), json!({"name": "lounge"})).await;
    assert_eq!(renamed.body["name"], "lounge");
    let detail = app.get(&cat.access, &format!("/api/v1/rooms/{room}")).await;
    assert_eq!(detail.body["members"].as_array().unwrap().len(), 3);

    // A member leaves by removing themselves; the owner cannot leave.
    assert_eq!(
        app.delete(&cat.access, &format!("/api/v1/rooms/{room}/members/{}", cat.user_id)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&cat.access, &format!("/api/v1/rooms/{room}")).await.status, StatusCode::NOT_FOUND);
    let owner_leave = app.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", ann.user_id)).await;
    assert_eq!(owner_leave.status, StatusCode::CONFLICT);

    // The owner removes bob, then deletes the room.
    assert_eq!(
        app.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", bob.user_id)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(app.get(&bob.access, &format!("/api/v1/rooms/{room}/messages")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(app.delete(&ann.access, &format!("/api/v1/rooms/{room}")).await.status, StatusCode::NO_CONTENT);
    assert_eq!(app.get(&ann.access, &format!("/api/v1/rooms/{room}")).await.status, StatusCode::NOT_FOUND);
}

async fn non_members_get_404_and_members_403(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let mallory = app.register("mallory").await;
    let room = app.create_room(&ann, "private", &[&bob]).await;

    // Mallory (not a member) cannot see anything, and cannot tell the room
    // exists: the same 404 as for a room that does not.
    let ghost = "00000000-0000-7000-8000-000000000000";
    for path in [format!("/api/v1/rooms/{room}"), format!("/api/v1/rooms/{room}/messages")] {
        let r = app.get(&mallory.access, &path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        let g = app.get(&mallory.access, &path.replace(&room, ghost)).await;
        assert_eq!(r.body, g.body);
    }
    let add_self = app
        .post(Some(&mallory.access), &format!("/api/v1/rooms/{room}/members"), json!({"user_id": mallory.user_id}))
        .await;
    assert_eq!(add_self.status, StatusCode::NOT_FOUND);
    let kick = app.delete(&mallory.access, &format!("/api/v1/rooms/{room}/members/{}", bob.user_id)).await;
    assert_eq!(kick.status, StatusCode::NOT_FOUND);
    assert_eq!(
        app.patch(&mallory.access, &format!("/api/v1/rooms/{room}"), json!({"name": "pwned"})).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.delete(&mallory.access, &format!("/api/v1/rooms/{room}")).await.status, StatusCode::NOT_FOUND);
    assert!(app.get(&mallory.access, "/api/v1/rooms").await.body["rooms"].as_array().unwrap().is_empty());

    // Bob (member, not owner) may not manage the room: 403.
    let r = app
        .post(Some(&bob.access), &format!("/api/v1/rooms/{room}/members"), json!({"user_id": mallory.user_id}))
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.error_code(), "forbidden");
    assert_eq!(
        app.delete(&bob.access, &format!("/api/v1/rooms/{room}/members/{}", ann.user_id)).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.patch(&bob.access, &format!("/api/v1/rooms/{room}"), json!({"name": "x"})).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(app.delete(&bob.access, &format!("/api/v1/rooms/{room}")).await.status, StatusCode::FORBIDDEN);

    // Nothing changed.
    let detail = app.get(&ann.access, &format!("/api/v1/rooms/{room}")).await;
    assert_eq!(detail.body["name"], "private");
    assert_eq!(detail.body["members"].as_array().unwrap().len(), 2);
}

async fn history_pages_by_seq(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "log", &[]).await;
    let msgs: Vec<NewMessage> = (1..=25)
        .map(|i| NewMessage {
            room_id: room.clone(),
            sender_id: ann.user_id.clone(),
            client_msg_id: format!("c{i}"),
            body: format!("m{i}"),
            sent_at: i,
            kind: NewKind::Message,
        })
        .collect();
    app.store.append_messages(&msgs).await.unwrap();
    let seqs = |v: &serde_json::Value| {
        v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_i64().unwrap()).collect::<Vec<_>>()
    };

    let newest = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?limit=10")).await;
    assert_eq!(seqs(&newest.body), (16..=25).collect::<Vec<_>>());
    assert_eq!(newest.body["has_more"], true);
    let older = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?limit=10&before_seq=16")).await;
    assert_eq!(seqs(&older.body), (6..=15).collect::<Vec<_>>());
    let after = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?after_seq=20")).await;
    assert_eq!(seqs(&after.body), (21..=25).collect::<Vec<_>>());
    assert_eq!(after.body["has_more"], false);
    let window = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?after_seq=2&before_seq=6")).await;
    assert_eq!(seqs(&window.body), vec![3, 4, 5]);

    for bad in ["limit=0", "limit=201", "limit=abc", "after_seq=-1", "bogus=1"] {
        let r = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.error_code(), "bad_request");
    }
}

async fn idempotency_key_replays_the_first_response(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let create = |key: &str, name: &str| {
        app.send(
            app.http
                .post(app.url("/api/v1/rooms"))
                .bearer_auth(&ann.access)
                .header("Idempotency-Key", key)
                .json(&json!({"name": name})),
        )
    };
    let first = create("k-1", "once").await;
    assert_eq!(first.status, StatusCode::CREATED);
    let retry = create("k-1", "once").await;
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.body, first.body, "same room returned");
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    let list = app.get(&ann.access, "/api/v1/rooms").await;
    assert_eq!(list.body["rooms"].as_array().unwrap().len(), 1, "created once");

    let misuse = create("k-1", "different").await;
    assert_eq!(misuse.status, StatusCode::BAD_REQUEST);
    // A failed request releases its key.
    let bad = create("k-2", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(create("k-2", "fixed").await.status, StatusCode::CREATED);
    // Concurrent retries: one room.
    let (a, b) = tokio::join!(create("k-3", "race"), create("k-3", "race"));
    let created = [&a, &b].iter().filter(|r| r.status == StatusCode::CREATED).count();
    assert!(created >= 1);
    let list = app.get(&ann.access, "/api/v1/rooms").await;
    assert_eq!(list.body["rooms"].as_array().unwrap().iter().filter(|r| r["name"] == "race").count(), 1);
}

/// People know each other by email, not by user id: a room is created with
/// `member_emails` and members are added with `{"email"}` (any case). An
/// unknown email is a 400 or 404 naming it, never a silent skip; giving both
/// or neither of `user_id` and `email` is a 400; the added member learns the
/// room like any other.
async fn members_added_by_email(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let cat = app.register("cat").await;

    let r = app
        .post(
            Some(&ann.access),
            "/api/v1/rooms",
            json!({"name": "by email", "member_emails": [bob.email.to_uppercase(), bob.email], "members": []}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let room = r.body["id"].as_str().unwrap().to_owned();
    let detail = app.get(&bob.access, &format!("/api/v1/rooms/{room}")).await;
    assert_eq!(detail.status, StatusCode::OK, "bob is a member");
    assert_eq!(detail.body["members"].as_array().unwrap().len(), 2);

    let r = app
        .post(Some(&ann.access), "/api/v1/rooms", json!({"name": "typo", "member_emails": ["nobody@example.com"]}))
        .await;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(r.body["error"]["message"].as_str().unwrap().contains("nobody@example.com"), "{}", r.body);
    let r =
        app.post(Some(&ann.access), "/api/v1/rooms", json!({"name": "bad", "member_emails": ["not-an-email"]})).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert_eq!(app.get(&ann.access, "/api/v1/rooms").await.body["rooms"].as_array().unwrap().len(), 1, "none created");

    let members = format!("/api/v1/rooms/{room}/members");
    let add = app.post(Some(&ann.access), &members, json!({"email": cat.email.to_uppercase()})).await;
    assert_eq!(add.status, StatusCode::CREATED, "{}", add.body);
    assert_eq!(add.body["user_id"], cat.user_id.as_str());
    let again = app.post(Some(&ann.access), &members, json!({"email": cat.email})).await;
    assert_eq!(again.status, StatusCode::OK);
    let nobody = app.post(Some(&ann.access), &members, json!({"email": "nobody@example.com"})).await;
    assert_eq!((nobody.status, nobody.error_code()), (StatusCode::NOT_FOUND, "not_found"));
    for body in [json!({}), json!({"email": cat.email, "user_id": cat.user_id}), json!({"email": "x"})] {
        let r = app.post(Some(&ann.access), &members, body.clone()).await;
        assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "{body}");
    }
    // Only the owner adds, by email as by id.
    let r = app.post(Some(&bob.access), &members, json!({"email": "dan@example.com"})).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::FORBIDDEN, "forbidden"));
    let detail = app.get(&cat.access, &format!("/api/v1/rooms/{room}")).await;
    assert_eq!(detail.body["members"].as_array().unwrap().len(), 3);
}

/// What another user's requests answer about `who`: the public profile,
/// and the statuses of adding them to a new room by id and by email and to
/// an existing room by id and by email.
async fn answers_about(app: &TestApp, owner: &Session, who: &Session) -> Vec<(StatusCode, String)> {
    let profile = app.get(&owner.access, &format!("/api/v1/users/{}", who.user_id)).await;
    let mut got = vec![(profile.status, format!("deleted={}", profile.body["deleted"]))];
    for body in
        [json!({"name": "by id", "members": [who.user_id]}), json!({"name": "by email", "member_emails": [who.email]})]
    {
        let r = app.post(Some(&owner.access), "/api/v1/rooms", body).await;
        got.push((r.status, r.body["error"]["message"].as_str().unwrap_or("").to_owned()));
    }
    for body in [json!({"user_id": who.user_id}), json!({"email": who.email})] {
        let room = app.create_room(owner, "later", &[]).await;
        let r = app.post(Some(&owner.access), &format!("/api/v1/rooms/{room}/members"), body).await;
        got.push((r.status, r.body["error"]["message"].as_str().unwrap_or("").to_owned()));
    }
    got
}

/// Whether someone is banned is between them and the operator: another
/// user's requests answer the same for a banned account as for any other
/// (the public profile, adding them by id or email), so no request tells.
async fn a_banned_user_is_answered_like_anyone_else(db: Db) {
    let admin = "admin-token-0123456789-abcdefghijklmnop";
    let app = spawn_app_with(db, |v| {
        v.insert("ADMIN_TOKEN".into(), admin.into());
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let cat = app.register("cat").await;
    let r =
        app.send(app.http.post(app.url(&format!("/api/v1/admin/users/{}/ban", cat.user_id))).bearer_auth(admin)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);

    let ordinary = answers_about(&app, &ann, &bob).await;
    assert_eq!(ordinary[0], (StatusCode::OK, "deleted=false".into()));
    assert!(ordinary[1..].iter().all(|(s, _)| *s == StatusCode::CREATED), "{ordinary:?}");
    assert_eq!(answers_about(&app, &ann, &cat).await, ordinary, "a banned user's answers differ from bob's");
    // The ban itself still holds: Cat can neither sign in nor use her token.
    assert_eq!(app.get(&cat.access, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
}
