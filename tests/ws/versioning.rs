//! Protocol 1.1, versioning and compatibility (protocol/README.md §19, §2,
//! §3, §5.1, §6, §7, §9): `hello`'s version, features and clock, the
//! subprotocol, app heartbeats, and the spec contradictions issue 11 fixed,
//! over real sockets on both backends.

use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::both_backends;
use crate::helpers::{Db, TestApp, spawn_app, spawn_app_with};
use crate::ws::client::{GUARD, WsClient, assert_conforms};

both_backends!(
    hello_announces_version_features_and_relative_expiry,
    subprotocol_is_negotiated,
    app_heartbeats_are_free_and_replace_websocket_pings,
    unsolicited_pongs_cost_the_budget,
    typing_and_read_need_a_joined_room,
    missing_and_foreign_rooms_are_both_forbidden,
    reused_client_msg_id_with_another_body_is_a_conflict,
    read_above_last_seq_is_stored_as_last_seq,
    only_the_frame_types_own_fields_are_accepted,
    error_frames_carry_room_as_documented,
    handshake_query_parameters_are_checked,
    client_close_is_answered_with_its_code,
);

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn set(v: &mut std::collections::HashMap<String, String>, pairs: &[(&str, &str)]) {
    for (k, val) in pairs {
        v.insert((*k).into(), (*val).into());
    }
}

/// Opens `/ws<query>` with a bearer token and the given
/// `Sec-WebSocket-Protocol` offer: the client (after `hello`) and the
/// protocol the server selected, or the refusal's status and body.
async fn open(
    app: &TestApp,
    token: &str,
    query: &str,
    offer: Option<&str>,
) -> Result<(WsClient, Option<String>), (u16, Value)> {
    open_as(app, Some(token), query, offer).await
}

/// [`open`], with or without a bearer token (a ticket goes in `query`).
async fn open_as(
    app: &TestApp,
    token: Option<&str>,
    query: &str,
    offer: Option<&str>,
) -> Result<(WsClient, Option<String>), (u16, Value)> {
    let mut req = format!("ws://{}/ws{query}", app.addr).into_client_request().unwrap();
    if let Some(token) = token {
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    }
    if let Some(o) = offer {
        req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_str(o).unwrap());
    }
    match connect_async(req).await {
        Ok((ws, resp)) => {
            let selected = resp.headers().get("sec-websocket-protocol").map(|v| v.to_str().unwrap().to_owned());
            let mut c = WsClient::new(ws);
            c.hello = c.next().await;
            assert_eq!(c.hello["type"], "hello");
            Ok((c, selected))
        }
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("connect failed: {e}"),
    }
}

async fn hello_announces_version_features_and_relative_expiry(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let before = now_ms();
    let mut a = WsClient::connect(&app, &ann.access).await;
    let after = now_ms();
    let h = &a.hello;
    assert_eq!((h["protocol"].as_i64(), h["protocol_version"].as_str()), (Some(1), Some("1.2")));
    let features: Vec<&str> = h["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(
        features,
        ["sync", "user_stream", "edits", "deletes", "retention", "app_heartbeat"],
        "no push without a webhook"
    );
    assert_eq!(h["heartbeat"], "ws");
    // Same machine, same clock: the server's time lies between the two.
    let server_time = h["server_time"].as_i64().unwrap();
    assert!((before..=after).contains(&server_time), "{before} <= {server_time} <= {after}");
    let expires_at = h["token_expires_at"].as_i64().unwrap();
    assert_eq!(h["token_expires_in_ms"].as_i64().unwrap(), expires_at - server_time);
    assert!(h["token_expires_in_ms"].as_i64().unwrap() > 0);

    // auth_ok: the new expiry, and how far away it is by the server's clock.
    let fresh =
        app.post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": "correct horse battery"})).await;
    assert_eq!(fresh.body["expires_in_ms"].as_u64().unwrap(), fresh.body["expires_in"].as_u64().unwrap() * 1000);
    let sent = now_ms();
    a.send(json!({"type": "auth", "id": "r1", "token": fresh.body["access_token"]})).await;
    let ok = a.next_of("auth_ok").await;
    let (at, in_ms) = (ok["expires_at"].as_i64().unwrap(), ok["expires_in_ms"].as_i64().unwrap());
    assert!(in_ms > 0 && in_ms <= at - sent, "{in_ms} within (0, {}]", at - sent);

    // REST: `expires_in` stays seconds (OAuth), `expires_in_ms` beside it.
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    assert_eq!(t.status, StatusCode::CREATED, "{}", t.body);
    assert_eq!(t.body["expires_in_ms"].as_u64().unwrap(), t.body["expires_in"].as_u64().unwrap() * 1000);
    let r = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": ann.refresh})).await;
    assert_eq!(r.body["expires_in_ms"].as_u64().unwrap(), r.body["expires_in"].as_u64().unwrap() * 1000);
}

