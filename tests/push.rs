//! The offline-push webhook against a real HTTP receiver: who is listed as
//! offline (one instance and across two), the body switch, the signature,
//! a receiver that is down and then up, one that answers too late, and an
//! instance SIGKILLed in the middle of a batch.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Notify;

use crate::helpers::{Db, Session, TestApp, eventually, spawn_app_with, spawn_cluster_tweaked};
use crate::procs::{Gateway, RedisProc, cluster_db, cluster_env, free_port, test_prefix};
use crate::ws::client::WsClient;

const SECRET: &str = "whsec-test-0123456789-abcdefghijklmnop";

/// One request the receiver got, as it arrived.
#[derive(Debug, Clone)]
struct Recorded {
    events: Vec<Value>,
    body: Bytes,
    timestamp: Option<String>,
    signature: Option<String>,
    idempotency_key: Option<String>,
    /// When it arrived, Unix ms: the timestamp must be fresh then.
    at: i64,
    /// Answered 200 (not left hanging).
    answered: bool,
}

impl Recorded {
    /// The event ids of the request, in its order.
    fn event_ids(&self) -> Vec<String> {
        self.events.iter().map(|e| e["id"].as_str().unwrap_or_default().to_owned()).collect()
    }

    /// Why the request is not what the gateway promises a receiver: a
    /// fresh `X-Chatgw-Timestamp`, an `X-Chatgw-Signature` equal to
    /// `v1=<hex HMAC-SHA256(SECRET, "<timestamp>.<body>")>` (computed here,
    /// not with the gateway's code), and a non-empty `Idempotency-Key`.
    fn defect(&self) -> Option<String> {
        let (Some(ts), Some(sig)) = (&self.timestamp, &self.signature) else {
            return Some("no timestamp or signature header".into());
        };
        let Ok(t) = ts.parse::<i64>() else { return Some(format!("timestamp {ts:?} is not Unix seconds")) };
        if (self.at / 1000 - t).abs() >= 300 {
            return Some(format!("timestamp {t} was not fresh at {}", self.at));
        }
        let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
        mac.update(format!("{ts}.").as_bytes());
        mac.update(&self.body);
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        if *sig != format!("v1={expected}") {
            return Some(format!("signature {sig} does not verify against the body"));
        }
        if self.idempotency_key.as_deref().is_none_or(str::is_empty) {
            return Some("no Idempotency-Key".into());
        }
        None
    }
}

/// Checks every request so far: each one signed and keyed (see
/// [`Recorded::defect`]), and one idempotency key per batch of events: the
/// same events retried carry the same key, other events another key.
fn verified(requests: Vec<Recorded>) -> Vec<Recorded> {
    for (i, r) in requests.iter().enumerate() {
        if let Some(d) = r.defect() {
            panic!("request {i} of {}: {d}: {r:?}", requests.len());
        }
    }
    let mut by_key: HashMap<&str, Vec<String>> = HashMap::new();
    let mut by_events: HashMap<Vec<String>, &str> = HashMap::new();
    for r in &requests {
        let key = r.idempotency_key.as_deref().expect("checked above");
        let ids = r.event_ids();
        let seen = by_key.entry(key).or_insert_with(|| ids.clone());
        assert_eq!(*seen, ids, "Idempotency-Key {key} was sent for two different batches");
        let seen = by_events.entry(ids.clone()).or_insert(key);
        assert_eq!(*seen, key, "the batch {ids:?} was retried under another Idempotency-Key");
    }
    requests
}

#[derive(Default)]
struct ReceiverState {
    requests: Mutex<Vec<Recorded>>,
    /// Requests still to be left without an answer (a receiver slower than
    /// any timeout).
    hang: Mutex<usize>,
    /// Answer every request with 500.
    failing: std::sync::atomic::AtomicBool,
    /// Answers wait until this many requests are in flight at once (0: no
    /// wait); then the gate stays open.
    gate: AtomicUsize,
    gate_open: Mutex<Option<tokio::sync::watch::Sender<bool>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    arrived: Notify,
}

