//! A real WebSocket client speaking protocol v1, for the tests. Every frame
//! it receives is validated against `protocol/schemas` (conformance).

#![allow(dead_code)] // a shared toolbox: not every test module uses every helper

use std::collections::{HashMap, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

use crate::helpers::TestApp;

/// How long a test waits for a frame before failing (a guard, not a
/// measurement).
pub const GUARD: Duration = Duration::from_secs(20);

type Stream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The per-type schemas, compiled once.
fn schemas() -> &'static HashMap<String, jsonschema::Validator> {
    static S: OnceLock<HashMap<String, jsonschema::Validator>> = OnceLock::new();
    S.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/schemas");
        let mut m = HashMap::new();
        for entry in std::fs::read_dir(dir).expect("protocol/schemas exists") {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            // Only per-type schemas (client.join, server.ack, ...).
            if name.matches('.').count() != 1 {
                continue;
            }
            let schema: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            m.insert(name, jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{path:?}: {e}")));
        }
        m
    })
}

/// Asserts `frame` conforms to the schema of its direction and type.
pub fn assert_conforms(direction: &str, frame: &Value) {
    let ty = frame["type"].as_str().unwrap_or_else(|| panic!("frame without type: {frame}"));
    let key = format!("{direction}.{ty}");
    let v = schemas().get(&key).unwrap_or_else(|| panic!("no schema {key}.json for {frame}"));
    let errors: Vec<String> = v.iter_errors(frame).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{key} frame does not conform: {frame}\n{errors:?}");
}

/// A connected client.
pub struct WsClient {
    pub ws: Stream,
    pub hello: Value,
    /// Per-user stream frames (`room_added`, `room_removed`,
    /// `room_updated`, `room_seq`), which arrive unsolicited: kept apart so
    /// tests of other features never see them (read with
    /// [`WsClient::next_user_event`]).
    user_events: VecDeque<Value>,
    /// Other frames read while waiting for a user-stream frame, returned
    /// first by [`WsClient::next_or_close`].
    pending: VecDeque<Value>,
}

/// The frame types of the per-user stream.
pub const USER_EVENTS: [&str; 4] = ["room_added", "room_removed", "room_updated", "room_seq"];

/// How a connection attempt ended.
pub enum Refused {
    Http(u16, Value),
}

impl WsClient {
    pub async fn connect(app: &TestApp, token: &str) -> WsClient {
        Self::try_connect(app, Some(token), None, None)
            .await
            .unwrap_or_else(|Refused::Http(s, b)| panic!("refused {s}: {b}"))
    }

    /// Connects with a bearer token, a ticket and/or an Origin.
    pub async fn try_connect(
        app: &TestApp,
        token: Option<&str>,
        ticket: Option<&str>,
        origin: Option<&str>,
    ) -> Result<WsClient, Refused> {
        let url = match ticket {
            Some(t) => format!("ws://{}/ws?ticket={t}", app.addr),
            None => format!("ws://{}/ws", app.addr),
        };
        let mut req = url.into_client_request().unwrap();
        if let Some(t) = token {
            req.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {t}")).unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("origin", HeaderValue::from_str(o).unwrap());
        }
        match connect_async(req).await {
            Ok((ws, _)) => {
                let mut c = WsClient::new(ws);
                let hello = c.next().await;
                assert_eq!(hello["type"], "hello", "first frame is hello");
                c.hello = hello;
                Ok(c)
            }
            Err(WsError::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().as_ref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
                Err(Refused::Http(status, body))
            }
            Err(e) => panic!("connect failed: {e}"),
        }
    }

    /// A client on an open stream, before its `hello` is read.
    pub fn new(ws: Stream) -> WsClient {
        WsClient { ws, hello: Value::Null, user_events: VecDeque::new(), pending: VecDeque::new() }
    }

    /// The next per-user stream frame (schema-checked like every frame);
    /// other frames read meanwhile stay queued for [`WsClient::next`].
    pub async fn next_user_event(&mut self) -> Value {
        match self.next_user_event_within(GUARD).await {
            Some(v) => v,
            None => panic!("no per-user stream frame within {GUARD:?}"),
        }
    }

