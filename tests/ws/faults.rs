//! The WebSocket hub under faults: bad frames, rate limits and abuse, slow
//! consumers, token expiry and renewal, logout and erasure, drain at
//! shutdown, idle sockets.
//!
//! No test sleeps to wait for an event: frames and closes are awaited with
//! the client's guard timeout, and "nothing else arrived" is proven with the
//! ping/pong sentinel. Real time is only let pass where the behaviour under
//! test is about time (idle timeout, token expiry).

use std::collections::BTreeSet;
use std::time::Duration;

use chatgw::clock::now_ms;
use chatgw::db::Store;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::both_backends;
use crate::helpers::{Db, TestApp, spawn_app, spawn_app_with};
use crate::ws::client::{GUARD, Refused, WsClient, assert_conforms};

both_backends!(slow_consumer_is_cut_off_then_resumes_without_loss);

fn set(v: &mut std::collections::HashMap<String, String>, pairs: &[(&str, &str)]) {
    for (k, val) in pairs {
        v.insert((*k).to_owned(), (*val).to_owned());
    }
}

fn text(frame: Value) -> Message {
    Message::text(frame.to_string())
}

fn seq_of(f: &Value) -> i64 {
    f["seq"].as_i64().unwrap_or_else(|| panic!("no seq in {f}"))
}

/// Frames other than presence noise.
fn without_presence(frames: Vec<Value>) -> Vec<Value> {
    frames.into_iter().filter(|f| f["type"] != "presence").collect()
}

fn handshake_status(r: Result<WsClient, Refused>) -> u16 {
    match r {
        Ok(_) => 101,
        Err(Refused::Http(s, _)) => s,
    }
}

