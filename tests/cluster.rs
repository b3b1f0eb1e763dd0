//! Several gateway instances in one process on one database, linked by an
//! in-process bus: delivery, ordering, membership and logout cross
//! instances, and a bus that loses and reorders messages on purpose.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chatgw::bus::local::{LocalBus, LocalNetwork};
use chatgw::bus::{Bus, BusEvent, BusFuture, PresenceChange};
use chatgw::db::{AppendOutcome, NewKind, NewMessage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::chaos::{Acked, Addrs, Tally, assert_exactly_once, receiver, sender};
use crate::helpers::{
    Db, Session, TestApp, eventually, spawn_cluster, spawn_cluster_tweaked, spawn_cluster_with, test_seed, within,
};
use crate::ws::client::{GUARD, WsClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_membership_and_logout_cross_instances() {
    let apps = spawn_cluster(Db::Postgres, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&ann, "across", &[&bob]).await;

    let mut ca = WsClient::connect(a, &ann.access).await;
    let mut cb = WsClient::connect(b, &bob.access).await;
    ca.join(&room, None).await;
    cb.join(&room, None).await;

    // Both instances send concurrently: every socket sees 1..=40 once, in
    // order, whichever instance stored each message.
    for i in 0..20 {
        ca.send_msg(&room, &format!("a{i}"), "from a").await;
        cb.send_msg(&room, &format!("b{i}"), "from b").await;
    }
    for c in [&mut ca, &mut cb] {
        let mut seqs = Vec::new();
        within(GUARD, "40 messages and 20 acks on each socket", async {
            let mut acks = 0;
            while seqs.len() < 40 || acks < 20 {
                let f = c.next().await;
                match f["type"].as_str() {
                    Some("message") => seqs.push(f["seq"].as_i64().unwrap()),
                    Some("ack") => acks += 1,
                    _ => {}
                }
            }
        })
        .await;
        // The barrier: a re-delivery queued before the pong is counted.
        let late: Vec<i64> = c
            .drain_until_pong()
            .await
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["seq"].as_i64().unwrap())
            .collect();
        seqs.extend(late);
        assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    }

    // Removal through instance A reaches Bob's socket on instance B.
    let r = a.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", bob.user_id)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let left = cb.next_of("left").await;
    assert_eq!(left["reason"], "removed");

    // Logout through instance A closes Bob's socket on instance B.
    let out = a.post(Some(&bob.access), "/api/v1/auth/logout", json!({})).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    assert_eq!(cb.until_close().await.0, 4001);
}

/// A bus that loses and reorders messages on purpose, the way a real one
/// can: a fraction of message events is dropped (the publisher knows, as
/// the Redis bus does when a publish fails, and announces a `Tail` a
/// moment later) and a fraction is delayed past later ones. Seeded.
struct LossyBus {
    inner: LocalBus,
    rng: Mutex<StdRng>,
    stats: Arc<LossStats>,
    me: std::sync::Weak<LossyBus>,
}

#[derive(Default)]
struct LossStats {
    dropped: AtomicU64,
    delayed: AtomicU64,
}

impl LossyBus {
    fn new(inner: LocalBus, seed: u64, stats: Arc<LossStats>) -> Arc<LossyBus> {
        Arc::new_cyclic(|me| LossyBus { inner, rng: Mutex::new(StdRng::seed_from_u64(seed)), stats, me: me.clone() })
    }

    /// Publishes through the inner bus after `ms` milliseconds.
    fn later(&self, ms: u64, event: BusEvent) {
        let me = self.me.upgrade().expect("alive while publishing");
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            me.inner.publish(event);
        });
    }
}

impl Bus for LossyBus {
    fn publish(&self, event: BusEvent) {
        let BusEvent::Message { room, seq, .. } = &event else { return self.inner.publish(event) };
        let roll: f64 = self.rng.lock().unwrap().r#gen();
        if roll < 0.15 {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            self.later(50, BusEvent::Tail { room: room.clone(), seq: *seq });
        } else if roll < 0.30 {
            self.stats.delayed.fetch_add(1, Ordering::Relaxed);
            self.later(5 + (roll * 100.0) as u64, event);
        } else {
            self.inner.publish(event);
        }
    }
    fn events(&self) -> tokio::sync::mpsc::Receiver<BusEvent> {
        self.inner.events()
    }
    fn watch_room(&self, room: &str) -> BusFuture {
        self.inner.watch_room(room)
    }
    fn unwatch_room(&self, room: &str) {
        self.inner.unwatch_room(room)
    }
    fn presence_set(&self, room: &str, user: &str, here: bool) -> BusFuture<PresenceChange> {
        self.inner.presence_set(room, user, here)
    }
    fn presence_of(&self, room: &str) -> BusFuture<Vec<String>> {
        self.inner.presence_of(room)
    }
    fn presence_refresh(&self, room: &str, users: Vec<String>) -> BusFuture<Vec<String>> {
        self.inner.presence_refresh(room, users)
    }
    fn has_peers(&self) -> bool {
        self.inner.has_peers()
    }
    fn name(&self) -> &'static str {
        "lossy"
    }
}

