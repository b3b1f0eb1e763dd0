//! Who is connected here: connections by id and by user, the cap on how
//! many there may be, and what a connection's queue carries.
//!
//! The bottom of the hub: [`ConnShared::offer`] is where every frame,
//! stored message or event, enters a socket's queue, so the queue's item
//! types ([`Outbound`], [`Delivery`], [`RoomSeq`]) live here too and every
//! other hub module depends on this one, never the other way.
//!
//! The cap is a semaphore: a handshake takes a permit before it upgrades
//! and the connection task holds it until the socket is gone, so concurrent
//! handshakes cannot all pass a count check together.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::metrics::Metrics;
use crate::protocol::close;

/// A stored message on its way to sockets: one allocation shared by every
/// recipient, so a queue slot is one pointer.
#[derive(Debug)]
pub struct Delivery {
    pub room: Arc<str>,
    pub seq: i64,
    pub frame: Utf8Bytes,
    /// When it was handed to the room here (committed, or received from
    /// the bus), on the fan-out histogram's clock: the start of
    /// `chatgw_message_fanout_seconds`.
    pub ready_ns: u64,
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
    /// A room's last seq moved: written unless the connection joined it.
    RoomSeq(Arc<RoomSeq>),
}

/// A `room_seq` on its way to a user's sockets: each socket drops it when
/// it has joined the room (see [`super::user_stream`]).
#[derive(Debug)]
pub struct RoomSeq {
    pub room: Arc<str>,
    pub frame: Utf8Bytes,
}

/// The part of a connection others touch: its queue and its kill switch.
pub struct ConnShared {
    pub id: u64,
    pub user: Arc<str>,
    pub session: Mutex<Arc<str>>,
    pub tx: mpsc::Sender<Outbound>,
    /// Pulled to close the connection with `close_code`.
    pub kill: KillSwitch,
    /// Unix milliseconds.
    pub connected_at: i64,
    close_code: AtomicU16,
    close_reason: Mutex<String>,
}

/// A connection's kill switch: a flag, and the connection's own task as its
/// one waiter. Every wake-up of a connection task looks at it, so it is two
/// atomics (a `CancellationToken` took a mutex for each look).
#[derive(Default)]
pub struct KillSwitch {
    pulled: AtomicBool,
    waiter: AtomicWaker,
}

impl KillSwitch {
    pub fn cancel(&self) {
        self.pulled.store(true, Ordering::SeqCst);
        self.waiter.wake();
    }

    pub fn is_cancelled(&self) -> bool {
        self.pulled.load(Ordering::SeqCst)
    }

    /// Resolves once the switch is pulled. One task may wait at a time (a
    /// second waiter would take the first one's place).
    pub fn cancelled(&self) -> impl std::future::Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.is_cancelled() {
                return std::task::Poll::Ready(());
            }
            self.waiter.register(cx.waker());
            // Pulled between the look and the registration: seen here.
            if self.is_cancelled() { std::task::Poll::Ready(()) } else { std::task::Poll::Pending }
        })
    }
}

impl ConnShared {
    /// Asks the connection to close with `code`; the first request wins
    /// (and gets `true`).
    pub fn close(&self, code: u16, reason: &str) -> bool {
        let first = self.close_code.compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst).is_ok();
        if first {
            *self.close_reason.lock().unwrap_or_else(|p| p.into_inner()) = reason.to_owned();
        }
        self.kill.cancel();
        first
    }

    pub fn close_request(&self) -> (u16, String) {
        let code = self.close_code.load(Ordering::SeqCst);
        (code, self.close_reason.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Queues without waiting; a full queue cuts the connection off (4009)
    /// so a slow reader never stalls a room (counted and logged once).
    pub(super) fn offer(&self, item: Outbound, metrics: &Metrics) -> bool {
        match self.tx.try_send(item) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                if self.close(close::SLOW_CONSUMER, "slow consumer: outbound queue full; reconnect and resume") {
                    metrics.slow_consumers.inc();
                    tracing::warn!(
                        conn_id = self.id,
                        user_id = %self.user,
                        queued = self.tx.max_capacity(),
                        "slow consumer cut off (4009)"
                    );
                }
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Frames queued and not yet taken by the connection's writer.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn session(&self) -> Arc<str> {
        self.session.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The connection maps and the cap.
pub(super) struct Registry {
    conns: DashMap<u64, Arc<ConnShared>>,
    users: DashMap<Arc<str>, Vec<Arc<ConnShared>>>,
    next_id: AtomicU64,
    permits: Arc<Semaphore>,
}

impl Registry {
    pub(super) fn new(max_connections: usize) -> Self {
        Registry {
            conns: DashMap::new(),
            users: DashMap::new(),
            next_id: AtomicU64::new(1),
            permits: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// A place for one more connection, held for the socket's life; `None`
    /// at the cap.
    pub(super) fn try_reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Adds a new connection with a queue of `queue` slots; returns its
    /// handle and the queue's receiving end.
    pub(super) fn add(&self, user: &str, session: &str, queue: usize) -> (Arc<ConnShared>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(queue);
        let conn = Arc::new(ConnShared {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            user: Arc::from(user),
            session: Mutex::new(Arc::from(session)),
            tx,
            kill: KillSwitch::default(),
            connected_at: crate::clock::now_ms(),
            close_code: AtomicU16::new(0),
            close_reason: Mutex::new(String::new()),
        });
        self.conns.insert(conn.id, conn.clone());
        self.users.entry(conn.user.clone()).or_default().push(conn.clone());
        (conn, rx)
    }

    /// Forgets a connection (its subscriptions are the rooms' business).
    pub(super) fn remove(&self, conn: &ConnShared) {
        self.conns.remove(&conn.id);
        if let dashmap::Entry::Occupied(mut e) = self.users.entry(conn.user.clone()) {
            e.get_mut().retain(|c| c.id != conn.id);
            if e.get().is_empty() {
                e.remove();
            }
        }
    }

    pub(super) fn all(&self) -> Vec<Arc<ConnShared>> {
        self.conns.iter().map(|e| e.value().clone()).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    /// Distinct users with a socket here.
    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }

    /// How many sockets the user has open here.
    pub(super) fn count_of(&self, user: &str) -> usize {
        self.users.get(user).map_or(0, |v| v.len())
    }

    /// This instance's sockets of a user.
    pub(super) fn conns_of(&self, user: &str) -> Vec<Arc<ConnShared>> {
        self.users.get(user).map(|v| v.clone()).unwrap_or_default()
    }

    /// Offers an ephemeral frame to every socket of `user` here (the
    /// per-user stream's frames: `room_added`, `room_removed`, ...).
    pub(super) fn offer_to_user(&self, user: &str, frame: &Utf8Bytes, metrics: &Metrics) {
        let conns = self.conns_of(user);
        if conns.is_empty() {
            return;
        }
        let shared = Arc::new(frame.clone());
        let mut queued = 0;
        for c in conns {
            queued += u64::from(c.offer(Outbound::Event(shared.clone()), metrics));
        }
        metrics.frames_out.add(crate::protocol::kind_of(frame), queued);
    }

    /// Asks every socket of `user` here to close; returns how many there
    /// were.
    pub(super) fn close_user(&self, user: &str, code: u16, reason: &str) -> usize {
        let conns = self.conns_of(user);
        for c in &conns {
            c.close(code, reason);
        }
        conns.len()
    }

    /// Asks the sockets of one session of `user` here to close.
    pub(super) fn close_session(&self, user: &str, session: &str, code: u16, reason: &str) {
        for c in self.conns_of(user) {
            if &*c.session() == session {
                c.close(code, reason);
            }
        }
    }
}
