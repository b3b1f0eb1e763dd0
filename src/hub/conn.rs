//! One socket: a single task that reads requests and writes its queue.
//!
//! A single task (rather than a reader and a writer) keeps the replay/live
//! seam of `join` simple: while a replay is written, the live queue simply
//! waits, and afterwards everything at or below the replayed seq is skipped.
//! Writes race the connection's kill switch, so a socket whose peer stopped
//! reading can always be cut off.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::Instrument;

use super::sequencer::{self, Admit};
use super::{ConnShared, Hub, Outbound};
use crate::auth::TokenError;
use crate::clock::now_ms;
use crate::db::{AppendOutcome, DbError, Deleter, NewKind, NewMessage};
use crate::metrics::Local;
use crate::net::ClientAddr;
use crate::protocol::Heartbeat;
use crate::protocol::{self, ClientFrame, ErrorCode, Resume, ServerFrame, close, error_frame, message_frame};
use crate::state::AppState;

/// Who the handshake authenticated.
pub struct Authenticated {
    pub user_id: String,
    pub session_id: String,
    /// Unix milliseconds when the credential expires.
    pub expires_at: i64,
}

/// Messages written per replay page.
const REPLAY_PAGE: i64 = 500;
/// Queued frames written before one flush (write coalescing).
const WRITE_BATCH: usize = 64;

/// A send waiting for its commit: request id, room, client_msg_id, when it
/// was received, and the outcome.
type PendingAck = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = (Option<Box<RawValue>>, String, String, Instant, Result<AppendOutcome, DbError>),
            > + Send,
    >,
>;

struct Conn {
    hub: Hub,
    state: AppState,
    shared: Arc<ConnShared>,
    ws: WebSocket,
    /// Joined rooms and the last seq written to the socket for each.
    joined: HashMap<Arc<str>, i64>,
    send_limit: DefaultDirectRateLimiter,
    event_limit: DefaultDirectRateLimiter,
    strikes: u32,
    expires_at: i64,
    last_seen: Instant,
    /// Frames read and written, for the close log line.
    frames_in: u64,
    frames_out: u64,
    /// Fan-out latency counted here and folded into the shared histogram
    /// now and then (boxed and made on the first message: idle sockets do
    /// not carry it).
    fanout: Option<Box<Local>>,
    /// Chosen at the handshake (`?heartbeat=app`).
    heartbeat: Heartbeat,
    /// App pings sent and not yet answered: that many `pong`s are free of
    /// the rate budget (bounded: silence closes the socket at the idle
    /// timeout).
    pings_outstanding: u16,
}

/// Why the loop ended.
enum End {
    /// Close with this code and reason.
    Close(u16, String),
    /// The socket broke or the hub let go of it: nothing more to send.
    Gone(Option<u16>),
    /// The peer sent a close frame (with this code, if it gave one): our
    /// answer is queued and still to be written.
    ClosedByPeer(Option<u16>),
}

fn quota(per_sec: u32, burst: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_sec.max(1)).unwrap_or(NonZeroU32::MIN))
        .allow_burst(NonZeroU32::new(burst.max(1)).unwrap_or(NonZeroU32::MIN))
}

/// Registers one connection and returns its task, which runs until the
/// connection ends, in a span carrying its id, user (never its
/// credential) and client address: every line it logs names both. (Not an `async fn`: its
/// arguments would stay in the task beside `serve`'s copies, and every idle
/// socket carries its task.)
pub fn run(
    ws: WebSocket,
    state: AppState,
    who: Authenticated,
    place: OwnedSemaphorePermit,
    client: ClientAddr,
    heartbeat: Heartbeat,
) -> impl std::future::Future<Output = ()> + Send {
    let (shared, rx) = state.hub.register(&who.user_id, &who.session_id);
    // `client` lives in the span only, not in the task.
    let span = tracing::info_span!("conn", conn_id = shared.id, user_id = %shared.user, client = %client);
    serve(ws, state, who, place, shared, rx, heartbeat).instrument(span)
}