/// Three instances on a bus that drops 15% and delays 15% of messages:
/// the rooms' gap filling and tail catch-up still give every receiver
/// every message exactly once, in order, whichever instance stored it.
async fn lossy_bus_still_delivers_exactly_once(db: Db) {
    let seed = test_seed();
    let stats = Arc::new(LossStats::default());
    let net = LocalNetwork::new();
    let apps = spawn_cluster_with(db, 3, |i| LossyBus::new(net.attach(), seed + i as u64, stats.clone())).await;
    let (addrs, room, users, tallies, stop) = lossy_room(&apps).await;
    let fills_before = metric_sum(&apps, "chatgw_hub_gap_fills_total").await;
    send_all(&addrs, &users[..2], &room, 120).await;
    assert_exactly_once(&tallies, &room, 240, Duration::from_secs(60)).await;
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let delayed = stats.delayed.load(Ordering::Relaxed);
    assert!(dropped > 0 && delayed > 0, "the bus misbehaved ({dropped} dropped, {delayed} delayed)");
    let fills = metric_sum(&apps, "chatgw_hub_gap_fills_total").await - fills_before;
    assert!(fills > 0.0, "gap fills delivered messages from storage (chatgw_hub_gap_fills_total moved by {fills})");
    assert_no_give_up(&apps).await;
    barrier(&addrs, &users[0], &room, &tallies, 240).await;
    stop.cancel();
}

crate::both_backends!(lossy_bus_still_delivers_exactly_once);

/// A bus that loses messages the way Redis pub/sub can without telling
/// anyone: no publish error, no disconnect, no `Tail` announced. It drops
/// the message `last` (the end of a burst, after which the room is quiet)
/// and a seeded tenth of the messages before it; nothing above `last`.
struct SilentLossBus {
    inner: LocalBus,
    last: i64,
    rng: Mutex<StdRng>,
    stats: Arc<SilentStats>,
}

#[derive(Default)]
struct SilentStats {
    /// Messages before `last` dropped.
    dropped: AtomicU64,
    /// Times `last` itself was dropped (once per publishing instance).
    dropped_last: AtomicU64,
}

