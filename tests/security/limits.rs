//! Resource bounds: slow request headers (slowloris), rooms per socket,
//! sockets per user, a sign-in storm against the bounded hashing pool, and
//! look-ups by email through rooms.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{Db, TestApp, eventually, spawn_app_with};
use crate::ws::client::{Refused, WsClient};

/// Liveness guard for "the server closed it", not a timing assertion.
const GUARD: Duration = Duration::from_secs(60);

async fn healthy_and_serving(app: &TestApp) {
    let r = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(r.status, StatusCode::OK, "ready after the attack: {}", r.body);
    let s = app.register(&format!("after{}", uuid::Uuid::new_v4().simple())).await;
    let room = app.create_room(&s, "after", &[]).await;
    let mut ws = WsClient::connect(app, &s.access).await;
    ws.join(&room, None).await;
    ws.send_msg(&room, "after", "still works").await;
    assert_eq!(ws.next_of("ack").await["seq"], 1);
}

/// Reads until the server closes the connection; returns what it sent.
async fn until_closed_by_server(tcp: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(GUARD, tcp.read(&mut buf)).await.expect("the server closes the connection") {
            Ok(0) | Err(_) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_or_silent_request_headers_are_cut_off_and_others_are_served() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("HTTP_HEADER_TIMEOUT_SECS".into(), "1".into());
    })
    .await;
    // Silent: connects and sends nothing.
    let mut silent = TcpStream::connect(app.addr).await.unwrap();
    // Slowloris: an upgrade request that never finishes its headers, one
    // header line at a time.
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n").await.unwrap();
    let trickle = async {
        for i in 0..120 {
            if slow.write_all(format!("X-Pad-{i}: a\r\n").as_bytes()).await.is_err() {
                return true; // the server hung up
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    };
    let (silent_got, cut) = tokio::join!(until_closed_by_server(&mut silent), trickle);
    assert!(cut, "a trickled request must be cut off at the header deadline");
    // Hyper answers nothing, or a 408, before closing: never a response to
    // the unfinished request.
    assert!(silent_got.is_empty() || silent_got.starts_with("HTTP/1.1 408"), "silent got: {silent_got}");
    // A keep-alive connection that goes quiet after a request is closed too.
    let mut idle = TcpStream::connect(app.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let got = until_closed_by_server(&mut idle).await;
    assert!(got.starts_with("HTTP/1.1 200"), "the complete request was answered first: {got}");
    healthy_and_serving(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn one_socket_joins_at_most_max_rooms_and_a_leave_makes_room() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("WS_MAX_ROOMS_PER_SOCKET".into(), "3".into());
    })
    .await;
    let alice = app.register("alice").await;
    let mut rooms = Vec::new();
    for i in 0..4 {
        rooms.push(app.create_room(&alice, &format!("r{i}"), &[]).await);
    }
    let mut ws = WsClient::connect(&app, &alice.access).await;
    assert_eq!(ws.hello["limits"]["max_rooms"], 3, "announced in hello: {}", ws.hello);
    for r in &rooms[..3] {
        ws.join(r, None).await;
    }
    // Joining again a room already joined is not a new room.
    ws.join(&rooms[0], Some(0)).await;
    ws.send(json!({"type": "join", "id": "over", "room": rooms[3]})).await;
    let e = ws.next_of("error").await;
    assert_eq!(
        (e["id"].as_str(), e["code"].as_str(), e["room"].as_str()),
        (Some("over"), Some("limit_exceeded"), Some(rooms[3].as_str())),
        "{e}"
    );
    // The refused room was not joined: sending there is refused as unjoined
    // or not a member, and the joined rooms still work.
    ws.send_msg(&rooms[2], "c1", "in a joined room").await;
    assert_eq!(ws.next_of("ack").await["seq"], 1);
    ws.send(json!({"type": "leave", "id": "l", "room": rooms[0]})).await;
    assert_eq!(ws.next_of("left").await["room"], rooms[0].as_str());
    ws.join(&rooms[3], None).await;
    // The cap is per socket: a second socket has its own.
    let mut other = WsClient::connect(&app, &alice.access).await;
    for r in &rooms[..3] {
        other.join(r, None).await;
    }
    healthy_and_serving(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn one_user_holds_at_most_max_sockets_and_others_are_unaffected() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("WS_MAX_SOCKETS_PER_USER".into(), "2".into());
    })
    .await;
    let alice = app.register("alice").await;
    let bob = app.register("bob").await;
    let first = WsClient::connect(&app, &alice.access).await;
    let _second = WsClient::connect(&app, &alice.access).await;
    match WsClient::try_connect(&app, Some(&alice.access), None, None).await {
        Err(Refused::Http(status, body)) => {
            assert_eq!(status, 429, "{body}");
            assert_eq!(body["error"]["code"], "limit_exceeded", "{body}");
            assert!(body["error"]["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{body}");
        }
        Ok(_) => panic!("a third socket of one user was accepted"),
    }
    // Another user is not affected.
    let _bob1 = WsClient::connect(&app, &bob.access).await;
    let _bob2 = WsClient::connect(&app, &bob.access).await;
    // A closed socket frees its place.
    first.close().await;
    eventually(Duration::from_secs(30), || async {
        WsClient::try_connect(&app, Some(&alice.access), None, None).await.ok()
    })
    .await;
    healthy_and_serving(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_sign_in_storm_beyond_the_hashing_pool_is_refused_at_once_with_retry_after() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("PASSWORD_HASH_THREADS".into(), "1".into());
        v.insert("PASSWORD_HASH_QUEUE".into(), "0".into());
    })
    .await;
    let alice = app.register("alice").await;
    let login = json!({"email": alice.email, "password": "correct horse battery"});
    let answers = futures_util::future::join_all((0..100).map(|i| {
        let req = if i % 2 == 0 {
            app.http.post(app.url("/api/v1/auth/login")).json(&login)
        } else {
            app.http.post(app.url("/api/v1/auth/register")).json(&json!({
                "email": format!("storm{i}@example.com"), "password": "correct horse battery", "display_name": "storm"
            }))
        };
        app.send(req)
    }))
    .await;
    let mut busy = 0;
    for r in &answers {
        match r.status {
            StatusCode::OK | StatusCode::CREATED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(r.error_code(), "unavailable");
                let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
                assert!(secs >= 1);
                assert!(r.body["error"]["retry_after_ms"].as_u64().is_some(), "{}", r.body);
            }
            s => panic!("a storm answer is served or refused as busy, got {s}: {}", r.body),
        }
    }
    assert!(busy > 0, "100 concurrent hashes on one thread with no queue: some are refused");
    // Nothing half-done: every registration that answered 503 left no account.
    for (i, r) in answers.iter().enumerate().filter(|(i, _)| i % 2 == 1) {
        let exists = app.store.find_login(&format!("storm{i}@example.com")).await.unwrap().is_some();
        assert_eq!(exists, r.status == StatusCode::CREATED, "storm{i}: {}", r.status);
    }
    let r = app.post(None, "/api/v1/auth/login", login).await;
    assert_eq!(r.status, StatusCode::OK, "a login after the storm: {}", r.body);
    healthy_and_serving(&app).await;
    app.stop().await;
}

