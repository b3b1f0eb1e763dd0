//! The WebSocket hub over real sockets: handshake, every frame type,
//! membership, exactly-once delivery with resume.

use std::collections::{BTreeMap, HashMap};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Db, TestApp, spawn_app, spawn_app_with};
use crate::ws::client::{Refused, WsClient, assert_conforms};

both_backends!(send_ack_message_and_every_frame_type, membership_removal_mid_stream, exactly_once_with_random_resumes);

fn seqs(frames: &[Value]) -> Vec<i64> {
    frames.iter().filter(|f| f["type"] == "message").map(|f| f["seq"].as_i64().unwrap()).collect()
}

#[tokio::test]
async fn handshake_refusals_happen_before_the_upgrade() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("ALLOWED_ORIGINS".into(), "https://app.example.com".into());
        v.insert("ADMIN_TOKEN".into(), "admin-token-0123456789-0123456789-xyz".into());
    })
    .await;
    let ann = app.register("ann").await;
    let status = |r: Result<WsClient, Refused>| match r {
        Ok(_) => 101,
        Err(Refused::Http(s, body)) => {
            assert!(body["error"]["code"].is_string(), "JSON error body: {body}");
            s
        }
    };
    assert_eq!(status(WsClient::try_connect(&app, None, None, None).await), 401);
    assert_eq!(status(WsClient::try_connect(&app, Some("junk"), None, None).await), 401);
    assert_eq!(status(WsClient::try_connect(&app, None, Some("wst_nope"), None).await), 401);
    assert_eq!(status(WsClient::try_connect(&app, Some(&ann.access), None, Some("https://evil.example")).await), 403);
    assert_eq!(
        status(WsClient::try_connect(&app, Some(&ann.access), None, Some("https://app.example.com")).await),
        101
    );
    assert_eq!(
        status(WsClient::try_connect(&app, Some(&ann.access), None, None).await),
        101,
        "native clients send no Origin"
    );

    // Tickets work once.
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    let ticket = t.body["ticket"].as_str().unwrap();
    let c = WsClient::try_connect(&app, None, Some(ticket), None).await.ok().expect("ticket accepted");
    assert_eq!(c.hello["user_id"], ann.user_id.as_str());
    assert_eq!(status(WsClient::try_connect(&app, None, Some(ticket), None).await), 401, "ticket is single-use");

    // A banned user is refused with 403 and their open socket closes 4003.
    let mut open = WsClient::connect(&app, &ann.access).await;
    let ban = app
        .send(
            app.http
                .post(app.url(&format!("/api/v1/admin/users/{}/ban", ann.user_id)))
                .bearer_auth("admin-token-0123456789-0123456789-xyz"),
        )
        .await;
    assert_eq!(ban.status, StatusCode::NO_CONTENT);
    assert_eq!(open.until_close().await.0, 4003);
    assert_eq!(status(WsClient::try_connect(&app, Some(&ann.access), None, None).await), 403);
}

#[tokio::test]
async fn handshakes_are_rate_limited_per_ip() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("WS_HANDSHAKES_PER_IP_PER_SEC".into(), "2".into());
    })
    .await;
    let ann = app.register("ann").await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        codes.push(match WsClient::try_connect(&app, Some(&ann.access), None, None).await {
            Ok(_) => 101,
            Err(Refused::Http(s, _)) => s,
        });
    }
    assert_eq!(&codes[..2], &[101, 101]);
    assert!(codes[2..].contains(&429), "{codes:?}");
}

