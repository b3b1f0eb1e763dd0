//! Hostile input: oversized frames and bodies, deeply nested JSON, huge and
//! negative numbers, invalid UTF-8, binary frames, duplicated keys, control,
//! bidi and invisible characters in names, very long headers and URLs.
//!
//! The plain cases (malformed bodies, a frame just over the limit, one
//! invalid UTF-8 text frame) are in `bad_input` and `ws::faults`
//! (`bad_frames_get_error_frames_and_nothing_breaks`,
//! `invalid_utf8_closes_with_1007_and_nothing_else_breaks`); these go
//! further.

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use super::Bystander;
use crate::both_backends;
use crate::helpers::{Db, TestApp, spawn_app, spawn_app_with};
use crate::ws::client::{GUARD, WsClient};

both_backends!(huge_and_negative_numbers_are_refused_or_clamped);

/// `depth` levels of `[`, then as many `]`.
fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// `{"a":{"a":…1…}}`, `depth` levels.
fn nested_objects(depth: usize) -> String {
    format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
}

/// The next reply must be `error` with `code` (and the socket stays open).
async fn expect_error(c: &mut WsClient, code: &str, what: &str) -> Value {
    let f = c.next_reply().await;
    assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some(code)), "{what}: {f}");
    f
}

async fn post_raw(app: &TestApp, token: &str, path: &str, body: impl Into<reqwest::Body>) -> crate::helpers::Resp {
    app.send(app.http.post(app.url(path)).bearer_auth(token).header("content-type", "application/json").body(body))
        .await
}

/// Sends raw bytes as one HTTP/1.1 request on a fresh connection and
/// returns the response's status code and body (the server closes or
/// answers within the guard time).
async fn raw_http(app: &TestApp, request: &[u8]) -> (u16, String) {
    raw_http_in_pieces(app, request, 1).await
}

/// [`raw_http`], the request written in `pieces` writes with a pause
/// between them, so that the server reads it in as many parts. A server
/// that answers and closes early may reset the connection before its
/// answer is read: then the status is 0.
async fn raw_http_in_pieces(app: &TestApp, request: &[u8], pieces: usize) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    for (i, piece) in request.chunks(request.len().div_ceil(pieces)).enumerate() {
        if i > 0 {
            // The pause is the scenario (a head arriving in parts), not a
            // wait for the server.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        // The server may answer (and close) before reading it all.
        if s.write_all(piece).await.is_err() {
            break;
        }
    }
    let mut buf = Vec::new();
    let read = tokio::time::timeout(GUARD, async {
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap_or(0)))
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the server answers within the guard time");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Frames far over the frame limit close only that socket with 1009;
/// bodies far over MAX_BODY_BYTES are 413 `too_large`, announced length or
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_and_bodies() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;

    // 1 MiB text frame (the limit is 64 KiB): close 1009.
    let mut c = WsClient::connect(&app, &ann.access).await;
    let big = json!({"type": "ping", "id": "x", "pad": "x".repeat(1 << 20)}).to_string();
    let _ = futures_util::SinkExt::send(&mut c.ws, Message::text(big)).await; // the server may close mid-frame
    let (code, _, _) = c.until_close().await;
    assert!(code == 1009 || code == 1006, "1009 (or a reset while the frame was still being written): {code}");
    // Many fragments that add up past the limit: 1009 as well.
    let mut c = WsClient::connect(&app, &ann.access).await;
    let chunk = vec![b' '; 16 * 1024];
    let mut closed = None;
    for i in 0..16 {
        let op = if i == 0 { OpCode::Data(Data::Text) } else { OpCode::Data(Data::Continue) };
        if futures_util::SinkExt::send(&mut c.ws, Message::Frame(Frame::message(chunk.clone(), op, false)))
            .await
            .is_err()
        {
            closed = Some(());
            break;
        }
    }
    let _ = closed;
    let (code, _, _) = c.until_close().await;
    assert!(code == 1009 || code == 1006, "fragmented oversize: {code}");
    // A body over max_body_bytes inside a legal frame: error too_large.
    let mut c = WsClient::connect(&app, &ann.access).await;
    let room = app.create_room(&ann, "big", &[]).await;
    c.send(json!({"type": "send", "id": 1, "room": room, "client_msg_id": "b1", "body": "é".repeat(2049)})).await;
    expect_error(&mut c, "too_large", "body of 4098 bytes").await;
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(0));

    // REST: 8 MiB body with its length announced, and chunked.
    // Written raw: the server answers 413 as soon as it reads the length and
    // closes without reading the body, so an HTTP client still writing it
    // may fail with a broken pipe before it reads the answer.
    let announced = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{}",
        ann.access,
        8 << 20,
        " ".repeat(8 << 20)
    );
    let (status, body) = raw_http(&app, announced.as_bytes()).await;
    assert_eq!(status, 413, "8 MiB with its length announced: {body}");
    assert!(body.contains("too_large"), "{body}");
    let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
    let chunked = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n{}0\r\n\r\n",
        ann.access,
        chunk.repeat(128)
    );
    let (status, body) = raw_http(&app, chunked.as_bytes()).await;
    assert_eq!(status, 413, "8 MiB chunked: {body}");
    assert!(body.contains("too_large"), "{body}");
    // A lying Content-Length (a gigabyte announced, two bytes sent) is
    // refused at once, not held open until the request timeout (408).
    let req = format!(
        "POST /api/v1/rooms HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\n\
         Content-Length: 1000000000\r\n\r\n{{}}",
        ann.access
    );
    let (status, body) = raw_http(&app, req.as_bytes()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("too_large"), "{body}");
    bystander.still_fine(&app).await;
}