/// Every kind of bad frame gets exactly one `error` frame on the same
/// socket, which keeps working; other clients never notice. Only a frame
/// over the frame limit closes the socket (1009).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_nothing_breaks() {
    let app =
        spawn_app_with(Db::Sqlite, |v| set(v, &[("WS_MAX_FRAME_BYTES", "4096"), ("WS_MAX_BODY_BYTES", "1000")])).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "general", &[&bob]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    assert_eq!(a.hello["limits"]["max_frame_bytes"], 4096);
    assert_eq!(a.hello["limits"]["max_body_bytes"], 1000);
    a.join(&room, None).await;
    b.join(&room, None).await;

    let cases: Vec<(&str, Message, &str, Value)> = vec![
        ("malformed JSON", Message::text("{nope"), "bad_request", Value::Null),
        ("not an object", Message::text("[1,2]"), "bad_request", Value::Null),
        ("unknown type", text(json!({"type": "warp", "id": 5})), "bad_request", json!(5)),
        (
            "send without body",
            text(json!({"type": "send", "id": "s1", "room": room, "client_msg_id": "c-nobody"})),
            "bad_request",
            json!("s1"),
        ),
        ("join without room", text(json!({"type": "join", "id": "j1"})), "bad_request", json!("j1")),
        (
            "invalid client_msg_id",
            text(json!({"type": "send", "id": "s2", "room": room, "client_msg_id": "has space", "body": "hi"})),
            "bad_request",
            json!("s2"),
        ),
        ("binary frame", Message::binary(vec![1u8, 2, 3]), "bad_request", Value::Null),
        (
            "body over max_body_bytes",
            text(json!({"type": "send", "id": "s3", "room": room, "client_msg_id": "c-big", "body": "x".repeat(1001)})),
            "too_large",
            json!("s3"),
        ),
        (
            // 501 characters, 1002 UTF-8 bytes: the limit counts bytes.
            "multi-byte body over max_body_bytes",
            text(json!({"type": "send", "id": 4, "room": room, "client_msg_id": "c-big2", "body": "é".repeat(501)})),
            "too_large",
            json!(4),
        ),
    ];

    let mut stored = 0i64;
    for (what, frame, code, id) in cases {
        let before = app.store.last_seq(&room).await.unwrap();
        a.send_raw(frame).await;
        // The pong proves the same socket still answers.
        let frames = without_presence(a.drain_until_pong().await);
        assert_eq!(frames.len(), 1, "{what}: exactly one error frame, nothing else: {frames:?}");
        let e = &frames[0];
        assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some(code)), "{what}: {e}");
        if id.is_null() {
            assert!(e.get("id").is_none(), "{what}: no id to echo: {e}");
        } else {
            assert_eq!(e["id"], id, "{what}: the request id is echoed");
        }
        assert_eq!(app.store.last_seq(&room).await.unwrap(), before, "{what}: nothing stored");

        // The other client is unaffected: its message reaches Ann.
        stored += 1;
        let cmid = format!("b-{stored}");
        b.send_msg(&room, &cmid, &format!("after {what}")).await;
        let ack = b.next_of("ack").await;
        assert_eq!((ack["client_msg_id"].as_str(), ack["seq"].as_i64()), (Some(cmid.as_str()), Some(stored)));
        let m = a.next_of("message").await;
        assert_eq!((m["seq"].as_i64(), m["client_msg_id"].as_str()), (Some(stored), Some(cmid.as_str())));
    }

    // Exactly at the limit (500 two-byte characters) is fine.
    a.send_msg(&room, "c-limit", &"é".repeat(500)).await;
    stored += 1;
    let ack = a.next_of("ack").await;
    assert_eq!((ack["seq"].as_i64(), ack["duplicate"].as_bool()), (Some(stored), Some(false)));
    assert_eq!(b.next_of("message").await["seq"], stored);

    // A frame over max_frame_bytes closes the socket with 1009; nothing is
    // stored.
    let huge = json!({"type": "send", "room": room, "client_msg_id": "c-huge", "body": "y".repeat(8000)});
    a.send_raw(text(huge)).await;
    let (code, reason, seen) = a.until_close().await;
    assert_eq!(code, 1009, "close 1009 for an oversized frame ({reason}); before it: {seen:?}");
    assert!(seen.iter().all(|f| f["type"] != "ack"), "the oversized send was not processed: {seen:?}");
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(stored));

    // Bob still works; Ann can come back.
    b.send_msg(&room, "b-last", "still here").await;
    stored += 1;
    assert_eq!(b.next_of("ack").await["seq"], stored);
    b.drain_until_pong().await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let (replayed, joined) = a.join(&room, Some(stored - 1)).await;
    assert_eq!(joined["last_seq"], stored);
    assert_eq!(replayed.iter().map(seq_of).collect::<Vec<_>>(), vec![stored]);
}