async fn send_ack_message_and_every_frame_type(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let eve = app.register("eve").await;
    let room = app.create_room(&ann, "general", &[&bob]).await;

    let mut a = WsClient::connect(&app, &ann.access).await;
    assert_eq!(a.hello["protocol"], 1);
    assert_eq!(a.hello["user_id"], ann.user_id.as_str());
    let mut b = WsClient::connect(&app, &bob.access).await;
    a.join(&room, None).await;
    let (_, joined) = b.join(&room, None).await;
    assert_eq!(joined["last_seq"], 0);
    assert_eq!(joined["id"], "j");
    // Ann sees Bob come online.
    let p = a.next_of("presence").await;
    assert_eq!((p["user"].as_str(), p["status"].as_str()), (Some(bob.user_id.as_str()), Some("online")));

    // send -> ack to the sender, message to everyone joined.
    a.send(json!({"type": "send", "id": 41, "room": room, "client_msg_id": "c-1", "body": "hello"})).await;
    let mut got_ack = None;
    let mut got_msg = None;
    while got_ack.is_none() || got_msg.is_none() {
        let f = a.next().await;
        match f["type"].as_str() {
            Some("ack") => got_ack = Some(f),
            Some("message") => got_msg = Some(f),
            _ => {}
        }
    }
    let ack = got_ack.unwrap();
    assert_eq!((ack["id"].as_i64(), ack["seq"].as_i64(), ack["duplicate"].as_bool()), (Some(41), Some(1), Some(false)));
    let m = b.next_of("message").await;
    assert_eq!(
        (m["seq"].as_i64(), m["body"].as_str(), m["sender"].as_str()),
        (Some(1), Some("hello"), Some(ann.user_id.as_str()))
    );
    assert_eq!(got_msg.unwrap(), m, "the same frame for everyone");

    // A repeated client_msg_id is acked with the original seq, never stored
    // or delivered twice (the ping sentinel proves no second message); with
    // another body it is a `conflict` (protocol 1.1), stored nowhere either.
    a.send(json!({"type": "send", "room": room, "client_msg_id": "c-1", "body": "hello"})).await;
    let dup = a.next_of("ack").await;
    assert_eq!((dup["seq"].as_i64(), dup["duplicate"].as_bool()), (Some(1), Some(true)));
    a.send(json!({"type": "send", "room": room, "client_msg_id": "c-1", "body": "hello again"})).await;
    assert_eq!(a.next_of("error").await["code"], "conflict");
    assert!(seqs(&b.drain_until_pong().await).is_empty());
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(1));

    // typing goes to the others, not back to the typist.
    a.send(json!({"type": "typing", "room": room})).await;
    let t = b.next_of("typing").await;
    assert_eq!(t["user"], ann.user_id.as_str());
    assert!(a.drain_until_pong().await.iter().all(|f| f["type"] != "typing"));

    // read: stored and broadcast.
    b.send(json!({"type": "read", "room": room, "seq": 1})).await;
    let r = a.next_of("read").await;
    assert_eq!((r["user"].as_str(), r["seq"].as_i64()), (Some(bob.user_id.as_str()), Some(1)));
    let rooms = app.get(&bob.access, "/api/v1/rooms").await;
    assert_eq!(rooms.body["rooms"][0]["read_seq"], 1);

    // ping/pong with id echo, auth renewal.
    a.send(json!({"type": "ping", "id": "p1"})).await;
    assert_eq!(a.next_of("pong").await["id"], "p1");
    let fresh =
        app.post(None, "/api/v1/auth/login", json!({"email": ann.email, "password": "correct horse battery"})).await;
    a.send(json!({"type": "auth", "id": 9, "token": fresh.body["access_token"]})).await;
    let ok = a.next_of("auth_ok").await;
    assert!(ok["expires_at"].as_i64().unwrap() > 0);
    a.send(json!({"type": "auth", "id": 10, "token": bob.access})).await;
    let e = a.next_of("error").await;
    assert_eq!((e["code"].as_str(), e["id"].as_i64()), (Some("unauthorized"), Some(10)));

    // Non-members: join and send are forbidden; the socket stays usable.
    let mut x = WsClient::connect(&app, &eve.access).await;
    x.send(json!({"type": "join", "id": "z", "room": room})).await;
    let e = x.next_of("error").await;
    assert_eq!((e["code"].as_str(), e["id"].as_str()), (Some("forbidden"), Some("z")));
    x.send_msg(&room, "intruder-1", "let me in").await;
    assert_eq!(x.next_of("error").await["code"], "forbidden");
    x.drain_until_pong().await;
    assert!(seqs(&b.drain_until_pong().await).is_empty(), "nothing from the intruder");

    // leave -> left; Bob goes offline for Ann.
    b.send(json!({"type": "leave", "id": "l", "room": room})).await;
    let left = b.next_of("left").await;
    assert_eq!((left["reason"].as_str(), left["id"].as_str()), (Some("requested"), Some("l")));
    let p = a.next_of("presence").await;
    assert_eq!((p["user"].as_str(), p["status"].as_str()), (Some(bob.user_id.as_str()), Some("offline")));
}

async fn membership_removal_mid_stream(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("WS_SEND_PER_SEC".into(), "100000".into());
        v.insert("WS_SEND_BURST".into(), "100000".into());
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "storm", &[&bob]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.join(&room, None).await;

    // A storm of sends is in flight when Bob is removed over REST.
    for i in 0..200 {
        a.send_msg(&room, &format!("s{i}"), "storm").await;
    }
    let removal = app.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", bob.user_id)).await;
    assert_eq!(removal.status, StatusCode::NO_CONTENT);

    // Bob sees some messages in order, then `left`, then nothing of the room.
    let mut before = Vec::new();
    loop {
        let f = b.next().await;
        match f["type"].as_str() {
            Some("message") => before.push(f["seq"].as_i64().unwrap()),
            Some("left") => {
                assert_eq!(f["reason"], "removed");
                break;
            }
            _ => {}
        }
    }
    assert!(before.windows(2).all(|w| w[1] == w[0] + 1), "in order, no gaps: {before:?}");
    for _ in 0..200 {
        a.next_of("ack").await;
    }
    let after = b.drain_until_pong().await;
    assert!(seqs(&after).is_empty(), "no message after left: {after:?}");
    // Bob can neither rejoin nor send.
    b.send(json!({"type": "join", "room": room})).await;
    assert_eq!(b.next_of("error").await["code"], "forbidden");
    b.send_msg(&room, "late", "still here?").await;
    assert_eq!(b.next_of("error").await["code"], "forbidden");
    assert_eq!(app.store.last_seq(&room).await.unwrap(), Some(200));
}

