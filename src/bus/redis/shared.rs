//! The state the Redis bus's tasks share, and the small steps they all
//! take: naming channels, handing events to the hub, counting drops,
//! remembering what peers may have missed.
//!
//! The lowest layer of `bus/redis/`: every other file of the folder uses
//! it, it uses none of them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus::wire::Origin;
use crate::bus::{BusError, BusEvent, BusFuture};
use crate::metrics::Metrics;

/// Everything one instance's Redis bus holds, shared by [`super::RedisBus`]
/// and its background tasks.
pub(super) struct Inner {
    pub(super) origin: Origin,
    pub(super) prefix: String,
    pub(super) sharded: bool,
    pub(super) timeout: Duration,
    pub(super) linger: Duration,
    pub(super) publisher: fred::clients::Client,
    pub(super) subscriber: SubscriberClient,
    pub(super) queue: mpsc::Sender<BusEvent>,
    pub(super) inbound: mpsc::Sender<BusEvent>,
    pub(super) inbound_rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    /// An inbound event was dropped; a Resync is owed to the hub.
    pub(super) inbound_lagged: AtomicBool,
    pub(super) rooms: Mutex<HashMap<Arc<str>, RoomSub>>,
    /// Ordered (un)subscribe commands for the subscription task.
    pub(super) subs: mpsc::UnboundedSender<SubCmd>,
    /// Rooms whose events this instance failed to publish, with the highest
    /// seq lost: announced as `Tail` once Redis answers again.
    pub(super) lost: Mutex<HashMap<Arc<str>, i64>>,
    /// `None` when healthy, else why not.
    pub(super) unhealthy: Mutex<Option<String>>,
    pub(super) metrics: Metrics,
    pub(super) presence_ttl: Duration,
    pub(super) presence_set: fred::types::scripts::Script,
    pub(super) presence_sweep: fred::types::scripts::Script,
    /// This instance's id in presence entries.
    pub(super) instance: String,
    /// Cancelled by [`crate::bus::Bus::close`].
    pub(super) stop: CancellationToken,
    pub(super) tasks: TaskTracker,
}

/// One watched (or lingering) room's subscription.
pub(super) struct RoomSub {
    /// Flips to true once Redis confirmed the subscription.
    pub(super) confirmed: watch::Sender<bool>,
    /// When the last local socket left (`None` while watched).
    pub(super) released: Option<Instant>,
}

/// A command for the one task that issues (un)subscribes.
pub(super) enum SubCmd {
    Subscribe(Arc<str>),
    /// After a (re)connect: the control channel and every watched room.
    ResubscribeAll,
}

impl Inner {
    pub(super) fn room_channel(&self, room: &str) -> String {
        format!("{}r:{room}", self.prefix)
    }

    pub(super) fn control_channel(&self) -> String {
        format!("{}ctl", self.prefix)
    }

    pub(super) fn channel_of(&self, event: &BusEvent) -> String {
        match event.room() {
            Some(room) => self.room_channel(room),
            None => self.control_channel(),
        }
    }

    pub(super) fn is_healthy(&self) -> bool {
        self.unhealthy.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    pub(super) fn dropped(&self, reason: &str, n: u64) {
        self.metrics.bus_events_dropped.add(reason, n);
    }

    /// Remembers that peers may have missed `event` (a stored message or a
    /// tail): they are told to catch up once Redis answers.
    pub(super) fn note_lost(&self, event: &BusEvent) {
        if let BusEvent::Message { room, seq, .. } | BusEvent::Tail { room, seq } = event {
            let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
            let e = lost.entry(room.clone()).or_insert(*seq);
            *e = (*e).max(*seq);
        }
    }

    /// Hands an event to the hub; a full queue owes the hub a Resync.
    pub(super) fn to_hub(&self, event: BusEvent) {
        if self.inbound_lagged.load(Ordering::Relaxed) {
            if self.inbound.try_send(BusEvent::Resync).is_err() {
                self.dropped("inbound_full", 1);
                return;
            }
            self.inbound_lagged.store(false, Ordering::Relaxed);
        }
        if self.inbound.try_send(event).is_err() {
            self.inbound_lagged.store(true, Ordering::Relaxed);
            self.dropped("inbound_full", 1);
        }
    }

    /// An immediate error while Redis is known to be down.
    pub(super) fn fail_fast<T>(&self) -> Option<BusFuture<T>> {
        (!self.is_healthy())
            .then(|| -> BusFuture<T> { Box::pin(async { Err(BusError::Unavailable("Redis is unavailable".into())) }) })
    }
}

/// A fred error as the bus's own error type.
pub(super) fn unavailable(e: fred::error::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}