/// 10,000 levels of nesting (arrays and objects) in REST bodies and socket
/// frames are refused as malformed (serde_json's recursion limit), never a
/// stack overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_json_is_refused_without_crashing() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    for nested in [nested_arrays(10_000), nested_objects(10_000)] {
        for body in [
            nested.clone(),
            format!("{{\"name\": {nested}}}"),
            format!("{{\"name\": \"x\", \"members\": {nested}}}"),
            format!("{{\"name\": \"x\", \"junk\": {nested}}}"),
        ] {
            let r = post_raw(&app, &ann.access, "/api/v1/rooms", body).await;
            assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "{}", r.body);
        }
        let r = post_raw(&app, &ann.access, "/api/v1/auth/login", nested.clone()).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    let mut c = WsClient::connect(&app, &ann.access).await;
    for nested in [nested_arrays(10_000), nested_objects(10_000)] {
        for frame in [
            nested.clone(),
            format!("{{\"type\": \"ping\", \"id\": {nested}}}"),
            format!("{{\"id\": {nested}, \"type\": \"ping\"}}"),
            format!("{{\"type\": \"join\", \"room\": {nested}}}"),
            format!("{{\"type\": \"ping\", \"junk\": {nested}}}"),
        ] {
            c.send_raw(Message::text(frame)).await;
            let e = expect_error(&mut c, "bad_request", "nested").await;
            assert!(e.get("id").is_none(), "no id echoed from a nested one: {e}");
        }
    }
    assert!(c.drain_until_pong().await.is_empty(), "the socket is open");
    bystander.still_fine(&app).await;
}