/// `send` frames have a token bucket per connection: over it, a send is
/// refused with `rate_limited` (and not stored); a client that keeps going
/// is closed with 4008. Other connections, even the same user's, keep
/// their own budgets. Every other frame type has a separate bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_then_abuse_close() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        set(v, &[("WS_SEND_PER_SEC", "1"), ("WS_SEND_BURST", "2"), ("WS_ABUSE_STRIKES", "5")])
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "general", &[&bob]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut a2 = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    assert_eq!(
        (a.hello["limits"]["send_per_sec"].as_i64(), a.hello["limits"]["send_burst"].as_i64()),
        (Some(1), Some(2))
    );
    b.join(&room, None).await;

    let send = |i: usize| json!({"type": "send", "id": format!("s{i}"), "room": room, "client_msg_id": format!("a-{i}"), "body": format!("m{i}")});
    // The burst is 2 and one token comes back per second: of three sends in
    // a row, the third is refused.
    for i in 1..=3 {
        a.send(send(i)).await;
    }
    let mut acks = Vec::new();
    let mut refused = None;
    while acks.len() < 2 || refused.is_none() {
        let f = a.next().await;
        match f["type"].as_str() {
            Some("ack") => acks.push((f["id"].as_str().unwrap().to_owned(), seq_of(&f))),
            Some("error") => {
                assert!(refused.is_none(), "only one refusal: {f}");
                refused = Some(f);
            }
            _ => panic!("unexpected {f}"),
        }
    }
    acks.sort();
    assert_eq!(acks, vec![("s1".to_owned(), 1), ("s2".to_owned(), 2)]);
    let e = refused.unwrap();
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("rate_limited"), Some("s3")));
    assert!(e["retry_after_ms"].as_i64().unwrap() > 0, "retry_after_ms > 0: {e}");
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(2), "the refused send was not stored");

    // Keep sending regardless: WS_ABUSE_STRIKES refusals in a row are
    // answered, the next one closes with 4008. Each answer is read before
    // the next send, so the close is the answer to a send.
    let mut acked = 2i64;
    let mut refusals_in_a_row = 1;
    let mut i = 3;
    let (code, reason) = loop {
        i += 1;
        assert!(i < 40, "never closed for abuse ({refusals_in_a_row} refusals in a row)");
        a.send(send(i)).await;
        match a.next_or_close().await {
            Ok(f) if f["type"] == "error" => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                refusals_in_a_row += 1;
            }
            // A token may have come back meanwhile: that resets the count.
            Ok(f) if f["type"] == "ack" => {
                acked += 1;
                refusals_in_a_row = 0;
            }
            Ok(f) => panic!("unexpected {f}"),
            Err(close) => break close,
        }
    };
    assert_eq!(code, 4008, "closed for rate-limit abuse: {reason}");
    assert_eq!(refusals_in_a_row, 5, "closed after exactly WS_ABUSE_STRIKES refusals in a row");
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(acked), "refused sends are never stored");

    // Bob got exactly the accepted messages and is unaffected.
    let got: Vec<i64> = without_presence(b.drain_until_pong().await).iter().map(seq_of).collect();
    assert_eq!(got, (1..=acked).collect::<Vec<_>>());
    b.send_msg(&room, "b-1", "fine here").await;
    assert_eq!(b.next_of("ack").await["seq"], acked + 1);
    // Ann's other connection has its own budget.
    a2.send_msg(&room, "a2-1", "me too").await;
    assert_eq!(a2.next_of("ack").await["seq"], acked + 2);

    // Everything but `send` draws from the events bucket: pings over it are
    // refused while sends still go through.
    let app = spawn_app_with(Db::Sqlite, |v| {
        set(v, &[("WS_EVENTS_PER_SEC", "1"), ("WS_EVENTS_BURST", "3"), ("WS_ABUSE_STRIKES", "5")])
    })
    .await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "solo", &[]).await;
    let mut c = WsClient::connect(&app, &ann.access).await;
    assert_eq!(c.hello["limits"]["events_burst"], 3);
    for i in 1..=5 {
        c.send(json!({"type": "ping", "id": format!("p{i}")})).await;
    }
    for i in 1..=3 {
        let f = c.next().await;
        assert_eq!((f["type"].as_str(), f["id"].as_str()), (Some("pong"), Some(format!("p{i}").as_str())), "{f}");
    }
    for i in 4..=5 {
        let f = c.next().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str(), f["id"].as_str()),
            (Some("error"), Some("rate_limited"), Some(format!("p{i}").as_str())),
            "{f}"
        );
        assert!(f["retry_after_ms"].as_i64().unwrap() > 0);
    }
    c.send_msg(&room, "c-1", "sends have their own budget").await;
    let ack = c.next().await;
    assert_eq!((ack["type"].as_str(), ack["seq"].as_i64()), (Some("ack"), Some(1)), "{ack}");
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(1));
}

/// How many sockets the server closed with `code`, from its own metrics:
/// the only way to see a cut-off without reading the cut-off socket.
async fn server_closes(app: &TestApp, code: u16) -> u64 {
    let key = format!("chatgw_ws_closes_total{{code=\"{code}\"}}");
    crate::operators::scrape(app).await.get(&key).map_or(0, |v| *v as u64)
}

