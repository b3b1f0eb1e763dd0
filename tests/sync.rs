//! Protocol 1.1 resume (§14, §17) over real sockets: bulk `sync` with mixed
//! outcomes, its rate cost, the replay/live seam, presence across
//! instances, retention (age, count, per-room override, never blocking
//! sends), history resets and epochs.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chatgw::db::NewMessage;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;

use crate::both_backends;
use crate::helpers::{Db, Session, TestApp, eventually, spawn_app_with, spawn_cluster, within};
use crate::operators::ADMIN_TOKEN;
use crate::ws::client::{GUARD, WsClient, assert_conforms};

both_backends!(
    sync_answers_every_room_in_one_frame,
    sync_seam_is_exactly_once_under_live_sends,
    sync_presence_spans_instances,
    retention_by_age_and_count_never_blocks_sends,
    reset_history_and_bump_epochs_change_the_epoch,
);

/// Stores `n` messages in `room` from `sender` directly (set-up only).
async fn store_messages(app: &TestApp, room: &str, sender: &Session, n: usize) {
    let batch: Vec<NewMessage> = (0..n)
        .map(|i| NewMessage {
            room_id: room.to_owned(),
            sender_id: sender.user_id.clone(),
            client_msg_id: format!("seed-{}", uuid::Uuid::new_v4().simple()),
            body: format!("m{i}"),
            sent_at: chatgw::clock::now_ms(),
            kind: chatgw::db::NewKind::Message,
        })
        .collect();
    for chunk in batch.chunks(200) {
        app.store.append_messages(chunk).await.expect("stored");
    }
}

/// Sends a `sync` and returns the frames of its answer (presence, typing
/// and read broadcasts left out) and the closing `synced`.
async fn sync(c: &mut WsClient, rooms: Vec<Value>) -> (Vec<Value>, Value) {
    let f = json!({"type": "sync", "id": "s1", "rooms": rooms});
    assert_conforms("client", &f);
    c.send(f).await;
    let mut frames = Vec::new();
    loop {
        let v = c.next().await;
        match v["type"].as_str() {
            Some("synced") => return (frames, v),
            Some("presence" | "typing" | "read") => {}
            _ => frames.push(v),
        }
    }
}

/// The frames of one room, in order.
fn of_room<'a>(frames: &'a [Value], room: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["room"] == room).collect()
}

fn types(frames: &[&Value]) -> Vec<String> {
    frames.iter().map(|f| f["type"].as_str().unwrap_or_default().to_owned()).collect()
}

async fn admin_post(app: &TestApp, path: &str) -> crate::helpers::Resp {
    app.send(app.http.post(app.url(path)).bearer_auth(ADMIN_TOKEN)).await
}

