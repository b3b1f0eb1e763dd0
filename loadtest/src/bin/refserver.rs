//! `refserver`: a deliberately minimal WebSocket broadcast server, used as the
//! **benchmark baseline** for the chatgw gateway.
//!
//! It does "the bare minimum" a chat fan-out server must do, and speaks the
//! same frames as gateway protocol v1 (`protocol/README.md`, sections 4-5), so
//! the same load client drives both and we can compare server CPU per
//! delivered message.
//!
//! What it does: accept WebSockets on any path, send `hello`, handle
//! `join` / `leave` / `send` / `ping`, allocate a per-room `seq` under a
//! `std::sync::Mutex`, and fan each `message` out to every subscribed socket
//! (serialized once, shared as a cheap-to-clone `Utf8Bytes`).
//!
//! What it deliberately omits: authentication, membership checks, storage /
//! persistence, replay (`since_seq` is ignored), duplicate detection, rate
//! limits, validation and `error` frames (bad input is silently ignored),
//! heartbeats and idle timeouts, `typing` / `read` handling, metrics, and any
//! write batching: each connection has an unbounded queue and a writer task
//! that does one write + flush per frame, with default tungstenite buffers.
//!
//! Two test aids, both off by default (the benchmark path is unchanged):
//!
//! * **Several listeners** (`--listen` repeated) sharing one set of rooms: a
//!   stand-in for a gateway cluster with a perfect bus. One line
//!   `refserver listening on ws://ADDR` per listener is printed, in order.
//! * **Misbehaviour**, to check the harness's accounting: for every message
//!   and every recipient, with a per-room RNG seeded from `--seed` and the
//!   room name, the server drops it (`--drop-permille`), sends it twice in a
//!   row (`--dup-permille`), or swaps it with the next message delivered to
//!   the same recipient in the same room (`--swap-permille`: the message is
//!   held and sent right after that next one; if none comes within
//!   `--swap-hold-ms` it goes out in order and is counted as `held_in_order`,
//!   not as a swap; held when the connection ends, it is counted as
//!   `held_lost`). The three are exclusive per (message, recipient). What it
//!   did is counted and, with `--stats-file`, written there as JSON on exit
//!   (SIGTERM / Ctrl-C), after the open connections have ended (at most 10 s),
//!   and printed to stderr.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Result, bail};
use clap::Parser;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Minimal reference WebSocket broadcast server (benchmark baseline)")]
struct Args {
    /// Address to listen on (port 0 picks a free port). Repeat for several
    /// listeners sharing the same rooms (a stand-in for a cluster).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: Vec<SocketAddr>,
    /// Drop this many per 1000 (message, recipient) deliveries.
    #[arg(long, default_value_t = 0)]
    drop_permille: u32,
    /// Send this many per 1000 (message, recipient) deliveries twice.
    #[arg(long, default_value_t = 0)]
    dup_permille: u32,
    /// Swap this many per 1000 (message, recipient) deliveries with the next
    /// message to the same recipient in the same room.
    #[arg(long, default_value_t = 0)]
    swap_permille: u32,
    /// Seed of the misbehaviour RNG (combined with the room name).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How long a message held for a swap waits for the next one (ms)
    /// before it is sent in order.
    #[arg(long, default_value_t = 100)]
    swap_hold_ms: u64,
    /// On exit, write what the server did (connections per listener,
    /// messages, deliveries, drops, duplicates, swaps) here as JSON.
    #[arg(long)]
    stats_file: Option<PathBuf>,
}

/// What the server does to one (message, recipient).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Action {
    Deliver,
    Drop,
    Dup,
    Swap,
}

/// Misbehaviour settings, in permille.
#[derive(Clone, Copy)]
struct Misbehave {
    drop: u32,
    dup: u32,
    swap: u32,
    seed: u64,
    hold: Duration,
}

impl Misbehave {
    fn decide(&self, rng: &mut StdRng) -> Action {
        let x = rng.gen_range(0..1000);
        if x < self.drop {
            Action::Drop
        } else if x < self.drop + self.dup {
            Action::Dup
        } else if x < self.drop + self.dup + self.swap {
            Action::Swap
        } else {
            Action::Deliver
        }
    }
}

