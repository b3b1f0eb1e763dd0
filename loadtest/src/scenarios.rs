//! The scenarios: traffic (fanout, chat, reconnect), idle, connect-storm.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::{Barrier, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Observed, RoomView, Target, Ws};

/// One simulated client: who connects, as what, where, to which rooms.
#[derive(Clone, Debug, Default)]
pub struct Client {
    /// Position in the unsplit population: the same in every shard (it names
    /// client_msg_ids and picks the source address).
    pub index: usize,
    /// Index into [`Ctx::targets`].
    pub target: usize,
    /// Bearer token (`None`: the reference server, no auth).
    pub token: Option<String>,
    pub rooms: Vec<String>,
    /// Sends messages (traffic scenarios); otherwise it only receives.
    pub sender: bool,
}

/// This process's clients (its shard of the population).
pub struct Population {
    pub clients: Vec<Client>,
}

/// Where a traffic run is. Clients wait for `Run` before sending, stop
/// sending at `StopSending`, and read what is still in flight from `Drain`
/// on. A single process goes straight from `StopSending` to `Drain`; shards
/// meet in between, so no receiver drains before every sender has stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Setup,
    Run,
    StopSending,
    Drain,
}

/// Shared knobs of a run.
pub struct Ctx {
    pub targets: Vec<Target>,
    /// Unique per run: client_msg_ids must not repeat across runs with the
    /// same seeded users, or the gateway (rightly) treats sends as retries.
    pub run_id: u32,
    /// Spread client sockets over 127.0.0.1 ..= 127.0.0.N.
    pub source_ips: u8,
    /// t0 of the timeline (Unix ns): the start of the measured window, the
    /// same instant in every shard.
    pub start_ns: AtomicU64,
    pub sends: AtomicU64,
    pub deliveries: AtomicU64,
    pub connected: AtomicUsize,
    /// Connected clients per target.
    pub connected_by_target: Vec<AtomicUsize>,
}

impl Ctx {
    fn target(&self, c: &Client) -> &Target {
        &self.targets[c.target]
    }
    fn source(&self, c: &Client) -> Option<IpAddr> {
        (self.source_ips > 1)
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (c.index % self.source_ips as usize) as u8)))
    }
    pub fn start_ns(&self) -> u64 {
        self.start_ns.load(Ordering::Relaxed)
    }
    fn on_connected(&self, c: &Client) {
        self.connected.fetch_add(1, Ordering::Relaxed);
        self.connected_by_target[c.target].fetch_add(1, Ordering::Relaxed);
    }
}

/// How a traffic client behaves.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Mean interval between this client's sends (`None`: never sends).
    pub send_every: Option<Duration>,
    pub body_bytes: usize,
    /// Chat extras: typing, read markers, leave/rejoin.
    pub chatty: bool,
    /// Mean interval between forced reconnects (`None`: never).
    pub reconnect_every: Option<Duration>,
    /// After the stop signal, keep reading this long for stragglers.
    pub drain: Duration,
}

