//! Floods: frames on one socket, handshakes from one address and from many,
//! and a reader that never reads.
//!
//! The step-by-step rate-limit test (exact burst, `retry_after_ms`, the
//! strike count) is `ws::faults::rate_limit_then_abuse_close`; the cap from
//! one address is `ws::faults::the_connection_cap_holds_under_concurrent_handshakes`;
//! the slow consumer's resume without loss is
//! `ws::faults::slow_consumer_is_cut_off_then_resumes_without_loss`. These
//! attack blindly, as a hostile client would, and check the bystanders.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, client_async};

use super::Bystander;
use crate::both_backends;
use crate::helpers::{Db, TestApp, spawn_app_with};
use crate::ws::client::WsClient;

both_backends!(a_reader_that_never_reads_is_cut_off_alone);

/// A handshake from the loopback address `127.0.0.<last>` (Linux routes all
/// of 127/8 to lo): how a test stands for many client addresses.
async fn connect_from(app: &TestApp, last: u8, token: &str) -> Result<WsClient, (u16, Value)> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0)).unwrap();
    let stream = socket.connect(app.addr).await.unwrap();
    let mut req = format!("ws://{}/ws", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    match client_async(req, MaybeTlsStream::Plain(stream)).await {
        Ok((ws, _)) => {
            let mut c = WsClient::new(ws);
            let hello = c.next().await;
            assert_eq!(hello["type"], "hello");
            c.hello = hello;
            Ok(c)
        }
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("handshake from 127.0.0.{last} failed: {e}"),
    }
}

/// A client that fires frames without reading: the first burst is served,
/// the rest is refused with `rate_limited`, and after `WS_ABUSE_STRIKES`
/// refusals in a row the socket is closed with 4008. Only what was acked
/// is stored and delivered; the room's other member and a bystander
/// notice nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blind_frame_flood_is_refused_then_closed_with_4008() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "flooded", &[&bob]).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.join(&room, None).await;

    for (kind, n) in [("send", 600), ("typing", 1000), ("ping", 1000)] {
        let mut a = WsClient::connect(&app, &ann.access).await;
        a.join(&room, None).await;
        for i in 0..n {
            let f = match kind {
                "send" => {
                    json!({"type": "send", "id": i, "room": room, "client_msg_id": format!("f-{i}"), "body": "flood"})
                }
                "typing" => json!({"type": "typing", "id": i, "room": room}),
                _ => json!({"type": "ping", "id": i}),
            };
            // The server may close the socket before the flood is written.
            if futures_util::SinkExt::send(&mut a.ws, Message::text(f.to_string())).await.is_err() {
                break;
            }
        }
        let (code, reason, frames) = a.until_close().await;
        assert_eq!(code, 4008, "{kind} flood: closed for rate-limit abuse ({reason})");
        let refused: Vec<&Value> = frames.iter().filter(|f| f["type"] == "error").collect();
        assert!(!refused.is_empty(), "{kind}: refusals came before the close");
        for e in &refused {
            assert_eq!(e["code"], "rate_limited", "{kind}: {e}");
            assert!(e["retry_after_ms"].as_i64().unwrap() > 0, "{e}");
        }
        if kind == "send" {
            let acked = frames.iter().filter(|f| f["type"] == "ack").count() as i64;
            // Acks come as commits finish: the close may overtake them (an
            // unacked send is retried with its client_msg_id, section 6).
            assert!(acked < n, "{acked} of {n} sends acked");
            // Sends taken before the close may still be committing: Bob's
            // own send is stored after them (seq order is submission
            // order), so its ack bounds what was stored.
            b.send_msg(&room, "b-0", "after the flood").await;
            let mut got = Vec::new();
            let sentinel = loop {
                let f = b.next().await;
                match f["type"].as_str() {
                    Some("message") => got.push(f["seq"].as_i64().unwrap()),
                    Some("ack") => break f["seq"].as_i64().unwrap(),
                    _ => {}
                }
            };
            while got.last() != Some(&sentinel) {
                let f = b.next_of("message").await;
                got.push(f["seq"].as_i64().unwrap());
            }
            let stored = sentinel - 1;
            assert!(stored >= acked.max(1) && stored < n, "{stored} stored, {acked} acked, of {n}");
            assert_eq!(got, (1..=sentinel).collect::<Vec<_>>(), "bob got exactly the stored messages");
        }
    }
    // Bob's socket and budget are his own.
    let frames = b.drain_until_pong().await;
    assert!(frames.iter().all(|f| matches!(f["type"].as_str(), Some("typing" | "presence"))), "{frames:?}");
    b.send_msg(&room, "b-1", "I am fine").await;
    assert_eq!(b.next_of("ack").await["duplicate"], false);
    bystander.still_fine(&app).await;
}