/// Asking rooms whether emails have accounts is held to the look-up budget
/// (`EMAIL_LOOKUPS_PER_MINUTE`, default 20 per user): of 40 concurrent
/// `{"email"}` adds of unknown addresses, at most 20 answer 404 and the rest
/// 429 with `Retry-After`; `member_emails` draws on the same budget; the
/// budget is the user's (another user behind the same address still gets
/// answers), and the caller's other requests go on.
#[tokio::test]
async fn email_lookups_through_rooms_are_throttled() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "probe", &[]).await;
    let members = format!("/api/v1/rooms/{room}/members");
    let answers = futures_util::future::join_all(
        (0..40).map(|i| app.post(Some(&ann.access), &members, json!({"email": format!("guess{i}@example.com")}))),
    )
    .await;
    let not_found = answers.iter().filter(|r| r.status == StatusCode::NOT_FOUND).count();
    let limited: Vec<_> = answers.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert_eq!(not_found + limited.len(), 40, "only 404 and 429");
    assert!(not_found <= 20, "{not_found} look-ups answered within a budget of 20");
    assert!(limited.len() >= 20, "{} refused", limited.len());
    for r in &limited {
        assert_eq!(r.error_code(), "rate_limited");
        assert!(r.headers.contains_key("retry-after"), "429 without Retry-After");
    }
    // Room creation by email draws on the same, spent budget.
    let r =
        app.post(Some(&ann.access), "/api/v1/rooms", json!({"name": "x", "member_emails": ["a@example.com"]})).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
    // Adding by id is no look-up by email; another user has a budget of
    // their own (the address's is four times larger).
    let bob = app.register("bob").await;
    let r = app.post(Some(&ann.access), &members, json!({"user_id": bob.user_id})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let bobs = app.create_room(&bob, "bob's", &[]).await;
    let r = app.post(Some(&bob.access), &format!("/api/v1/rooms/{bobs}/members"), json!({"email": ann.email})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    healthy_and_serving(&app).await;
}

/// `member_emails` holds at most 20 addresses (400 naming the bound, nothing
/// created); 20 is accepted, and every entry, repeats included, is charged.
#[tokio::test]
async fn member_emails_are_capped_per_request() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let emails = |n: usize| (0..n).map(|_| bob.email.clone()).collect::<Vec<_>>();
    let r = app.post(Some(&ann.access), "/api/v1/rooms", json!({"name": "big", "member_emails": emails(21)})).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert_eq!(r.body["error"]["message"], "member_emails: at most 20 per request");
    assert_eq!(app.get(&ann.access, "/api/v1/rooms").await.body["rooms"].as_array().unwrap().len(), 0, "none created");
    let r = app.post(Some(&ann.access), "/api/v1/rooms", json!({"name": "full", "member_emails": emails(20)})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    // Those 20 (one address, twenty times) spent the minute's budget.
    let r = app.post(Some(&ann.access), "/api/v1/rooms", json!({"name": "more", "member_emails": emails(1)})).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
}