/// 50 clients in 5 rooms send concurrently; a third of them drop their
/// socket at a random point and resume with since_seq. At the end every
/// client has every message of its room exactly once, in order, and the
/// database agrees.
async fn exactly_once_with_random_resumes(db: Db) {
    const ROOMS: usize = 5;
    const PER_ROOM: usize = 10;
    const SENDS: usize = 8;
    let app = spawn_app_with(db, |v| {
        v.insert("WS_SEND_PER_SEC".into(), "1000".into());
        v.insert("WS_SEND_BURST".into(), "1000".into());
        v.insert("WS_HANDSHAKES_PER_IP_PER_SEC".into(), "10000".into());
    })
    .await;
    let app = std::sync::Arc::new(app);
    let mut users = Vec::new();
    for i in 0..ROOMS * PER_ROOM {
        users.push(app.register(&format!("u{i}")).await);
    }
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let members: Vec<&crate::helpers::Session> = users[r * PER_ROOM + 1..(r + 1) * PER_ROOM].iter().collect();
        rooms.push(app.create_room(&users[r * PER_ROOM], &format!("room{r}"), &members).await);
    }

    // Which clients drop their socket, and after which send: random, from a
    // seed printed so a failure can be replayed (CHATGW_TEST_SEED=…).
    let seed = crate::helpers::test_seed();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    let mut tasks = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let (app, user, room) = (app.clone(), user.clone(), rooms[i / PER_ROOM].clone());
        let drop_at = rand::Rng::gen_bool(&mut rng, 1.0 / 3.0).then(|| rand::Rng::gen_range(&mut rng, 0..SENDS));
        tasks.push(tokio::spawn(async move { client_run(&app, &user.access, &room, i, drop_at).await }));
    }
    let mut results: Vec<(String, Vec<i64>, HashMap<String, i64>)> = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let (order, acked) = t.await.unwrap();
        results.push((rooms[i / PER_ROOM].clone(), order, acked));
    }
    let expected_last = (PER_ROOM * SENDS) as i64;
    for (room, got, _) in &results {
        assert_eq!(got, &(1..=expected_last).collect::<Vec<_>>(), "room {room}: every message exactly once, in order");
    }
    let mut stored: HashMap<(String, i64), (String, String)> = HashMap::new();
    for room in &rooms {
        assert_eq!(app.store.last_seq(room).await.unwrap(), Some(expected_last));
        let page = app.store.history(room, Some(0), None, 200).await.unwrap();
        assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=expected_last).collect::<Vec<_>>());
        let mut ids: Vec<&str> = page.messages.iter().map(|m| m.client_msg_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), expected_last as usize, "no message stored twice");
        for m in &page.messages {
            stored.insert((room.clone(), m.seq), (m.client_msg_id.clone(), m.body.clone()));
        }
    }
    // Every ack names the row that holds what was acked: the seq it gave
    // stores that send's client_msg_id and body.
    for (i, (room, _, acked)) in results.iter().enumerate() {
        assert_eq!(acked.len(), SENDS, "client {i}: every send acked");
        for (id, seq) in acked {
            let row = stored.get(&(room.clone(), *seq));
            let k: usize = id.rsplit_once("-m").and_then(|(_, k)| k.parse().ok()).expect("id u<i>-m<k>");
            assert_eq!(
                row,
                Some(&(id.clone(), body_of(i, k))),
                "client {i}: {id} acked with seq {seq}, but that seq stores something else"
            );
        }
    }
}

/// The body of client `me`'s send `k`: unique, so a row proves which send
/// it stores.
fn body_of(me: usize, k: usize) -> String {
    format!("from {me}, send {k}")
}