/// Numbers past i64 (2^64, 1e400), negative seqs and floats are
/// `bad_request`; a read marker past the room's last message is stored as
/// that last message (not 2^63-1, which would freeze the marker forever).
async fn huge_and_negative_numbers_are_refused_or_clamped(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("ADMIN_TOKEN".into(), crate::operators::ADMIN_TOKEN.into());
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "numbers", &[&bob]).await;
    let mut c = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    c.join(&room, None).await;
    b.join(&room, None).await;
    c.send_msg(&room, "n-1", "one").await;
    assert_eq!(c.next_of("ack").await["seq"], 1);
    c.drain_until_pong().await;
    b.drain_until_pong().await;

    for n in ["18446744073709551616", "9223372036854775808", "1e400", "-1e400", "-1", "1.5", "-9223372036854775809"] {
        for frame in [
            format!(r#"{{"type": "read", "room": "{room}", "seq": {n}}}"#),
            format!(r#"{{"type": "join", "room": "{room}", "since_seq": {n}}}"#),
        ] {
            c.send_raw(Message::text(frame.clone())).await;
            expect_error(&mut c, "bad_request", &frame).await;
        }
        c.send_raw(Message::text(format!(r#"{{"type": "ping", "id": {n}}}"#))).await;
        if n == "-1" {
            assert_eq!(c.next_reply().await["type"], "pong", "a negative integer id is an integer");
        } else {
            expect_error(&mut c, "bad_request", &format!("id {n}")).await;
        }
        for q in ["limit", "after_seq", "before_seq"] {
            let r = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?{q}={n}")).await;
            assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "{q}={n}: {}", r.body);
        }
        let r = post_raw(&app, &ann.access, "/api/v1/rooms", format!(r#"{{"name": {n}}}"#)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
    }
    // The largest legal values work and do nothing strange.
    let r = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?after_seq={}", i64::MAX)).await;
    assert_eq!((r.status, r.body["messages"].as_array().map(Vec::len)), (StatusCode::OK, Some(0)), "{}", r.body);
    let r = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?before_seq={}", i64::MAX)).await;
    assert_eq!((r.status, r.body["messages"].as_array().map(Vec::len)), (StatusCode::OK, Some(1)), "{}", r.body);
    // A since_seq above last_seq cannot be right: `reset` (protocol §17),
    // then `joined` with nothing replayed.
    c.send(json!({"type": "join", "id": "max", "room": room, "since_seq": i64::MAX})).await;
    let r = c.next_of("reset").await;
    assert_eq!((r["reason"].as_str(), r["last_seq"].as_i64()), (Some("ahead"), Some(1)));
    let j = c.next_of("joined").await;
    assert_eq!((j["last_seq"].as_i64(), j["replayed"].as_i64()), (Some(1), Some(0)));
    // Disconnect code past u16: 400.
    let r = app
        .send(
            app.http
                .post(app.url(&format!("/api/v1/admin/users/{}/disconnect", bob.user_id)))
                .bearer_auth(crate::operators::ADMIN_TOKEN)
                .json(&json!({"code": 70_000})),
        )
        .await;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"));

    // A read marker of 2^63-1 is clamped to the last message (seq 1), so a
    // later real read still moves it.
    c.send(json!({"type": "read", "room": room, "seq": i64::MAX})).await;
    let r = c.next_of("read").await;
    assert_eq!(r["seq"], 1, "clamped to the room's last seq: {r}");
    let seen = b.next_of("read").await;
    assert_eq!(seen["seq"], 1, "others are told the clamped marker: {seen}");
    b.send_msg(&room, "b-2", "two").await;
    assert_eq!(b.next_of("ack").await["seq"], 2);
    c.send(json!({"type": "read", "room": room, "seq": 2})).await;
    assert_eq!(c.next_of("read").await["seq"], 2, "the marker still moves forward");
    let list = app.get(&ann.access, "/api/v1/rooms").await;
    let mine = list.body["rooms"].as_array().unwrap().iter().find(|r| r["id"] == room.as_str()).unwrap().clone();
    assert_eq!((mine["last_seq"].as_i64(), mine["read_seq"].as_i64()), (Some(2), Some(2)), "{mine}");
    bystander.still_fine(&app).await;
}

/// Invalid UTF-8 everywhere it can hide: a REST body is 400, a header or a
/// path is refused without reaching a handler, a text frame split so that
/// the bad byte is in a continuation fails the socket with 1007.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let r = post_raw(&app, &ann.access, "/api/v1/rooms", b"{\"name\": \"\xff\xfe\"}".to_vec()).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"));
    let r = app.get(&ann.access, "/api/v1/rooms/%FF%FE").await;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "{}", r.body);
    let req = b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n\r\n";
    let (status, body) = raw_http(&app, req).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("unauthorized"), "{body}");

    let mut c = WsClient::connect(&app, &ann.access).await;
    let first = b"{\"type\":\"ping\",\"id\":\"".to_vec();
    c.send_raw(Message::Frame(Frame::message(first, OpCode::Data(Data::Text), false))).await;
    c.send_raw(Message::Frame(Frame::message(b"\xc3\"}".to_vec(), OpCode::Data(Data::Continue), true))).await;
    let (code, _, _) = c.until_close().await;
    assert_eq!(code, 1007);
    bystander.still_fine(&app).await;
}

/// A binary frame, even one holding a valid `send`, is `bad_request` and
/// not processed; the socket stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_frames_are_not_processed() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "bin", &[]).await;
    let mut c = WsClient::connect(&app, &ann.access).await;
    let send = json!({"type": "send", "id": "b", "room": room, "client_msg_id": "bin-1", "body": "smuggled"});
    for payload in [send.to_string().into_bytes(), vec![0u8; 1000], vec![0xff; 3]] {
        c.send_raw(Message::binary(payload)).await;
        expect_error(&mut c, "bad_request", "binary").await;
    }
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(0), "the binary send was not stored");
    assert!(c.drain_until_pong().await.is_empty());
    bystander.still_fine(&app).await;
}