/// A webhook receiver on a local port: records every request; every read
/// of what it got verifies all of it ([`verified`]).
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start() -> Receiver {
        Self::start_on(0, 0).await
    }

    /// On `port` (0: any), leaving the first `hang` requests unanswered.
    async fn start_on(port: u16, hang: usize) -> Receiver {
        let state = Arc::new(ReceiverState { hang: Mutex::new(hang), ..Default::default() });
        let app = Router::new().route("/hook", post(receive)).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.expect("bind receiver");
        let addr = listener.local_addr().expect("bound");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { addr, state, task }
    }

    /// Holds every answer until `n` requests are in flight at once (or
    /// 30 s have passed), then answers everything at once.
    fn hold_until_in_flight(&self, n: usize) {
        self.state.gate.store(n, Ordering::SeqCst);
        *self.state.gate_open.lock().unwrap() = Some(tokio::sync::watch::channel(false).0);
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request so far, each one verified.
    fn requests(&self) -> Vec<Recorded> {
        verified(self.state.requests.lock().unwrap().clone())
    }

    /// Events of requests answered 200, in arrival order.
    fn delivered(&self) -> Vec<Value> {
        self.requests().into_iter().filter(|r| r.answered).flat_map(|r| r.events).collect()
    }

    /// Waits until `f` holds for the requests so far.
    async fn wait_for(&self, what: &str, f: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let arrived = self.state.arrived.notified();
                let seen = self.requests();
                if f(&seen) {
                    return seen;
                }
                arrived.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("receiver: {what} not seen in time; got {:?}", self.requests()))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(State(state): State<Arc<ReceiverState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let header = |k: &str| headers.get(k).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let events = json["events"].as_array().cloned().unwrap_or_default();
    let failing = state.failing.load(Ordering::SeqCst);
    let hang = {
        let mut h = state.hang.lock().unwrap();
        let hang = *h > 0;
        *h = h.saturating_sub(1);
        hang
    };
    let in_flight = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(in_flight, Ordering::SeqCst);
    state.requests.lock().unwrap().push(Recorded {
        events,
        body,
        timestamp: header("x-chatgw-timestamp"),
        signature: header("x-chatgw-signature"),
        idempotency_key: header("idempotency-key"),
        at: chatgw::clock::now_ms(),
        answered: !hang && !failing,
    });
    state.arrived.notify_waiters();
    if hang {
        // Slower than the gateway's timeout: it gives up on this request.
        std::future::pending::<()>().await;
    }
    let gate = state.gate_open.lock().unwrap().as_ref().map(|g| (g.clone(), g.subscribe()));
    if let Some((open, mut opened)) = gate {
        if in_flight >= state.gate.load(Ordering::SeqCst) {
            open.send_replace(true);
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), opened.wait_for(|o| *o)).await;
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    if failing { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK }
}

/// Webhook settings for a test: quick polls and retries.
fn webhook_vars(v: &mut HashMap<String, String>, url: &str, include_body: bool) {
    for (k, val) in [
        ("WEBHOOK_URL", url),
        ("WEBHOOK_SECRET", SECRET),
        ("WEBHOOK_INCLUDE_BODY", if include_body { "1" } else { "0" }),
        ("WEBHOOK_POLL_INTERVAL_MS", "50"),
        ("WEBHOOK_BACKOFF_BASE_MS", "20"),
        ("WEBHOOK_BACKOFF_MAX_MS", "200"),
        ("WEBHOOK_TIMEOUT_MS", "500"),
        ("WEBHOOK_LEASE_MS", "1000"),
    ] {
        v.insert(k.into(), val.into());
    }
}

/// The value of one series on an instance's `/metrics`.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let addr = app.metrics_addr.expect("METRICS_ADDR is set by the test harness");
    let text = app.http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

fn ids(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

fn offline_of(event: &Value) -> BTreeSet<String> {
    event["offline_user_ids"].as_array().expect("offline_user_ids").iter().map(|u| u.as_str().unwrap().into()).collect()
}

/// Waits until `c` has seen each `(room, user)` come online (presence
/// frames follow the cluster-wide entry being written).
async fn wait_online(c: &mut WsClient, pairs: &[(&str, &str)]) {
    let mut missing: BTreeSet<(String, String)> = pairs.iter().map(|(r, u)| ((*r).into(), (*u).into())).collect();
    while !missing.is_empty() {
        let f = c.next_of("presence").await;
        if f["status"] == "online" {
            missing.remove(&(f["room"].as_str().unwrap().into(), f["user"].as_str().unwrap().into()));
        }
    }
}

/// Ann (joined on a socket) and Bob (offline) in a new room: the set-up of
/// most tests here.
async fn ann_writes_to_bob(app: &TestApp) -> (Session, String, WsClient) {
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let room = app.create_room(&ann, "push", &[&bob]).await;
    let mut ca = WsClient::connect(app, &ann.access).await;
    ca.join(&room, None).await;
    (bob, room, ca)
}

async fn outbox_drained(app: &TestApp) {
    eventually(Duration::from_secs(30), || async { (app.store.outbox_len().await.unwrap() == 0).then_some(()) }).await;
}

async fn offline_members_are_listed_and_online_ones_not(db: Db) {
    let recv = Receiver::start().await;
    let app = spawn_app_with(db, |v| webhook_vars(v, &recv.url(), false)).await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let cat = app.register("cat").await;
    let dan = app.register("dan").await;
    let room = app.create_room(&ann, "push", &[&bob, &cat, &dan]).await;
    let quiet = app.create_room(&ann, "quiet", &[&bob]).await;

    let mut ca = WsClient::connect(&app, &ann.access).await;
    ca.join(&room, None).await;
    ca.join(&quiet, None).await;
    let mut cb = WsClient::connect(&app, &bob.access).await;
    cb.join(&room, None).await;
    cb.join(&quiet, None).await;
    // Dan is connected but has not joined the room: offline for it.
    let _cd = WsClient::connect(&app, &dan.access).await;
    wait_online(&mut ca, &[(&room, &bob.user_id), (&quiet, &bob.user_id)]).await;

    // Everyone in `quiet` is online: no request for it. The next message
    // is the sentinel: it is the only event the receiver ever gets.
    ca.send_msg(&quiet, "q1", "all here").await;
    ca.next_of("ack").await;
    ca.send_msg(&room, "m1", "hello").await;
    ca.next_of("ack").await;
    recv.wait_for("one request", |r| !r.is_empty()).await;
    outbox_drained(&app).await;
    assert_eq!(recv.requests().len(), 1, "{:?}", recv.requests());
    let r = &recv.requests()[0];
    let [e] = r.events.as_slice() else { panic!("one event: {:?}", r.events) };
    assert_eq!((e["room"].as_str(), e["seq"].as_i64()), (Some(room.as_str()), Some(1)));
    assert_eq!(e["sender"], ann.user_id.as_str());
    assert!(e["id"].as_str().is_some_and(|i| !i.is_empty()) && e["sent_at"].is_i64());
    assert_eq!(offline_of(e), ids(&[&cat.user_id, &dan.user_id]));
    assert!(e.get("body").is_none(), "no body unless WEBHOOK_INCLUDE_BODY=1");
    assert_eq!(metric(&app, "chatgw_webhook_events_total{outcome=\"delivered\"}").await, 1.0);
    assert_eq!(metric(&app, "chatgw_webhook_events_total{outcome=\"skipped\"}").await, 1.0);
}

async fn the_body_is_sent_when_configured(db: Db) {
    let recv = Receiver::start().await;
    let app = spawn_app_with(db, |v| webhook_vars(v, &recv.url(), true)).await;
    let (bob, room, mut ca) = ann_writes_to_bob(&app).await;
    ca.send_msg(&room, "m1", "ping bob").await;
    ca.next_of("ack").await;
    let got = recv.wait_for("one event", |r| !r.is_empty()).await;
    let e = &got[0].events[0];
    assert_eq!(e["body"], "ping bob");
    assert_eq!(offline_of(e), ids(&[&bob.user_id]));
    outbox_drained(&app).await;
    // Every request, late ones too, signed and keyed.
    recv.requests();
}

async fn a_member_joined_on_another_instance_is_not_offline(db: Db) {
    let recv = Receiver::start().await;
    let net = chatgw::bus::local::LocalNetwork::new();
    let apps = spawn_cluster_tweaked(db, 2, |_| Arc::new(net.attach()), |v| webhook_vars(v, &recv.url(), false)).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let cat = a.register("cat").await;
    let room = a.create_room(&ann, "across", &[&bob, &cat]).await;

    let mut ca = WsClient::connect(a, &ann.access).await;
    ca.join(&room, None).await;
    let mut cb = WsClient::connect(b, &bob.access).await;
    cb.join(&room, None).await;
    wait_online(&mut ca, &[(&room, &bob.user_id)]).await;

    ca.send_msg(&room, "m1", "from a").await;
    ca.next_of("ack").await;
    let got = recv.wait_for("one event", |r| !r.is_empty()).await;
    let e = &got[0].events[0];
    assert_eq!(e["seq"], 1);
    assert_eq!(offline_of(e), ids(&[&cat.user_id]), "Bob is joined on instance B");
    outbox_drained(a).await;
    // Every request, late ones too, signed and keyed.
    recv.requests();
}

crate::both_backends!(
    offline_members_are_listed_and_online_ones_not,
    the_body_is_sent_when_configured,
    a_member_joined_on_another_instance_is_not_offline,
);

/// Nobody listens at first: requests fail, rows stay; once the receiver is
/// up, every event arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_down_then_up_gets_every_event() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/hook");
    let app = spawn_app_with(Db::Postgres, |v| {
        webhook_vars(v, &url, false);
        // However slow the machine, nothing is given up before the receiver is up.
        v.insert("WEBHOOK_MAX_ATTEMPTS".into(), "1000".into());
    })
    .await;
    let (_, room, mut ca) = ann_writes_to_bob(&app).await;
    for i in 1..=5 {
        ca.send_msg(&room, &format!("m{i}"), "while down").await;
        ca.next_of("ack").await;
    }
    eventually(Duration::from_secs(30), || async {
        (metric(&app, "chatgw_webhook_requests_total{result=\"error\"}").await >= 2.0).then_some(())
    })
    .await;
    assert_eq!(app.store.outbox_len().await.unwrap(), 5, "nothing is dropped while the receiver is down");

    let recv = Receiver::start_on(port, 0).await;
    recv.wait_for("five events", |r| r.iter().map(|r| r.events.len()).sum::<usize>() >= 5).await;
    outbox_drained(&app).await;
    let seqs: BTreeSet<i64> = recv.delivered().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=5).collect());
    // Every request, late ones too, signed and keyed.
    recv.requests();
    assert!(metric(&app, "chatgw_webhook_events_total{outcome=\"retried\"}").await >= 1.0);
    assert_eq!(metric(&app, "chatgw_webhook_events_total{outcome=\"given_up\"}").await, 0.0);
}

