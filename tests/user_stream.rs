//! The per-user stream (protocol §15): every socket of a user hears
//! `room_added`, `room_removed`, `room_updated` and, for rooms it has not
//! joined, coalesced `room_seq`, on every instance, without joining
//! anything. Two instances in one process, on the in-process bus and on a
//! real Redis.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chatgw::bus::SharedBus;
use chatgw::bus::redis::{RedisBus, RedisSettings};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::both_backends;
use crate::helpers::{Db, Session, TestApp, spawn_app_with, spawn_cluster, spawn_cluster_with, within};
use crate::ws::client::{GUARD, WsClient};

/// The default `USER_STREAM_INTERVAL_MS`, which the clusters run with.
const INTERVAL: Duration = Duration::from_millis(1000);

/// Two instances on a real Redis (127.0.0.1:6379 unless `TEST_REDIS_URL`),
/// on a prefix of their own.
pub(crate) async fn spawn_redis_cluster(db: Db) -> Vec<TestApp> {
    let url = std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let prefix = format!("t{}:", uuid::Uuid::new_v4().simple());
    spawn_cluster_with(db, 2, |_| -> SharedBus {
        Arc::new(
            RedisBus::start(
                RedisSettings {
                    url: url.clone().into(),
                    prefix: prefix.clone(),
                    publish_queue: 1024,
                    timeout: Duration::from_secs(2),
                    linger: Duration::from_secs(1),
                    presence_ttl: Duration::from_secs(30),
                },
                chatgw::metrics::Metrics::new(),
            )
            .expect("Redis bus"),
        )
    })
    .await
}

/// Waits until control events cross both ways (the instances' Redis
/// subscriptions are in place): rooms named "probe" are created for `user`
/// through each instance until its socket on the other instance hears one.
/// Probes published before may still arrive later: [`next_event`] skips
/// them.
pub(crate) async fn until_control_events_cross(
    apps: &[TestApp],
    owner: &Session,
    user: &Session,
    on: [&mut WsClient; 2],
) {
    let [ca, cb] = on;
    for (from, to) in [(0usize, cb), (1, ca)] {
        let what = format!("a room_added from instance {from} reaching the other instance over Redis");
        within(GUARD, &what, async {
            loop {
                apps[from].create_room(owner, "probe", &[user]).await;
                if to.next_user_event_within(Duration::from_millis(500)).await.is_some() {
                    break;
                }
            }
        })
        .await;
    }
}

/// The next per-user frame that is not about a probe room.
async fn next_event(c: &mut WsClient) -> Value {
    within(GUARD, "a per-user frame that is not about a probe room", async {
        loop {
            let f = c.next_user_event().await;
            if f["name"] != "probe" {
                return f;
            }
        }
    })
    .await
}