/// A socket that stops reading is cut off with 4009 once its bounded queue
/// overflows; it reconnects, resumes with `since_seq` and has every message
/// exactly once, in order.
async fn slow_consumer_is_cut_off_then_resumes_without_loss(db: Db) {
    // Ann sends in windows no larger than Bob's queue, so one commit batch
    // cannot overflow it by itself: the cut-off comes from Bob's socket
    // being full (his connection cannot drain its queue any more).
    const QUEUE: i64 = 8;
    const WINDOW: i64 = QUEUE;
    // Far beyond any kernel buffering between the server and Bob.
    const MAX: i64 = 20_000;
    let app = spawn_app_with(db, |v| {
        set(
            v,
            &[
                ("WS_OUTBOUND_QUEUE", "8"),
                ("WS_SEND_PER_SEC", "100000"),
                ("WS_SEND_BURST", "100000"),
                ("WS_MAX_BODY_BYTES", "3500"),
                ("WS_MAX_FRAME_BYTES", "8192"),
            ],
        )
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "firehose", &[&bob]).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    let (_, joined) = b.join(&room, None).await;
    assert_eq!(joined["last_seq"], 0);
    // From here on Bob does not read until he has been cut off.

    // Ann (not joined: she only gets acks) sends ~3 KB messages until the
    // kernel buffers towards Bob are full and the server cuts him off, then
    // one more window. The close frame is sent best-effort (the server
    // gives up on a peer that does not read for a while), so Bob starts
    // reading right after the cut-off rather than after a fixed count.
    let mut a = WsClient::connect(&app, &ann.access).await;
    let body = |i: i64| format!("{i:05}-{}", "z".repeat(3000));
    let mut acked = BTreeSet::new();
    let mut sent = 0;
    let mut cut = false;
    loop {
        for i in sent + 1..=sent + WINDOW {
            a.send_msg(&room, &format!("m-{i}"), &body(i)).await;
        }
        for _ in 0..WINDOW {
            let ack = a.next_of("ack").await;
            assert_eq!(ack["duplicate"], false);
            assert!(acked.insert(seq_of(&ack)), "one ack per message: {ack}");
        }
        sent += WINDOW;
        if cut {
            break;
        }
        cut = server_closes(&app, 4009).await > 0;
        assert!(sent < MAX, "Bob was never cut off after {sent} messages");
    }
    let n = sent;
    assert_eq!(acked.into_iter().collect::<Vec<_>>(), (1..=n).collect::<Vec<_>>());
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(n));

    // Bob reads: messages in order without gaps, then the 4009 close.
    let mut last = 0;
    let (code, reason) = loop {
        match b.next_or_close().await {
            Ok(f) if f["type"] == "message" => {
                assert_eq!(seq_of(&f), last + 1, "in order, no gap");
                last = seq_of(&f);
            }
            Ok(f) => panic!("unexpected {f}"),
            Err(close) => break close,
        }
    };
    assert_eq!(code, 4009, "slow consumer close ({reason}) after seq {last} of {n}");
    assert!(last < n, "Bob was cut off before the end");
    // Counted (and logged, in the same branch) once, however many fan-outs
    // found the queue full afterwards.
    let m = crate::operators::scrape(&app).await;
    assert_eq!(m.get("chatgw_ws_slow_consumers_total"), Some(&1.0));

    // Resume: the replay fills in everything after what Bob processed.
    let mut b = WsClient::connect(&app, &bob.access).await;
    let (replayed, joined) = b.join(&room, Some(last)).await;
    assert_eq!(joined["last_seq"], n);
    assert_eq!(joined["replayed"].as_i64(), Some(n - last));
    let mut all: Vec<i64> = (1..=last).collect();
    for m in &replayed {
        let seq = seq_of(m);
        assert_eq!(m["client_msg_id"], format!("m-{seq}"));
        assert_eq!(m["body"], body(seq));
        all.push(seq);
    }
    assert_eq!(all, (1..=n).collect::<Vec<_>>(), "every seq exactly once, in order");
    assert!(without_presence(b.drain_until_pong().await).is_empty(), "nothing after joined");
}

