//! The connection hub: live sockets, room subscriptions, ordered fan-out.
//!
//! [`Hub`] is a thin facade: a cheap handle on the subsystems below, with
//! short methods that delegate to them (the surface `api/` and the
//! connection task use) and the orchestration that spans several of them
//! in the file of its concern. Each subsystem owns its data and its
//! behaviour, and gets what else it needs (metrics, the bus, a registry)
//! as arguments.
//!
//! - [`conn`]: one task per socket: reads requests, writes its queue.
//! - [`registry`]: who is connected (by id and by user), the connection
//!   cap, and what a socket's queue carries ([`Outbound`]).
//! - [`room`]: per-room subscribers and each room's sequencer state.
//! - [`sequencer`]: the seq filters themselves (the room's order, each
//!   connection's cursor), pure and property-tested.
//! - [`delivery`]: a stored message's way from storage to each subscribed
//!   socket's queue, one name per step, and the gap fill.
//! - [`commit`]: group commit of sends into storage.
//! - [`bridge`]: what crosses instances through the bus, both ways.
//! - [`tail`]: the periodic check that quiet rooms have delivered what
//!   storage holds (a loss the bus never noticed).
//! - [`presence`]: who is online, one truth for the cluster.
//! - [`user_stream`]: what every socket of a user hears without joining
//!   (rooms added, removed, renamed; unjoined rooms' last seq).
//! - [`erasure`]: erased accounts' `delete` events, in bounded batches.
//! - [`wire`]: stored rows as wire frames (the adapter to `protocol`).
//! - [`live`]: the operators' live view (counts, a user's connections).
//! - [`drain`]: closing every socket at shutdown.
//! - [`settings`]: the hub's settings, built by the configuration.
//!
//! A message's path from socket read to socket write, one function per
//! step (file under `src/` in brackets):
//!
//! 1. `Socket::recv` reads a text frame (`hub/conn/socket.rs`).
//! 2. `Conn::on_text` parses it with `protocol::parse`
//!    (`protocol/client.rs`) and applies the socket's policy: rate limits,
//!    membership, the edit window (`hub/conn/mod.rs`).
//! 3. `Conn::submit` hands a `NewMessage` to `Hub::submit`
//!    (`hub/conn/mod.rs`, `hub/mod.rs`), which queues it for the committer;
//!    the reply is parked in `Acks::push` (`hub/conn/acks.rs`).
//! 4. `commit::run` takes a batch and calls
//!    `Store::append_messages_with` (`hub/commit.rs`,
//!    `db/messages/append.rs`): `read_facts`, then the pure
//!    `plan::plan` (`db/messages/plan.rs`: dedup, permission, seqs), then
//!    `write_plan`, in one transaction.
//! 5. `commit::run` answers each job (the sender's ack goes out through
//!    `Acks::next` and `ack_frame`, `hub/conn/acks.rs`) and calls
//!    `Hub::stored` (`hub/delivery.rs`), which encodes each frame once
//!    with `wire::message_frame` (`hub/wire.rs`).
//! 6. `Hub::publish_stored` notes the room's seq for the per-user stream
//!    and publishes the message on the bus through `Hub::publish`
//!    (`hub/delivery.rs`, `hub/bridge.rs`); another instance's
//!    `Hub::run_bus_listener` (`hub/bridge.rs`) enters at step 7.
//! 7. `Hub::fan_out` puts it in seq order with `Rooms::sequence`
//!    (`hub/delivery.rs`, `hub/room.rs`, the pure filter in
//!    `hub/sequencer.rs`); a message held past a gap starts
//!    `Hub::fill_gap`, which feeds this step again.
//! 8. `offer_to_subscribers` makes one `Delivery` and offers its `Arc` to
//!    each subscriber with `ConnShared::offer` (`hub/delivery.rs`,
//!    `hub/registry.rs`); a full queue cuts that socket off (4009).
//! 9. Each socket's `Conn::run` drains its queue with `Conn::write_queue`
//!    and `Conn::feed_item`, which admits the seq against the socket's own
//!    cursor (`sequencer::admit`) (`hub/conn/mod.rs`), then
//!    `Socket::feed_quiet` and `Socket::flush` write it
//!    (`hub/conn/socket.rs`).
//!
//! Kept on purpose, and better than the field's models: the seq filters
//! are pure code with property tests (`sequencer`), mirrored by the SDK;
//! the hub talks to other instances only through the narrow `Bus` trait,
//! whose lossy contract and recovery (`Tail`, `Resync`) it documents.
//!
//! Dependencies run one way: `sequencer` and `registry` at the bottom,
//! `room` on them, `user_stream` on both, and `delivery`, `bridge` and the
//! other orchestration on all of them. Every connection has a bounded
//! queue; one that is full is cut off (4009) instead of slowing the room.