/// A JSON object with a member name twice is refused: `bad_request` on the
/// socket and 400 on REST (never "the last one wins", which would let a
/// proxy that checks the first copy and the gateway that uses the second
/// disagree). Documented in protocol/README.md 3 and README "REST API".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_keys_are_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let mine = app.create_room(&ann, "mine", &[]).await;
    let bobs = app.create_room(&bob, "bob's", &[]).await;
    let mut c = WsClient::connect(&app, &ann.access).await;
    let frames = [
        format!(r#"{{"type": "send", "room": "{mine}", "room": "{bobs}", "client_msg_id": "d1", "body": "x"}}"#),
        format!(r#"{{"type": "ping", "type": "send", "room": "{mine}", "client_msg_id": "d2", "body": "x"}}"#),
        format!(r#"{{"type": "send", "room": "{mine}", "client_msg_id": "d3", "body": "x", "body": "y"}}"#),
        r#"{"type": "ping", "id": "a", "id": "b"}"#.to_owned(),
        format!(r#"{{"type": "read", "room": "{mine}", "seq": 1, "seq": 2}}"#),
    ];
    for f in &frames {
        c.send_raw(Message::text(f.clone())).await;
        let e = expect_error(&mut c, "bad_request", f).await;
        assert!(e["message"].as_str().unwrap().contains("duplicate"), "{e}");
    }
    assert_eq!(app.store.last_seq(&mine).await.unwrap(), Some(0));
    assert_eq!(app.store.last_seq(&bobs).await.unwrap(), Some(0));
    for (path, body) in [
        ("/api/v1/rooms", r#"{"name": "a", "name": "b"}"#.to_owned()),
        ("/api/v1/auth/refresh", format!(r#"{{"refresh_token": "{}", "refresh_token": "x"}}"#, ann.refresh)),
        (
            "/api/v1/auth/login",
            r#"{"email": "ann@example.com", "email": "x@y.z", "password": "correct horse battery"}"#.into(),
        ),
    ] {
        let r = post_raw(&app, &ann.access, path, body).await;
        assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "{path}: {}", r.body);
    }
    let r = app.send(
        app.http
            .patch(app.url("/api/v1/me"))
            .bearer_auth(&ann.access)
            .header("content-type", "application/json")
            .body(r#"{"display_name": "a", "display_name": "b"}"#),
    );
    assert_eq!(r.await.status, StatusCode::BAD_REQUEST);
    bystander.still_fine(&app).await;
}

/// Control, bidi and invisible characters in user display names and room
/// names, on create and on rename, are refused with 400 `bad_request`
/// (README "REST API"); nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bidi_and_invisible_characters_in_names_are_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "plain", &[]).await;
    let bad = [
        "\u{202E}gnp.exe",
        "a\u{0}b",
        "zero\u{200B}width",
        "\u{200F}rlm",
        "iso\u{2067}late",
        "alm\u{061C}",
        "\u{FEFF}bom",
        "wj\u{2060}",
        "bell\u{7}",
        "nl\nx",
        "del\u{7f}",
        "c1\u{85}x",
    ];
    for (i, name) in bad.iter().enumerate() {
        let r = app
            .post(
                None,
                "/api/v1/auth/register",
                json!({"email": format!("n{i}@example.com"), "password": "correct horse battery", "display_name": name}),
            )
            .await;
        assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "register {name:?}");
        let r = app.patch(&ann.access, "/api/v1/me", json!({"display_name": name})).await;
        assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "rename me {name:?}");
        let r = app.post(Some(&ann.access), "/api/v1/rooms", json!({"name": name})).await;
        assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "room {name:?}");
        let r = app.patch(&ann.access, &format!("/api/v1/rooms/{room}"), json!({"name": name})).await;
        assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "rename room {name:?}");
    }
    // Ordinary non-ASCII names are fine; surrounding spaces are trimmed.
    let r = app.patch(&ann.access, "/api/v1/me", json!({"display_name": "  Zoë 🚀 عربي  "})).await;
    assert_eq!((r.status, r.body["display_name"].as_str()), (StatusCode::OK, Some("Zoë 🚀 عربي")));
    assert_eq!(app.get(&ann.access, &format!("/api/v1/rooms/{room}")).await.body["name"], "plain");
    let rooms = app.get(&ann.access, "/api/v1/rooms").await;
    assert_eq!(rooms.body["rooms"].as_array().unwrap().len(), 1, "no room was created");
    bystander.still_fine(&app).await;
}

/// A 64 KiB header is served normally (under the 128 KiB head limit);
/// a head past that limit, or a URL past 64 KiB, is refused by the HTTP
/// layer before any handler: 431 and 414 (README "REST API"). A 100 KiB
/// path segment within the limit, i.e. a long id, is 400 `bad_request`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn very_long_headers_and_urls() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;

    let junk = "j".repeat(64 * 1024);
    let r = app.send(app.http.get(app.url("/api/v1/me")).bearer_auth(&ann.access).header("x-junk", &junk)).await;
    assert_eq!(r.status, StatusCode::OK, "a 64 KiB header is just a header");
    let r = app.get(&"A".repeat(64 * 1024), "/api/v1/me").await;
    assert_eq!((r.status, r.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "a 64 KiB token");
    // On the handshake: a 64 KiB token is 401, as any invalid one.
    let (status, code) = super::refused(&app, Some(&"A".repeat(64 * 1024)), None, None).await;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));

    let huge_head =
        format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nX-Junk: {}\r\n\r\n", "j".repeat(1 << 20)).into_bytes();
    let (status, _) = raw_http(&app, &huge_head).await;
    assert_eq!(status, 431, "a 1 MiB header");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = raw_http(&app, format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes()).await;
    assert_eq!(status, 431, "200 headers");

    for url in [
        format!("/api/v1/rooms/{}", "r".repeat(100 * 1024)),
        format!("/api/v1/rooms/x/messages?after_seq=1&pad={}", "p".repeat(100 * 1024)),
        format!("/ws?ticket=wst_{}", "t".repeat(100 * 1024)),
    ] {
        let req = format!("GET {url} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", ann.access);
        let (status, _) = raw_http(&app, req.as_bytes()).await;
        assert_eq!(status, 414, "a 100 KiB URL ({:.30})", url);
    }
    // Long, but within the URL limit: the application answers.
    let r = app.get(&ann.access, &format!("/api/v1/rooms/{}", "r".repeat(60 * 1024))).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"));
    let r = app.get(&ann.access, &format!("/api/v1/nope/{}", "n".repeat(60 * 1024))).await;
    assert_eq!((r.status, r.error_code()), (StatusCode::NOT_FOUND, "not_found"));
    bystander.still_fine(&app).await;
}

