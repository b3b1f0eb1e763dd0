//! One simulated client speaking protocol v1: connection (optionally from a
//! chosen 127.0.0.x source address), frame I/O, and per-room delivery
//! accounting by seq.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// Where and how to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// `ws://host:port/ws`; host must be a loopback address.
    pub url: String,
    pub addr: SocketAddr,
}

impl Target {
    /// Parses a `ws://` URL and refuses anything that is not loopback: this
    /// harness never sends load anywhere else.
    pub fn parse(url: &str) -> anyhow::Result<Target> {
        let rest = url.strip_prefix("ws://").context("only ws:// URLs are supported")?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = hostport
            .replace("localhost", "127.0.0.1")
            .parse()
            .with_context(|| format!("{hostport}: need an IP:port"))?;
        if !addr.ip().is_loopback() {
            bail!("{addr}: only loopback targets are allowed");
        }
        let url = if rest.contains('/') { url.to_owned() } else { format!("{url}/ws") };
        Ok(Target { url, addr })
    }
}

/// Unix time in nanoseconds: senders stamp it into bodies, receivers
/// subtract (same machine, same clock).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// A body of `size` bytes carrying its send time.
pub fn stamped_body(size: usize) -> String {
    let mut b = format!("t={};", now_ns());
    while b.len() < size {
        b.push('x');
    }
    b
}

/// The send time in a body made by [`stamped_body`].
pub fn body_time(body: &str) -> Option<u64> {
    body.strip_prefix("t=")?.split(';').next()?.parse().ok()
}

pub type Ws = WebSocketStream<TcpStream>;

/// Why a connection attempt failed (for the report).
pub fn failure_reason(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    if let Some(i) = s.find("HTTP error: ") {
        return s[i..].chars().take(40).collect();
    }
    if s.contains("Address already in use") || s.contains("Cannot assign requested address") {
        return "no free source port".into();
    }
    if s.contains("Connection refused") {
        return "connection refused".into();
    }
    if s.contains("Too many open files") {
        return "fd limit".into();
    }
    s.chars().take(60).collect()
}

/// Opens a socket (from `source` if given) and upgrades it.
pub async fn connect(target: &Target, token: Option<&str>, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let mut req = target.url.as_str().into_client_request()?;
    if let Some(t) = token {
        req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {t}"))?);
    }
    // Small buffers: the harness holds up to 100k sockets itself.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (ws, _) = client_async_with_config(req, stream, Some(config)).await?;
    Ok(ws)
}

/// Sends one JSON frame.
pub async fn send(ws: &mut Ws, v: &Value) -> anyhow::Result<()> {
    ws.send(Message::text(v.to_string())).await?;
    Ok(())
}

/// What a client observed, merged into the report at the end.
#[derive(Default, Debug)]
pub struct Observed {
    /// (second since start, latency in µs) of every delivery.
    pub samples: Vec<(u32, u32)>,
    pub deliveries: u64,
    pub duplicates: u64,
    pub reordered: u64,
    pub acks: u64,
    pub errors: HashMap<String, u64>,
    pub closes: HashMap<String, u64>,
    /// Per room: the seq after which this client expects everything, and the
    /// seqs it has seen.
    pub rooms: HashMap<String, RoomView>,
    pub sends: u64,
    pub reconnects: u64,
}

/// One client's view of one room.
#[derive(Default, Debug, Clone)]
pub struct RoomView {
    pub baseline: i64,
    pub seen: std::collections::BTreeSet<i64>,
    pub max_seen: i64,
}

impl Observed {
    /// Accounts one frame; returns it parsed.
    pub fn on_frame(&mut self, text: &str, start_ns: u64) -> Option<Value> {
        let v: Value = serde_json::from_str(text).ok()?;
        match v["type"].as_str() {
            Some("message") => {
                let room = v["room"].as_str().unwrap_or_default();
                let seq = v["seq"].as_i64().unwrap_or(0);
                let Some(view) = self.rooms.get_mut(room) else { return Some(v) };
                if seq <= view.baseline || !view.seen.insert(seq) {
                    if seq > view.baseline {
                        self.duplicates += 1;
                    }
                    return Some(v);
                }
                if seq < view.max_seen {
                    self.reordered += 1;
                }
                view.max_seen = view.max_seen.max(seq);
                self.deliveries += 1;
                if let Some(t) = v["body"].as_str().and_then(body_time) {
                    let now = now_ns();
                    let sec = (now.saturating_sub(start_ns) / 1_000_000_000) as u32;
                    let lat_us = (now.saturating_sub(t) / 1000).min(u32::MAX as u64) as u32;
                    self.samples.push((sec, lat_us));
                }
            }
            Some("ack") => self.acks += 1,
            Some("error") => *self.errors.entry(v["code"].as_str().unwrap_or("?").to_owned()).or_default() += 1,
            _ => {}
        }
        Some(v)
    }

    /// Records a close (code, or how the connection ended).
    pub fn on_close(&mut self, what: &str) {
        *self.closes.entry(what.to_owned()).or_default() += 1;
    }
}

/// Waits for `joined` of `room`, accounting replayed messages on the way.
pub async fn join(
    ws: &mut Ws,
    obs: &mut Observed,
    room: &str,
    since: Option<i64>,
    start_ns: u64,
) -> anyhow::Result<i64> {
    let mut f = json!({"type": "join", "room": room});
    if let Some(s) = since {
        f["since_seq"] = json!(s);
    }
    send(ws, &f).await?;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("join timed out")?;
        match msg {
            Some(Ok(Message::Text(t))) => {
                let Some(v) = obs.on_frame(&t, start_ns) else { continue };
                match v["type"].as_str() {
                    Some("joined") if v["room"] == room => return Ok(v["last_seq"].as_i64().unwrap_or(0)),
                    Some("error") => bail!("join refused: {}", v["code"]),
                    _ => {}
                }
            }
            Some(Ok(Message::Close(f))) => bail!("closed during join: {:?}", f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended during join"),
        }
    }
}
