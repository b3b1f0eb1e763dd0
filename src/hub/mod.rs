//! The connection hub: live sockets, room subscriptions, ordered fan-out.
//!
//! - [`conn`]: one task per socket: reads requests, writes its queue.
//! - [`registry`]: who is connected (by id and by user), the connection cap.
//! - [`room`]: per-room subscribers and the sequencer that fans stored
//!   messages out in seq order, filling gaps from storage.
//! - [`sequencer`]: the seq filters themselves (the room's order, each
//!   connection's cursor), pure and property-tested.
//! - [`bridge`]: what crosses instances through the bus, both ways.
//! - [`tail`]: the periodic check that quiet rooms have delivered what
//!   storage holds (a loss the bus never noticed).
//! - [`presence`]: who is online, one truth for the cluster.
//! - [`commit`]: group commit of sends into storage.
//! - [`settings`]: the hub's settings, built by the configuration.
//! - [`drain`]: closing every socket at shutdown.
//! - [`user_stream`]: what every socket of a user hears without joining
//!   (rooms added, removed, renamed; unjoined rooms' last seq).
//! - [`erasure`]: erased accounts' `delete` events, in bounded batches.
//! - [`wire`]: stored rows as wire frames (the adapter to `protocol`).
//!
//! Delivery path: a `send` goes to the committer, which stores a batch in one
//! transaction, then hands each stored message to the room's sequencer,
//! which fans the pre-serialised frame out to this instance's subscribers;
//! the bridge publishes it on the bus for the others. Every connection has a
//! bounded queue; one that is full is cut off (4009) instead of slowing the
//! room.

pub mod bridge;
pub mod commit;
pub mod conn;
pub mod drain;
pub mod erasure;
pub mod live;
pub mod presence;
pub mod registry;
pub mod room;
mod sequencer;
mod settings;
mod tail;
pub mod user_stream;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::SharedBus;
use crate::db::{AppendOutcome, DbError, NewMessage, Store};
use crate::metrics::Metrics;
pub use registry::ConnShared;
pub use settings::HubSettings;

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
    RoomSeq(Arc<user_stream::RoomSeq>),
}

struct Inner {
    /// The rate limiters' clock, made once: making one calibrates it with
    /// `CPUID`, which a virtual machine traps (it was a fifth of a
    /// handshake's CPU when every connection made two).
    clock: governor::clock::DefaultClock,
    store: Store,
    bus: SharedBus,
    settings: HubSettings,
    metrics: Metrics,
    registry: registry::Registry,
    rooms: room::Rooms,
    user_stream: user_stream::UserStream,
    committer: mpsc::Sender<commit::Job>,
    presence: mpsc::Sender<presence::Changed>,
    draining: AtomicBool,
    /// Cluster-wide admin queries waiting for answers.
    queries: live::Queries,
    /// Connection tasks, awaited at drain.
    conn_tasks: TaskTracker,
    /// Background work (committers, bus listener, gap fills): stopped by
    /// `stop`, awaited at shutdown.
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// Cheap to clone: a handle to the shared hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// Starts the hub's background tasks (committers, bus listener); they
    /// stop when `stop` is cancelled and are tracked by `tasks`.
    pub fn start(
        store: Store,
        bus: SharedBus,
        settings: HubSettings,
        metrics: Metrics,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Hub {
        let (committer, jobs) = mpsc::channel(commit::QUEUE);
        let (presence, changes) = mpsc::channel(presence::QUEUE);
        let events = bus.events();
        let hub = Hub {
            inner: Arc::new(Inner {
                clock: governor::clock::DefaultClock::default(),
                registry: registry::Registry::new(settings.max_connections),
                store,
                bus,
                settings,
                metrics,
                rooms: room::Rooms::default(),
                user_stream: user_stream::UserStream::default(),
                committer,
                presence,
                draining: AtomicBool::new(false),
                queries: Default::default(),
                conn_tasks: TaskTracker::new(),
                tasks: tasks.clone(),
                stop: stop.clone(),
            }),
        };
        let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
        for _ in 0..hub.inner.settings.committers.max(1) {
            tasks.spawn(commit::run(hub.clone(), jobs.clone(), stop.clone()));
        }
        let heartbeat = hub.inner.settings.presence_heartbeat;
        tasks.spawn(hub.clone().run_presence(changes, heartbeat, stop.clone()));
        let interval = hub.inner.settings.user_stream_interval;
        tasks.spawn(hub.clone().run_user_stream(interval, stop.clone()));
        if let Some(period) = hub.inner.settings.tail_check {
            tasks.spawn(hub.clone().run_tail_check(period, stop.clone()));
        }
        tasks.spawn(hub.clone().run_bus_listener(events, stop));
        tasks.spawn(hub.clone().resume_erasures());
        hub
    }

    pub fn settings(&self) -> &HubSettings {
        &self.inner.settings
    }

    /// The clock every connection's rate limiters read.
    pub fn clock(&self) -> &governor::clock::DefaultClock {
        &self.inner.clock
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub fn bus(&self) -> &SharedBus {
        &self.inner.bus
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

    /// Runs background work on the hub's tracker, so shutdown waits for it.
    fn spawn_task<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.inner.tasks.spawn(f);
    }
}
