//! One socket: a single task that reads requests and writes its queue.
//!
//! A single task (rather than a reader and a writer) keeps the replay/live
//! seam of `join` simple: while a replay is written, the live queue simply
//! waits, and afterwards everything at or below the replayed seq is skipped.
//! Writes race the connection's kill switch, so a socket whose peer stopped
//! reading can always be cut off.
//!
//! Split by type, dependencies one way only (each file uses only those
//! below it):
//!
//! - this file: [`Conn`], the loop (`select!` over the kill switch, the
//!   queue, settled sends, reads and the timer) and the dispatch of client
//!   frames with their policy (rate budgets, strikes, free pongs);
//! - [`renew`]: `auth`, a fresh token extending the connection;
//! - [`resume`]: [`resume::Joined`], the joined rooms, with `join`/`sync`
//!   and the replay from storage;
//! - [`acks`]: sends waiting for their commit, and outcome → frame;
//! - [`socket`]: [`socket::Socket`], the WebSocket: writes raced against
//!   the kill switch, feeds and flushes, read-error kinds, the close
//!   handshake; it knows nothing of what a frame means.
//!
//! A client frame's handling, in order: read ([`socket::Socket::recv`]),
//! counted, parsed (`protocol::parse`; a bad one is answered with an
//! `error`), pong credit, rate budget (strikes end in 4008), then one arm
//! of `Conn::on_text` per frame type; a send goes to the committer and its
//! `ack` is written when [`acks::Acks`] settles it.
//!
//! The connection never sees the application's state: the HTTP edge
//! (`api::ws`) hands it the hub and the JWT keys.

mod acks;
mod renew;
mod resume;
mod socket;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Utf8Bytes, WebSocket};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde_json::value::RawValue;
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::sleep_until;
use tracing::Instrument;

use self::acks::{Acks, ack_frame, db_error, error};
use self::resume::{Joined, replay};
use self::socket::{Incoming, Socket, SocketError, WRITE_BATCH, race_kill};
use super::sequencer::{self, Admit};
use super::{ConnShared, Hub, Outbound};
use crate::auth::JwtKeys;
use crate::clock::now_ms;
use crate::db::{Deleter, NewKind, NewMessage};
use crate::metrics::Local;
use crate::protocol::Heartbeat;
use crate::protocol::{self, ClientFrame, ErrorCode, ServerFrame, close};

/// Who the handshake authenticated.
pub struct Authenticated {
    pub user_id: String,
    pub session_id: String,
    /// Unix milliseconds when the credential expires.
    pub expires_at: i64,
}

struct Conn {
    hub: Hub,
    /// For `auth` renewals.
    keys: Arc<JwtKeys>,
    shared: Arc<ConnShared>,
    socket: Socket,
    joined: Joined,
    send_limit: DefaultDirectRateLimiter,
    event_limit: DefaultDirectRateLimiter,
    strikes: u32,
    expires_at: i64,
    last_seen: Instant,
    /// Frames read, for the close log line.
    frames_in: u64,
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

/// Whatever went wrong with a write, the connection is over and there is
/// nothing more to send: the socket broke, was cut off (as before the
/// split, a write the kill switch interrupts ends as `Gone`; only the
/// queue's batch write and the kill arm report the switch's code) or a
/// replay could not read storage (logged where it failed).
fn gone(_: SocketError) -> End {
    End::Gone(None)
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
    hub: Hub,
    keys: Arc<JwtKeys>,
    who: Authenticated,
    place: OwnedSemaphorePermit,
    client: IpAddr,
    heartbeat: Heartbeat,
) -> impl std::future::Future<Output = ()> + Send {
    let (shared, rx) = hub.register(&who.user_id, &who.session_id);
    // `client` lives in the span only, not in the task.
    let span = tracing::info_span!("conn", conn_id = shared.id, user_id = %shared.user, client = %client);
    serve(ws, hub, keys, who, place, shared, rx, heartbeat).instrument(span)
}

/// The task of one connection: the loop, then unregistering and the close.
#[allow(clippy::too_many_arguments)]
async fn serve(
    ws: WebSocket,
    hub: Hub,
    keys: Arc<JwtKeys>,
    who: Authenticated,
    _place: OwnedSemaphorePermit,
    shared: Arc<ConnShared>,
    rx: mpsc::Receiver<Outbound>,
    heartbeat: Heartbeat,
) {
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
        socket: Socket::new(ws, shared.clone(), hub.metrics().clone()),
        hub: hub.clone(),
        keys,
        shared: shared.clone(),
        joined: Joined::default(),
        strikes: 0,
        expires_at: who.expires_at,
        last_seen: Instant::now(),
        frames_in: 0,
        fanout: None,
        heartbeat,
        pings_outstanding: 0,
    };
    let end = conn.run(rx).await;
    hub.unregister(&shared, conn.joined.rooms());
    let duration_ms = opened.elapsed().as_millis() as u64;
    let (frames_in, frames_out) = (conn.frames_in, conn.socket.frames_out);
    match end {
        End::Close(code, reason) => {
            hub.metrics().ws_closes.inc(&code.to_string());
            tracing::info!(code, reason = %reason, by = "server", duration_ms, frames_in, frames_out, "closed");
            conn.socket.close(code, reason).await;
        }
        End::Gone(code) => {
            tracing::info!(code, by = "peer", duration_ms, frames_in, frames_out, "closed");
        }
        End::ClosedByPeer(code) => {
            tracing::info!(code, by = "peer", duration_ms, frames_in, frames_out, "closed");
            // RFC 6455 5.5.1: our answer to the peer's Close is queued.
            conn.socket.flush_bounded().await;
        }
    }
}

