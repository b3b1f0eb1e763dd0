//! Clients that survive faults the way a real app does, and count exactly
//! what they got: receivers that reconnect (to another instance) and resume
//! every room with `since_seq`, and senders with an outbox that re-sends
//! every unacknowledged message with the same `client_msg_id`.
//!
//! Nothing is deduplicated on the client side: a seq received twice is a
//! duplicate delivered by the server and is counted; a seq that skips ahead
//! is a gap and is recorded.

#![allow(dead_code)] // a shared toolbox: not every test module uses every helper

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_util::sync::CancellationToken;

use crate::helpers::eventually;

/// The instances clients may connect to; restarted instances come back on
/// new ports, so the list changes during a test.
#[derive(Clone, Default)]
pub struct Addrs(Arc<Mutex<Vec<SocketAddr>>>);

impl Addrs {
    pub fn new(list: Vec<SocketAddr>) -> Addrs {
        Addrs(Arc::new(Mutex::new(list)))
    }
    pub fn set(&self, i: usize, addr: SocketAddr) {
        self.0.lock().unwrap()[i] = addr;
    }
    fn pick(&self, i: usize) -> SocketAddr {
        let l = self.0.lock().unwrap();
        l[i % l.len()]
    }
}

/// What one receiver saw.
#[derive(Default, Debug)]
pub struct Tally {
    /// Seqs per room in arrival order, duplicates excluded (counted below).
    pub got: HashMap<String, Vec<i64>>,
    /// Seqs received again after they had been received.
    pub dups: u64,
    /// Seqs that skipped ahead of the one expected.
    pub gaps: Vec<String>,
    pub connects: u64,
    /// `reconnect_after_ms` of every drain close received.
    pub drain_delays: Vec<u64>,
    /// Close codes received.
    pub closes: Vec<u16>,
    /// The id of a barrier `ping` that [`assert_exactly_once`] asked the
    /// receiver to send (once per connection, after its joins).
    barrier: Option<String>,
    /// The barrier's `pong` came back: every frame the server queued for
    /// the socket before it has been counted.
    barrier_done: bool,
}

impl Tally {
    fn record(&mut self, room: &str, seq: i64) {
        let v = self.got.entry(room.to_owned()).or_default();
        let last = v.last().copied().unwrap_or(0);
        if seq <= last {
            self.dups += 1;
        } else {
            if seq != last + 1 {
                self.gaps.push(format!("room {room}: {seq} after {last}"));
            }
            v.push(seq);
        }
    }

    fn last(&self, room: &str) -> i64 {
        self.got.get(room).and_then(|v| v.last().copied()).unwrap_or(0)
    }

    pub fn count(&self, room: &str) -> usize {
        self.got.get(room).map_or(0, Vec::len)
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, token: &str) -> Option<Ws> {
    let mut req = format!("ws://{addr}/ws").into_client_request().ok()?;
    req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {token}")).ok()?);
    let (mut ws, _) =
        tokio::time::timeout(Duration::from_secs(5), tokio_tungstenite::connect_async(req)).await.ok()?.ok()?;
    // The first frame is hello.
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.ok()?? {
        Ok(Message::Text(t)) if t.contains("\"hello\"") => Some(ws),
        _ => None,
    }
}

/// The delay a drain close asks for, if it is one.
fn drain_delay(code: u16, reason: &str) -> Option<u64> {
    (code == 1001).then(|| reason.split("reconnect_after_ms=").nth(1).and_then(|n| n.trim().parse().ok())).flatten()
}

/// A member who stays in `rooms` whatever happens: on any disconnect it
/// connects to the next instance and resumes each room after the last seq
/// it has. Runs until `stop`.
pub async fn receiver(
    addrs: Addrs,
    first: usize,
    token: String,
    rooms: Vec<String>,
    tally: Arc<Mutex<Tally>>,
    stop: CancellationToken,
) {
    let mut i = first;
    while !stop.is_cancelled() {
        let Some(mut ws) = connect(addrs.pick(i), &token).await else {
            i += 1;
            // Pacing between attempts while an instance is down.
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        tally.lock().unwrap().connects += 1;
        for room in &rooms {
            let since = tally.lock().unwrap().last(room);
            let f = json!({"type": "join", "room": room, "since_seq": since});
            if ws.send(Message::text(f.to_string())).await.is_err() {
                break;
            }
        }
        let mut wait = None;
        // The barrier ping sent on this connection, if any.
        let mut pinged: Option<String> = None;
        let mut look = tokio::time::interval(Duration::from_millis(25));
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = look.tick() => {
                    let want = tally.lock().unwrap().barrier.clone();
                    if let Some(id) = want.filter(|id| pinged.as_ref() != Some(id)) {
                        if ws.send(Message::text(json!({"type": "ping", "id": id}).to_string())).await.is_err() {
                            break;
                        }
                        pinged = Some(id);
                    }
                    continue;
                }
                () = stop.cancelled() => return,
            };
            match msg {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    if v["type"] == "message" {
                        tally.lock().unwrap().record(v["room"].as_str().unwrap(), v["seq"].as_i64().unwrap());
                    } else if v["type"] == "pong" && pinged.is_some() && v["id"].as_str() == pinged.as_deref() {
                        tally.lock().unwrap().barrier_done = true;
                    }
                }
                Some(Ok(Message::Close(f))) => {
                    if let Some(f) = f {
                        let code = u16::from(f.code);
                        let mut t = tally.lock().unwrap();
                        t.closes.push(code);
                        if let Some(d) = drain_delay(code, &f.reason) {
                            t.drain_delays.push(d);
                            wait = Some(Duration::from_millis(d));
                        }
                    }
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            }
        }
        if let Some(d) = wait {
            // Honour the drain's randomised delay, as clients must.
            tokio::time::sleep(d).await;
        }
        i += 1;
    }
}