/// 150 quiet rooms (more than the 50 refused frames after which a socket is
/// closed) and every kind of answer, in one frame, with a budget of one
/// event token.
async fn sync_answers_every_room_in_one_frame(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("WS_EVENTS_PER_SEC".into(), "1".into());
        v.insert("WS_EVENTS_BURST".into(), "1".into());
        v.insert("RETENTION_INTERVAL_SECS".into(), "1".into());
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let mut quiet = Vec::new();
    for i in 0..150 {
        quiet.push(app.create_room(&ann, &format!("quiet {i}"), &[]).await);
    }
    let fresh = app.create_room(&ann, "fresh", &[&bob]).await;
    store_messages(&app, &fresh, &bob, 3).await;
    app.store.set_read_marker(&fresh, &ann.user_id, 1).await.unwrap();
    let ahead = app.create_room(&ann, "ahead", &[]).await;
    store_messages(&app, &ahead, &ann, 3).await;
    let other_epoch = app.create_room(&ann, "other epoch", &[]).await;
    store_messages(&app, &other_epoch, &ann, 2).await;
    let gone = app.create_room(&ann, "gone", &[]).await;
    store_messages(&app, &gone, &ann, 10).await;
    let bobs = app.create_room(&bob, "not ann's", &[]).await;
    // Only the newest 3 of `gone` are kept: the job moves first_seq to 8.
    let r = app.patch(&ann.access, &format!("/api/v1/rooms/{gone}"), json!({"retention": {"max_messages": 3}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["retention"]["max_messages"], 3);
    eventually(Duration::from_secs(20), || async {
        let r = app.get(&ann.access, &format!("/api/v1/rooms/{gone}")).await;
        (r.body["first_seq"] == 8).then_some(())
    })
    .await;

    let mut c = WsClient::connect(&app, &ann.access).await;
    assert_eq!(c.hello["limits"]["max_sync_rooms"], 1000);
    let mut entries: Vec<Value> = quiet.iter().map(|r| json!({"room": r, "since_seq": 0})).collect();
    entries.push(json!({"room": fresh, "since_seq": 1}));
    entries.push(json!({"room": bobs, "since_seq": 0}));
    entries.push(json!({"room": ahead, "since_seq": 10}));
    entries.push(json!({"room": other_epoch, "since_seq": 2, "epoch": "not-the-epoch"}));
    entries.push(json!({"room": gone, "since_seq": 2}));
    entries.push(json!({"room": "no-such-room"}));
    let listed = entries.len();
    let (frames, synced) = sync(&mut c, entries).await;
    assert_eq!(synced["id"], "s1");
    assert_eq!(
        (synced["rooms"].as_u64(), synced["joined"].as_u64(), synced["failed"].as_u64()),
        (Some(listed as u64), Some(listed as u64 - 2), Some(2))
    );
    assert!(frames.iter().all(|f| f["type"] != "error" || f["id"].is_null()), "per-room answers carry no id");

    // Quiet rooms: one `joined` each, nothing else, in the listed order.
    let joined_order: Vec<&str> =
        frames.iter().filter(|f| f["type"] == "joined").filter_map(|f| f["room"].as_str()).collect();
    assert_eq!(&joined_order[..150], quiet.iter().map(String::as_str).collect::<Vec<_>>().as_slice());
    for r in &quiet {
        let f = of_room(&frames, r);
        assert_eq!(types(&f), ["joined"]);
        assert_eq!(
            (f[0]["replayed"].as_u64(), f[0]["last_seq"].as_i64(), f[0]["read_seq"].as_i64()),
            (Some(0), Some(0), Some(0))
        );
        assert_eq!(f[0]["online"], json!([ann.user_id]));
        assert!(f[0]["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // New messages: replayed, then joined with the read marker.
    let f = of_room(&frames, &fresh);
    assert_eq!(types(&f), ["message", "message", "joined"]);
    assert_eq!((f[0]["seq"].as_i64(), f[1]["seq"].as_i64()), (Some(2), Some(3)));
    assert_eq!((f[2]["replayed"].as_u64(), f[2]["read_seq"].as_i64()), (Some(2), Some(1)));
    // Not a member: an error for that room alone.
    let f = of_room(&frames, &bobs);
    assert_eq!(types(&f), ["error"]);
    assert_eq!(f[0]["code"], "forbidden");
    assert_eq!(of_room(&frames, "no-such-room")[0]["code"], "forbidden");
    // since_seq above last_seq: reset (ahead), no replay.
    let f = of_room(&frames, &ahead);
    assert_eq!(types(&f), ["reset", "joined"]);
    assert_eq!((f[0]["reason"].as_str(), f[0]["last_seq"].as_i64()), (Some("ahead"), Some(3)));
    assert_eq!(f[0]["epoch"], f[1]["epoch"]);
    assert_eq!(f[1]["replayed"], 0);
    // Another epoch: reset (epoch), no replay.
    let f = of_room(&frames, &other_epoch);
    assert_eq!(types(&f), ["reset", "joined"]);
    assert_eq!(f[0]["reason"], "epoch");
    // Below the retained range: history_gone, then the replay from 8.
    let f = of_room(&frames, &gone);
    assert_eq!(types(&f), ["history_gone", "message", "message", "message", "joined"]);
    assert_eq!((f[0]["since_seq"].as_i64(), f[0]["oldest_seq"].as_i64()), (Some(2), Some(8)));
    assert_eq!(f[1]["seq"], 8);

    // The sync joined for real: a live message of a synced room arrives.
    let mut b = WsClient::connect(&app, &bob.access).await;
    b.send_msg(&fresh, "live-1", "after sync").await;
    let m = c.next_of("message").await;
    assert_eq!((m["room"].as_str(), m["seq"].as_i64()), (Some(fresh.as_str()), Some(4)));
    // The budget of one token is spent: a burst of events right after is
    // limited (the bucket holds one token at most).
    for i in 0..5 {
        c.send(json!({"type": "ping", "id": i})).await;
    }
    let mut limited = 0;
    for _ in 0..5 {
        let v = c.next_reply().await;
        if v["type"] == "error" {
            assert_eq!(v["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(limited >= 1, "five events at once against a bucket of one");
    b.close().await;
    c.close().await;
}

/// Messages sent while a sync runs reach the syncing socket exactly once,
/// in order, whether by replay or live; some come each way (the sender
/// goes on until the sync is answered, then sends more, however fast or
/// slow the machine).
async fn sync_seam_is_exactly_once_under_live_sends(db: Db) {
    let app = spawn_app_with(db, |v| {
        for k in ["WS_SEND_PER_SEC", "WS_SEND_BURST", "WS_EVENTS_PER_SEC", "WS_EVENTS_BURST"] {
            v.insert(k.into(), "10000".into());
        }
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let mut rooms = Vec::new();
    for i in 0..8 {
        let r = app.create_room(&bob, &format!("busy {i}"), &[&ann]).await;
        store_messages(&app, &r, &bob, 5).await;
        rooms.push(r);
    }
    let mut b = WsClient::connect(&app, &bob.access).await;
    let sender_rooms = rooms.clone();
    // At most this many sends before the sync is answered: a slow sync
    // cannot make the sender flood.
    const MAX_BEFORE: usize = 2000;
    // Sends after the sync was answered: live for the syncing socket.
    const AFTER: usize = 16;
    let (synced_tx, mut synced_rx) = tokio::sync::oneshot::channel::<()>();
    let sender = tokio::spawn(async move {
        let mut sent = 0;
        while let Err(tokio::sync::oneshot::error::TryRecvError::Empty) = synced_rx.try_recv() {
            if sent == MAX_BEFORE {
                let _ = (&mut synced_rx).await;
                break;
            }
            b.send_msg(&sender_rooms[sent % sender_rooms.len()], &format!("live-{sent}"), "x").await;
            sent += 1;
            // The sender's pace, not a wait for a condition.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        for _ in 0..AFTER {
            b.send_msg(&sender_rooms[sent % sender_rooms.len()], &format!("live-{sent}"), "x").await;
            sent += 1;
        }
        let mut acks = 0;
        while acks < sent {
            if b.next().await["type"] == "ack" {
                acks += 1;
            }
        }
        b
    });
    let mut a = WsClient::connect(&app, &ann.access).await;
    let entries: Vec<Value> = rooms.iter().map(|r| json!({"room": r, "since_seq": 2})).collect();
    let (frames, synced) = sync(&mut a, entries).await;
    assert_eq!(synced["joined"], 8);
    synced_tx.send(()).expect("the sender waits for the sync");
    let b = within(GUARD, "the sender's acks", sender).await.expect("sender");
    let mut got: HashMap<String, Vec<i64>> = HashMap::new();
    let replayed = frames.iter().filter(|f| f["type"] == "message").count();
    for f in frames.iter().filter(|f| f["type"] == "message") {
        got.entry(f["room"].as_str().unwrap().to_owned()).or_default().push(f["seq"].as_i64().unwrap());
    }
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for r in &rooms {
        last.insert(r.clone(), app.store.last_seq(r).await.unwrap().unwrap());
    }
    // Read live messages until every room reached its final seq.
    let mut live = 0;
    while rooms.iter().any(|r| got.get(r).and_then(|v| v.last()).copied().unwrap_or(2) < last[r]) {
        let v = a.next().await;
        if v["type"] == "message" {
            live += 1;
            got.entry(v["room"].as_str().unwrap().to_owned()).or_default().push(v["seq"].as_i64().unwrap());
        }
    }
    assert!(a.drain_until_pong().await.iter().all(|f| f["type"] != "message"), "no duplicate after the end");
    for r in &rooms {
        let want: Vec<i64> = (3..=last[r]).collect();
        assert_eq!(got.get(r).cloned().unwrap_or_default(), want, "room {r}: every seq after 2 exactly once, in order");
    }
    // Both sides of the seam were crossed: the seeded messages were
    // replayed, and those sent after `synced` came live.
    assert!(replayed >= 8 * 3, "replayed before synced: {replayed}");
    assert!(live >= AFTER, "live after synced: {live} of at least {AFTER}");
    b.close().await;
    a.close().await;
}

/// `joined.online` of a sync is the cluster's: a user whose socket is on
/// the other instance is in it.
async fn sync_presence_spans_instances(db: Db) {
    let apps = spawn_cluster(db, 2).await;
    let ann = apps[0].register("ann").await;
    let bob = apps[0].register("bob").await;
    let room = apps[0].create_room(&ann, "two instances", &[&bob]).await;
    let mut b = WsClient::connect(&apps[1], &bob.access).await;
    b.join(&room, None).await;
    let mut a = WsClient::connect(&apps[0], &ann.access).await;
    // Bob's presence reaches the cluster on its own schedule: poll (each
    // sync is a resume of the same room, so repeating it changes nothing).
    let a_ref = &tokio::sync::Mutex::new(&mut a);
    let room_ref = room.as_str();
    let online = eventually(Duration::from_secs(20), || async move {
        let (frames, _) = sync(&mut **a_ref.lock().await, vec![json!({"room": room_ref})]).await;
        let joined = frames.iter().find(|f| f["type"] == "joined").expect("joined").clone();
        joined["online"].as_array().is_some_and(|o| o.len() == 2).then(|| joined["online"].clone())
    })
    .await;
    let mut want = vec![ann.user_id.clone(), bob.user_id.clone()];
    want.sort();
    assert_eq!(online, json!(want));
    a.close().await;
    b.close().await;
}

/// Counts rows of `room` below `seq` straight from the database.
async fn rows_below(app: &TestApp, room: &str, seq: i64) -> i64 {
    let mut conn = sqlx::AnyConnection::connect(app.db_url().expect("owner")).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE room_id = $1 AND seq < $2")
        .bind(room)
        .bind(seq)
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let _ = conn.close().await;
    n
}

/// The bound on a send's latency (send to ack) at the 99th percentile
/// while retention deletes rows of the same rooms. A correctness bound of
/// the retention design (small batches, each its own short statement, so
/// the writer is never held for long), not a speed measurement: generous
/// for a loaded machine, and far below what a job that held the writer for
/// a whole pass would cost.
const SEND_P99_BOUND: Duration = Duration::from_secs(1);

/// The global count limit and a room's age override are enforced in small
/// batches while sends to the same rooms go on: the rows are deleted while
/// a paced sender runs (it starts before the rows to delete exist and stops
/// only after they are gone), every send is acked within
/// [`SEND_P99_BOUND`] at the 99th percentile, REST history starts at the
/// retained range, no row below it is left.
async fn retention_by_age_and_count_never_blocks_sends(db: Db) {
    let app = spawn_app_with(db, |v| {
        for k in ["WS_SEND_PER_SEC", "WS_SEND_BURST"] {
            v.insert(k.into(), "10000".into());
        }
        v.insert("RETENTION_MAX_MESSAGES".into(), "100".into());
        v.insert("RETENTION_INTERVAL_SECS".into(), "1".into());
        v.insert("RETENTION_BATCH".into(), "50".into());
    })
    .await;
    let ann = app.register("ann").await;
    let counted = app.create_room(&ann, "by count", &[]).await;
    let aged = app.create_room(&ann, "by age", &[]).await;
    // `aged` keeps one hour and any number of messages (0 overrides the
    // global count): its 300 young messages are all kept for now.
    let r = app
        .patch(
            &ann.access,
            &format!("/api/v1/rooms/{aged}"),
            json!({"retention": {"max_age_secs": 3600, "max_messages": 0}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    store_messages(&app, &aged, &ann, 300).await;

    // A send every `PACE` to both rooms in turn, whether or not the last
    // was acked, each timed from its send to its ack (a send held up by the
    // job shows, and so do the ones queued behind it), until told to stop.
    const PACE: Duration = Duration::from_millis(10);
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut c = WsClient::connect(&app, &ann.access).await;
    let sender = {
        let (acks, stop, rooms) = (acks.clone(), stop.clone(), [counted.clone(), aged.clone()]);
        tokio::spawn(async move {
            let mut sent_at: HashMap<String, std::time::Instant> = HashMap::new();
            let mut latencies = Vec::new();
            let mut tick = tokio::time::interval(PACE);
            let mut sent = 0usize;
            while !(stop.is_cancelled() && latencies.len() == sent) {
                tokio::select! {
                    _ = tick.tick(), if !stop.is_cancelled() => {
                        let id = format!("during-{sent}");
                        c.send_msg(&rooms[sent % 2], &id, "during retention").await;
                        sent_at.insert(id, std::time::Instant::now());
                        sent += 1;
                    }
                    v = c.next() => {
                        assert_ne!(v["type"], "error", "a send failed during retention: {v}");
                        if v["type"] == "ack" {
                            let at = sent_at[v["client_msg_id"].as_str().unwrap()];
                            latencies.push(at.elapsed());
                            acks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                    }
                }
            }
            c.close().await;
            latencies
        })
    };
    let acked = || acks.load(std::sync::atomic::Ordering::SeqCst);
    eventually(GUARD, || async { (acked() >= 10).then_some(()) }).await;

    // Now the rows to delete appear: 1000 more in `counted` (the newest 100
    // are kept), and the first 200 of `aged` become two hours old.
    store_messages(&app, &counted, &ann, 1000).await;
    {
        let mut conn = sqlx::AnyConnection::connect(app.db_url().unwrap()).await.unwrap();
        sqlx::query("UPDATE messages SET sent_at = sent_at - 7200000 WHERE room_id = $1 AND seq <= 200")
            .bind(&aged)
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
    }
    let at_seed = acked();
    // The job deletes them while the sender goes on.
    eventually(Duration::from_secs(30), || async {
        let gone = rows_below(&app, &counted, 900).await == 0 && rows_below(&app, &aged, 201).await == 0;
        gone.then_some(())
    })
    .await;
    let at_trim = acked();
    eventually(GUARD, || async { (acked() >= at_trim + 10).then_some(()) }).await;
    stop.cancel();
    let mut latencies = within(GUARD, "the sender's last ack", sender).await.expect("sender");
    assert!(at_seed > 0 && at_trim > at_seed, "sends acked before ({at_seed}) and during ({at_trim}) the deletions");
    latencies.sort_unstable();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    eprintln!("{} sends, {at_seed} before the rows appeared, p99 {p99:?}", latencies.len());
    assert!(
        p99 <= SEND_P99_BOUND,
        "send latency p99 {p99:?} over {SEND_P99_BOUND:?} while retention ran ({} sends, max {:?})",
        latencies.len(),
        latencies.last()
    );

    // Count: the newest 100 are kept.
    let last = app.store.last_seq(&counted).await.unwrap().unwrap();
    let first = last - 99;
    eventually(Duration::from_secs(30), || async {
        let r = app.get(&ann.access, &format!("/api/v1/rooms/{counted}")).await;
        (r.body["first_seq"] == first && r.body["last_seq"] == last).then_some(())
    })
    .await;
    // Age: seqs 1-200 are old, 201 on are young.
    eventually(Duration::from_secs(30), || async {
        let r = app.get(&ann.access, &format!("/api/v1/rooms/{aged}")).await;
        (r.body["first_seq"] == 201).then_some(())
    })
    .await;
    for (room, first) in [(&counted, first), (&aged, 201)] {
        let h = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?after_seq=0&limit=5")).await;
        assert_eq!(h.body["messages"][0]["seq"], first, "REST history starts at the retained range");
        let h = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?before_seq={first}")).await;
        assert_eq!(h.body["messages"], json!([]), "nothing below the retained range");
        eventually(Duration::from_secs(30), || async { (rows_below(&app, room, first).await == 0).then_some(()) })
            .await;
    }
}

/// An operator's history reset deletes the messages, keeps seqs counting
/// and changes the epoch: joined sockets get `reset` at once, resumes with
/// the old epoch get `reset`, resumes below the range get `history_gone`.
/// `bump-epochs` changes every room's epoch.
async fn reset_history_and_bump_epochs_change_the_epoch(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    })
    .await;
    let ann = app.register("ann").await;
    let room = app.create_room(&ann, "to reset", &[]).await;
    let other = app.create_room(&ann, "untouched", &[]).await;
    store_messages(&app, &room, &ann, 5).await;
    let mut c = WsClient::connect(&app, &ann.access).await;
    c.send(json!({"type": "join", "id": "j", "room": room, "since_seq": 0})).await;
    let (frames, _) = {
        let mut seen = Vec::new();
        loop {
            let v = c.next_reply().await;
            if v["type"] == "joined" {
                break (seen, v.clone());
            }
            seen.push(v);
        }
    };
    assert_eq!(frames.len(), 5);
    let before =
        app.get(&ann.access, &format!("/api/v1/rooms/{room}")).await.body["epoch"].as_str().unwrap().to_owned();

    let r = admin_post(&app, &format!("/api/v1/admin/rooms/{room}/reset-history")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let epoch = r.body["epoch"].as_str().unwrap().to_owned();
    assert_ne!(epoch, before);
    assert_eq!((r.body["last_seq"].as_i64(), r.body["deleted"].as_u64()), (Some(5), Some(5)));
    let reset = c.next_reply().await;
    assert_eq!(
        (reset["type"].as_str(), reset["reason"].as_str(), reset["epoch"].as_str()),
        (Some("reset"), Some("epoch"), Some(epoch.as_str()))
    );
    assert_eq!(admin_post(&app, "/api/v1/admin/rooms/nope/reset-history").await.status, StatusCode::NOT_FOUND);
    let h = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages")).await;
    assert_eq!(h.body["messages"], json!([]));

    // Seqs keep counting.
    c.send_msg(&room, "after-reset", "new timeline").await;
    let ack = c.next_of("ack").await;
    assert_eq!(ack["seq"], 6);

    let mut d = WsClient::connect(&app, &ann.access).await;
    let (frames, _) = sync(
        &mut d,
        vec![json!({"room": room, "since_seq": 5, "epoch": before}), json!({"room": other, "since_seq": 0})],
    )
    .await;
    let f = of_room(&frames, &room);
    assert_eq!(types(&f), ["reset", "joined"]);
    assert_eq!((f[1]["epoch"].as_str(), f[1]["last_seq"].as_i64()), (Some(epoch.as_str()), Some(6)));
    // With the new epoch and a seq from before the reset: history_gone.
    let (frames, _) = sync(&mut d, vec![json!({"room": room, "since_seq": 3, "epoch": epoch})]).await;
    let f = of_room(&frames, &room);
    assert_eq!(types(&f), ["history_gone", "message", "joined"]);
    assert_eq!((f[0]["oldest_seq"].as_i64(), f[1]["seq"].as_i64()), (Some(6), Some(6)));

    // After a restore: every room gets a new epoch.
    let other_before = app.get(&ann.access, &format!("/api/v1/rooms/{other}")).await.body["epoch"].clone();
    assert_eq!(app.store.bump_epochs().await.unwrap(), 2);
    let (frames, _) = sync(&mut d, vec![json!({"room": other, "since_seq": 0, "epoch": other_before})]).await;
    assert_eq!(types(&of_room(&frames, &other)), ["reset", "joined"]);
    c.close().await;
    d.close().await;
}