async fn subprotocol_is_negotiated(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    // Offered: selected, alone or among others.
    for offer in ["chatgw.v1", "chatgw.v2, chatgw.v1"] {
        let (c, selected) = open(&app, &ann.access, "", Some(offer)).await.unwrap_or_else(|e| panic!("{offer}: {e:?}"));
        assert_eq!(selected.as_deref(), Some("chatgw.v1"), "{offer}");
        assert_eq!(c.hello["protocol_version"], "1.2");
    }
    // Not offered at all: a 1.0 client, served v1 as before.
    let (_, selected) = open(&app, &ann.access, "", None).await.unwrap();
    assert_eq!(selected, None);
    // Only other protocols: refused before the upgrade, naming ours.
    let (status, body) = open(&app, &ann.access, "", Some("chatgw.v2, mqtt")).await.err().expect("refused");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")));
    assert!(body["error"]["message"].as_str().unwrap().contains("chatgw.v1"), "{body}");
    // So is an unknown heartbeat mode.
    let (status, body) = open(&app, &ann.access, "?heartbeat=carrier-pigeon", None).await.err().expect("refused");
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    // Tickets combine with both.
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    let ticket = t.body["ticket"].as_str().unwrap();
    let mut req = format!("ws://{}/ws?ticket={ticket}&heartbeat=app", app.addr).into_client_request().unwrap();
    req.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("chatgw.v1"));
    let (ws, resp) = connect_async(req).await.expect("ticketed upgrade");
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chatgw.v1");
    let mut c = WsClient::new(ws);
    let hello = c.next().await;
    assert_eq!((hello["type"].as_str(), hello["heartbeat"].as_str()), (Some("hello"), Some("app")));
}

/// With a 100 ms heartbeat, one event token per second and a burst of one:
/// twenty answered app pings (about two seconds) would need about twenty
/// tokens if pongs paid; none is refused. Then the client goes silent and
/// is closed 4002 "idle timeout", having seen text pings only (no
/// WebSocket ping control frames in app mode).
async fn app_heartbeats_are_free_and_replace_websocket_pings(db: Db) {
    let app = spawn_app_with(db, |v| {
        set(
            v,
            &[
                ("WS_HEARTBEAT_MS", "100"),
                ("WS_IDLE_TIMEOUT_MS", "400"),
                ("WS_EVENTS_PER_SEC", "1"),
                ("WS_EVENTS_BURST", "1"),
            ],
        )
    })
    .await;
    let ann = app.register("ann").await;
    let (mut c, _) = open(&app, &ann.access, "?heartbeat=app", None).await.unwrap();
    assert_eq!((c.hello["heartbeat"].as_str(), c.hello["heartbeat_ms"].as_i64()), (Some("app"), Some(100)));
    let mut answered = 0;
    while answered < 20 {
        let msg = tokio::time::timeout(GUARD, c.ws.next()).await.expect("a frame").expect("open").expect("ok");
        match msg {
            Message::Text(t) => {
                let f: Value = serde_json::from_str(&t).unwrap();
                assert_conforms("server", &f);
                assert_eq!(f, json!({"type": "ping"}), "only pings, no error: {f}");
                let pong = json!({"type": "pong"});
                assert_conforms("client", &pong);
                c.send(pong).await;
                answered += 1;
            }
            other => panic!("app mode sends no WebSocket pings: {other:?}"),
        }
    }
    // Silent from now on: pings keep coming until the idle close.
    let (code, reason, seen) = c.until_close().await;
    assert_eq!((code, reason.as_str()), (4002, "idle timeout"));
    assert!(seen.iter().all(|f| f["type"] == "ping"), "{seen:?}");
}