/// One client: joins, sends SENDS messages (re-sending unacked ones after a
/// reconnect), reads until it has the whole room, then closes the count
/// with a ping barrier (everything queued for the socket before the pong
/// is counted, so a late re-delivery is seen); returns the seqs in the order
/// processed (a repeat is counted and fails the test) and the acks
/// (`client_msg_id` -> seq).
async fn client_run(
    app: &TestApp,
    token: &str,
    room: &str,
    me: usize,
    drop_at: Option<usize>,
) -> (Vec<i64>, HashMap<String, i64>) {
    const SENDS: usize = 8;
    let total = (10 * SENDS) as i64;
    let mut seen: BTreeMap<i64, u32> = BTreeMap::new();
    let mut order: Vec<i64> = Vec::new();
    let mut last = 0i64;
    let mut acked: HashMap<String, i64> = HashMap::new();
    let mut c = WsClient::connect(app, token).await;
    // A fresh client has nothing yet: it syncs from the start.
    let (replayed, _) = c.join(room, Some(0)).await;
    for f in replayed {
        process(&f, &mut last, &mut seen, &mut order);
    }
    let mut sent = 0;
    let mut dropped = false;
    loop {
        if sent < SENDS {
            c.send_msg(room, &format!("u{me}-m{sent}"), &body_of(me, sent)).await;
            sent += 1;
        }
        if Some(sent) == drop_at.map(|d| d + 1) && !dropped {
            dropped = true;
            // Drop the socket abruptly, reconnect, resume, re-send everything
            // not acked yet with the same client_msg_id.
            drop(c);
            c = WsClient::connect(app, token).await;
            let (replayed, joined) = c.join(room, Some(last)).await;
            for f in replayed {
                process(&f, &mut last, &mut seen, &mut order);
            }
            assert!(joined["last_seq"].as_i64().unwrap() >= last);
            for k in 0..sent {
                let id = format!("u{me}-m{k}");
                if !acked.contains_key(&id) {
                    c.send_msg(room, &id, &body_of(me, k)).await;
                }
            }
        }
        if sent >= SENDS && seen.len() as i64 >= total && acked.len() >= SENDS {
            // The barrier: what arrives before the pong is counted too.
            for f in c.drain_until_pong().await {
                match f["type"].as_str() {
                    Some("message") => process(&f, &mut last, &mut seen, &mut order),
                    Some("ack") => {
                        let (id, seq) = (f["client_msg_id"].as_str().unwrap(), f["seq"].as_i64().unwrap());
                        let prev = acked.insert(id.to_owned(), seq);
                        assert!(prev.is_none_or(|p| p == seq), "client {me}: {id} acked with {prev:?} and {seq}");
                    }
                    Some("presence" | "joined") => {}
                    _ => panic!("unexpected {f}"),
                }
            }
            let dups: Vec<(&i64, &u32)> = seen.iter().filter(|(_, n)| **n > 1).collect();
            assert!(dups.is_empty(), "client {me} received seqs more than once (seq, times): {dups:?}");
            return (order, acked);
        }
        let f = c.next().await;
        match f["type"].as_str() {
            Some("message") => process(&f, &mut last, &mut seen, &mut order),
            Some("ack") => {
                let (id, seq) = (f["client_msg_id"].as_str().unwrap(), f["seq"].as_i64().unwrap());
                let prev = acked.insert(id.to_owned(), seq);
                assert!(prev.is_none_or(|p| p == seq), "client {me}: {id} acked with {prev:?} and {seq}");
            }
            Some("presence" | "joined") => {}
            _ => panic!("unexpected {f}"),
        }
    }
}

/// Records one message frame. A client that resumed correctly never sees a
/// seq twice (resume replays only after `since_seq`), so a repeat is a
/// server-side duplicate: it is counted, never silently skipped.
fn process(f: &Value, last: &mut i64, seen: &mut BTreeMap<i64, u32>, order: &mut Vec<i64>) {
    let seq = f["seq"].as_i64().unwrap();
    assert_conforms("server", f);
    let n = seen.entry(seq).or_insert(0);
    *n += 1;
    if *n == 1 {
        assert_eq!(seq, *last + 1, "gap or reorder: got {seq} after {last}");
        order.push(seq);
        *last = seq;
    }
}

#[tokio::test]
async fn protocol_readme_examples_conform_to_the_schemas() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/README.md")).unwrap();
    let mut n = 0;
    // Examples of what a client must refuse or skip (a typo, a frame type
    // from a later version) are marked as such just before their fence.
    let mut chunks = readme.split("```json");
    let mut before = chunks.next().unwrap_or_default();
    for block in chunks {
        let body = block.split("```").next().unwrap();
        let refused = before.trim_end().ends_with("<!-- not conforming: on purpose -->");
        before = block;
        if refused {
            continue;
        }
        let v: Value =
            serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("example is not JSON ({e}): {body}"));
        let ty = v["type"].as_str().unwrap();
        let client_ok = std::panic::catch_unwind(|| assert_conforms("client", &v)).is_ok();
        if !client_ok {
            assert_conforms("server", &v);
        }
        let _ = ty;
        n += 1;
    }
    assert!(n >= 18, "every frame type has an example ({n} found)");
}