/// Handshakes from one address over `WS_HANDSHAKES_PER_IP_PER_SEC` are 429
/// `rate_limited` with `Retry-After` and `retry_after_ms`; another address
/// is not limited by it, and open sockets are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_is_rate_limited() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("WS_HANDSHAKES_PER_IP_PER_SEC".into(), "5".into());
    })
    .await;
    // The bystander connects from elsewhere: the flood spends 127.0.0.1's
    // budget, not this one's.
    let by = app.register("bystander").await;
    let by_room = app.create_room(&by, "quiet", &[]).await;
    let mut by_ws = connect_from(&app, 9, &by.access).await.expect("bystander connects");
    by_ws.join(&by_room, None).await;
    let eve = app.register("eve").await;

    // Blind handshakes (no upgrade headers needed: the limit is checked
    // first), as fast as one client can send them.
    let attempts = futures_util::future::join_all(
        (0..40).map(|_| app.send(app.http.get(app.url("/ws")).bearer_auth(&eve.access))),
    )
    .await;
    let limited: Vec<_> = attempts.iter().filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS).collect();
    assert!(!limited.is_empty(), "40 handshakes at once from one address are throttled");
    for r in &limited {
        assert_eq!(r.error_code(), "rate_limited");
        assert!(r.body["error"]["retry_after_ms"].as_u64().unwrap() > 0, "{}", r.body);
        let secs: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!(secs >= 1);
    }
    for r in attempts.iter().filter(|r| r.status != StatusCode::TOO_MANY_REQUESTS) {
        // Within budget: authenticated, then refused as not an upgrade.
        assert_eq!((r.status, r.error_code()), (StatusCode::BAD_REQUEST, "bad_request"), "{}", r.body);
    }
    // Real handshakes from the flooded address meet the same limit (a burst
    // of 10 against 5 per second: the bucket cannot refill fast enough)...
    let real =
        futures_util::future::join_all((0..10).map(|_| WsClient::try_connect(&app, Some(&eve.access), None, None)))
            .await;
    let mut throttled = 0;
    for r in real {
        match r {
            Err(crate::ws::client::Refused::Http(429, body)) => {
                assert_eq!(body["error"]["code"], "rate_limited");
                throttled += 1;
            }
            Err(crate::ws::client::Refused::Http(s, body)) => panic!("{s}: {body}"),
            Ok(_) => {}
        }
    }
    assert!(throttled > 0, "a burst of real handshakes from the flooded address is throttled");
    // ...while another address connects, and REST is not throttled by it.
    let mut other = connect_from(&app, 10, &eve.access).await.expect("another address is not throttled");
    assert!(other.drain_until_pong().await.is_empty());
    assert_eq!(app.get(&eve.access, "/api/v1/me").await.status, StatusCode::OK);
    super::assert_healthy(&app).await;
    by_ws.send_msg(&by_room, "by-1", "still here").await;
    assert_eq!(by_ws.next_of("ack").await["seq"], 1);
}

