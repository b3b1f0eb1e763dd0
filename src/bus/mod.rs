//! The bus: how hubs on different instances tell each other what happened.
//!
//! The hub delivers to its own sockets directly and publishes every event to
//! the bus for the *other* instances; what arrives from the bus is applied
//! locally. The hub only knows this trait: the embedded default is
//! [`local::LocalBus`] (in-process; it also links several hubs in one process,
//! which the tests use), and the Redis implementation plugs in behind it.
//!
//! Delivery over a bus may be lossy (Redis pub/sub is). The hub does not rely
//! on it for correctness: messages carry their `(room, seq)`, rooms fill gaps
//! from storage, and [`BusEvent::Resync`] tells the hub to catch up after the
//! bus lost messages.

pub mod local;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Something every instance must apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusEvent {
    /// A stored message: its `message` frame, already serialised.
    Message { room: String, seq: i64, frame: String },
    /// An ephemeral frame (typing, read, presence) for a room's sockets.
    Ephemeral { room: String, frame: String, from_user: String },
    /// A user lost a room (removed, or the room was deleted).
    MemberRemoved { room: String, user: String, reason: String },
    /// A session was revoked (logout, refresh-token reuse): close its sockets.
    SessionRevoked { user: String, session: String },
    /// A user was banned (close 4003) or erased (close 4001).
    UserClosed { user: String, code: u16, reason: String },
    /// Local only: the bus may have dropped events; catch up from storage.
    #[serde(skip)]
    Resync,
}

/// An event with the instance that published it, so an instance can ignore
/// its own echo.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub origin: String,
    #[serde(flatten)]
    pub event: BusEvent,
}

/// Errors of a bus backend.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// A publish/subscribe channel between instances.
pub trait Bus: Send + Sync + 'static {
    /// Publishes to every other instance. Must not block for long: the hub
    /// calls it on the delivery path.
    ///
    /// # Errors
    /// The backend is unreachable; the event is lost for other instances
    /// (they recover through gap filling and resync).
    fn publish(&self, event: Envelope) -> Result<(), BusError>;

    /// A stream of events published by the *other* instances: `origin` is
    /// the subscriber's own instance id, whose events are not echoed back.
    fn subscribe(&self, origin: &str) -> mpsc::Receiver<Envelope>;

    /// Whether any other instance may be listening. When not (the embedded
    /// default, one instance), the hub skips building and publishing events
    /// altogether: it is on the delivery path of every message.
    fn has_peers(&self, origin: &str) -> bool {
        let _ = origin;
        true
    }

    /// Whether the bus is currently connected (for `/readyz`).
    fn is_healthy(&self) -> bool {
        true
    }

    /// Short name for logs and metrics.
    fn name(&self) -> &'static str;
}

/// Shared handle to the configured bus.
pub type SharedBus = Arc<dyn Bus>;