/// Without outstanding server pings, a `pong` is an ordinary frame: it
/// costs an event token (so it cannot flood for free), and it is never
/// answered.
async fn unsolicited_pongs_cost_the_budget(db: Db) {
    let app = spawn_app_with(db, |v| set(v, &[("WS_EVENTS_PER_SEC", "1"), ("WS_EVENTS_BURST", "2")])).await;
    let ann = app.register("ann").await;
    let mut c = WsClient::connect(&app, &ann.access).await;
    assert_eq!(c.hello["heartbeat"], "ws");
    for i in 0..6 {
        c.send(json!({"type": "pong", "id": i})).await;
    }
    // A burst of two and one token a second: at least one of six pongs
    // sent back to back is refused; the refusals are the only answers.
    let e = c.next().await;
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("rate_limited")), "{e}");
    assert!(e["retry_after_ms"].as_u64().is_some() && e.get("room").is_none(), "{e}");
}

async fn typing_and_read_need_a_joined_room(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "r", &[]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    // A member who has not joined on this socket: not_joined, not
    // forbidden (which would mean "drop the room").
    for f in
        [json!({"type": "typing", "id": "t", "room": room}), json!({"type": "read", "id": "r", "room": room, "seq": 0})]
    {
        a.send(f.clone()).await;
        let e = a.next_reply().await;
        assert_eq!(
            (e["code"].as_str(), e["id"].as_str(), e["room"].as_str()),
            (Some("not_joined"), f["id"].as_str(), Some(room.as_str())),
            "{f} -> {e}"
        );
    }
    // Joined: both work (read is confirmed by its broadcast).
    a.join(&room, None).await;
    a.send(json!({"type": "typing", "room": room})).await;
    a.send(json!({"type": "read", "room": room, "seq": 0})).await;
    let r = a.next_of("read").await;
    assert_eq!((r["user"].as_str(), r["seq"].as_i64()), (Some(ann.user_id.as_str()), Some(0)));
}

async fn missing_and_foreign_rooms_are_both_forbidden(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let eve = app.register("eve").await;
    let foreign = app.create_room(&ann, "private", &[]).await;
    let missing = "0193a5c0-0000-7000-8000-00000000dead";
    let mut e = WsClient::connect(&app, &eve.access).await;
    for room in [foreign.as_str(), missing] {
        e.send(json!({"type": "join", "id": "j", "room": room, "since_seq": 0})).await;
        let f = e.next_reply().await;
        assert_eq!(
            (f["code"].as_str(), f["id"].as_str(), f["room"].as_str()),
            (Some("forbidden"), Some("j"), Some(room))
        );
        e.send(json!({"type": "send", "id": "s", "room": room, "body": "x", "client_msg_id": "c1"})).await;
        let f = e.next_reply().await;
        assert_eq!(
            (f["code"].as_str(), f["id"].as_str(), f["room"].as_str()),
            (Some("forbidden"), Some("s"), Some(room))
        );
    }
}

async fn reused_client_msg_id_with_another_body_is_a_conflict(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "r", &[&bob]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.join(&room, None).await;
    let send =
        |id: &str, body: &str| json!({"type": "send", "id": id, "room": room, "body": body, "client_msg_id": "m-1"});
    a.send(send("s1", "first")).await;
    let ack = a.next_of("ack").await;
    assert_eq!((ack["seq"].as_i64(), ack["duplicate"].as_bool()), (Some(1), Some(false)));
    // Same client_msg_id, another body: refused, nothing stored or sent.
    a.send(send("s2", "second")).await;
    let e = a.next_of("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str(), e["room"].as_str()),
        (Some("conflict"), Some("s2"), Some(room.as_str())),
        "{e}"
    );
    // The identical retry is still the duplicate ack.
    a.send(send("s3", "first")).await;
    let ack = a.next_of("ack").await;
    assert_eq!(
        (ack["id"].as_str(), ack["seq"].as_i64(), ack["duplicate"].as_bool()),
        (Some("s3"), Some(1), Some(true))
    );
    let m = b.next_of("message").await;
    assert_eq!((m["seq"].as_i64(), m["body"].as_str()), (Some(1), Some("first")));
    let later = b.drain_until_pong().await;
    assert!(later.iter().all(|f| f["type"] != "message"), "the conflicting body is never delivered: {later:?}");
    let h = app.get(&bob.access, &format!("/api/v1/rooms/{room}/messages?after_seq=0")).await;
    assert_eq!(h.body["messages"].as_array().unwrap().len(), 1, "{}", h.body);
    assert_eq!(h.body["messages"][0]["body"], "first");
}