/// A socket whose token expires without renewal gets `token_expired` and
/// close 4001; one renewed with `auth` and a refreshed token stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiry_and_renewal() {
    // Long enough for a password hash or two on a loaded machine before
    // the renewal (a 2 s life ran out first under CI's load).
    let app = spawn_app_with(Db::Sqlite, |v| set(v, &[("ACCESS_TOKEN_TTL_SECS", "6")])).await;
    let ann = app.register("ann").await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &ann.access).await;
    let first_expiry = b.hello["token_expires_at"].as_i64().unwrap();
    assert_eq!(a.hello["token_expires_at"], first_expiry);
    assert!(first_expiry > now_ms());

    // Token expiries have one-second resolution: a refreshed token expires
    // later only once the second the first was issued in is over. Wait for
    // that condition (log in again until the new token's `exp` is later),
    // with a deadline, rather than for a fixed time.
    let fresh = crate::helpers::eventually(Duration::from_secs(5), || async {
        let r = app
            .post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": "correct horse battery"}))
            .await;
        let token = r.body["access_token"].as_str()?.to_owned();
        (token_exp_ms(&token) > first_expiry).then_some(token)
    })
    .await;
    b.send(json!({"type": "auth", "id": "renew-1", "token": fresh})).await;
    let ok = b.next_of("auth_ok").await;
    assert_eq!(ok["id"], "renew-1");
    assert!(ok["expires_at"].as_i64().unwrap() > first_expiry, "renewed: {ok} vs {first_expiry}");

    // A never renews: token_expired, then 4001 (awaited, not slept for).
    let (code, reason, seen) = a.until_close().await;
    assert_eq!(code, 4001, "{reason}");
    let last = seen.last().unwrap_or_else(|| panic!("token_expired before the close: {seen:?}"));
    assert_eq!((last["type"].as_str(), last["code"].as_str()), (Some("error"), Some("token_expired")), "{last}");

    // B outlives A's expiry.
    let after = b.drain_until_pong().await;
    assert!(after.is_empty(), "nothing but the pong: {after:?}");
}

/// Logout closes the sockets of that session only (4001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_only_that_sessions_sockets() {
    let app = spawn_app(Db::Sqlite).await;
    let ann = app.register("ann").await;
    let login =
        app.post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": "correct horse battery"})).await;
    assert_eq!(login.status, StatusCode::OK);
    let other_session = login.body["access_token"].as_str().unwrap().to_owned();
    let mut s1 = WsClient::connect(&app, &ann.access).await;
    let mut s2 = WsClient::connect(&app, &other_session).await;
    assert_ne!(s1.hello["session_id"], s2.hello["session_id"]);

    let r = app.post(Some(&ann.access), "/api/v1/auth/logout", json!({})).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    // The session is over for the REST API and the handshake at once...
    assert_eq!(handshake_status(WsClient::try_connect(&app, Some(&ann.access), None, None).await), 401);
    // ...and its open socket is closed; the other session's is not.
    let (code, reason, _) = s1.until_close().await;
    assert_eq!(code, 4001, "{reason}");
    assert!(s2.drain_until_pong().await.is_empty(), "the other session's socket stays open");
}