/// What the senders got acknowledged: `client_msg_id` -> seq.
pub type Acked = Arc<Mutex<BTreeMap<String, i64>>>;

/// How far senders got, and how far they may go: a test holds them back
/// (so traffic is still open when a fault comes, however fast the machine)
/// and reads how many sends were issued (to prove some were in flight).
#[derive(Clone)]
pub struct Flow {
    /// Sends issued (written to a socket the first time), all senders.
    issued: Arc<AtomicUsize>,
    /// How many of its ids each sender may issue.
    allowed: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Flow {
    /// Senders issue everything.
    pub fn open() -> Flow {
        Flow::held_at(usize::MAX)
    }

    /// Each sender issues its first `n` ids, then waits for [`Flow::raise`]
    /// or [`Flow::release`].
    pub fn held_at(n: usize) -> Flow {
        Flow { issued: Arc::default(), allowed: Arc::new(tokio::sync::watch::channel(n).0) }
    }

    /// Lets each sender issue `n` more.
    pub fn raise(&self, n: usize) {
        self.allowed.send_modify(|a| *a = a.saturating_add(n));
    }

    /// Lets every sender issue all its ids.
    pub fn release(&self) {
        self.allowed.send_replace(usize::MAX);
    }

    /// Sends issued so far by all senders on this flow.
    pub fn issued(&self) -> usize {
        self.issued.load(Ordering::SeqCst)
    }
}

/// Sends `ids` to `room` at `pace`, keeping every unacknowledged one in an
/// outbox that is re-sent (same `client_msg_id`) after a reconnect and every
/// second. Ends when all are acknowledged.
pub async fn sender(
    addrs: Addrs,
    first: usize,
    token: String,
    room: String,
    ids: Vec<String>,
    pace: Duration,
    acked: Acked,
) {
    sender_on(addrs, first, token, room, ids, pace, acked, Flow::open()).await;
}

/// [`sender`], issuing only as far as `flow` allows.
#[allow(clippy::too_many_arguments)] // the sender's parameters and its flow
pub async fn sender_on(
    addrs: Addrs,
    first: usize,
    token: String,
    room: String,
    ids: Vec<String>,
    pace: Duration,
    acked: Acked,
    flow: Flow,
) {
    let mut i = first;
    let mut issued = 0usize;
    let mut allowed = flow.allowed.subscribe();
    let done = |acked: &Acked| ids.iter().all(|id| acked.lock().unwrap().contains_key(id));
    while !done(&acked) {
        let Some(mut ws) = connect(addrs.pick(i), &token).await else {
            i += 1;
            // Pacing between attempts while an instance is down (a client's
            // backoff, not a wait for a condition).
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut tick = tokio::time::interval(pace);
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        let mut wait = None;
        'conn: loop {
            let may = issued < ids.len().min(*allowed.borrow());
            tokio::select! {
                _ = tick.tick(), if may => {
                    let id = &ids[issued];
                    issued += 1;
                    flow.issued.fetch_add(1, Ordering::SeqCst);
                    let f = json!({"type": "send", "id": id, "room": room, "client_msg_id": id, "body": format!("body of {id}")});
                    if ws.send(Message::text(f.to_string())).await.is_err() { break 'conn; }
                }
                // Held back: wake when the test lets more go (the flow's
                // sender lives as long as `flow`, so this never errs).
                _ = allowed.changed(), if !may && issued < ids.len() => {}
                _ = retry.tick() => {
                    // The outbox: everything issued and not acknowledged.
                    let pending: Vec<&String> = {
                        let a = acked.lock().unwrap();
                        ids[..issued].iter().filter(|id| !a.contains_key(*id)).collect()
                    };
                    if pending.is_empty() && issued == ids.len() { return; }
                    for id in pending {
                        let f = json!({"type": "send", "id": id, "room": room, "client_msg_id": id, "body": format!("body of {id}")});
                        if ws.send(Message::text(f.to_string())).await.is_err() { break 'conn; }
                    }
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).expect("JSON");
                        if v["type"] == "ack" {
                            let id = v["client_msg_id"].as_str().unwrap().to_owned();
                            let seq = v["seq"].as_i64().unwrap();
                            let prev = acked.lock().unwrap().insert(id.clone(), seq);
                            assert!(prev.is_none_or(|p| p == seq), "{id} acked with two seqs: {prev:?} and {seq}");
                        }
                    }
                    Some(Ok(Message::Close(Some(f)))) => {
                        wait = drain_delay(u16::from(f.code), &f.reason).map(Duration::from_millis);
                        break 'conn;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => break 'conn,
                }
            }
        }
        if let Some(d) = wait {
            tokio::time::sleep(d).await;
        }
        i += 1;
    }
}

/// Waits for sender tasks to end (each ends once all its ids are
/// acknowledged); fails naming the ones still running after `guard`.
pub async fn senders_done(senders: Vec<tokio::task::JoinHandle<()>>, guard: Duration) {
    let end = tokio::time::Instant::now() + guard;
    for (k, s) in senders.into_iter().enumerate() {
        match tokio::time::timeout_at(end, s).await {
            Ok(r) => r.expect("sender task"),
            Err(_) => panic!("sender {k} still had unacknowledged sends after {guard:?}"),
        }
    }
}

/// Waits until every receiver has `expected` messages in `room`, or the
/// guard runs out; then closes the count with a barrier on every socket (a
/// `ping` answered by its `pong`: the server writes what it queued for a
/// socket before it answers the socket's next frame), so a re-delivery that
/// arrives after the last new seq is counted; then checks each got exactly
/// 1..=expected, in order, with no duplicate and no gap.
pub async fn assert_exactly_once(tallies: &[Arc<Mutex<Tally>>], room: &str, expected: usize, guard: Duration) {
    let all_done = || tallies.iter().all(|t| t.lock().unwrap().count(room) >= expected);
    // Polled with a deadline; on timeout the assertions below say what is
    // missing, which `eventually` would not.
    let _ = tokio::time::timeout(guard, async {
        while !all_done() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    if all_done() {
        for t in tallies {
            let mut t = t.lock().unwrap();
            t.barrier = Some(uuid::Uuid::new_v4().simple().to_string());
            t.barrier_done = false;
        }
        let barrier = tokio::time::timeout(guard, async {
            while !tallies.iter().all(|t| t.lock().unwrap().barrier_done) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let late: Vec<usize> = (0..tallies.len()).filter(|k| !tallies[*k].lock().unwrap().barrier_done).collect();
        assert!(barrier.is_ok(), "receivers {late:?}: no pong to the barrier ping within {guard:?}");
    }
    let want: Vec<i64> = (1..=expected as i64).collect();
    for (k, t) in tallies.iter().enumerate() {
        let t = t.lock().unwrap();
        assert_eq!(t.dups, 0, "receiver {k}: {} duplicate deliveries", t.dups);
        assert!(t.gaps.is_empty(), "receiver {k}: gaps {:?}", t.gaps);
        let got = t.got.get(room).cloned().unwrap_or_default();
        assert_eq!(got.len(), want.len(), "receiver {k}: {} of {expected} messages of {room}", got.len());
        assert_eq!(got, want, "receiver {k}: every message once, in order");
    }
}

/// Waits until every id is acknowledged (the guard fails the test).
pub async fn all_acked(acked: &Acked, n: usize, guard: Duration) {
    eventually(guard, || async { (acked.lock().unwrap().len() >= n).then_some(()) }).await;
}