/// Runs one traffic client to the end and returns what it saw. `b` says how
/// often it sends; a receiver's `b.send_every` is `None`.
pub async fn traffic_client(
    ctx: Arc<Ctx>,
    c: Client,
    b: Behaviour,
    ready: Arc<Barrier>,
    mut phase: watch::Receiver<Phase>,
) -> (Observed, HashMap<String, i64>) {
    let (i, token, rooms) = (c.index, c.token.clone(), c.rooms.clone());
    let mut obs = Observed::default();
    let mut acked: HashMap<String, i64> = HashMap::new();
    let setup = async {
        let mut ws = client::connect(ctx.target(&c), token.as_deref(), ctx.source(&c)).await?;
        for room in &rooms {
            let base = client::join(&mut ws, &mut obs, room, None, ctx.start_ns()).await?;
            obs.rooms.insert(room.clone(), RoomView { baseline: base, max_seen: base, ..Default::default() });
        }
        anyhow::Ok(ws)
    };
    let ws = setup.await;
    ready.wait().await;
    let mut ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            obs.on_close(&format!("connect: {}", client::failure_reason(&e)));
            return (obs, acked);
        }
    };
    ctx.on_connected(&c);
    // Every client of every shard is connected and joined before anyone sends.
    let _ = phase.wait_for(|p| *p >= Phase::Run).await;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let jitter = |rng: &mut rand::rngs::StdRng, d: Duration| d.mul_f64(rng.gen_range(0.5..1.5));
    let mut next_send = b.send_every.map(|d| tokio::time::Instant::now() + d.mul_f64(rng.gen_range(0.0..1.0)));
    let mut next_reconnect = b.reconnect_every.map(|d| tokio::time::Instant::now() + jitter(&mut rng, d));
    let mut pending: HashMap<String, (String, String)> = HashMap::new();
    let mut n = 0u64;
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400);
    loop {
        match *phase.borrow_and_update() {
            Phase::Setup | Phase::Run => {}
            Phase::StopSending => (next_send, next_reconnect) = (None, None),
            Phase::Drain => break,
        }
        tokio::select! {
            changed = phase.changed() => if changed.is_err() { break },
            () = tokio::time::sleep_until(next_send.unwrap_or(far)), if next_send.is_some() => {
                let room = &rooms[rng.gen_range(0..rooms.len())];
                let cmid = format!("{:x}-{i}-{n}", ctx.run_id);
                n += 1;
                let body = client::stamped_body(b.body_bytes);
                if client::send(&mut ws, &json!({"type": "send", "room": room, "client_msg_id": cmid, "body": body})).await.is_err() {
                    obs.on_close("write failed");
                    break;
                }
                pending.insert(cmid, (room.clone(), body));
                obs.sends += 1;
                ctx.sends.fetch_add(1, Ordering::Relaxed);
                if b.chatty {
                    let r = rng.gen_range(0..10);
                    let room = &rooms[rng.gen_range(0..rooms.len())];
                    let frame = match r {
                        0..=2 => Some(json!({"type": "typing", "room": room})),
                        3..=4 => Some(json!({"type": "read", "room": room, "seq": obs.rooms.get(room).map(|v| v.max_seen).unwrap_or(0)})),
                        5 => {
                            // Leave, wait for `left` (messages still in flight
                            // arrive before it), then rejoin with resume.
                            let _ = client::send(&mut ws, &json!({"type": "leave", "room": room})).await;
                            if !wait_left(&ctx, &mut ws, room, &mut obs, &mut acked, &mut pending).await {
                                return (obs, acked);
                            }
                            let since = obs.rooms.get(room).map(|v| v.max_seen).unwrap_or(0);
                            if client::join(&mut ws, &mut obs, room, Some(since), ctx.start_ns()).await.is_err() {
                                obs.on_close("rejoin failed");
                                break;
                            }
                            None
                        }
                        _ => None,
                    };
                    if let Some(f) = frame {
                        let _ = client::send(&mut ws, &f).await;
                    }
                }
                next_send = b.send_every.map(|d| tokio::time::Instant::now() + jitter(&mut rng, d));
            }
            () = tokio::time::sleep_until(next_reconnect.unwrap_or(far)), if next_reconnect.is_some() => {
                // Drop abruptly, reconnect, resume every room, re-send what
                // was not acknowledged (same client_msg_id).
                drop(ws);
                obs.reconnects += 1;
                match reconnect(&ctx, &c, &rooms, &mut obs).await {
                    Ok(new) => ws = new,
                    Err(e) => {
                        obs.on_close(&format!("reconnect: {}", client::failure_reason(&e)));
                        return (obs, acked);
                    }
                }
                for (cmid, (room, body)) in &pending {
                    let _ = client::send(&mut ws, &json!({"type": "send", "room": room, "client_msg_id": cmid, "body": body})).await;
                }
                next_reconnect = b.reconnect_every.map(|d| tokio::time::Instant::now() + jitter(&mut rng, d));
            }
            msg = ws.next() => {
                if !on_msg(&ctx, msg, &mut obs, &mut acked, &mut pending) { return (obs, acked); }
            }
        }
    }
    if !drain(&ctx, &mut ws, b.drain, &mut obs, &mut acked, &mut pending).await {
        return (obs, acked);
    }
    let _ = ws.close(None).await;
    (obs, acked)
}

/// Drain: reads what is still in flight until the socket has been quiet
/// for `quiet_for` (a backlog is late, not lost), at most 60 s. False when
/// the socket ended on the way.
async fn drain(
    ctx: &Ctx,
    ws: &mut Ws,
    quiet_for: Duration,
    obs: &mut Observed,
    acked: &mut HashMap<String, i64>,
    pending: &mut HashMap<String, (String, String)>,
) -> bool {
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let quiet = (tokio::time::Instant::now() + quiet_for).min(end);
        match tokio::time::timeout_at(quiet, ws.next()).await {
            Ok(msg) => {
                if !on_msg(ctx, msg, obs, acked, pending) {
                    return false;
                }
            }
            Err(_) => return true,
        }
    }
}