async fn serve(
    ws: WebSocket,
    state: AppState,
    who: Authenticated,
    _place: OwnedSemaphorePermit,
    shared: Arc<ConnShared>,
    rx: mpsc::Receiver<Outbound>,
    heartbeat: Heartbeat,
) {
    let hub = state.hub.clone();
    let opened = Instant::now();
    tracing::info!(session_id = %shared.session(), "connected");
    // Before hello: from then on the socket hears `room_seq` for every
    // room of the user (one query, for the user's first socket here).
    Box::pin(hub.load_user_rooms(&shared.user)).await;
    let limits = &hub.settings().limits;
    let mut conn = Conn {
        send_limit: RateLimiter::direct_with_clock(quota(limits.send_per_sec, limits.send_burst), hub.clock().clone()),
        event_limit: RateLimiter::direct_with_clock(
            quota(limits.events_per_sec, limits.events_burst),
            hub.clock().clone(),
        ),
        hub: hub.clone(),
        state,
        shared: shared.clone(),
        ws,
        joined: HashMap::new(),
        strikes: 0,
        expires_at: who.expires_at,
        last_seen: Instant::now(),
        frames_in: 0,
        frames_out: 0,
        fanout: None,
        heartbeat,
        pings_outstanding: 0,
    };
    let end = conn.run(rx).await;
    let rooms: Vec<Arc<str>> = conn.joined.keys().cloned().collect();
    hub.unregister(&shared, rooms);
    let duration_ms = opened.elapsed().as_millis() as u64;
    let (frames_in, frames_out) = (conn.frames_in, conn.frames_out);
    match end {
        End::Close(code, reason) => {
            hub.metrics().ws_closes.inc(&code.to_string());
            tracing::info!(code, reason = %reason, by = "server", duration_ms, frames_in, frames_out, "closed");
            let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
            // Best effort, 2 s in all: the peer may be gone or not reading.
            // Then the closing handshake (RFC 6455 5.5.1): read until the
            // peer's Close, discarding. A socket dropped with unread input is
            // reset, and the reset can destroy the close frame before the
            // client reads it: a client flooding us (4008) or sending junk
            // (1007, 1009) would see 1006 instead of the code that says why.
            // Only for the closes a client's own sending causes: an idle, a
            // slow or a drained peer is not worth holding the task for.
            let handshake = matches!(code, close::RATE_LIMIT | close::TOO_BIG | close::INVALID_UTF8);
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                if conn.ws.send(Message::Close(Some(frame))).await.is_ok() && handshake {
                    while let Some(Ok(msg)) = conn.ws.recv().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                }
            })
            .await;
        }
        End::Gone(code) => {
            tracing::info!(code, by = "peer", duration_ms, frames_in, frames_out, "closed");
        }
        End::ClosedByPeer(code) => {
            tracing::info!(code, by = "peer", duration_ms, frames_in, frames_out, "closed");
            // RFC 6455 5.5.1: answer the peer's Close. tungstenite queued
            // the answer (the peer's code echoed) on reading it; only a
            // write or flush sends it, and without one the client sees the
            // connection drop (1006) instead of its clean close. Bounded
            // as the server's own close is.
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.ws.flush()).await;
        }
    }
}