/// What the server did (and saw).
#[derive(Default)]
struct Stats {
    /// WebSocket connections accepted, per listener.
    connections: Vec<AtomicU64>,
    /// Connections not yet ended.
    open: AtomicU64,
    /// Messages allocated a seq (accepted `send`s).
    messages: AtomicU64,
    // Counted only when misbehaving:
    /// Message frames written to sockets (a duplicate counts twice).
    delivered: AtomicU64,
    dropped: AtomicU64,
    duplicated: AtomicU64,
    /// Held messages sent right after a later message of the same room.
    swapped: AtomicU64,
    /// Held messages sent in order (no later message within the hold time,
    /// or the recipient left the room).
    held_in_order: AtomicU64,
    /// Held messages never sent (the connection ended first).
    held_lost: AtomicU64,
}

impl Stats {
    fn to_json(&self, listeners: &[String], misbehaving: bool) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "listeners": listeners,
            "connections": self.connections.iter().map(n).collect::<Vec<_>>(),
            "messages": n(&self.messages),
            "misbehaving": misbehaving,
            // Counted by the misbehaving writer only.
            "delivered": misbehaving.then(|| n(&self.delivered)),
            "dropped": n(&self.dropped),
            "duplicated": n(&self.duplicated),
            "swapped": n(&self.swapped),
            "held_in_order": n(&self.held_in_order),
            "held_lost": n(&self.held_lost),
        })
    }
}

/// A frame queued for one connection's writer.
enum Out {
    /// Anything but a room message; `flush` first sends the message held for
    /// that room, if any (a `left` must not overtake it).
    Frame { frame: Message, flush: Option<Arc<str>> },
    /// A room message (misbehaving mode only); `hold`: swap it with the next.
    Msg { room: Arc<str>, frame: Message, hold: bool },
}

fn frame(m: Message) -> Out {
    Out::Frame { frame: m, flush: None }
}

/// One room: its last allocated seq and its subscribers (connection id → queue).
#[derive(Default)]
struct Room {
    seq: u64,
    subs: HashMap<u64, UnboundedSender<Out>>,
    /// Misbehaving mode: the room's RNG and its name, shared by its messages.
    rng: Option<(StdRng, Arc<str>)>,
}

/// Room id → room. The outer lock is held only to look a room up; all
/// per-room work happens under that room's own lock.
type Rooms = Mutex<HashMap<String, Arc<Mutex<Room>>>>;

struct Server {
    rooms: Rooms,
    misbehave: Option<Misbehave>,
    stats: Stats,
}

impl Server {
    fn room(&self, name: &str) -> Arc<Mutex<Room>> {
        let mut map = self.rooms.lock().unwrap();
        map.entry(name.to_owned())
            .or_insert_with(|| {
                let rng = self.misbehave.map(|m| (StdRng::seed_from_u64(m.seed ^ fnv1a(name)), Arc::from(name)));
                Arc::new(Mutex::new(Room { rng, ..Default::default() }))
            })
            .clone()
    }
}

/// FNV-1a: a stable hash of the room name for its RNG seed.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Serializes a reply frame, copying the request's `id` verbatim if it had one.
fn reply(mut frame: Value, id: Option<&Value>) -> Message {
    if let Some(id) = id {
        frame["id"] = id.clone();
    }
    Message::text(frame.to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (d, u, s) = (args.drop_permille, args.dup_permille, args.swap_permille);
    if d + u + s > 1000 {
        bail!("--drop-permille + --dup-permille + --swap-permille must not exceed 1000");
    }
    let misbehave = (d + u + s > 0).then_some(Misbehave {
        drop: d,
        dup: u,
        swap: s,
        seed: args.seed,
        hold: Duration::from_millis(args.swap_hold_ms),
    });
    let mut listeners = Vec::new();
    for addr in &args.listen {
        listeners.push(TcpListener::bind(addr).await?);
    }
    let server = Arc::new(Server {
        rooms: Mutex::default(),
        misbehave,
        stats: Stats { connections: listeners.iter().map(|_| AtomicU64::new(0)).collect(), ..Default::default() },
    });
    let mut stdout = tokio::io::stdout();
    let mut urls = Vec::new();
    for l in &listeners {
        urls.push(format!("ws://{}", l.local_addr()?));
    }
    for url in &urls {
        stdout.write_all(format!("refserver listening on {url}\n").as_bytes()).await?;
    }
    stdout.flush().await?;

    let next_conn = Arc::new(AtomicU64::new(1));
    for (i, listener) in listeners.into_iter().enumerate() {
        let (server, next_conn) = (server.clone(), next_conn.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let _ = stream.set_nodelay(true);
                let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(stream, conn, i, server.clone()));
            }
        });
    }
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = sigterm.recv() => {}
    }
    if args.stats_file.is_some() || server.misbehave.is_some() {
        // Let the connections end (their clients have gone) so that what
        // happened to their last held messages is counted.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while server.stats.open.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let stats = server.stats.to_json(&urls, server.misbehave.is_some());
        if let Some(p) = &args.stats_file {
            std::fs::write(p, serde_json::to_vec_pretty(&stats)?)?;
        }
        eprintln!("refserver stats: {stats}");
    }
    Ok(())
}