impl Conn {
    /// The loop: hello, then one `select!` until the connection ends. Long
    /// (about 110 lines): every source a socket waits on is one arm of this
    /// one `select!`, and their order (`biased`) is the policy.
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
        if self.socket.write(hello).await.is_err() {
            return End::Gone(None);
        }
        let mut acks = Acks::default();
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
                Some((id, room, cmid, received, res)) = acks.next(), if acks.is_waiting() => {
                    let frame = ack_frame(self.hub.metrics(), id.as_deref(), &room, &cmid, res);
                    if self.socket.write(frame).await.is_err() { return End::Gone(None); }
                    self.hub.metrics().persist_seconds.observe(received.elapsed().as_secs_f64());
                }
                msg = self.socket.recv() => {
                    self.last_seen = Instant::now();
                    match msg {
                        Incoming::Ended => return End::Gone(None),
                        Incoming::Close(code) => return End::ClosedByPeer(code),
                        Incoming::Text(text) => {
                            self.frames_in += 1;
                            // Boxed: request handling (join, replay, auth) is
                            // a large future that an idle socket need not carry.
                            if let Some(end) = Box::pin(self.on_text(&text, &mut acks)).await { return end; }
                        }
                        Incoming::Binary => {
                            self.frames_in += 1;
                            self.hub.metrics().frames_in.inc("invalid");
                            let f = self.error(None, ErrorCode::BadRequest, "binary frames are not supported; send JSON text frames", None, None);
                            if self.socket.write(f).await.is_err() { return End::Gone(None); }
                        }
                        Incoming::Control => {}
                        Incoming::Failed(e) => {
                            return match e.close() {
                                Some((code, reason)) => End::Close(code, reason.into()),
                                None => End::Gone(None),
                            };
                        }
                    }
                }
                () = &mut timer => {
                    let now = tokio::time::Instant::now();
                    if now >= expires {
                        let f = self.error(None, ErrorCode::TokenExpired, "access token expired; renew with an auth frame before token_expires_at", None, None);
                        let _ = self.socket.write(f).await;
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
                        Heartbeat::Ws => self.socket.ping().await,
                        Heartbeat::App => {
                            self.pings_outstanding = self.pings_outstanding.saturating_add(1);
                            self.socket.write(Utf8Bytes::from_static(protocol::APP_PING)).await
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
            self.socket.flush_bounded().await;
        }
        End::Close(code, reason)
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
        let batch = async {
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
            self.socket.flush().await
        };
        match race_kill(shared, batch).await {
            Ok(()) => Ok(()),
            Err(SocketError::Killed) => {
                let (code, reason) = shared.close_request();
                Err(End::Close(code, reason))
            }
            Err(_) => Err(End::Gone(None)),
        }
    }

    async fn write_one(&mut self, item: Outbound, now_ns: u64) -> Result<(), SocketError> {
        self.feed_item(item, now_ns).await?;
        self.socket.flush().await
    }

    /// Feeds one item (without flushing), applying the per-room seq filter;
    /// `now_ns` is the batch's time on the fan-out histogram's clock.
    async fn feed_item(&mut self, item: Outbound, now_ns: u64) -> Result<(), SocketError> {
        match item {
            Outbound::Message(d) => {
                let Some(last) = self.joined.last_seq(&d.room) else { return Ok(()) };
                match sequencer::admit(last, d.seq) {
                    Admit::Stale => return Ok(()),
                    Admit::Next => {}
                    Admit::AfterReplay { after } => {
                        // A gap (the room orders delivery, but gives up on a
                        // gap storage could not fill): fill it from storage
                        // rather than skip messages. Boxed: the rare path
                        // must not grow every idle task.
                        Box::pin(replay(&self.hub, &mut self.socket, &d.room, after, Some(d.seq))).await?;
                    }
                }
                self.joined.advance(&d.room, d.seq);
                let metrics = self.hub.metrics();
                self.fanout
                    .get_or_insert_with(|| Box::new(Local::new(&metrics.fanout_seconds)))
                    .observe(d.ready_ns, now_ns);
                self.socket.feed_quiet(d.frame.clone()).await
            }
            Outbound::Event(frame) => self.socket.feed_quiet((*frame).clone()).await,
            Outbound::Left(left) => {
                let (room, reason) = &*left;
                if !self.joined.remove(room) {
                    return Ok(());
                }
                self.socket.feed_as(ServerFrame::Left { id: None, room, reason }.encode(), "left").await
            }
            Outbound::RoomSeq(moved) => {
                // A joined room's messages say more than its last seq.
                if self.joined.contains(&moved.room) {
                    return Ok(());
                }
                self.socket.feed_as(moved.frame.clone(), "room_seq").await
            }
        }
    }

    /// An `error` frame, counted by code.
    fn error(
        &self,
        id: Option<&RawValue>,
        code: ErrorCode,
        message: &str,
        room: Option<&str>,
        retry: Option<u64>,
    ) -> Utf8Bytes {
        error(self.hub.metrics(), id, code, message, room, retry)
    }

    /// Handles one text frame; `Some` ends the connection. Long (about 120
    /// lines): the policy (parse, free pongs, rate budgets) and one arm per
    /// client frame type, read top to bottom in the order a frame meets them.
    async fn on_text(&mut self, text: &str, acks: &mut Acks) -> Option<End> {
        let (id, frame) = match protocol::parse(text, self.hub.settings().limits.max_body_bytes) {
            Ok(f) => f,
            Err(e) => {
                self.hub.metrics().frames_in.inc("invalid");
                let f = self.error(e.id.as_deref(), e.code, &e.message, e.room.as_deref(), None);
                return self.socket.write(f).await.err().map(gone);
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
            return self.socket.write(f).await.err().map(gone);
        }
        self.strikes = 0;
        let id = id.as_deref();
        let reply = match frame {
            ClientFrame::Ping => ServerFrame::Pong { id }.encode(),
            // Unsolicited: counted against the budget above, no answer.
            ClientFrame::Pong => return None,
            ClientFrame::Join(entry) => {
                let entries = std::slice::from_ref(&entry);
                let done = match self.joined.resume(&self.hub, &self.shared, &mut self.socket, id, entries).await {
                    Ok(_) => self.socket.flush().await,
                    Err(e) => Err(e),
                };
                return done.err().map(gone);
            }
            ClientFrame::Sync { rooms } => {
                let max = self.hub.settings().limits.max_sync_rooms;
                if rooms.len() > max {
                    let msg = format!("at most {max} rooms per sync (limits.max_sync_rooms); split it");
                    self.error(id, ErrorCode::LimitExceeded, &msg, None, None)
                } else {
                    match self.joined.resume(&self.hub, &self.shared, &mut self.socket, None, &rooms).await {
                        Ok((joined, failed)) => {
                            ServerFrame::Synced { id, rooms: rooms.len() as u64, joined, failed }.encode()
                        }
                        Err(e) => return Some(gone(e)),
                    }
                }
            }
            ClientFrame::Leave { room } => {
                if self.joined.remove(&room) {
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
                if !self.joined.contains(&room) {
                    self.not_joined(id, &room)
                } else {
                    let f = ServerFrame::Typing { room: &room, user: &self.shared.user }.encode();
                    self.hub.broadcast(&room, f, Some(self.shared.id));
                    return None;
                }
            }
            ClientFrame::Read { room, seq } => {
                if !self.joined.contains(&room) {
                    self.not_joined(id, &room)
                } else {
                    match self.hub.store().set_read_marker(&room, &self.shared.user, seq).await {
                        Ok(stored) => {
                            let f = ServerFrame::Read { room: &room, user: &self.shared.user, seq: stored }.encode();
                            self.hub.broadcast(&room, f, None);
                            return None;
                        }
                        Err(e) => db_error(self.hub.metrics(), id, &room, e),
                    }
                }
            }
            ClientFrame::Auth { token } => {
                let store = self.hub.store();
                match renew::renew(&self.keys, store, self.hub.metrics(), &self.shared, id, &token).await {
                    Ok(expires_at) => {
                        self.expires_at = expires_at;
                        ServerFrame::AuthOk { id, expires_at, expires_in_ms: expires_at - now_ms() }.encode()
                    }
                    Err(refused) => refused,
                }
            }
        };
        self.socket.write(reply).await.err().map(gone)
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
        acks: &mut Acks,
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
        // Set when this frame was read: the start of the persist latency,
        // at no extra clock read.
        acks.push(rx, id.map(ToOwned::to_owned), room, client_msg_id, self.last_seen);
    }
}

/// The instant a Unix-millisecond time falls at.
fn deadline_of(unix_ms: i64) -> tokio::time::Instant {
    let now = now_ms();
    tokio::time::Instant::now() + Duration::from_millis((unix_ms - now).max(0) as u64)
}