impl Bus for SilentLossBus {
    fn publish(&self, event: BusEvent) {
        if let BusEvent::Message { seq, .. } = &event {
            if *seq == self.last {
                self.stats.dropped_last.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if *seq < self.last && self.rng.lock().unwrap().gen_bool(0.1) {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        self.inner.publish(event)
    }
    fn events(&self) -> tokio::sync::mpsc::Receiver<BusEvent> {
        self.inner.events()
    }
    fn watch_room(&self, room: &str) -> BusFuture {
        self.inner.watch_room(room)
    }
    fn unwatch_room(&self, room: &str) {
        self.inner.unwatch_room(room)
    }
    fn presence_set(&self, room: &str, user: &str, here: bool) -> BusFuture<PresenceChange> {
        self.inner.presence_set(room, user, here)
    }
    fn presence_of(&self, room: &str) -> BusFuture<Vec<String>> {
        self.inner.presence_of(room)
    }
    fn presence_refresh(&self, room: &str, users: Vec<String>) -> BusFuture<Vec<String>> {
        self.inner.presence_refresh(room, users)
    }
    fn has_peers(&self) -> bool {
        self.inner.has_peers()
    }
    fn name(&self) -> &'static str {
        "silent-loss"
    }
}

/// The tail check's period in the tests below (`BUS_TAIL_CHECK_MS`).
const TAIL_CHECK_MS: u64 = 300;

/// Three instances on a bus that silently loses the last message of a
/// burst (and a tenth of the others): nothing announces it, no later message
/// exposes the gap and no client resumes, yet the tail check delivers it to
/// every receiver, exactly once, a few periods after the burst.
async fn lossy_bus_loses_the_last_message_silently_and_the_tail_check_delivers_it(db: Db) {
    let seed = test_seed();
    let stats = Arc::new(SilentStats::default());
    let net = LocalNetwork::new();
    let bus = |i: usize| -> chatgw::bus::SharedBus {
        let rng = Mutex::new(StdRng::seed_from_u64(seed + i as u64));
        Arc::new(SilentLossBus { inner: net.attach(), last: 120, rng, stats: stats.clone() })
    };
    let tail = |v: &mut std::collections::HashMap<String, String>| {
        v.insert("BUS_TAIL_CHECK_MS".into(), TAIL_CHECK_MS.to_string());
    };
    let apps = spawn_cluster_tweaked(db, 3, bus, tail).await;
    let (addrs, room, users, tallies, stop) = lossy_room(&apps).await;
    let fills_before = metric_sum(&apps, "chatgw_hub_gap_fills_total").await;
    let acked_at = send_all(&addrs, &users[..2], &room, 60).await;
    // Receiver 2 is on instance C, where nobody sends: the burst's last
    // message can only reach it through the bus, which lost it.
    let all_have = || tallies.iter().all(|t| t.lock().unwrap().count(&room) >= 120);
    let arrived = tokio::time::timeout(Duration::from_secs(30), async {
        while !all_have() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    if arrived.is_ok() {
        println!(
            "every receiver had seq 120 {} ms after the last ack (BUS_TAIL_CHECK_MS={TAIL_CHECK_MS})",
            acked_at.elapsed().as_millis()
        );
    }
    assert_exactly_once(&tallies, &room, 120, Duration::from_secs(1)).await;
    assert!(stats.dropped_last.load(Ordering::Relaxed) > 0, "the bus dropped the last message");
    let dropped = stats.dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "the bus dropped messages before the last ({dropped})");
    let recovered = metric_sum(&apps, "chatgw_hub_tail_recovered_total").await;
    assert!(recovered > 0.0, "the tail check delivered the last message (chatgw_hub_tail_recovered_total)");
    let fills = metric_sum(&apps, "chatgw_hub_gap_fills_total").await - fills_before;
    assert!(fills > 0.0, "the next message exposed the earlier losses: gap fills delivered them ({fills})");
    assert_no_give_up(&apps).await;
    barrier(&addrs, &users[0], &room, &tallies, 120).await;
    stop.cancel();
}

crate::both_backends!(lossy_bus_loses_the_last_message_silently_and_the_tail_check_delivers_it);

/// An instance that stored a message and died before publishing it (here:
/// a row written to storage behind every hub's back) leaves a quiet room
/// behind on every instance; the tail check delivers it, exactly once.
async fn a_message_stored_but_never_published_arrives_by_the_tail_check(db: Db) {
    let net = LocalNetwork::new();
    let tail = |v: &mut std::collections::HashMap<String, String>| {
        v.insert("BUS_TAIL_CHECK_MS".into(), TAIL_CHECK_MS.to_string());
    };
    let apps = spawn_cluster_tweaked(db, 3, |_| Arc::new(net.attach()), tail).await;
    let (addrs, room, users, tallies, stop) = lossy_room(&apps).await;
    send_all(&addrs, &users[..1], &room, 5).await;
    assert_exactly_once(&tallies, &room, 5, Duration::from_secs(30)).await;
    let recovered_before = metric_sum(&apps, "chatgw_hub_tail_recovered_total").await;

    let orphan = NewMessage {
        room_id: room.clone(),
        sender_id: users[1].user_id.clone(),
        client_msg_id: "stored-then-crashed".into(),
        body: "never published".into(),
        sent_at: chatgw::clock::now_ms(),
        kind: NewKind::Message,
    };
    let stored_at = Instant::now();
    let out = apps[1].store.append_messages(&[orphan]).await.expect("stored");
    assert!(matches!(out[..], [AppendOutcome::Stored(ref m)] if m.seq == 6), "stored as seq 6: {out:?}");
    assert_exactly_once(&tallies, &room, 6, Duration::from_secs(30)).await;
    println!(
        "every receiver had the unpublished seq 6 {} ms after it was stored (BUS_TAIL_CHECK_MS={TAIL_CHECK_MS})",
        stored_at.elapsed().as_millis()
    );
    // Every instance with a receiver caught the room up itself.
    let recovered = metric_sum(&apps, "chatgw_hub_tail_recovered_total").await - recovered_before;
    assert_eq!(recovered, 3.0, "each instance delivered seq 6 from storage once");
    barrier(&addrs, &users[0], &room, &tallies, 6).await;
    stop.cancel();
}

crate::both_backends!(a_message_stored_but_never_published_arrives_by_the_tail_check);

/// A room of six members on `apps`, receivers (users 2..6) connected on
/// every instance in turn, joined and reading; users 0 and 1 send.
async fn lossy_room(apps: &[TestApp]) -> (Addrs, String, Vec<Session>, Vec<Arc<Mutex<Tally>>>, CancellationToken) {
    let owner = apps[0].register("owner").await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(apps[0].register(&format!("u{i}")).await);
    }
    let members: Vec<&Session> = users.iter().collect();
    let room = apps[0].create_room(&owner, "lossy", &members).await;
    let addrs = Addrs::new(apps.iter().map(|a| a.addr).collect());
    let stop = CancellationToken::new();
    let mut tallies = Vec::new();
    for (k, u) in users[2..].iter().enumerate() {
        let t = Arc::new(Mutex::new(Tally::default()));
        tallies.push(t.clone());
        tokio::spawn(receiver(addrs.clone(), k, u.access.clone(), vec![room.clone()], t, stop.clone()));
    }
    for t in &tallies {
        eventually(Duration::from_secs(20), || async { (t.lock().unwrap().connects > 0).then_some(()) }).await;
    }
    // A receiver counts as connected before its join is answered: wait for
    // every instance to have the room's subscribers.
    for a in apps {
        eventually(Duration::from_secs(20), || async { (metric(a, "chatgw_hub_rooms").await > 0.0).then_some(()) })
            .await;
    }
    (addrs, room, users, tallies, stop)
}

/// `per_sender` messages from each of `senders` at once (sender k on
/// instance k), every one acknowledged (the guard fails the test); returns
/// when the last ack arrived.
async fn send_all(addrs: &Addrs, senders: &[Session], room: &str, per_sender: usize) -> Instant {
    let acked: Acked = Arc::default();
    let mut tasks = Vec::new();
    for (k, u) in senders.iter().enumerate() {
        let ids: Vec<String> = (0..per_sender).map(|i| format!("s{k}-{i}")).collect();
        let (a, t, r, ack) = (addrs.clone(), u.access.clone(), room.to_owned(), acked.clone());
        tasks.push(tokio::spawn(sender(a, k, t, r, ids, Duration::from_millis(2), ack)));
    }
    // A sender task ends at its next outbox tick after its last ack: watch
    // the acks themselves for when the last one came.
    let total = senders.len() * per_sender;
    let last_ack = tokio::time::timeout(Duration::from_secs(60), async {
        while acked.lock().unwrap().len() < total {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Instant::now()
    })
    .await
    .expect("every message acknowledged within 60 s");
    for s in tasks {
        tokio::time::timeout(Duration::from_secs(60), s)
            .await
            .expect("every message acknowledged within 60 s")
            .expect("sender ran");
    }
    last_ack
}

/// The end of an exactly-once check: once every receiver has `expected`
/// messages, a marker message is sent; each receiver's next message must be
/// the marker. A re-delivery of anything it had, arriving before the
/// marker, is counted as a duplicate and fails here.
async fn barrier(addrs: &Addrs, from: &Session, room: &str, tallies: &[Arc<Mutex<Tally>>], expected: usize) {
    let acked: Acked = Arc::default();
    let marker = sender(
        addrs.clone(),
        0,
        from.access.clone(),
        room.to_owned(),
        vec!["marker".into()],
        Duration::from_millis(1),
        acked.clone(),
    );
    tokio::time::timeout(Duration::from_secs(30), marker).await.expect("the marker acknowledged within 30 s");
    let seq = acked.lock().unwrap()["marker"];
    assert_eq!(seq, expected as i64 + 1, "the marker is the room's next message");
    assert_exactly_once(tallies, room, expected + 1, Duration::from_secs(30)).await;
}

/// No room gave up a gap (storage holds every message: a give-up here
/// would be the room's sequencer failing, hidden by the sockets' replays).
async fn assert_no_give_up(apps: &[TestApp]) {
    for reason in ["not_stored", "storage_error"] {
        let n = metric_sum(apps, &format!("chatgw_hub_gap_fill_giveups_total{{reason=\"{reason}\"}}")).await;
        assert_eq!(n, 0.0, "gap fills given up ({reason})");
    }
}

/// A metric summed over every instance.
async fn metric_sum(apps: &[TestApp], name: &str) -> f64 {
    let mut sum = 0.0;
    for a in apps {
        sum += metric(a, name).await;
    }
    sum
}

/// A counter's value from an instance's `/metrics`.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let addr = app.metrics_addr.expect("metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
