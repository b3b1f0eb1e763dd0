//! The bus: how hubs on different instances tell each other what happened.
//!
//! The hub delivers to its own sockets directly and publishes every event to
//! the bus for the *other* instances; what arrives from the bus is applied
//! locally. The hub only knows this trait:
//! - [`local::LocalBus`]: in-process, the embedded default (it also links
//!   several hubs in one process, which the tests use);
//! - [`redis::RedisBus`]: Redis pub/sub, or sharded pub/sub on a Redis
//!   Cluster, through fred.
//!
//! Interest is per room: an instance receives a room's events only while
//! one of its sockets is in the room ([`Bus::watch_room`]), plus every
//! event of the low-volume control channel (sessions, users, membership).
//!
//! Delivery over a bus may be lossy (Redis pub/sub is). The hub does not rely
//! on it for correctness: messages carry their `(room, seq)`, rooms fill gaps
//! from storage, a [`BusEvent::Tail`] tells peers a room moved past events
//! they may have missed, and [`BusEvent::Resync`] tells the hub to catch up
//! after the bus itself lost events (overflow, reconnect, outage).
//!
//! Worth keeping: this narrow trait is the whole seam between the hub and
//! any broker. Its lossy contract is written down and recovery (Tail,
//! Resync) is part of it, and [`local::LocalBus`] links hubs in one process
//! for the tests, as Centrifuge's `Broker` and `PresenceManager`
//! interfaces do. The hub never sees fred; a new backend only implements
//! [`Bus`].

pub mod local;
pub mod redis;
pub mod wire;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;

/// Something other instances must apply. Cheap to clone: strings that
/// travel with every message are shared handles.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// A stored message: its `message` frame, already serialised.
    Message { room: Arc<str>, seq: i64, frame: Utf8Bytes },
    /// An ephemeral frame (typing, read, presence) for a room's sockets.
    Ephemeral { room: Arc<str>, frame: Utf8Bytes },
    /// The room has stored messages up to at least `seq`: sent after the
    /// publisher lost some of its own events, so peers fill from storage.
    Tail { room: Arc<str>, seq: i64 },
    /// A user lost a room: `reason` is `removed`, `left` (they left over
    /// REST) or `room_deleted`. Their joined sockets get `left`, every
    /// socket of theirs gets `room_removed`.
    MemberRemoved { room: Arc<str>, user: String, reason: String },
    /// A user gained a room (added, or the room was created with them in
    /// it): every socket of theirs gets `room_added`.
    RoomAdded { room: Arc<str>, user: String, name: String, role: String, last_seq: i64 },
    /// A room was renamed: its members' sockets get `room_updated`.
    RoomUpdated { room: Arc<str>, name: String },
    /// Rooms whose last seq moved on the publishing instance during one
    /// user-stream interval, each with its newest seq there: one event per
    /// interval for all of them (not one per message), so members' sockets
    /// that have not joined a room can be told `room_seq`.
    RoomSeqs { seqs: Vec<(Arc<str>, i64)> },
    /// A session was revoked (logout, refresh-token reuse): close its sockets.
    SessionRevoked { user: String, session: String },
    /// A user was banned (close 4003) or erased (close 4001), or an
    /// operator disconnected them.
    UserClosed { user: String, code: u16, reason: String },
    /// An operator asks every instance for a user's live connections.
    ConnectionsQuery { id: u64, user: String },
    /// One instance's answer to [`BusEvent::ConnectionsQuery`]: its name and
    /// the connections as a JSON array (an admin path: JSON is fine here).
    ConnectionsReply { id: u64, instance: String, json: Utf8Bytes },
    /// Local only, never published: the bus may have lost events; catch up
    /// from storage.
    Resync,
}

impl BusEvent {
    /// The room whose channel carries this event; `None` for the control
    /// channel.
    pub fn room(&self) -> Option<&Arc<str>> {
        match self {
            BusEvent::Message { room, .. } | BusEvent::Ephemeral { room, .. } | BusEvent::Tail { room, .. } => {
                Some(room)
            }
            _ => None,
        }
    }
}

/// Errors of a bus backend.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A future the hub awaits; boxed so the trait stays object-safe.
pub type BusFuture<T = ()> = Pin<Box<dyn Future<Output = Result<T, BusError>> + Send>>;

/// Whether a user was online in a room anywhere in the cluster before and
/// after an instance changed its part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PresenceChange {
    pub before: bool,
    pub after: bool,
}

/// One instance's handle on a publish/subscribe channel between instances.
pub trait Bus: Send + Sync + 'static {
    /// Publishes to every other instance interested in the event's room (or
    /// to all, for control events). Never waits: the hub calls it on the
    /// delivery path. An event that cannot be queued is dropped and counted;
    /// peers recover it from storage.
    fn publish(&self, event: BusEvent);

    /// The stream of events published by the *other* instances, for rooms
    /// this instance watches and for the control channel. Taken once, by
    /// the hub; later calls get a closed stream.
    fn events(&self) -> mpsc::Receiver<BusEvent>;

    /// Starts receiving a room's events. Resolves once the subscription is
    /// confirmed by the backend, so storage read after it plus the events
    /// received after it miss nothing. The hub calls it when the first local
    /// socket joins a room; an error means the bus is down (the hub then
    /// relies on resync).
    fn watch_room(&self, room: &str) -> BusFuture;

    /// The last local socket left the room. Backends may keep the
    /// subscription a while, so a socket that leaves and comes back does
    /// not cost a subscribe/unsubscribe pair each time.
    fn unwatch_room(&self, room: &str);

    /// Presence, one truth for the cluster: records whether this instance
    /// has sockets of `user` in `room`, and says whether the user was
    /// online there anywhere before and after. Called in order, by one task.
    fn presence_set(&self, room: &str, user: &str, here: bool) -> BusFuture<PresenceChange>;

    /// Users with a socket in `room` on any instance.
    fn presence_of(&self, room: &str) -> BusFuture<Vec<String>>;

    /// [`Bus::presence_of`] for many rooms (a `sync`), in their order.
    /// The look-ups run concurrently: on Redis they share one connection
    /// and are pipelined, so 500 rooms cost about one round trip.
    fn presence_of_many(&self, rooms: &[&str]) -> BusFuture<Vec<Vec<String>>> {
        let each: Vec<_> = rooms.iter().map(|r| self.presence_of(r)).collect();
        Box::pin(async move { futures_util::future::join_all(each).await.into_iter().collect() })
    }

    /// Heartbeat: re-asserts this instance's users in `room` (so they do
    /// not expire) and removes entries of instances that stopped
    /// heartbeating; returns the users who thereby went offline.
    fn presence_refresh(&self, room: &str, users: Vec<String>) -> BusFuture<Vec<String>>;

    /// Whether any other instance may be listening. When not (the embedded
    /// default, one instance), the hub skips building and publishing events
    /// altogether: it is on the delivery path of every message.
    fn has_peers(&self) -> bool {
        true
    }

    /// `Ok` while the bus is connected and answering; otherwise why not
    /// (for `/readyz`).
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Stops background work and disconnects (shutdown, after the hub has
    /// drained). Idempotent.
    fn close(&self) -> BusFuture {
        Box::pin(async { Ok(()) })
    }
}

/// Shared handle to the configured bus.
pub type SharedBus = Arc<dyn Bus>;