/// The receiver takes a request but answers after the gateway's timeout:
/// the gateway retries, and the retry carries the same event ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_gets_the_same_event_ids_again() {
    let recv = Receiver::start_on(0, 1).await;
    let app = spawn_app_with(Db::Sqlite, |v| webhook_vars(v, &recv.url(), false)).await;
    let (_, room, mut ca) = ann_writes_to_bob(&app).await;
    ca.send_msg(&room, "m1", "slow").await;
    ca.next_of("ack").await;

    let got = recv.wait_for("a retry answered", |r| r.iter().any(|r| r.answered)).await;
    outbox_drained(&app).await;
    assert!(!got[0].answered && got.len() >= 2);
    let first: Vec<&Value> = got[0].events.iter().map(|e| &e["id"]).collect();
    let again: Vec<&Value> = got.iter().find(|r| r.answered).unwrap().events.iter().map(|e| &e["id"]).collect();
    assert_eq!(first, again, "a duplicate carries the same event id");
    assert_eq!(got[0].idempotency_key, got.iter().find(|r| r.answered).unwrap().idempotency_key);
    assert!(metric(&app, "chatgw_webhook_requests_total{result=\"timeout\"}").await >= 1.0);
    // Every request, the timed-out one and every retry, signed and keyed.
    recv.requests();
}