/// Adds, renames, leaves, removals and deletions reach both of Bob's
/// sockets, one per instance, whichever instance the request went through;
/// a room added while connected then reports its `room_seq` there too.
async fn membership_changes_reach_every_socket(apps: Vec<TestApp>, redis: bool) {
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let mut on_a = WsClient::connect(a, &bob.access).await;
    let mut on_b = WsClient::connect(b, &bob.access).await;
    if redis {
        until_control_events_cross(&apps, &ann, &bob, [&mut on_a, &mut on_b]).await;
    }

    // Created with Bob in it, through instance A.
    let r1 = a.create_room(&ann, "first", &[&bob]).await;
    for c in [&mut on_a, &mut on_b] {
        let f = next_event(c).await;
        assert_eq!(f, json!({"type": "room_added", "room": r1, "name": "first", "role": "member", "last_seq": 0}));
    }

    // Added later, through instance B, to a room with two messages.
    let r2 = b.create_room(&ann, "second", &[]).await;
    let mut ann_ws = WsClient::connect(a, &ann.access).await;
    ann_ws.join(&r2, None).await;
    for i in 0..2 {
        ann_ws.send_msg(&r2, &format!("m{i}"), "before bob").await;
        ann_ws.next_of("ack").await;
    }
    let r = b.post(Some(&ann.access), &format!("/api/v1/rooms/{r2}/members"), json!({"user_id": bob.user_id})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    for c in [&mut on_a, &mut on_b] {
        let f = next_event(c).await;
        assert_eq!(f, json!({"type": "room_added", "room": r2, "name": "second", "role": "member", "last_seq": 2}));
    }
    // Adding again changes nothing and says nothing.
    let r = b.post(Some(&ann.access), &format!("/api/v1/rooms/{r2}/members"), json!({"user_id": bob.user_id})).await;
    assert_eq!(r.status, StatusCode::OK);

    // The new membership is known on both instances: the room's next
    // message reaches Bob's unjoined sockets as `room_seq`.
    ann_ws.send_msg(&r2, "m2", "welcome bob").await;
    ann_ws.next_of("ack").await;
    for c in [&mut on_a, &mut on_b] {
        until_room_seq(c, &r2, 3).await;
    }

    // Renamed through instance B.
    let r = b.patch(&ann.access, &format!("/api/v1/rooms/{r1}"), json!({"name": "renamed"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_event(c).await, json!({"type": "room_updated", "room": r1, "name": "renamed"}));
    }

    // Bob leaves over REST through B; Bob's joined socket also gets `left`.
    on_a.join(&r1, None).await;
    let r = b.delete(&bob.access, &format!("/api/v1/rooms/{r1}/members/{}", bob.user_id)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_event(c).await, json!({"type": "room_removed", "room": r1, "reason": "left"}));
    }
    let left = on_a.next_of("left").await;
    assert_eq!(left["room"], r1.as_str());

    // Removed by the owner through A.
    let r = a.delete(&ann.access, &format!("/api/v1/rooms/{r2}/members/{}", bob.user_id)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_event(c).await, json!({"type": "room_removed", "room": r2, "reason": "removed"}));
    }
    // ...and no longer told about the room's seq (checked at the end).
    ann_ws.send_msg(&r2, "m3", "bob is gone").await;
    ann_ws.next_of("ack").await;

    // Deleted through B.
    let r3 = a.create_room(&ann, "third", &[&bob]).await;
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_event(c).await["room"], r3.as_str());
    }
    let r = b.delete(&ann.access, &format!("/api/v1/rooms/{r3}")).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for c in [&mut on_a, &mut on_b] {
        assert_eq!(next_event(c).await, json!({"type": "room_removed", "room": r3, "reason": "room_deleted"}));
    }

    // Nothing else: in particular no `room_seq` for the room Bob was
    // removed from.
    for c in [&mut on_a, &mut on_b] {
        c.drain_until_pong().await;
        let rest: Vec<Value> = c.take_user_events().into_iter().filter(|f| f["name"] != "probe").collect();
        assert_eq!(rest, Vec::<Value>::new());
    }
}

/// Reads `room_seq` frames of `room` (rising, none above `seq`) until one
/// says `seq`: the messages before it may have been announced in an
/// earlier interval.
async fn until_room_seq(c: &mut WsClient, room: &str, seq: i64) {
    within(GUARD, &format!("room_seq {seq} of {room}"), async {
        let mut last = 0;
        while last != seq {
            let f = next_event(c).await;
            assert_eq!((f["type"].as_str(), f["room"].as_str()), (Some("room_seq"), Some(room)), "{f}");
            let s = f["last_seq"].as_i64().unwrap();
            assert!(s > last && s <= seq, "room_seq {s} after {last}, expecting up to {seq}");
            last = s;
        }
    })
    .await;
}

async fn membership_changes_cross_instances(db: Db) {
    membership_changes_reach_every_socket(spawn_cluster(db, 2).await, false).await;
}

async fn membership_changes_cross_instances_over_redis(db: Db) {
    membership_changes_reach_every_socket(spawn_redis_cluster(db).await, true).await;
}

