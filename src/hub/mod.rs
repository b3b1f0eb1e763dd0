//! The connection hub: live sockets, room subscriptions, ordered fan-out.
//!
//! - [`ws`]: the `/ws` handshake (authenticated before the upgrade).
//! - [`conn`]: one task per socket: reads requests, writes its queue.
//! - [`commit`]: group commit of sends into storage.
//! - [`frames`]: the wire format.
//!
//! Delivery path: a `send` goes to the committer, which stores a batch in one
//! transaction, then hands each stored message to [`Hub::deliver`], which
//! fans the pre-serialised frame out to this instance's subscribers and
//! publishes it on the bus for the others. Every connection has a bounded
//! queue; one that is full is cut off (4009) instead of slowing the room.
//!
//! Ordering: each room remembers the last seq it fanned out. A message from
//! the bus that arrives early is held until the gap before it is filled, from
//! the bus or from storage; a duplicate is dropped. Each connection also
//! filters by its own last seq per room, which makes the replay/live seam of
//! `join` exact.

pub mod commit;
pub mod conn;
pub mod frames;
pub mod ws;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{BusEvent, Envelope, SharedBus};
use crate::db::{AppendOutcome, DbError, NewMessage, Store};
use crate::metrics::Metrics;
use frames::{ServerFrame, close};

/// Socket-level settings, from the configuration.
#[derive(Debug, Clone)]
pub struct HubSettings {
    pub limits: frames::Limits,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    /// Frames a connection may have queued before it is cut off (4009).
    pub outbound_queue: usize,
    /// Rate-limited frames in a row before closing with 4008.
    pub abuse_strikes: u32,
    /// Most connections this instance accepts.
    pub max_connections: usize,
    /// Upper bound of the randomised reconnect delay announced at drain.
    pub drain_reconnect_max_ms: u64,
    /// Concurrent group-commit transactions (1 for SQLite: one writer).
    pub committers: usize,
}

/// A stored message on its way to sockets: one allocation shared by every
/// recipient, so a queue slot is one pointer.
#[derive(Debug)]
pub struct Delivery {
    pub room: Arc<str>,
    pub seq: i64,
    pub frame: Utf8Bytes,
}

