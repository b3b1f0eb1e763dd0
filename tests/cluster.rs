//! Several gateway instances in one process on one database, linked by an
//! in-process bus: delivery, ordering, membership and logout cross
//! instances, and a bus that loses and reorders messages on purpose.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatgw::bus::local::{LocalBus, LocalNetwork};
use chatgw::bus::{Bus, BusEvent, BusFuture, PresenceChange};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::chaos::{Acked, Addrs, Tally, assert_exactly_once, receiver, sender};
use crate::helpers::{Db, Session, TestApp, eventually, spawn_cluster, spawn_cluster_with, test_seed, within};
use crate::ws_client::{GUARD, WsClient};

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
    let owner = apps[0].register("owner").await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(apps[0].register(&format!("u{i}")).await);
    }
    let members: Vec<&Session> = users.iter().collect();
    let room = apps[0].create_room(&owner, "lossy", &members).await;
    let addrs = Addrs::new(apps.iter().map(|a| a.addr).collect());
    let stop = CancellationToken::new();
    // Receivers on every instance, senders on A and B at once.
    let mut tallies = Vec::new();
    for (k, u) in users[2..].iter().enumerate() {
        let t = Arc::new(Mutex::new(Tally::default()));
        tallies.push(t.clone());
        tokio::spawn(receiver(addrs.clone(), k, u.access.clone(), vec![room.clone()], t, stop.clone()));
    }
    for t in &tallies {
        eventually(Duration::from_secs(20), || async { (t.lock().unwrap().connects > 0).then_some(()) }).await;
    }
    let acked: Acked = Arc::default();
    let mut senders = Vec::new();
    for (k, u) in users[..2].iter().enumerate() {
        let ids: Vec<String> = (0..120).map(|i| format!("s{k}-{i}")).collect();
        let (a, t, r, ack) = (addrs.clone(), u.access.clone(), room.clone(), acked.clone());
        senders.push(tokio::spawn(sender(a, k, t, r, ids, Duration::from_millis(2), ack)));
    }
    for s in senders {
        s.await.unwrap();
    }
    assert_exactly_once(&tallies, &room, 240, Duration::from_secs(60)).await;
    stop.cancel();
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let delayed = stats.delayed.load(Ordering::Relaxed);
    assert!(dropped > 0 && delayed > 0, "the bus misbehaved ({dropped} dropped, {delayed} delayed)");
    let mut fills = 0.0;
    for a in &apps {
        fills += metric(a, "chatgw_hub_gap_fills_total").await;
    }
    assert!(fills > 0.0, "gaps were filled from storage");
}

crate::both_backends!(lossy_bus_still_delivers_exactly_once);

/// A counter's value from an instance's `/metrics`.
pub async fn metric(app: &TestApp, name: &str) -> f64 {
    let addr = app.metrics_addr.expect("metrics listener");
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