/// Erasure (`DELETE /me`) closes every socket of the user, on every session
/// (4001); other users are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_closes_every_socket_of_the_user() {
    let app = spawn_app(Db::Sqlite).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "general", &[&bob]).await;
    let login =
        app.post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": "correct horse battery"})).await;
    assert_eq!(login.status, StatusCode::OK);
    let other_session = login.body["access_token"].as_str().unwrap().to_owned();
    let mut sockets = vec![
        WsClient::connect(&app, &ann.access).await,
        WsClient::connect(&app, &ann.access).await,
        WsClient::connect(&app, &other_session).await,
    ];
    sockets[0].join(&room, None).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.join(&room, None).await;

    assert_eq!(app.delete(&ann.access, "/api/v1/me").await.status, StatusCode::NO_CONTENT);
    for s in &mut sockets {
        let (code, reason, _) = s.until_close().await;
        assert_eq!(code, 4001, "{reason}");
    }
    // Bob is unaffected (he may see Ann go offline).
    b.send_msg(&room, "b-1", "still here").await;
    assert_eq!(b.next_of("ack").await["seq"], 1);
    b.drain_until_pong().await;
    // Ann cannot come back on either session.
    for token in [&ann.access, &other_session] {
        let status = handshake_status(WsClient::try_connect(&app, Some(token), None, None).await);
        assert!(status == 401 || status == 403, "erased account refused, got {status}");
    }
}

/// The protocol (section 2.4) promises 403 for an erased account's
/// handshake ("do not retry"), like a ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_account_handshake_is_refused_with_403() {
    let app = spawn_app(Db::Sqlite).await;
    let ann = app.register("ann").await;
    assert_eq!(app.delete(&ann.access, "/api/v1/me").await.status, StatusCode::NO_CONTENT);
    assert_eq!(handshake_status(WsClient::try_connect(&app, Some(&ann.access), None, None).await), 403);
}