async fn connection(stream: TcpStream, conn: u64, listener: usize, server: Arc<Server>) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    server.stats.connections[listener].fetch_add(1, Ordering::Relaxed);
    server.stats.open.fetch_add(1, Ordering::Relaxed);
    let (ws_tx, mut ws_rx) = ws.split();
    let (tx, rx) = unbounded_channel::<Out>();

    // Writer: one `send` (write + flush) per frame, no coalescing.
    let writer = match server.misbehave {
        None => tokio::spawn(write_plain(ws_tx, rx)),
        Some(m) => tokio::spawn(write_misbehaving(ws_tx, rx, m.hold, server.clone())),
    };

    let user = format!("conn-{conn}");
    let hello = json!({
        "type": "hello", "protocol": 1, "session_id": "ref", "user_id": user,
        "heartbeat_ms": 25000, "idle_timeout_ms": 60000, "token_expires_at": 0,
        "limits": {
            "max_frame_bytes": 65536, "max_body_bytes": 65536,
            "send_per_sec": 1_000_000, "send_burst": 1_000_000,
            "events_per_sec": 1_000_000, "events_burst": 1_000_000,
        },
    });
    let _ = tx.send(frame(reply(hello, None)));

    let mut joined: HashSet<String> = HashSet::new();
    // Runs until the peer closes (tungstenite answers the close handshake) or errors.
    while let Some(Ok(msg)) = ws_rx.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(frame_in) = serde_json::from_str::<Value>(&text) else { continue };
        let id = frame_in.get("id");
        let room_name = frame_in.get("room").and_then(Value::as_str);
        match (frame_in.get("type").and_then(Value::as_str), room_name) {
            (Some("join"), Some(r)) => {
                let room = server.room(r);
                let mut room = room.lock().unwrap();
                room.subs.insert(conn, tx.clone());
                // Queued under the room lock, so `joined` precedes any later message.
                let joined_frame = json!({"type": "joined", "room": r, "last_seq": room.seq, "replayed": 0});
                let _ = tx.send(frame(reply(joined_frame, id)));
                joined.insert(r.to_owned());
            }
            (Some("leave"), Some(r)) => {
                server.room(r).lock().unwrap().subs.remove(&conn);
                joined.remove(r);
                let left = reply(json!({"type": "left", "room": r, "reason": "requested"}), id);
                let _ = tx.send(Out::Frame { frame: left, flush: Some(Arc::from(r)) });
            }
            (Some("send"), Some(r)) => {
                let (Some(body), Some(cmid)) = (frame_in.get("body"), frame_in.get("client_msg_id")) else {
                    continue;
                };
                let room = server.room(r);
                let (seq, sent_at) = {
                    let mut room = room.lock().unwrap();
                    room.seq += 1;
                    let (seq, sent_at) = (room.seq, now_ms());
                    let message = json!({
                        "type": "message", "room": r, "seq": seq, "sender": user,
                        "body": body, "client_msg_id": cmid, "sent_at": sent_at,
                    });
                    // Serialized once; each clone shares the same bytes.
                    let message = Message::text(message.to_string());
                    match &server.misbehave {
                        None => {
                            for sub in room.subs.values() {
                                let _ = sub.send(frame(message.clone()));
                            }
                        }
                        Some(m) => fan_out_misbehaving(&mut room, m, &message, &server.stats),
                    }
                    (seq, sent_at)
                };
                server.stats.messages.fetch_add(1, Ordering::Relaxed);
                let ack = json!({
                    "type": "ack", "room": r, "client_msg_id": cmid, "seq": seq,
                    "sent_at": sent_at, "duplicate": false,
                });
                let _ = tx.send(frame(reply(ack, id)));
            }
            (Some("ping"), _) => {
                let _ = tx.send(frame(reply(json!({"type": "pong"}), id)));
            }
            _ => {} // typing, read, unknown or malformed: ignored.
        }
    }

    for r in &joined {
        server.room(r).lock().unwrap().subs.remove(&conn);
    }
    drop(tx); // Last sender gone: the writer drains its queue and exits.
    let _ = writer.await;
    server.stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// Decides, per subscriber, what happens to `message` (under the room lock,