async fn read_above_last_seq_is_stored_as_last_seq(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "r", &[]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    a.join(&room, None).await;
    for i in 0..2 {
        a.send_msg(&room, &format!("c{i}"), "hi").await;
        a.next_of("ack").await;
    }
    a.send(json!({"type": "read", "room": room, "seq": 999})).await;
    assert_eq!(a.next_of("read").await["seq"], 2, "clamped to last_seq");
    // Only forward: a lower one leaves it at 2; after a new message the
    // marker can move to it.
    a.send(json!({"type": "read", "room": room, "seq": 1})).await;
    assert_eq!(a.next_of("read").await["seq"], 2);
    a.send_msg(&room, "c2", "hi").await;
    a.next_of("ack").await;
    a.send(json!({"type": "read", "room": room, "seq": 3})).await;
    assert_eq!(a.next_of("read").await["seq"], 3);
}

async fn only_the_frame_types_own_fields_are_accepted(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "r", &[]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    for f in [
        // A field of another frame type.
        json!({"type": "ping", "id": "x1", "room": room}),
        json!({"type": "leave", "id": "x2", "room": room, "since_seq": 0}),
        // A misspelt field: accepting it would silently skip the resume.
        json!({"type": "join", "id": "x3", "room": room, "since_sq": 0}),
        // An unknown type.
        json!({"type": "subscribe", "id": "x4", "room": room}),
    ] {
        a.send(f.clone()).await;
        let e = a.next_reply().await;
        assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("bad_request"), f["id"].as_str()), "{f} -> {e}");
    }
    // The example of protocol/README.md 19.4, byte for byte.
    let typo = format!(r#"{{"type": "join", "id": "j1", "room": "{room}", "since_sq": 41}}"#);
    assert_eq!(room.len(), 36, "a UUID, as long as the example's");
    a.send_raw(Message::text(typo)).await;
    let e = a.next_reply().await;
    assert_eq!(
        (e["id"].as_str(), e["message"].as_str()),
        (Some("j1"), Some(r#""since_sq" is not a field of a join frame"#))
    );
    // The socket is fine; the same frames without the stray field work.
    a.send(json!({"type": "ping", "id": "ok"})).await;
    assert_eq!(a.next_reply().await, json!({"type": "pong", "id": "ok"}));
    let (_, joined) = a.join(&room, Some(0)).await;
    assert_eq!(joined["last_seq"], 0);
}

/// `too_large` names the room of the refused send; `rate_limited` never
/// carries a room (the frame was not looked at), only the id.
async fn error_frames_carry_room_as_documented(db: Db) {
    let app =
        spawn_app_with(db, |v| set(v, &[("WS_MAX_BODY_BYTES", "8"), ("WS_SEND_PER_SEC", "1"), ("WS_SEND_BURST", "1")]))
            .await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "r", &[]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    a.send(json!({"type": "send", "id": "big", "room": room, "body": "123456789", "client_msg_id": "b1"})).await;
    let e = a.next_reply().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str(), e["room"].as_str()),
        (Some("too_large"), Some("big"), Some(room.as_str())),
        "{e}"
    );
    for i in 0..4 {
        a.send(json!({"type": "send", "id": i, "room": room, "body": "ok", "client_msg_id": format!("s{i}")})).await;
    }
    let refused = loop {
        let f = a.next_reply().await;
        if f["type"] == "error" {
            break f;
        }
    };
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    assert!(refused["id"].is_i64() && refused.get("room").is_none(), "{refused}");
}