/// Reads until `left` for `room`, accounting everything on the way.
async fn wait_left(
    ctx: &Ctx,
    ws: &mut Ws,
    room: &str,
    obs: &mut Observed,
    acked: &mut HashMap<String, i64>,
    pending: &mut HashMap<String, (String, String)>,
) -> bool {
    loop {
        let msg = match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
            Ok(m) => m,
            Err(_) => {
                obs.on_close("leave timed out");
                return false;
            }
        };
        if let Some(Ok(Message::Text(t))) = &msg
            && t.contains("\"left\"")
            && serde_json::from_str::<serde_json::Value>(t).is_ok_and(|v| v["type"] == "left" && v["room"] == room)
        {
            return true;
        }
        if !on_msg(ctx, msg, obs, acked, pending) {
            return false;
        }
    }
}

type WsItem = Option<Result<Message, tokio_tungstenite::tungstenite::Error>>;

/// Accounts one incoming item; `false` when the connection ended.
fn on_msg(
    ctx: &Ctx,
    msg: WsItem,
    obs: &mut Observed,
    acked: &mut HashMap<String, i64>,
    pending: &mut HashMap<String, (String, String)>,
) -> bool {
    match msg {
        Some(Ok(Message::Text(t))) => {
            let before = obs.deliveries;
            if let Some(v) = obs.on_frame(&t, ctx.start_ns())
                && v["type"] == "ack"
            {
                let room = v["room"].as_str().unwrap_or_default().to_owned();
                let seq = v["seq"].as_i64().unwrap_or(0);
                let e = acked.entry(room).or_default();
                *e = (*e).max(seq);
                pending.remove(v["client_msg_id"].as_str().unwrap_or_default());
            }
            ctx.deliveries.fetch_add(obs.deliveries - before, Ordering::Relaxed);
            true
        }
        Some(Ok(Message::Close(f))) => {
            obs.on_close(&f.map(|f| u16::from(f.code).to_string()).unwrap_or_else(|| "no code".into()));
            false
        }
        Some(Ok(_)) => true,
        Some(Err(e)) => {
            obs.on_close(&format!("io: {}", e.to_string().chars().take(40).collect::<String>()));
            false
        }
        None => {
            obs.on_close("eof");
            false
        }
    }
}

async fn reconnect(ctx: &Ctx, c: &Client, rooms: &[String], obs: &mut Observed) -> anyhow::Result<Ws> {
    let mut ws = client::connect(ctx.target(c), c.token.as_deref(), ctx.source(c)).await?;
    for room in rooms {
        let since = obs.rooms.get(room).map(|v| v.max_seen).unwrap_or(0);
        client::join(&mut ws, obs, room, Some(since), ctx.start_ns()).await?;
    }
    Ok(ws)
}

/// Holds idle connections (answering heartbeats) until `stop`.
pub async fn idle_client(
    ctx: Arc<Ctx>,
    c: Client,
    permits: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Observed {
    let mut obs = Observed::default();
    let permit = permits.acquire_owned().await;
    let ws = client::connect(ctx.target(&c), c.token.as_deref(), ctx.source(&c)).await;
    drop(permit);
    let mut ws = match ws {
        Ok(ws) => ws,
        Err(e) => {
            obs.on_close(&format!("connect: {}", client::failure_reason(&e)));
            return obs;
        }
    };
    ctx.on_connected(&c);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Close(f))) => {
                    obs.on_close(&f.map(|f| u16::from(f.code).to_string()).unwrap_or_default());
                    return obs;
                }
                Some(Ok(_)) => {}
                _ => {
                    obs.on_close("eof");
                    return obs;
                }
            }
        }
    }
    let _ = ws.close(None).await;
    obs
}

/// Opens `n` sockets as fast as the gateway accepts them (at most
/// `concurrency` handshakes in flight); returns (elapsed, failures).
pub async fn connect_storm(
    ctx: Arc<Ctx>,
    pop: &Population,
    concurrency: usize,
) -> (Duration, HashMap<String, u64>, Vec<Ws>) {
    let sem = Arc::new(Semaphore::new(concurrency));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(pop.clients.len());
    for c in pop.clients.iter().cloned() {
        let (ctx, sem) = (ctx.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire_owned().await;
            let r = client::connect(ctx.target(&c), c.token.as_deref(), ctx.source(&c)).await;
            if r.is_ok() {
                ctx.on_connected(&c);
            }
            r
        }));
    }
    let mut failures: HashMap<String, u64> = HashMap::new();
    let mut open = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(ws)) => open.push(ws),
            Ok(Err(e)) => *failures.entry(client::failure_reason(&e)).or_default() += 1,
            Err(_) => *failures.entry("task panicked".into()).or_default() += 1,
        }
    }
    (start.elapsed(), failures, open)
}