/// so each room's decisions follow its seq order).
fn fan_out_misbehaving(room: &mut Room, m: &Misbehave, message: &Message, stats: &Stats) {
    let Some((rng, name)) = room.rng.as_mut() else { return };
    for sub in room.subs.values() {
        let msg = |hold| Out::Msg { room: name.clone(), frame: message.clone(), hold };
        match m.decide(rng) {
            Action::Deliver => {
                let _ = sub.send(msg(false));
            }
            Action::Drop => {
                stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Action::Dup => {
                stats.duplicated.fetch_add(1, Ordering::Relaxed);
                let _ = sub.send(msg(false));
                let _ = sub.send(msg(false));
            }
            Action::Swap => {
                let _ = sub.send(msg(true));
            }
        }
    }
}

type WsTx = SplitSink<WebSocketStream<TcpStream>, Message>;

/// The baseline writer: one write + flush per frame.
async fn write_plain(mut ws_tx: WsTx, mut rx: UnboundedReceiver<Out>) {
    while let Some(out) = rx.recv().await {
        let (Out::Frame { frame, .. } | Out::Msg { frame, .. }) = out;
        if ws_tx.send(frame).await.is_err() {
            break;
        }
    }
}

/// The misbehaving writer: holds a message marked for a swap until the next
/// message of the same room for this connection has been sent (or
/// `hold` has passed, or the room is left), and counts what it wrote.
async fn write_misbehaving(mut ws_tx: WsTx, mut rx: UnboundedReceiver<Out>, hold: Duration, server: Arc<Server>) {
    let stats = &server.stats;
    let mut held: HashMap<Arc<str>, (Message, tokio::time::Instant)> = HashMap::new();
    let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
    'run: loop {
        let due = held.values().map(|(_, t)| *t).min();
        let out = tokio::select! {
            out = rx.recv() => match out {
                Some(out) => out,
                None => break 'run,
            },
            () = tokio::time::sleep_until(due.unwrap_or(far)), if due.is_some() => {
                // No partner in time: out in order, not a swap.
                let now = tokio::time::Instant::now();
                let expired: Vec<Arc<str>> = held.iter().filter(|(_, (_, t))| *t <= now).map(|(r, _)| r.clone()).collect();
                for r in expired {
                    let Some((m, _)) = held.remove(&r) else { continue };
                    if ws_tx.send(m).await.is_err() {
                        stats.held_lost.fetch_add(1, Ordering::Relaxed);
                        break 'run;
                    }
                    stats.held_in_order.fetch_add(1, Ordering::Relaxed);
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
        };
        match out {
            Out::Frame { frame, flush } => {
                if let Some((m, _)) = flush.and_then(|r| held.remove(&r)) {
                    if ws_tx.send(m).await.is_err() {
                        stats.held_lost.fetch_add(1, Ordering::Relaxed);
                        break 'run;
                    }
                    stats.held_in_order.fetch_add(1, Ordering::Relaxed);
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
                if ws_tx.send(frame).await.is_err() {
                    break 'run;
                }
            }
            // Nothing held in this room yet: hold this one. (A swap decided
            // while one is already held just makes this the partner.)
            Out::Msg { room, frame, hold: true } if !held.contains_key(&room) => {
                held.insert(room, (frame, tokio::time::Instant::now() + hold));
            }
            Out::Msg { room, frame, .. } => {
                if ws_tx.send(frame).await.is_err() {
                    break 'run;
                }
                stats.delivered.fetch_add(1, Ordering::Relaxed);
                if let Some((m, _)) = held.remove(&room) {
                    if ws_tx.send(m).await.is_err() {
                        stats.held_lost.fetch_add(1, Ordering::Relaxed);
                        break 'run;
                    }
                    stats.swapped.fetch_add(1, Ordering::Relaxed);
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    stats.held_lost.fetch_add(held.len() as u64, Ordering::Relaxed);
}