/// Protocol §2.4, §2.6: `ticket` and `heartbeat` may each appear once and
/// `heartbeat` is `app` or `ws`; anything else is 400 `bad_request` (the
/// message names the parameter, never a ticket) before any credential is
/// looked at, so a repeated ticket is not spent. Parameters of other names
/// are ignored, repeated or not; names are case-sensitive.
async fn handshake_query_parameters_are_checked(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let ticket = || async {
        let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
        assert_eq!(t.status, StatusCode::CREATED, "{}", t.body);
        t.body["ticket"].as_str().unwrap().to_owned()
    };
    let refused = |q: &str, r: Result<(WsClient, Option<String>), (u16, Value)>| match r {
        Ok((c, _)) => panic!("{q}: upgraded, hello {}", c.hello),
        Err((status, body)) => {
            assert_eq!((status, body["error"]["code"].as_str()), (400, Some("bad_request")), "{q}: {body}");
            body["error"]["message"].as_str().unwrap().to_owned()
        }
    };
    // heartbeat: a value other than app or ws, or the parameter twice
    // (same value or not).
    for q in ["?heartbeat=bogus", "?heartbeat=", "?heartbeat", "?heartbeat=APP"] {
        let m = refused(q, open(&app, &ann.access, q, None).await);
        assert!(m.contains("heartbeat"), "{q}: {m}");
    }
    for q in [
        "?heartbeat=bogus&heartbeat=bogus",
        "?heartbeat=app&heartbeat=app",
        "?heartbeat=app&heartbeat=ws",
        "?heartbeat=ws&v=1&heartbeat=ws",
    ] {
        let m = refused(q, open(&app, &ann.access, q, None).await);
        assert!(m.contains("\"heartbeat\" appears more than once"), "{q}: {m}");
    }
    // ticket: one that is not a ticket is a credential refused (401);
    // twice is a malformed request, with or without a bearer token, and
    // the ticket stays unspent.
    let r = open_as(&app, None, "?ticket=wst_not-a-ticket", None).await;
    let (status, body) = r.err().expect("a bad ticket is refused");
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let t = ticket().await;
    for (token, q) in [
        (None, format!("?ticket={t}&ticket={t}")),
        (None, format!("?ticket={t}&heartbeat=app&ticket=wst_other")),
        (Some(ann.access.as_str()), format!("?ticket={t}&ticket={t}")),
    ] {
        let m = refused("ticket twice", open_as(&app, token, &q, None).await);
        assert!(m.contains("\"ticket\" appears more than once") && !m.contains(&t), "{m}");
    }
    let (c, _) =
        open_as(&app, None, &format!("?ticket={t}&heartbeat=app"), None).await.expect("the ticket still works");
    assert_eq!(c.hello["heartbeat"], "app");
    // Unknown parameters: ignored, even repeated, beside known ones.
    let (c, _) = open(&app, &ann.access, "?v=2&v=3&heartbeat=app&_=17", None).await.expect("unknown ignored");
    assert_eq!(c.hello["heartbeat"], "app");
    let (c, _) = open(&app, &ann.access, "?Heartbeat=app", None).await.expect("another name");
    assert_eq!(c.hello["heartbeat"], "ws", "names are case-sensitive: `Heartbeat` is not `heartbeat`");
    let t = ticket().await;
    let (c, _) = open_as(&app, None, &format!("?cb=1&ticket={t}&cb=2"), None).await.expect("ticket beside unknowns");
    assert_eq!(c.hello["type"], "hello");
}

/// RFC 6455 5.5.1, protocol §7: a client's Close is answered with a Close
/// carrying the same code, then the stream ends: the client sees its own
/// clean close, not 1006.
async fn client_close_is_answered_with_its_code(db: Db) {
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "r", &[]).await;
    for code in [1000u16, 1001, 4321] {
        let mut c = WsClient::connect(&app, &ann.access).await;
        c.join(&room, None).await;
        let close = CloseFrame { code: code.into(), reason: "bye".into() };
        futures_util::SinkExt::send(&mut c.ws, Message::Close(Some(close))).await.unwrap();
        // Frames the server wrote before it read the Close may come first.
        let answer = loop {
            match tokio::time::timeout(GUARD, c.ws.next()).await.expect("an answer within the guard time") {
                Some(Ok(Message::Text(_) | Message::Ping(_))) => continue,
                other => break other,
            }
        };
        match answer {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), code, "the code echoed"),
            other => panic!("closed {code}: expected the server's Close, got {other:?}"),
        }
        let end = tokio::time::timeout(GUARD, c.ws.next()).await.expect("the end within the guard time");
        assert!(end.is_none(), "closed {code}: the stream ends after the Close: {end:?}");
    }
}
