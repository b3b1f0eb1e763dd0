//! Who is connected here: connections by id and by user, and the cap on
//! how many there may be.
//!
//! The cap is a semaphore: a handshake takes a permit before it upgrades
//! and the connection task holds it until the socket is gone, so concurrent
//! handshakes cannot all pass a count check together.

use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{Hub, Outbound};
use crate::metrics::Metrics;
use crate::protocol::close;

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

    pub(super) fn all(&self) -> Vec<Arc<ConnShared>> {
        self.conns.iter().map(|e| e.value().clone()).collect()
    }

    pub(super) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(super) fn user_count(&self) -> usize {
        self.users.len()
    }
}

impl Hub {
    pub fn connection_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// A place for one more connection, held for the socket's life; `None`
    /// at `MAX_CONNECTIONS`.
    pub fn try_reserve_connection(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.registry.permits.clone().try_acquire_owned().ok()
    }

    /// Registers a new connection and returns its handle and queue.
    pub fn register(&self, user: &str, session: &str) -> (Arc<ConnShared>, mpsc::Receiver<Outbound>) {
        let reg = &self.inner.registry;
        let (tx, rx) = mpsc::channel(self.inner.settings.outbound_queue);
        let conn = Arc::new(ConnShared {
            id: reg.next_id.fetch_add(1, Ordering::Relaxed),
            user: Arc::from(user),
            session: Mutex::new(Arc::from(session)),
            tx,
            kill: KillSwitch::default(),
            connected_at: crate::clock::now_ms(),
            close_code: AtomicU16::new(0),
            close_reason: Mutex::new(String::new()),
        });
        reg.conns.insert(conn.id, conn.clone());
        reg.users.entry(conn.user.clone()).or_default().push(conn.clone());
        self.inner.user_stream.attach(&conn.user);
        self.inner.metrics.ws_connections.inc();
        (conn, rx)
    }

    /// Forgets a connection and its subscriptions.
    pub fn unregister(&self, conn: &Arc<ConnShared>, rooms: impl IntoIterator<Item = Arc<str>>) {
        for room in rooms {
            self.unsubscribe(conn, &room);
        }
        let reg = &self.inner.registry;
        reg.conns.remove(&conn.id);
        if let dashmap::Entry::Occupied(mut e) = reg.users.entry(conn.user.clone()) {
            e.get_mut().retain(|c| c.id != conn.id);
            if e.get().is_empty() {
                e.remove();
            }
        }
        self.inner.user_stream.detach(&conn.user);
        self.inner.metrics.ws_connections.dec();
    }

    /// How many sockets the user has open on this instance.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.inner.registry.users.get(user).map_or(0, |v| v.len())
    }

    /// This instance's sockets of a user.
    pub(super) fn user_conns(&self, user: &str) -> Vec<Arc<ConnShared>> {
        self.inner.registry.users.get(user).map(|v| v.clone()).unwrap_or_default()
    }
}