/// Graceful shutdown: every socket gets 1001 with a randomised reconnect
/// delay below DRAIN_RECONNECT_MAX_MS, queued frames are flushed first, the
/// server exits, and every acknowledged message is in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_on_shutdown_closes_with_1001_and_a_reconnect_delay() {
    // A database of our own, so it can be read after the server is gone.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/drain.db", dir.path().display());
    let app = spawn_app_with(Db::Sqlite, |v| {
        set(v, &[("DRAIN_RECONNECT_MAX_MS", "5000"), ("DATABASE_URL", url.as_str())]);
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "general", &[&bob]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.join(&room, None).await;

    a.send_msg(&room, "before-stop", "persist me").await;
    let ack = a.next_of("ack").await;
    assert_eq!(ack["seq"], 1);
    // One more, racing the shutdown: if it is acked, it must be stored.
    a.send_msg(&room, "racing-stop", "maybe").await;

    tokio::time::timeout(GUARD, app.stop()).await.expect("the server stops within the shutdown timeout");

    let mut racing_ack = None;
    for (who, c) in [("ann", &mut a), ("bob", &mut b)] {
        let (code, reason, seen) = c.until_close().await;
        assert_eq!(code, 1001, "{who}: drain close ({reason})");
        let delay: u64 = reason
            .strip_prefix("drain; reconnect_after_ms=")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{who}: reason is `drain; reconnect_after_ms=N`: {reason:?}"));
        assert!(delay < 5000, "{who}: delay below DRAIN_RECONNECT_MAX_MS: {delay}");
        if who == "ann" {
            racing_ack = seen.into_iter().find(|f| f["type"] == "ack" && f["client_msg_id"] == "racing-stop");
        } else {
            // Bob's queue was flushed before the close: message 1 is there.
            let seqs: Vec<i64> = seen.iter().filter(|f| f["type"] == "message").map(seq_of).collect();
            assert_eq!(seqs.first(), Some(&1), "{seen:?}");
        }
    }

    let store = Store::connect(&url, 2).await.unwrap();
    let page = store.history(&room, Some(0), None, 10).await.unwrap();
    let first = &page.messages[0];
    assert_eq!((first.seq, first.client_msg_id.as_str(), first.body.as_str()), (1, "before-stop", "persist me"));
    if let Some(ack) = racing_ack {
        let seq = seq_of(&ack);
        assert!(
            page.messages.iter().any(|m| m.seq == seq && m.client_msg_id == "racing-stop"),
            "an acked message is stored: {ack}"
        );
    }
    store.close().await;
}

/// A WebSocket over a bare TCP stream that never writes after the upgrade
/// request: unlike tungstenite, which answers the server's pings whenever it
/// is polled (and then fails on a broken pipe before showing the close of a
/// server that hung up), it stays silent and reports every server frame.
async fn raw_silent_connect(addr: std::net::SocketAddr, token: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    s
}

/// Reads until the server hangs up; returns the upgrade response's status
/// line and the server frames as (opcode, payload).
async fn raw_read_until_hangup(mut s: tokio::net::TcpStream) -> (String, Vec<(u8, Vec<u8>)>) {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    tokio::time::timeout(GUARD, s.read_to_end(&mut buf))
        .await
        .expect("the server hangs up within the guard time")
        .unwrap();
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP response") + 4;
    let status = String::from_utf8_lossy(&buf[..head_end]).lines().next().unwrap_or_default().to_owned();
    let mut frames = Vec::new();
    let mut i = head_end;
    while i < buf.len() {
        let (b0, b1) = (buf[i], buf[i + 1]);
        assert_eq!(b0 & 0x80, 0x80, "unfragmented frames");
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        i += 2;
        let len = match b1 & 0x7f {
            126 => {
                i += 2;
                u16::from_be_bytes([buf[i - 2], buf[i - 1]]) as usize
            }
            127 => {
                i += 8;
                u64::from_be_bytes(buf[i - 8..i].try_into().unwrap()) as usize
            }
            n => n as usize,
        };
        frames.push((b0 & 0x0f, buf[i..i + len].to_vec()));
        i += len;
    }
    (status, frames)
}

/// With a 100 ms heartbeat and a 400 ms idle timeout: a client that sends
/// nothing at all (not even pongs to the server's pings) is closed with
/// 4002 "idle timeout"; one that sends pings, or only answers the server's
/// pings, stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_are_closed() {
    let app =
        spawn_app_with(Db::Sqlite, |v| set(v, &[("WS_HEARTBEAT_MS", "100"), ("WS_IDLE_TIMEOUT_MS", "400")])).await;
    let ann = app.register("ann").await;
    let mut chatty = WsClient::connect(&app, &ann.access).await;
    let mut passive = WsClient::connect(&app, &ann.access).await;
    assert_eq!(
        (chatty.hello["heartbeat_ms"].as_i64(), chatty.hello["idle_timeout_ms"].as_i64()),
        (Some(100), Some(400))
    );
    let idle = raw_silent_connect(app.addr, &ann.access).await;

    // The other two have to stay up for a while (2.5 idle timeouts): real
    // time must pass. One sends application pings every 100 ms.
    let chatty_task = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(100));
        for _ in 0..10 {
            every.tick().await;
            let extra = chatty.drain_until_pong().await;
            assert!(extra.is_empty(), "{extra:?}");
        }
        chatty
    });
    // The other only reads, so tungstenite answers the server's pings.
    let passive_task = tokio::spawn(async move {
        use futures_util::StreamExt;
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        loop {
            match tokio::time::timeout_at(until, passive.ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Ping(_)))) => {}
                Ok(other) => panic!("passive client: unexpected {other:?}"),
            }
        }
        passive
    });

    // The silent one: hello, the server's pings (unanswered), then the close.
    let (status, frames) = raw_read_until_hangup(idle).await;
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    let (op, hello) = &frames[0];
    assert_eq!(*op, 0x1, "a text frame first");
    let hello: Value = serde_json::from_slice(hello).unwrap();
    assert_conforms("server", &hello);
    assert_eq!(hello["type"], "hello");
    let (op, close) = frames.last().unwrap();
    assert_eq!(*op, 0x8, "a close frame last: {frames:?}");
    let code = u16::from_be_bytes([close[0], close[1]]);
    assert_eq!((code, String::from_utf8_lossy(&close[2..]).as_ref()), (4002, "idle timeout"));
    let middle = &frames[1..frames.len() - 1];
    assert!(middle.iter().all(|(op, _)| *op == 0x9), "only (unanswered) pings in between: {middle:?}");

    let mut chatty = chatty_task.await.unwrap();
    let mut passive = passive_task.await.unwrap();
    assert!(chatty.drain_until_pong().await.is_empty(), "the pinging client is open");
    assert!(passive.drain_until_pong().await.is_empty(), "the client answering pings is open");
}