pub mod bridge;
pub mod commit;
pub mod conn;
mod delivery;
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
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::{BusEvent, BusFuture, SharedBus};
use crate::db::{AppendOutcome, DbError, NewMessage, Store};
use crate::metrics::Metrics;
pub use registry::{ConnShared, Delivery, Outbound};
pub use settings::HubSettings;

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

    /// Adds the connection to the room's subscribers; announces presence when
    /// it is the user's first socket in the room here. The returned future
    /// resolves once the bus confirmed the room's subscription: storage read
    /// after it misses nothing that other instances publish.
    pub fn subscribe(&self, conn: &Arc<ConnShared>, room: &Arc<str>) -> BusFuture {
        let (first, watched) = self.inner.rooms.subscribe(conn, room, &*self.inner.bus);
        if first {
            self.presence_changed(room, &conn.user);
        }
        watched
    }

    /// Removes the connection from the room; announces the user's departure
    /// when it was their last socket in the room here.
    pub fn unsubscribe(&self, conn: &Arc<ConnShared>, room: &str) {
        let room: Arc<str> = Arc::from(room);
        if self.inner.rooms.unsubscribe(conn, &room, &*self.inner.bus) {
            self.presence_changed(&room, &conn.user);
        }
    }

    /// The seq a joining socket read from storage: the room's sequencer
    /// starts there if it had nothing yet, so a later gap is noticed.
    pub fn seed_room(&self, room: &str, last_seq: i64) {
        self.inner.rooms.seed(room, last_seq);
    }

    /// Sends an ephemeral frame to the room's sockets here (except
    /// `exclude`) and on other instances.
    pub fn broadcast(&self, room: &str, frame: Utf8Bytes, exclude: Option<u64>) {
        self.inner.rooms.offer_event(room, &frame, &self.inner.metrics, |c| Some(c.id) == exclude);
        self.publish(|| BusEvent::Ephemeral { room: Arc::from(room), frame });
    }

    pub fn connection_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// How many sockets the user has open on this instance.
    pub fn user_connection_count(&self, user: &str) -> usize {
        self.inner.registry.count_of(user)
    }

    /// A place for one more connection, held for the socket's life; `None`
    /// at `MAX_CONNECTIONS`.
    pub fn try_reserve_connection(&self) -> Option<OwnedSemaphorePermit> {
        self.inner.registry.try_reserve()
    }

    /// Registers a new connection and returns its handle and queue.
    pub fn register(&self, user: &str, session: &str) -> (Arc<ConnShared>, mpsc::Receiver<Outbound>) {
        let (conn, rx) = self.inner.registry.add(user, session, self.inner.settings.outbound_queue);
        self.inner.user_stream.attach(&conn.user);
        self.inner.metrics.ws_connections.inc();
        (conn, rx)
    }

    /// Forgets a connection and its subscriptions.
    pub fn unregister(&self, conn: &Arc<ConnShared>, rooms: impl IntoIterator<Item = Arc<str>>) {
        for room in rooms {
            self.unsubscribe(conn, &room);
        }
        self.inner.registry.remove(conn);
        self.inner.user_stream.detach(&conn.user);
        self.inner.metrics.ws_connections.dec();
    }

    /// Loads the rooms of a user whose socket just connected, for the
    /// per-user stream's `room_seq` (one query, only for the user's first
    /// socket here).
    async fn load_user_rooms(&self, user: &str) {
        self.inner.user_stream.load_rooms(user, &self.inner.store).await;
    }

    /// Runs background work on the hub's tracker, so shutdown waits for it.
    fn spawn_task<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.inner.tasks.spawn(f);
    }
}