/// README's bounds table: a request head is at most 128 KiB however its
/// bytes arrive. Written in several parts with pauses, on a REST route and
/// on the handshake: a head of exactly 128 KiB is served, one byte more is
/// 431 (or the connection is closed unanswered), never served; so is a
/// 500 KB head in two parts (hyper's soft read-buffer bound let it through).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_head_limit_holds_however_the_bytes_arrive() {
    const LIMIT: usize = 128 * 1024;
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let rest = format!("GET /api/v1/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n", ann.access);
    let ws = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {}\r\n",
        ann.access
    );
    // `start`, a padding header and the blank line: `total` bytes in all.
    let head = |start: &str, total: usize| {
        let frame = start.len() + "X-Pad: \r\n\r\n".len();
        format!("{start}X-Pad: {}\r\n\r\n", "p".repeat(total - frame)).into_bytes()
    };
    for (start, served) in [(&rest, 200), (&ws, 101)] {
        for pieces in [1, 2, 5] {
            let h = head(start, LIMIT);
            assert_eq!(h.len(), LIMIT);
            let (status, _) = raw_http_in_pieces(&app, &h, pieces).await;
            assert_eq!(status, served, "a head of exactly {LIMIT} bytes in {pieces} writes is served: {start:.20}");
            for total in [LIMIT + 1, 200 * 1024, 500_000] {
                let (status, body) = raw_http_in_pieces(&app, &head(start, total), pieces).await;
                assert!(
                    status == 431 || status == 0,
                    "a head of {total} bytes in {pieces} writes: {status} {body:.200} ({start:.20})"
                );
            }
        }
    }
    bystander.still_fine(&app).await;
}