/// 50 sends to a room: each of Ann's sockets that has not joined it gets a
/// few `room_seq` frames (one per interval at most, whatever the number of
/// messages), rising, the last with the final seq; on both instances. Her
/// socket that joined the room gets the messages and no `room_seq`.
async fn room_seq_is_coalesced_and_skips_joined_sockets(db: Db) {
    let apps = spawn_cluster(db, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&bob, "busy", &[&ann]).await;
    let mut unjoined_a = WsClient::connect(a, &ann.access).await;
    let mut unjoined_b = WsClient::connect(b, &ann.access).await;
    let mut joined_b = WsClient::connect(b, &ann.access).await;
    joined_b.join(&room, None).await;
    let mut sender = WsClient::connect(a, &bob.access).await;

    let started = Instant::now();
    for i in 0..50 {
        sender.send_msg(&room, &format!("c{i}"), "busy").await;
    }
    within(GUARD, "50 acks", async {
        let mut acks = 0;
        while acks < 50 {
            if sender.next().await["type"] == "ack" {
                acks += 1;
            }
        }
    })
    .await;
    for c in [&mut unjoined_a, &mut unjoined_b] {
        let seqs = within(GUARD, "room_seq frames up to 50", async {
            let mut seqs = Vec::new();
            while seqs.last() != Some(&50) {
                let f = next_event(c).await;
                assert_eq!(f["type"], "room_seq", "{f}");
                assert_eq!(f["room"], room.as_str());
                seqs.push(f["last_seq"].as_i64().unwrap());
            }
            seqs
        })
        .await;
        // Coalesced: at most one frame per interval that passed (plus the
        // one in progress), never one per message.
        let intervals = started.elapsed().as_millis() / INTERVAL.as_millis() + 2;
        assert!(seqs.len() as u128 <= intervals, "{} room_seq frames in {intervals} intervals: {seqs:?}", seqs.len());
        assert!(seqs.len() < 50, "{seqs:?}");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "rising: {seqs:?}");
    }
    within(GUARD, "the 50 messages on the joined socket", async {
        let mut seen = 0;
        while seen < 50 {
            if joined_b.next().await["type"] == "message" {
                seen += 1;
            }
        }
    })
    .await;
    joined_b.drain_until_pong().await;
    assert_eq!(joined_b.take_user_events(), Vec::<Value>::new(), "a joined socket gets no room_seq for its room");

    // After leaving the room, the socket hears `room_seq` for it again.
    joined_b.send(json!({"type": "leave", "id": "l", "room": room})).await;
    joined_b.next_of("left").await;
    sender.send_msg(&room, "c50", "one more").await;
    assert_eq!(joined_b.next_user_event().await, json!({"type": "room_seq", "room": room, "last_seq": 51}));
}

/// Stream frames are the server's own: they cost the client no rate
/// tokens. With a budget of two frames, many stream frames arrive and
/// the client's requests are still answered.
async fn the_stream_costs_no_rate_tokens(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("WS_EVENTS_PER_SEC".into(), "1".into());
        v.insert("WS_EVENTS_BURST".into(), "2".into());
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let mut c = WsClient::connect(&app, &bob.access).await;
    let mut rooms = Vec::new();
    for i in 0..6 {
        let room = app.create_room(&ann, &format!("r{i}"), &[&bob]).await;
        let r = app.patch(&ann.access, &format!("/api/v1/rooms/{room}"), json!({"name": format!("n{i}")})).await;
        assert_eq!(r.status, StatusCode::OK);
        rooms.push(room);
    }
    for room in &rooms {
        assert_eq!(next_event(&mut c).await["type"], "room_added");
        let f = next_event(&mut c).await;
        assert_eq!((f["type"].as_str(), f["room"].as_str()), (Some("room_updated"), Some(room.as_str())));
    }
    for id in ["p1", "p2"] {
        c.send(json!({"type": "ping", "id": id})).await;
        assert_eq!(c.next().await, json!({"type": "pong", "id": id}), "12 stream frames left the budget whole");
    }
}

both_backends!(
    membership_changes_cross_instances,
    membership_changes_cross_instances_over_redis,
    room_seq_is_coalesced_and_skips_joined_sockets,
    the_stream_costs_no_rate_tokens,
);