/// Two live instances share one outbox (PostgreSQL) and both poll it; the
/// receiver holds its answers until two batches are out at once (one
/// instance posts one batch at a time, so both are then mid-round). With
/// nothing failing (no timeout, no lease running out), the lease is
/// exclusive: every event reaches the receiver exactly once, counted per
/// event id and per idempotency key over every request, nothing merged
/// before counting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_instances_deliver_each_event_exactly_once() {
    const PER_SENDER: usize = 30;
    let recv = Receiver::start().await;
    recv.hold_until_in_flight(2);
    let net = chatgw::bus::local::LocalNetwork::new();
    let apps = spawn_cluster_tweaked(
        Db::Postgres,
        2,
        |_| Arc::new(net.attach()),
        |v| {
            webhook_vars(v, &recv.url(), false);
            // Small batches: many rounds, so both instances claim often.
            v.insert("WEBHOOK_BATCH_SIZE".into(), "4".into());
            // Nothing times out or outlives its lease, however slow the machine.
            v.insert("WEBHOOK_TIMEOUT_MS".into(), "60000".into());
            v.insert("WEBHOOK_LEASE_MS".into(), "600000".into());
        },
    )
    .await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let cat = a.register("cat").await;
    let room = a.create_room(&ann, "both", &[&bob, &cat]).await;
    // Ann writes through A and Cat through B: each commit wakes its own
    // instance's worker. Bob is offline: every message is an event.
    let mut ca = WsClient::connect(a, &ann.access).await;
    ca.join(&room, None).await;
    let mut cc = WsClient::connect(b, &cat.access).await;
    cc.join(&room, None).await;
    for i in 0..PER_SENDER {
        ca.send_msg(&room, &format!("a{i}"), "via A").await;
        cc.send_msg(&room, &format!("c{i}"), "via B").await;
    }
    for _ in 0..PER_SENDER {
        ca.next_of("ack").await;
        cc.next_of("ack").await;
    }
    outbox_drained(a).await;
    let delivered_by = [
        metric(a, "chatgw_webhook_events_total{outcome=\"delivered\"}").await,
        metric(b, "chatgw_webhook_events_total{outcome=\"delivered\"}").await,
    ];
    drop((ca, cc));
    // A clean stop finishes each worker's round: a duplicate still in
    // flight reaches the receiver before it is counted.
    for app in apps {
        app.stop().await;
    }

    let requests = recv.requests();
    let mut per_event: HashMap<String, usize> = HashMap::new();
    let mut per_key: HashMap<String, usize> = HashMap::new();
    for r in &requests {
        assert!(r.answered, "nothing fails here: {r:?}");
        *per_key.entry(r.idempotency_key.clone().expect("verified")).or_default() += 1;
        for id in r.event_ids() {
            *per_event.entry(id).or_default() += 1;
        }
    }
    let twice: Vec<(&String, &usize)> = per_event.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "events delivered more than once: {twice:?}");
    let twice: Vec<(&String, &usize)> = per_key.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "batches sent more than once: {twice:?}");
    let seqs: Vec<i64> = {
        let mut s: Vec<i64> = requests.iter().flat_map(|r| &r.events).map(|e| e["seq"].as_i64().unwrap()).collect();
        s.sort_unstable();
        s
    };
    assert_eq!(seqs, (1..=2 * PER_SENDER as i64).collect::<Vec<_>>(), "every seq once, none missing");
    let most = recv.state.max_in_flight.load(Ordering::SeqCst);
    assert!(most >= 2, "both instances had a batch out at once (most in flight: {most})");
    assert_eq!(delivered_by[0] + delivered_by[1], (2 * PER_SENDER) as f64, "delivered per instance: {delivered_by:?}");
}