/// A ticketed connection is the ticket owner's, on the same session, with a
/// credential expiry in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_connection_hello_names_the_user_and_a_future_expiry() {
    let app = spawn_app(Db::Sqlite).await;
    let ann = app.register("ann").await;
    let bearer = WsClient::connect(&app, &ann.access).await;
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    assert_eq!(t.status, StatusCode::CREATED, "{}", t.body);
    let ticket = t.body["ticket"].as_str().unwrap();
    let mut c = WsClient::try_connect(&app, None, Some(ticket), None).await.ok().expect("ticket accepted");
    assert_eq!(c.hello["user_id"], ann.user_id.as_str());
    assert_eq!(c.hello["session_id"], bearer.hello["session_id"], "the session of the token that got the ticket");
    assert!(c.hello["token_expires_at"].as_i64().unwrap() > now_ms(), "{}", c.hello);
    assert!(c.drain_until_pong().await.is_empty());
}

/// A text frame that is not UTF-8 fails that connection with 1007 (RFC 6455
/// §8.1); nothing is stored and other sockets carry on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007_and_nothing_else_breaks() {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let app = spawn_app(Db::Sqlite).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "utf8", &[&bob]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.join(&room, None).await;

    let payload: Vec<u8> = b"{\"type\":\"ping\",\"id\":\"\xff\xfe\"}".to_vec();
    a.send_raw(Message::Frame(Frame::message(payload, OpCode::Data(Data::Text), true))).await;
    let (code, _, _) = a.until_close().await;
    assert_eq!(code, 1007);

    b.send_msg(&room, "after-utf8", "still fine").await;
    assert_eq!(b.next_of("ack").await["seq"], 1);
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(1));
}

/// The `exp` claim of an access token, in Unix milliseconds (the payload is
/// read without verifying: the server verifies, the test only compares).
fn token_exp_ms(token: &str) -> i64 {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).expect("base64url payload");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["exp"].as_i64().expect("exp") * 1000
}

/// `MAX_CONNECTIONS` is a permit held by each socket: of many concurrent
/// handshakes exactly the cap get through and the others get 503 at once;
/// a closed socket frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_under_concurrent_handshakes() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("MAX_CONNECTIONS".into(), "5".into());
        v.insert("WS_HANDSHAKES_PER_IP_PER_SEC".into(), "10000".into());
    })
    .await;
    let u = app.register("capped").await;
    let attempts =
        futures_util::future::join_all((0..20).map(|_| WsClient::try_connect(&app, Some(&u.access), None, None))).await;
    let mut open = Vec::new();
    for a in attempts {
        match a {
            Ok(c) => open.push(c),
            Err(Refused::Http(status, body)) => {
                assert_eq!(status, 503, "{body}");
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
            }
        }
    }
    assert_eq!(open.len(), 5, "exactly MAX_CONNECTIONS sockets");
    open.pop().unwrap().close().await;
    let again = crate::helpers::eventually(Duration::from_secs(20), || async {
        WsClient::try_connect(&app, Some(&u.access), None, None).await.ok()
    })
    .await;
    assert_eq!(again.hello["type"], "hello");
}