/// What a connection's writer receives. Kept to two words: every
/// connection's queue allocates its first block of slots up front.
#[derive(Debug)]
pub enum Outbound {
    /// A stored message of a room (filtered by seq on the connection).
    Message(Arc<Delivery>),
    /// An ephemeral frame (typing, read, presence).
    Event(Arc<Utf8Bytes>),
    /// The connection lost a room.
    Left(Arc<(Arc<str>, &'static str)>),
}

/// The part of a connection others touch: its queue and its kill switch.
pub struct ConnShared {
    pub id: u64,
    pub user: Arc<str>,
    pub session: Mutex<Arc<str>>,
    pub tx: mpsc::Sender<Outbound>,
    /// Cancelled to close the connection with `close_code`.
    pub kill: CancellationToken,
    close_code: AtomicU16,
    close_reason: Mutex<String>,
}

impl ConnShared {
    /// Asks the connection to close with `code`; the first request wins.
    pub fn close(&self, code: u16, reason: &str) {
        if self.close_code.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            *self.close_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_owned();
        }
        self.kill.cancel();
    }

    pub fn close_request(&self) -> (u16, String) {
        let code = self.close_code.load(Ordering::SeqCst);
        (code, self.close_reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Queues without waiting; a full queue cuts the connection off (4009)
    /// so a slow reader never stalls a room.
    fn offer(&self, item: Outbound) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.close(close::SLOW_CONSUMER, "slow consumer: outbound queue full; reconnect and resume");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
struct RoomEntry {
    subs: Vec<Arc<ConnShared>>,
    /// Last seq fanned out here; `None` until the first message.
    delivered: Option<i64>,
    /// Messages that arrived ahead of a gap.
    pending: BTreeMap<i64, Utf8Bytes>,
    filling: bool,
}

struct Inner {
    instance_id: String,
    store: Store,
    bus: SharedBus,
    settings: HubSettings,
    metrics: Metrics,
    conns: DashMap<u64, Arc<ConnShared>>,
    users: DashMap<Arc<str>, Vec<Arc<ConnShared>>>,
    rooms: DashMap<Arc<str>, RoomEntry>,
    committer: mpsc::Sender<commit::Job>,
    next_id: AtomicU64,
    draining: AtomicBool,
    /// Connection tasks, awaited at drain.
    conn_tasks: TaskTracker,
}

/// Cheap to clone: a handle to the shared hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the hub's background tasks (committer, bus listener); they stop
    /// when `stop` is cancelled and are tracked by `tasks`.
    pub fn start(
        store: Store,
        bus: SharedBus,
        settings: HubSettings,
        metrics: Metrics,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Hub {
        let (committer, jobs) = mpsc::channel(commit::QUEUE);
        let hub = Hub {
            inner: Arc::new(Inner {
                instance_id: uuid::Uuid::new_v4().simple().to_string(),
                store,
                bus,
                settings,
                metrics,
                conns: DashMap::new(),
                users: DashMap::new(),
                rooms: DashMap::new(),
                committer,
                next_id: AtomicU64::new(1),
                draining: AtomicBool::new(false),
                conn_tasks: TaskTracker::new(),
            }),
        };
        let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
        for _ in 0..hub.inner.settings.committers.max(1) {
            tasks.spawn(commit::run(hub.clone(), jobs.clone()));
        }
        let events = hub.inner.bus.subscribe(&hub.inner.instance_id);
        tasks.spawn(hub.clone().run_bus_listener(events, stop));
        hub
    }

    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn connection_count(&self) -> usize {
        self.inner.conns.len()
    }

    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Spawns a connection task on the hub's tracker (awaited at drain).
    pub fn spawn_conn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.inner.conn_tasks.spawn(f);
    }

    /// Registers a new connection and returns its handle and queue.
    pub fn register(&self, user: &str, session: &str) -> (Arc<ConnShared>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(self.inner.settings.outbound_queue);
        let conn = Arc::new(ConnShared {
            id: self.inner.next_id.fetch_add(1, Ordering::Relaxed),
            user: Arc::from(user),
            session: Mutex::new(Arc::from(session)),
            tx,
            kill: CancellationToken::new(),
            close_code: AtomicU16::new(0),
            close_reason: Mutex::new(String::new()),
        });
        self.inner.conns.insert(conn.id, conn.clone());
        self.inner.users.entry(conn.user.clone()).or_default().push(conn.clone());
        self.inner.metrics.ws_connections.inc();
        (conn, rx)
    }

    /// Forgets a connection and its subscriptions.
    pub fn unregister(&self, conn: &Arc<ConnShared>, rooms: impl IntoIterator<Item = Arc<str>>) {
        for room in rooms {
            self.unsubscribe(conn, &room);
        }
        self.inner.conns.remove(&conn.id);
        if let dashmap::Entry::Occupied(mut e) = self.inner.users.entry(conn.user.clone()) {
            e.get_mut().retain(|c| c.id != conn.id);
            if e.get().is_empty() {
                e.remove();
            }
        }
        self.inner.metrics.ws_connections.dec();
    }

    /// Adds the connection to the room's subscribers; announces presence when
    /// it is the user's first socket in the room here.
    pub fn subscribe(&self, conn: &Arc<ConnShared>, room: &Arc<str>) {
        let first = {
            let mut entry = self.inner.rooms.entry(room.clone()).or_default();
            if entry.subs.iter().any(|c| c.id == conn.id) {
                return;
            }
            let first = !entry.subs.iter().any(|c| c.user == conn.user);
            entry.subs.push(conn.clone());
            first
        };
        if first {
            self.presence(room, &conn.user, "online", Some(conn.id));
        }
    }

    /// Removes the connection from the room; announces the user's departure
    /// when it was their last socket in the room here.
    pub fn unsubscribe(&self, conn: &Arc<ConnShared>, room: &str) {
        let last = match self.inner.rooms.entry(Arc::from(room)) {
            dashmap::Entry::Occupied(mut e) => {
                let before = e.get().subs.len();
                e.get_mut().subs.retain(|c| c.id != conn.id);
                let removed = e.get().subs.len() != before;
                let last = removed && !e.get().subs.iter().any(|c| c.user == conn.user);
                if e.get().subs.is_empty() {
                    e.remove();
                }
                last
            }
            dashmap::Entry::Vacant(_) => false,
        };
        if last {
            self.presence(room, &conn.user, "offline", Some(conn.id));
        }
    }

    /// Presence goes to everyone in the room but the socket that caused it.
    fn presence(&self, room: &str, user: &str, status: &str, exclude: Option<u64>) {
        let frame = ServerFrame::Presence { room, user, status }.encode();
        self.broadcast(room, frame, exclude, user);
    }

    /// Sends an ephemeral frame to the room's sockets here (except
    /// `exclude`) and on other instances.
    pub fn broadcast(&self, room: &str, frame: Utf8Bytes, exclude: Option<u64>, from_user: &str) {
        self.fan_out_event(room, &frame, exclude);
        self.publish(|| BusEvent::Ephemeral {
            room: room.to_owned(),
            frame: frame.as_str().to_owned(),
            from_user: from_user.to_owned(),
        });
    }

    fn fan_out_event(&self, room: &str, frame: &Utf8Bytes, exclude: Option<u64>) {
        // Under the room's guard, like message fan-out: `offer` never waits.
        let Some(entry) = self.inner.rooms.get(room) else { return };
        let shared = Arc::new(frame.clone());
        for c in entry.subs.iter().filter(|c| Some(c.id) != exclude) {
            c.offer(Outbound::Event(shared.clone()));
        }
    }

    /// Queues a message for storage (group commit); the receiver resolves
    /// once it is stored (or found already stored).
    pub async fn submit(&self, msg: NewMessage) -> oneshot::Receiver<Result<AppendOutcome, DbError>> {
        let (reply, rx) = oneshot::channel();
        if self.inner.committer.send(commit::Job { msg, reply }).await.is_err() {
            // The committer is gone (shutdown): the dropped job's sender
            // resolves the receiver with an error the caller reports.
        }
        rx
    }

    /// Fans a stored message out here and publishes it to other instances.
    pub fn deliver_local_commit(&self, room: &str, seq: i64, frame: Utf8Bytes) {
        self.publish(|| BusEvent::Message { room: room.to_owned(), seq, frame: frame.as_str().to_owned() });
        self.deliver(room, seq, frame);
    }

    /// Delivers a message to this instance's subscribers in seq order.
    pub fn deliver(&self, room: &str, seq: i64, frame: Utf8Bytes) {
        let Some(mut entry) = self.inner.rooms.get_mut(room) else { return };
        let room_arc: Arc<str> = entry.key().clone();
        let e = entry.value_mut();
        match e.delivered {
            Some(d) if seq <= d => return,
            Some(d) if seq > d + 1 => {
                e.pending.insert(seq, frame);
                if !e.filling {
                    e.filling = true;
                    let hub = self.clone();
                    tokio::spawn(async move { hub.fill_gap(room_arc, d, seq).await });
                }
                return;
            }
            _ => {}
        }
        fan_out_message(e, &room_arc, seq, frame, &self.inner.metrics);
        let mut next = seq + 1;
        while let Some(f) = e.pending.remove(&next) {
            fan_out_message(e, &room_arc, next, f, &self.inner.metrics);
            next += 1;
        }
    }

    /// Fetches the messages missing before `until` from storage; gives up
    /// after a few tries and releases what is held (each connection then
    /// fills its own gap from storage).
    async fn fill_gap(&self, room: Arc<str>, after: i64, until: i64) {
        for attempt in 0..5u64 {
            match self.inner.store.history(&room, Some(after), Some(until), until - after).await {
                Ok(page) => {
                    for m in &page.messages {
                        self.deliver(&room, m.seq, frames::message_frame(m));
                    }
                    if let Some(mut e) = self.inner.rooms.get_mut(&room) {
                        e.filling = false;
                        let stuck = e.delivered.is_some_and(|d| d < until - 1) && page.messages.len() as i64 == 0;
                        if stuck {
                            release_pending(&mut e, &room, &self.inner.metrics);
                        }
                    }
                    return;
                }
                Err(err) => {
                    tracing::warn!(room = %room, error = %err, attempt, "gap fill failed");
                    tokio::time::sleep(Duration::from_millis(100 * (attempt + 1))).await;
                }
            }
        }
        if let Some(mut e) = self.inner.rooms.get_mut(&room) {
            e.filling = false;
            release_pending(&mut e, &room, &self.inner.metrics);
        }
    }

    /// A user lost a room: their sockets leave it, here and everywhere.
    pub fn member_removed(&self, room: &str, user: &str, reason: &'static str) {
        self.publish(|| BusEvent::MemberRemoved {
            room: room.to_owned(),
            user: user.to_owned(),
            reason: reason.to_owned(),
        });
        self.apply_member_removed(room, user, reason);
    }

    fn apply_member_removed(&self, room: &str, user: &str, reason: &'static str) {
        let conns: Vec<Arc<ConnShared>> = match self.inner.rooms.get(room) {
            Some(e) => e.subs.iter().filter(|c| &*c.user == user).cloned().collect(),
            None => return,
        };
        let room_arc: Arc<str> = Arc::from(room);
        for c in conns {
            // Unsubscribe first: no message of the room reaches it after this.
            self.unsubscribe(&c, room);
            c.offer(Outbound::Left(Arc::new((room_arc.clone(), reason))));
        }
    }

    /// Closes the sockets of one session (logout) with 4001, everywhere.
    pub fn session_revoked(&self, user: &str, session: &str) {
        self.publish(|| BusEvent::SessionRevoked { user: user.to_owned(), session: session.to_owned() });
        self.apply_session_revoked(user, session);
    }

    fn apply_session_revoked(&self, user: &str, session: &str) {
        for c in self.user_conns(user) {
            let s = c.session.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if &*s == session {
                c.close(close::AUTH, "session revoked");
            }
        }
    }

    /// Closes every socket of a user (ban: 4003, erasure: 4001), everywhere.
    pub fn close_user(&self, user: &str, code: u16, reason: &str) {
        self.publish(|| BusEvent::UserClosed { user: user.to_owned(), code, reason: reason.to_owned() });
        for c in self.user_conns(user) {
            c.close(code, reason);
        }
    }

    fn user_conns(&self, user: &str) -> Vec<Arc<ConnShared>> {
        self.inner.users.get(user).map(|v| v.clone()).unwrap_or_default()
    }

    /// Publishes to other instances; the event is only built when some
    /// other instance may listen.
    fn publish(&self, event: impl FnOnce() -> BusEvent) {
        if !self.inner.bus.has_peers(&self.inner.instance_id) {
            return;
        }
        let env = Envelope { origin: self.inner.instance_id.clone(), event: event() };
        if let Err(e) = self.inner.bus.publish(env) {
            tracing::warn!(error = %e, bus = self.inner.bus.name(), "bus publish failed");
        }
    }

    async fn run_bus_listener(self, mut events: mpsc::Receiver<Envelope>, stop: CancellationToken) {
        loop {
            let env = tokio::select! {
                e = events.recv() => match e { Some(e) => e, None => return },
                () = stop.cancelled() => return,
            };
            if env.origin == self.inner.instance_id {
                continue;
            }
            match env.event {
                BusEvent::Message { room, seq, frame } => self.deliver(&room, seq, Utf8Bytes::from(frame)),
                BusEvent::Ephemeral { room, frame, .. } => self.fan_out_event(&room, &Utf8Bytes::from(frame), None),
                BusEvent::MemberRemoved { room, user, reason } => {
                    let reason = if reason == "room_deleted" { "room_deleted" } else { "removed" };
                    self.apply_member_removed(&room, &user, reason);
                }
                BusEvent::SessionRevoked { user, session } => self.apply_session_revoked(&user, &session),
                BusEvent::UserClosed { user, code, reason } => {
                    for c in self.user_conns(&user) {
                        c.close(code, &reason);
                    }
                }
                BusEvent::Resync => self.resync().await,
            }
        }
    }

    /// After the bus lost events: deliver whatever storage has beyond each
    /// room's last delivered seq.
    async fn resync(&self) {
        let rooms: Vec<(Arc<str>, Option<i64>)> =
            self.inner.rooms.iter().map(|e| (e.key().clone(), e.delivered)).collect();
        for (room, delivered) in rooms {
            let Some(after) = delivered else { continue };
            if let Ok(page) = self.inner.store.history(&room, Some(after), None, 1000).await {
                for m in &page.messages {
                    self.deliver(&room, m.seq, frames::message_frame(m));
                }
            }
        }
    }

    /// Drain: every connection is told to reconnect after a randomised delay
    /// (so a restart does not become a reconnect storm) and closed with 1001
    /// after its queue is flushed. Waits for the connection tasks, at most
    /// `deadline`.
    pub async fn drain(&self, deadline: Duration) {
        use rand::Rng;
        self.inner.draining.store(true, Ordering::SeqCst);
        let conns: Vec<Arc<ConnShared>> = self.inner.conns.iter().map(|e| e.value().clone()).collect();
        let max = self.inner.settings.drain_reconnect_max_ms.max(1);
        for c in conns {
            let delay = rand::thread_rng().gen_range(0..max);
            c.close(close::GOING_AWAY, &format!("drain; reconnect_after_ms={delay}"));
        }
        self.inner.conn_tasks.close();
        if tokio::time::timeout(deadline, self.inner.conn_tasks.wait()).await.is_err() {
            tracing::warn!(remaining = self.inner.conns.len(), "connections did not close in time");
        }
    }
}

fn fan_out_message(e: &mut RoomEntry, room: &Arc<str>, seq: i64, frame: Utf8Bytes, metrics: &Metrics) {
    e.delivered = Some(seq);
    let d = Arc::new(Delivery { room: room.clone(), seq, frame });
    let mut queued = 0;
    for c in &e.subs {
        if c.offer(Outbound::Message(d.clone())) {
            queued += 1;
        }
    }
    // One shared-counter update per message, not per recipient.
    metrics.ws_deliveries.inc_by(queued);
}

/// Releases held messages past a gap that could not be filled.
fn release_pending(e: &mut RoomEntry, room: &Arc<str>, metrics: &Metrics) {
    let pending = std::mem::take(&mut e.pending);
    for (seq, f) in pending {
        if e.delivered.is_none_or(|d| seq > d) {
            fan_out_message(e, room, seq, f, metrics);
        }
    }
}

/// The hub's view of the session map, for tests and metrics.
pub type UserConnections = HashMap<String, usize>;