/// Connections from many addresses (127.0.0.2 …) each within its per-IP
/// budget: the instance cap `MAX_CONNECTIONS` holds, the rest get 503
/// `unavailable` (protocol/README.md 2.4), the sockets already open keep
/// working, and a freed place can be taken again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_many_addresses_stops_at_the_cap() {
    const CAP: usize = 8;
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("MAX_CONNECTIONS".into(), CAP.to_string());
        v.insert("WS_HANDSHAKES_PER_IP_PER_SEC".into(), "2".into());
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    // A few users, so no per-user limit is what stops them.
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(app.register(&format!("flooder{i}")).await);
    }
    let attempts = futures_util::future::join_all(
        (0..40u8).map(|i| connect_from(&app, 20 + i, &users[usize::from(i) % users.len()].access)),
    )
    .await;
    let mut open = Vec::new();
    for a in attempts {
        match a {
            Ok(c) => open.push(c),
            Err((status, body)) => {
                assert_eq!(status, 503, "{body}");
                assert_eq!(body["error"]["code"], "unavailable", "{body}");
                assert!(body["error"]["message"].is_string(), "{body}");
            }
        }
    }
    assert_eq!(open.len(), CAP - 1, "the bystander holds one place; the flood gets the rest and no more");
    bystander.still_fine(&app).await;
    for c in &mut open {
        assert!(c.drain_until_pong().await.is_empty(), "the admitted sockets work");
    }
    open.pop().unwrap().close().await;
    let again = crate::helpers::eventually(std::time::Duration::from_secs(20), || async {
        connect_from(&app, 99, &users[0].access).await.ok()
    })
    .await;
    assert_eq!(again.hello["type"], "hello");
}

/// A member who stops reading while the room is busy is cut off with 4009
/// (seen in the server's close counter: the reader does not read) once its
/// bounded queue overflows. The room's reading member gets every message
/// in order, and the sender every ack.
async fn a_reader_that_never_reads_is_cut_off_alone(db: Db) {
    const WINDOW: i64 = 8;
    let app = spawn_app_with(db, |v| {
        for (k, val) in [
            ("WS_OUTBOUND_QUEUE", "8"),
            ("WS_SEND_PER_SEC", "100000"),
            ("WS_SEND_BURST", "100000"),
            ("WS_MAX_BODY_BYTES", "3500"),
            ("WS_MAX_FRAME_BYTES", "8192"),
        ] {
            v.insert(k.into(), val.into());
        }
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let mal = app.register("mal").await;
    let room = app.create_room(&ann, "busy", &[&bob, &mal]).await;
    let mut m = WsClient::connect(&app, &mal.access).await;
    m.join(&room, None).await;
    // From here on Mal never reads. Bob reads everything, in a task.
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.join(&room, None).await;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(0i64);
    let reader = tokio::spawn(async move {
        let (mut last, mut target) = (0, 0);
        loop {
            if target > 0 && last >= target {
                return (b, last);
            }
            tokio::select! {
                _ = stop_rx.changed() => target = *stop_rx.borrow(),
                f = b.next() => {
                    if f["type"] == "message" {
                        assert_eq!(f["seq"].as_i64().unwrap(), last + 1, "bob: in order, no gap");
                        last += 1;
                    }
                }
            }
        }
    });

    let mut a = WsClient::connect(&app, &ann.access).await;
    let body = |i: i64| format!("{i:05}-{}", "z".repeat(3000));
    let mut sent = 0;
    let mut cut = false;
    loop {
        for i in sent + 1..=sent + WINDOW {
            a.send_msg(&room, &format!("m-{i}"), &body(i)).await;
        }
        for _ in 0..WINDOW {
            assert_eq!(a.next_of("ack").await["duplicate"], false);
        }
        sent += WINDOW;
        if cut {
            break;
        }
        let closes = crate::operators::scrape(&app).await;
        cut = closes.get("chatgw_ws_closes_total{code=\"4009\"}").is_some_and(|v| *v > 0.0);
        assert!(sent < 20_000, "the reader that never reads was never cut off");
    }
    stop_tx.send(sent).unwrap();
    let (mut b, last) = reader.await.unwrap();
    assert_eq!(last, sent, "bob got every message");
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(sent));
    let m_closes = crate::operators::scrape(&app).await;
    assert_eq!(m_closes.get("chatgw_ws_slow_consumers_total"), Some(&1.0), "only Mal was cut off");
    drop(m);
    b.send_msg(&room, "b-1", "fine").await;
    assert_eq!(b.next_of("ack").await["seq"], sent + 1);
    bystander.still_fine(&app).await;
}