impl Conn {
    async fn run(&mut self, mut rx: mpsc::Receiver<Outbound>) -> End {
        let settings = self.hub.settings().clone();
        let now = now_ms();
        let features = protocol::features(settings.push_enabled(), settings.limits.edit_window_ms > 0);
        let hello = ServerFrame::Hello {
            protocol: protocol::PROTOCOL,
            session_id: &self.shared.session(),
            user_id: &self.shared.user,
            heartbeat_ms: settings.heartbeat.as_millis() as u64,
            idle_timeout_ms: settings.idle_timeout.as_millis() as u64,
            token_expires_at: self.expires_at,
            limits: &settings.limits,
            protocol_version: protocol::PROTOCOL_VERSION,
            features: &features,
            heartbeat: self.heartbeat.as_str(),
            server_time: now,
            token_expires_in_ms: self.expires_at - now,
        }
        .encode();
        if self.write(hello).await.is_err() {
            return End::Gone(None);
        }
        // Made on the first send: a socket that only listens does not carry
        // the pending-acks set.
        let mut acks: Option<FuturesUnordered<PendingAck>> = None;
        // One timer for the heartbeat and the token's expiry, whichever is
        // due first; moved only at a heartbeat or when `auth` renews the
        // token (re-arming a timer on every loop turn costs a timer-wheel
        // update per frame, and a second timer a second poll per wake-up).
        let mut next_beat = tokio::time::Instant::now() + settings.heartbeat;
        let mut expires = deadline_of(self.expires_at);
        let timer = sleep_until(next_beat.min(expires));
        tokio::pin!(timer);
        let mut armed_for = self.expires_at;
        // Not borrowed from `self`: the select's other arms need it mutably.
        let shared = self.shared.clone();
        loop {
            if armed_for != self.expires_at {
                armed_for = self.expires_at;
                expires = deadline_of(armed_for);
                timer.as_mut().reset(next_beat.min(expires));
            }
            tokio::select! {
                biased;
                () = shared.kill.cancelled() => return self.on_killed(&mut rx).await,
                item = rx.recv() => {
                    let Some(item) = item else { return End::Gone(None) };
                    if let Err(end) = self.write_queue(item, &mut rx, &shared).await { return end; }
                }
                Some((id, room, cmid, received, res)) = next_ack(&mut acks), if acks.as_ref().is_some_and(|a| !a.is_empty()) => {
                    let frame = self.ack_frame(id.as_deref(), &room, &cmid, res);
                    if self.write(frame).await.is_err() { return End::Gone(None); }
                    self.hub.metrics().persist_seconds.observe(received.elapsed().as_secs_f64());
                }
                msg = self.ws.recv() => {
                    self.last_seen = Instant::now();
                    match msg {
                        None => return End::Gone(None),
                        Some(Ok(Message::Close(frame))) => return End::ClosedByPeer(frame.map(|f| f.code)),
                        Some(Ok(Message::Text(text))) => {
                            self.frames_in += 1;
                            // Boxed: request handling (join, replay, auth) is
                            // a large future that an idle socket need not carry.
                            let acks = acks.get_or_insert_with(FuturesUnordered::new);
                            if let Some(end) = Box::pin(self.on_text(&text, acks)).await { return end; }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            self.frames_in += 1;
                            self.hub.metrics().frames_in.inc("invalid");
                            let f = self.error(None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames", None, None);
                            if self.write(f).await.is_err() { return End::Gone(None); }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                        Some(Err(e)) => return self.on_read_error(e).await,
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= expires {
                        let f = self.error(None, ErrorCode::TokenExpired, "access token expired; renew with an auth frame before token_expires_at", None, None);
                        let _ = self.write(f).await;
                        return End::Close(close::AUTH, "token expired".into());
                    }
                    next_beat = now + settings.heartbeat;
                    timer.as_mut().reset(next_beat.min(expires));
                    if let Some(f) = &mut self.fanout {
                        f.fold(self.hub.metrics().fanout_seconds.now_ns());
                    }
                    if self.last_seen.elapsed() > settings.idle_timeout {
                        return End::Close(close::IDLE, "idle timeout".into());
                    }
                    // App mode: a text ping instead of the control frame,
                    // which apps on iOS, OkHttp and browsers never see.
                    let beat = match self.heartbeat {
                        Heartbeat::Ws => self.ws.send(Message::Ping(Default::default())).await,
                        Heartbeat::App => {
                            self.pings_outstanding = self.pings_outstanding.saturating_add(1);
                            self.write(Utf8Bytes::from_static(protocol::APP_PING)).await
                        }
                    };
                    if beat.is_err() { return End::Gone(None); }
                }
            }
        }
    }

    /// Closed from outside: at drain, flush what is queued first.
    async fn on_killed(&mut self, rx: &mut mpsc::Receiver<Outbound>) -> End {
        let (code, reason) = self.shared.close_request();
        if code == close::GOING_AWAY {
            while let Ok(item) = rx.try_recv() {
                let now = self.hub.metrics().fanout_seconds.now_ns();
                let flushed = tokio::time::timeout(Duration::from_secs(2), self.write_one(item, now)).await;
                if !matches!(flushed, Ok(Ok(()))) {
                    break;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.flush()).await;
        }
        End::Close(code, reason)
    }

    async fn on_read_error(&mut self, e: axum::Error) -> End {
        let text = e.to_string();
        if text.contains("Space limit exceeded")
            || text.contains("too long")
            || text.contains("Message too big")
            || text.contains("size")
        {
            End::Close(close::TOO_BIG, "frame too large".into())
        } else if text.to_ascii_lowercase().contains("utf-8") {
            End::Close(close::INVALID_UTF8, "invalid UTF-8".into())
        } else {
            End::Gone(None)
        }
    }

    /// Writes one queued item and up to [`WRITE_BATCH`] more that are ready,
    /// then flushes once: several frames, one syscall. `shared` is this
    /// connection's own (a clone the writes do not borrow from `self`).
    async fn write_queue(
        &mut self,
        first: Outbound,
        rx: &mut mpsc::Receiver<Outbound>,
        shared: &ConnShared,
    ) -> Result<(), End> {
        if shared.kill.is_cancelled() {
            let (code, reason) = shared.close_request();
            return Err(End::Close(code, reason));
        }
        // The write first: one that completes at once (the usual case) never
        // looks at the switch; one that waits on a peer that stopped reading
        // is cut off by it.
        let res = tokio::select! {
            biased;
            r = async {
                // One clock read per batch: the frames of a batch are written
                // by the same flush.
                let now = self.hub.metrics().fanout_seconds.now_ns();
                self.feed_item(first, now).await?;
                for _ in 0..WRITE_BATCH {
                    match rx.try_recv() {
                        Ok(item) => self.feed_item(item, now).await?,
                        Err(_) => break,
                    }
                }
                self.ws.flush().await
            } => r,
            () = shared.kill.cancelled() => {
                let (code, reason) = shared.close_request();
                return Err(End::Close(code, reason));
            }
        };
        res.map_err(|_| End::Gone(None))
    }

    async fn write_one(&mut self, item: Outbound, now_ns: u64) -> Result<(), axum::Error> {
        self.feed_item(item, now_ns).await?;
        self.ws.flush().await
    }

    /// Feeds one item (without flushing), applying the per-room seq filter;
    /// `now_ns` is the batch's time on the fan-out histogram's clock.
    async fn feed_item(&mut self, item: Outbound, now_ns: u64) -> Result<(), axum::Error> {
        match item {
            Outbound::Message(d) => {
                let Some(last) = self.joined.get(&d.room) else { return Ok(()) };
                match sequencer::admit(*last, d.seq) {
                    Admit::Stale => return Ok(()),
                    Admit::Next => {}
                    Admit::AfterReplay { after } => {
                        // A gap (the room orders delivery, but gives up on a
                        // gap storage could not fill): fill it from storage
                        // rather than skip messages. Boxed: the rare path
                        // must not grow every idle task.
                        Box::pin(self.replay(&d.room, after, Some(d.seq))).await?;
                    }
                }
                if let Some(last) = self.joined.get_mut(&d.room) {
                    *last = d.seq;
                }
                self.frames_out += 1;
                let metrics = self.hub.metrics();
                self.fanout
                    .get_or_insert_with(|| Box::new(Local::new(&metrics.fanout_seconds)))
                    .observe(d.ready_ns, now_ns);
                self.ws.feed(Message::Text(d.frame.clone())).await
            }
            Outbound::Event(frame) => {
                self.frames_out += 1;
                self.ws.feed(Message::Text((*frame).clone())).await
            }
            Outbound::Left(left) => {
                let (room, reason) = &*left;
                if self.joined.remove(room).is_none() {
                    return Ok(());
                }
                self.frames_out += 1;
                self.hub.metrics().frames_out.inc("left");
                self.ws.feed(Message::Text(ServerFrame::Left { id: None, room, reason }.encode())).await
            }
            Outbound::RoomSeq(moved) => {
                // A joined room's messages say more than its last seq.
                if self.joined.contains_key(&moved.room) {
                    return Ok(());
                }
                self.frames_out += 1;
                self.hub.metrics().frames_out.inc("room_seq");
                self.ws.feed(Message::Text(moved.frame.clone())).await
            }
        }
    }

    async fn write(&mut self, frame: Utf8Bytes) -> Result<(), axum::Error> {
        let gone = || axum::Error::new(std::io::Error::other("connection killed"));
        if self.shared.kill.is_cancelled() {
            return Err(gone());
        }
        self.frames_out += 1;
        self.hub.metrics().frames_out.inc(protocol::kind_of(&frame));
        let shared = self.shared.clone();
        tokio::select! {
            biased;
            () = shared.kill.cancelled() => Err(gone()),
            r = self.ws.send(Message::Text(frame)) => r,
        }
    }

    fn error(
        &self,
        id: Option<&RawValue>,
        code: ErrorCode,
        message: &str,
        room: Option<&str>,
        retry: Option<u64>,
    ) -> Utf8Bytes {
        self.hub.metrics().ws_errors.with_label_values(&[code.as_str()]).inc();
        error_frame(id, code, message, room, retry)
    }

    /// Handles one text frame; `Some` ends the connection.
    async fn on_text(&mut self, text: &str, acks: &mut FuturesUnordered<PendingAck>) -> Option<End> {
        let (id, frame) = match protocol::parse(text, self.hub.settings().limits.max_body_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.hub.metrics().frames_in.inc("invalid");
                let f = self.error(e.id.as_deref(), e.code, &e.message, e.room.as_deref(), None);
                return self.write(f).await.err().map(|_| End::Gone(None));
            }
        };
        self.hub.metrics().frames_in.inc(frame.kind());
        // The answer to one of our app pings is free; any other pong pays
        // like every frame, so pongs cannot flood for free.
        if frame == ClientFrame::Pong && self.pings_outstanding > 0 {
            self.pings_outstanding -= 1;
            return None;
        }
        // Rate limits: writes (sends, edits, deletes) and everything else
        // have separate budgets.
        let is_send = matches!(frame, ClientFrame::Send { .. } | ClientFrame::Edit { .. } | ClientFrame::Delete { .. });
        let limiter = if is_send { &self.send_limit } else { &self.event_limit };
        if let Err(not_until) = limiter.check() {
            self.hub.metrics().rate_limited.inc(if is_send { "send" } else { "event" });
            self.strikes += 1;
            if self.strikes > self.hub.settings().abuse_strikes {
                return Some(End::Close(close::RATE_LIMIT, "rate limit abuse".into()));
            }
            let wait = not_until.wait_time_from(governor::clock::Clock::now(self.hub.clock()));
            let f = self.error(
                id.as_deref(),
                ErrorCode::RateLimited,
                "too many frames; retry later",
                None,
                Some(wait.as_millis().max(1) as u64),
            );
            return self.write(f).await.err().map(|_| End::Gone(None));
        }
        self.strikes = 0;
        let id = id.as_deref();
        let reply = match frame {
            ClientFrame::Ping => ServerFrame::Pong { id }.encode(),
            // Unsolicited: counted against the budget above, no answer.
            ClientFrame::Pong => return None,
            ClientFrame::Join(entry) => {
                let done = match self.resume(id, std::slice::from_ref(&entry)).await {
                    Ok(_) => self.ws.flush().await,
                    Err(e) => Err(e),
                };
                return done.err().map(|_| End::Gone(None));
            }
            ClientFrame::Sync { rooms } => {
                let max = self.hub.settings().limits.max_sync_rooms;
                if rooms.len() > max {
                    let msg = format!("at most {max} rooms per sync (limits.max_sync_rooms); split it");
                    self.error(id, ErrorCode::LimitExceeded, &msg, None, None)
                } else {
                    match self.resume(None, &rooms).await {
                        Ok((joined, failed)) => {
                            ServerFrame::Synced { id, rooms: rooms.len() as u64, joined, failed }.encode()
                        }
                        Err(_) => return Some(End::Gone(None)),
                    }
                }
            }
            ClientFrame::Leave { room } => {
                let room: Arc<str> = Arc::from(room);
                if self.joined.remove(&room).is_some() {
                    self.hub.unsubscribe(&self.shared, &room);
                }
                ServerFrame::Left { id, room: &room, reason: "requested" }.encode()
            }
            ClientFrame::Send { room, body, client_msg_id } => {
                self.submit(id, room, body, client_msg_id, NewKind::Message, acks).await;
                return None;
            }
            ClientFrame::Edit { room, target_seq, body, client_msg_id } => {
                let window_ms = self.hub.settings().limits.edit_window_ms as i64;
                self.submit(id, room, body, client_msg_id, NewKind::Edit { target_seq, window_ms }, acks).await;
                return None;
            }
            ClientFrame::Delete { room, target_seq, client_msg_id } => {
                let kind = NewKind::Delete { target_seq, by: Deleter::Member };
                self.submit(id, room, String::new(), client_msg_id, kind, acks).await;
                return None;
            }
            ClientFrame::Typing { room } => {
                if !self.joined.contains_key(room.as_str()) {
                    self.not_joined(id, &room)
                } else {
                    let f = ServerFrame::Typing { room: &room, user: &self.shared.user }.encode();
                    self.hub.broadcast(&room, f, Some(self.shared.id));
                    return None;
                }
            }
            ClientFrame::Read { room, seq } => {
                if !self.joined.contains_key(room.as_str()) {
                    self.not_joined(id, &room)
                } else {
                    match self.state.store.set_read_marker(&room, &self.shared.user, seq).await {
                        Ok(stored) => {
                            let f = ServerFrame::Read { room: &room, user: &self.shared.user, seq: stored }.encode();
                            self.hub.broadcast(&room, f, None);
                            return None;
                        }
                        Err(e) => self.db_error(id, &room, e),
                    }
                }
            }
            ClientFrame::Auth { token } => self.renew(id, &token).await,
        };
        self.write(reply).await.err().map(|_| End::Gone(None))
    }

    /// `typing`/`read` need the room joined on this socket; membership is
    /// not looked up (a non-member gets the same answer, and `forbidden`
    /// when it tries to join).
    fn not_joined(&self, id: Option<&RawValue>, room: &str) -> Utf8Bytes {
        self.error(id, ErrorCode::NotJoined, "join the room on this socket first", Some(room), None)
    }

    /// Queues a send, edit or delete for the committer; its `ack` (or
    /// error) is written when the commit resolves.
    async fn submit(
        &mut self,
        id: Option<&RawValue>,
        room: String,
        body: String,
        client_msg_id: String,
        kind: NewKind,
        acks: &mut FuturesUnordered<PendingAck>,
    ) {
        let msg = NewMessage {
            room_id: room.clone(),
            sender_id: self.shared.user.to_string(),
            client_msg_id: client_msg_id.clone(),
            body,
            sent_at: now_ms(),
            kind,
        };
        let rx: oneshot::Receiver<_> = self.hub.submit(msg).await;
        let id = id.map(ToOwned::to_owned);
        // Set when this frame was read: the start of the persist latency,
        // at no extra clock read.
        let received = self.last_seen;
        acks.push(Box::pin(async move {
            let res = rx.await.unwrap_or(Err(DbError::Unavailable(sqlx::Error::PoolClosed)));
            (id, room, client_msg_id, received, res)
        }));
    }

    fn db_error(&self, id: Option<&RawValue>, room: &str, e: DbError) -> Utf8Bytes {
        tracing::warn!(error = %e, "storage error on socket request");
        self.hub.metrics().db_errors.inc("ws");
        self.error(id, ErrorCode::Unavailable, "storage temporarily unavailable; retry", Some(room), None)
    }

    fn ack_frame(
        &self,
        id: Option<&RawValue>,
        room: &str,
        cmid: &str,
        res: Result<AppendOutcome, DbError>,
    ) -> Utf8Bytes {
        match res {
            Ok(AppendOutcome::Stored(m)) => {
                ServerFrame::Ack { id, room, client_msg_id: cmid, seq: m.seq, sent_at: m.sent_at, duplicate: false }
                    .encode()
            }
            Ok(AppendOutcome::Duplicate(m)) => {
                ServerFrame::Ack { id, room, client_msg_id: cmid, seq: m.seq, sent_at: m.sent_at, duplicate: true }
                    .encode()
            }
            Ok(AppendOutcome::Conflict(m)) => {
                let msg = format!(
                    "client_msg_id already used for another request (seq {}, a {}); use a new one",
                    m.seq,
                    m.kind.as_str()
                );
                self.error(id, ErrorCode::Conflict, &msg, Some(room), None)
            }
            // A room that does not exist is `forbidden` like one the user
            // is not a member of: the answer does not reveal room ids.
            Ok(AppendOutcome::NotMember) | Ok(AppendOutcome::NoSuchRoom) => {
                self.error(id, ErrorCode::Forbidden, "not a member of this room", Some(room), None)
            }
            Ok(AppendOutcome::TargetNotFound) => {
                self.error(id, ErrorCode::NotFound, "no such message in this room", Some(room), None)
            }
            // Not `forbidden`: that one tells the client to drop the room.
            Ok(AppendOutcome::NotAuthor) => {
                self.error(id, ErrorCode::NotAuthor, "not allowed to change this message", Some(room), None)
            }
            Ok(AppendOutcome::EditWindowClosed) => self.error(
                id,
                ErrorCode::EditWindowClosed,
                "the edit window of this message has passed",
                Some(room),
                None,
            ),
            Err(e) => self.db_error(id, room, e),
        }
    }

    /// Resumes rooms: one for `join`, many for `sync` (§14). The same path
    /// for both, in a constant number of storage round trips whatever the
    /// number of rooms:
    ///
    /// 1. membership of every listed room, in bulk;
    /// 2. subscribe (here and, confirmed, on the bus) to the rooms kept,
    ///    within `max_rooms`; until a room's replay is written nothing live
    ///    for it passes (its entry in `joined` is `i64::MAX`);
    /// 3. seq range, epoch and read marker of those rooms, in bulk, read
    ///    after the subscriptions so nothing falls between replay and live;
    /// 4. the cluster's presence snapshot of those rooms, in bulk;
    /// 5. per room, in the listed order: `reset` or `history_gone` when
    ///    due, the replay, `joined`; or an `error` for that room alone.
    ///
    /// Frames are fed and flushed per replay page; the caller flushes the
    /// rest. `id` goes on the per-room answers of a `join`; a `sync` passes
    /// none (its `synced` carries it). Returns (joined, failed).
    async fn resume(&mut self, id: Option<&RawValue>, entries: &[Resume]) -> Result<(u64, u64), axum::Error> {
        let user = self.shared.user.clone();
        let store = self.state.store.clone();
        let names: Vec<&str> = entries.iter().map(|e| e.room.as_str()).collect();
        let mut failed: Vec<Option<(ErrorCode, String)>> = vec![None; entries.len()];
        let unavailable = || (ErrorCode::Unavailable, "storage temporarily unavailable; retry".to_owned());

        // 1. Membership, and the per-socket room cap in the listed order.
        match store.member_rooms(&user, &names).await {
            Ok(members) => {
                let max_rooms = self.hub.settings().limits.max_rooms;
                let mut count = self.joined.len();
                for (i, e) in entries.iter().enumerate() {
                    if !members.contains(&e.room) {
                        failed[i] = Some((ErrorCode::Forbidden, "not a member of this room".into()));
                    } else if !self.joined.contains_key(e.room.as_str()) {
                        if count >= max_rooms {
                            let msg =
                                format!("this socket has joined {max_rooms} rooms (limits.max_rooms); leave one first");
                            failed[i] = Some((ErrorCode::LimitExceeded, msg));
                        } else {
                            count += 1;
                        }
                    }
                }
            }
            Err(e) => {
                self.note_db_error(&e);
                failed.iter_mut().for_each(|f| *f = Some(unavailable()));
            }
        }

        // 2. Subscribe to what is left.
        let kept: Vec<usize> = (0..entries.len()).filter(|&i| failed[i].is_none()).collect();
        let mut watches = Vec::with_capacity(kept.len());
        for &i in &kept {
            let room: Arc<str> = Arc::from(names[i]);
            watches.push(self.hub.subscribe(&self.shared, &room));
            self.joined.insert(room, i64::MAX);
        }
        for res in futures_util::future::join_all(watches).await {
            if let Err(e) = res {
                // The bus is down: storage is read anyway, and the hub
                // catches the room up once the bus is back (resync).
                tracing::debug!(error = %e, "joining without a confirmed bus subscription");
            }
        }

        // 3. Where each room stands, after the subscriptions.
        let kept_names: Vec<&str> = kept.iter().map(|&i| names[i]).collect();
        let states = match store.resume_states(&user, &kept_names).await {
            Ok(s) => s,
            Err(e) => {
                self.note_db_error(&e);
                for &i in &kept {
                    failed[i] = Some(unavailable());
                }
                HashMap::new()
            }
        };
        let mut ok: Vec<usize> = Vec::with_capacity(kept.len());
        for &i in &kept {
            match states.get(names[i]) {
                Some(st) => {
                    self.hub.seed_room(names[i], st.last_seq);
                    ok.push(i);
                }
                None => {
                    self.joined.remove(names[i]);
                    self.hub.unsubscribe(&self.shared, names[i]);
                    // Deleted since the membership check: as for any room
                    // the user cannot see (§6).
                    if failed[i].is_none() {
                        failed[i] = Some((ErrorCode::Forbidden, "not a member of this room".into()));
                    }
                }
            }
        }

        // 4. Presence, one bulk look-up.
        let ok_names: Vec<&str> = ok.iter().map(|&i| names[i]).collect();
        let mut online = self.hub.presence_snapshots(&ok_names, &user).await.into_iter();

        // 5. The answers, in the listed order.
        let (mut joined, mut refused) = (0, 0);
        for (i, e) in entries.iter().enumerate() {
            if let Some((code, msg)) = &failed[i] {
                refused += 1;
                let f = self.error(id, *code, msg, Some(&e.room), None);
                self.feed_frame(f).await?;
                continue;
            }
            let Some(st) = states.get(&e.room) else { continue };
            let room: Arc<str> = Arc::from(e.room.as_str());
            let mut replayed = 0;
            let reset = if e.epoch.as_deref().is_some_and(|ep| ep != st.epoch) {
                Some("epoch")
            } else if e.since_seq.is_some_and(|s| s > st.last_seq) {
                Some("ahead")
            } else {
                None
            };
            if let Some(reason) = reset {
                let f = ServerFrame::Reset { room: &room, reason, epoch: &st.epoch, last_seq: st.last_seq }.encode();
                self.feed_frame(f).await?;
            } else if let Some(since) = e.since_seq.filter(|s| *s < st.last_seq) {
                if since + 1 < st.first_seq {
                    let f =
                        ServerFrame::HistoryGone { room: &room, since_seq: since, oldest_seq: st.first_seq }.encode();
                    self.feed_frame(f).await?;
                }
                replayed = self.replay(&room, since, Some(st.last_seq + 1)).await?;
            }
            self.joined.insert(room, st.last_seq);
            let online = online.next().unwrap_or_default();
            let f = ServerFrame::Joined {
                id,
                room: &e.room,
                last_seq: st.last_seq,
                replayed,
                online: &online,
                epoch: &st.epoch,
                read_seq: st.read_seq,
            }
            .encode();
            self.feed_frame(f).await?;
            joined += 1;
        }
        Ok((joined, refused))
    }

    fn note_db_error(&self, e: &DbError) {
        tracing::warn!(error = %e, "storage error on socket request");
        self.hub.metrics().db_errors.inc("ws");
    }

    /// Feeds one encoded frame without flushing, counting it.
    async fn feed_frame(&mut self, frame: Utf8Bytes) -> Result<(), axum::Error> {
        self.frames_out += 1;
        self.hub.metrics().frames_out.inc(protocol::kind_of(&frame));
        self.ws.feed(Message::Text(frame)).await
    }

    /// Feeds stored messages with `after < seq < until` to the socket, in
    /// pages. Returns how many were written.
    async fn replay(&mut self, room: &Arc<str>, after: i64, until: Option<i64>) -> Result<u64, axum::Error> {
        let mut after = after;
        let mut n = 0;
        loop {
            let page = match self.state.store.history(room, Some(after), until, REPLAY_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "replay failed");
                    return Err(axum::Error::new(std::io::Error::other("replay failed")));
                }
            };
            for m in &page.messages {
                self.ws.feed(Message::Text(message_frame(m))).await?;
                after = m.seq;
                n += 1;
            }
            self.frames_out += page.messages.len() as u64;
            self.hub.metrics().frames_out.add("message", page.messages.len() as u64);
            if !page.has_more || page.messages.is_empty() {
                return Ok(n);
            }
            self.ws.flush().await?;
        }
    }

    /// `auth`: a fresh access token of the same user extends the connection.
    async fn renew(&mut self, id: Option<&RawValue>, token: &str) -> Utf8Bytes {
        let claims = match self.state.keys.verify(token) {
            Ok(c) => c,
            Err(TokenError::Expired) => return self.error(id, ErrorCode::Unauthorized, "token expired", None, None),
            Err(TokenError::Invalid) => return self.error(id, ErrorCode::Unauthorized, "invalid token", None, None),
        };
        if claims.sub != *self.shared.user {
            return self.error(id, ErrorCode::Unauthorized, "token belongs to another user", None, None);
        }
        match self.state.store.session_active(&claims.sub, &claims.sid).await {
            Ok(true) => {}
            Ok(false) => return self.error(id, ErrorCode::Unauthorized, "session revoked", None, None),
            Err(e) => {
                tracing::warn!(error = %e, "auth renewal check failed");
                return self.error(id, ErrorCode::Unavailable, "storage temporarily unavailable; retry", None, None);
            }
        }
        *self.shared.session.lock().unwrap_or_else(|p| p.into_inner()) = Arc::from(claims.sid.as_str());
        self.expires_at = claims.exp * 1000;
        ServerFrame::AuthOk { id, expires_at: self.expires_at, expires_in_ms: self.expires_at - now_ms() }.encode()
    }
}

/// The next settled send, edit or delete, if any were made.
async fn next_ack(
    acks: &mut Option<FuturesUnordered<PendingAck>>,
) -> Option<<PendingAck as std::future::Future>::Output> {
    match acks {
        Some(a) => a.next().await,
        None => None,
    }
}

/// The instant a Unix-millisecond time falls at.
fn deadline_of(unix_ms: i64) -> tokio::time::Instant {
    let now = now_ms();
    tokio::time::Instant::now() + Duration::from_millis((unix_ms - now).max(0) as u64)
}
