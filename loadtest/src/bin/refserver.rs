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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
#[command(about = "Minimal reference WebSocket broadcast server (benchmark baseline)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: SocketAddr,
}

/// One room: its last allocated seq and its subscribers (connection id → queue).
#[derive(Default)]
struct Room {
    seq: u64,
    subs: HashMap<u64, UnboundedSender<Message>>,
}

/// Room id → room. The outer lock is held only to look a room up; all
/// per-room work happens under that room's own lock.
type Rooms = Arc<Mutex<HashMap<String, Arc<Mutex<Room>>>>>;

fn room(rooms: &Rooms, name: &str) -> Arc<Mutex<Room>> {
    let mut map = rooms.lock().unwrap();
    map.entry(name.to_owned()).or_default().clone()
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
    let listener = TcpListener::bind(args.listen).await?;
    let mut stdout = tokio::io::stdout();
    let line = format!("refserver listening on ws://{}\n", listener.local_addr()?);
    stdout.write_all(line.as_bytes()).await?;
    stdout.flush().await?;

    let rooms: Rooms = Arc::default();
    let next_conn = AtomicU64::new(1);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let conn = next_conn.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(connection(stream, conn, rooms.clone()));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = sigterm.recv() => break,
        }
    }
    Ok(())
}

async fn connection(stream: TcpStream, conn: u64, rooms: Rooms) {
    let Ok(ws) = tokio_tungstenite::accept_async(stream).await else { return };
    let (mut ws_tx, mut ws_rx) = ws.split();
    let (tx, mut rx) = unbounded_channel::<Message>();

    // Writer: one `send` (write + flush) per frame, no coalescing.
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if ws_tx.send(frame).await.is_err() {
                break;
            }
        }
    });

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
    let _ = tx.send(reply(hello, None));

    let mut joined: HashSet<String> = HashSet::new();
    // Runs until the peer closes (tungstenite answers the close handshake) or errors.
    while let Some(Ok(msg)) = ws_rx.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(frame) = serde_json::from_str::<Value>(&text) else { continue };
        let id = frame.get("id");
        let room_name = frame.get("room").and_then(Value::as_str);
        match (frame.get("type").and_then(Value::as_str), room_name) {
            (Some("join"), Some(r)) => {
                let room = room(&rooms, r);
                let mut room = room.lock().unwrap();
                room.subs.insert(conn, tx.clone());
                // Queued under the room lock, so `joined` precedes any later message.
                let joined_frame = json!({"type": "joined", "room": r, "last_seq": room.seq, "replayed": 0});
                let _ = tx.send(reply(joined_frame, id));
                joined.insert(r.to_owned());
            }
            (Some("leave"), Some(r)) => {
                room(&rooms, r).lock().unwrap().subs.remove(&conn);
                joined.remove(r);
                let _ = tx.send(reply(json!({"type": "left", "room": r, "reason": "requested"}), id));
            }
            (Some("send"), Some(r)) => {
                let (Some(body), Some(cmid)) = (frame.get("body"), frame.get("client_msg_id")) else {
                    continue;
                };
                let room = room(&rooms, r);
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
                    for sub in room.subs.values() {
                        let _ = sub.send(message.clone());
                    }
                    (seq, sent_at)
                };
                let ack = json!({
                    "type": "ack", "room": r, "client_msg_id": cmid, "seq": seq,
                    "sent_at": sent_at, "duplicate": false,
                });
                let _ = tx.send(reply(ack, id));
            }
            (Some("ping"), _) => {
                let _ = tx.send(reply(json!({"type": "pong"}), id));
            }
            _ => {} // typing, read, unknown or malformed: ignored.
        }
    }

    for r in &joined {
        room(&rooms, r).lock().unwrap().subs.remove(&conn);
    }
    drop(tx); // Last sender gone: the writer drains its queue and exits.
    let _ = writer.await;
}