    /// Like [`WsClient::next_user_event`], `None` when none comes within
    /// `wait` (a guard for probes, not a measurement).
    pub async fn next_user_event_within(&mut self, wait: Duration) -> Option<Value> {
        let end = tokio::time::Instant::now() + wait;
        loop {
            if let Some(v) = self.user_events.pop_front() {
                return Some(v);
            }
            let msg = tokio::time::timeout_at(end, self.ws.next()).await.ok()?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some(v) = self.parse_frame(&t) {
                        self.pending.push_back(v);
                    }
                }
                Some(Ok(Message::Close(f))) => panic!("closed while waiting for a per-user frame: {f:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("socket error while waiting for a per-user frame: {e}"),
                None => panic!("socket ended while waiting for a per-user frame"),
            }
        }
    }

    /// The per-user stream frames received so far and not yet read.
    pub fn take_user_events(&mut self) -> Vec<Value> {
        self.user_events.drain(..).collect()
    }

    /// Parses and schema-checks a server frame; diverts user-stream frames
    /// and returns the others.
    fn parse_frame(&mut self, text: &str) -> Option<Value> {
        let v: Value = serde_json::from_str(text).expect("server frames are JSON");
        assert_conforms("server", &v);
        if v["type"].as_str().is_some_and(|t| USER_EVENTS.contains(&t)) {
            self.user_events.push_back(v);
            return None;
        }
        Some(v)
    }

    pub async fn send(&mut self, frame: Value) {
        self.ws.send(Message::text(frame.to_string())).await.expect("send frame");
    }

    pub async fn send_raw(&mut self, msg: Message) {
        self.ws.send(msg).await.expect("send raw");
    }

    /// The next text frame, parsed and schema-checked. Panics on close.
    pub async fn next(&mut self) -> Value {
        match self.next_or_close().await {
            Ok(v) => v,
            Err((code, reason)) => panic!("closed {code}: {reason}"),
        }
    }

    /// The next text frame, or the close code and reason.
    pub async fn next_or_close(&mut self) -> Result<Value, (u16, String)> {
        if let Some(v) = self.pending.pop_front() {
            return Ok(v);
        }
        loop {
            let msg = tokio::time::timeout(GUARD, self.ws.next()).await.expect("a frame within the guard time");
            match msg {
                Some(Ok(Message::Text(t))) => {
                    if let Some(v) = self.parse_frame(&t) {
                        return Ok(v);
                    }
                }
                Some(Ok(Message::Close(Some(f)))) => return Err((u16::from(f.code), f.reason.to_string())),
                Some(Ok(Message::Close(None))) | None => return Err((1005, String::new())),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err((1006, e.to_string())),
            }
        }
    }

    /// Reads until the server closes; returns the code and reason, with
    /// the frames seen before it.
    pub async fn until_close(&mut self) -> (u16, String, Vec<Value>) {
        let mut seen = Vec::new();
        loop {
            match self.next_or_close().await {
                Ok(v) => seen.push(v),
                Err((code, reason)) => return (code, reason, seen),
            }
        }
    }

    /// The next frame that can answer a request: presence, typing and read
    /// broadcasts, which arrive on their own schedule, are skipped.
    pub async fn next_reply(&mut self) -> Value {
        loop {
            let v = self.next().await;
            if !matches!(v["type"].as_str(), Some("presence" | "typing" | "read")) {
                return v;
            }
        }
    }

    /// Next frame of the given type, skipping presence/typing/read noise.
    pub async fn next_of(&mut self, ty: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["type"] == ty {
                return v;
            }
            assert!(
                matches!(
                    v["type"].as_str(),
                    Some("presence" | "typing" | "read" | "message" | "edit" | "delete" | "ack")
                ),
                "unexpected frame while waiting for {ty}: {v}"
            );
        }
    }

    /// Sends a ping with a unique id and returns every frame received before
    /// its pong: the sentinel that proves nothing else is pending.
    pub async fn drain_until_pong(&mut self) -> Vec<Value> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        self.send(json!({"type": "ping", "id": id})).await;
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            if v["type"] == "pong" && v["id"] == id.as_str() {
                return seen;
            }
            seen.push(v);
        }
    }

    pub async fn join(&mut self, room: &str, since_seq: Option<i64>) -> (Vec<Value>, Value) {
        let mut f = json!({"type": "join", "id": "j", "room": room});
        if let Some(s) = since_seq {
            f["since_seq"] = json!(s);
        }
        assert_conforms("client", &f);
        self.send(f).await;
        let mut replayed = Vec::new();
        loop {
            let v = self.next().await;
            match v["type"].as_str() {
                Some("joined") if v["room"] == room => return (replayed, v),
                // The room's stream: messages and change events.
                Some("message" | "edit" | "delete") if v["room"] == room => replayed.push(v),
                Some("presence" | "typing" | "read" | "message" | "edit" | "delete" | "ack") => {}
                _ => panic!("unexpected frame during join: {v}"),
            }
        }
    }

    pub async fn send_msg(&mut self, room: &str, client_msg_id: &str, body: &str) {
        let f = json!({"type": "send", "room": room, "client_msg_id": client_msg_id, "body": body});
        assert_conforms("client", &f);
        self.send(f).await;
    }

    pub async fn close(mut self) {
        let _ = self
            .ws
            .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await;
    }
}