/// Instance A is SIGKILLed while its batch is at the receiver (unanswered);
/// after A's lease runs out, instance B delivers every event, with the
/// ids A had sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_killed_mid_batch_leaves_its_events_to_another() {
    let db = cluster_db().await;
    let redis = RedisProc::start().await;
    // Every request is left hanging until the kill.
    let recv = Receiver::start_on(0, usize::MAX).await;
    let mut env = cluster_env(&db.url, &redis.url(), &test_prefix());
    let mut vars = HashMap::new();
    webhook_vars(&mut vars, &recv.url(), false);
    // Long enough that A cannot time out and retry before it is killed.
    vars.insert("WEBHOOK_TIMEOUT_MS".into(), "5000".into());
    vars.insert("WEBHOOK_LEASE_MS".into(), "10000".into());
    env.extend(vars);

    let mut gw_a = Gateway::start(&env).await;
    let a = gw_a.app(&db.url).await;
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&ann, "push", &[&bob]).await;
    let mut ca = WsClient::connect(&a, &ann.access).await;
    ca.join(&room, None).await;
    for i in 1..=20 {
        ca.send_msg(&room, &format!("m{i}"), "before the kill").await;
    }
    for _ in 1..=20 {
        ca.next_of("ack").await;
    }
    let first = recv.wait_for("A's batch", |r| !r.is_empty()).await;
    gw_a.kill().await;
    *recv.state.hang.lock().unwrap() = 0;
    let sent_by_a: BTreeSet<String> =
        first.iter().flat_map(|r| &r.events).map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert!(!sent_by_a.is_empty());

    let gw_b = Gateway::start(&env).await;
    let b = gw_b.app(&db.url).await;
    outbox_drained(&b).await;
    let delivered = recv.delivered();
    let seqs: BTreeSet<i64> = delivered.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect(), "every seq is delivered");
    let ids_b: BTreeSet<String> = delivered.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    assert!(sent_by_a.is_subset(&ids_b), "A's events are redelivered under the same ids");
    // Every request, late ones too, signed and keyed.
    recv.requests();
}

/// A receiver that always answers 500: the event is tried
/// `WEBHOOK_MAX_ATTEMPTS` times, then given up (counted) and its row removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_is_given_up_after_its_last_attempt() {
    let recv = Receiver::start().await;
    recv.state.failing.store(true, Ordering::SeqCst);
    let app = spawn_app_with(Db::Sqlite, |v| {
        webhook_vars(v, &recv.url(), false);
        v.insert("WEBHOOK_MAX_ATTEMPTS".into(), "3".into());
    })
    .await;
    let (_, room, mut ca) = ann_writes_to_bob(&app).await;
    ca.send_msg(&room, "m1", "never taken").await;
    ca.next_of("ack").await;
    outbox_drained(&app).await;
    let got = recv.requests();
    assert_eq!(got.len(), 3, "exactly WEBHOOK_MAX_ATTEMPTS tries: {got:?}");
    assert!(got.iter().all(|r| r.events[0]["id"] == got[0].events[0]["id"]));
    assert_eq!(metric(&app, "chatgw_webhook_events_total{outcome=\"given_up\"}").await, 1.0);
    assert_eq!(metric(&app, "chatgw_webhook_requests_total{result=\"http_error\"}").await, 3.0);
}
