//! The in-process bus: the embedded default.

use std::sync::Mutex;

use tokio::sync::mpsc;

use super::{Bus, BusError, BusEvent, Envelope};

/// Capacity of each subscriber's queue. A subscriber that falls this far
/// behind gets a [`BusEvent::Resync`] instead of the events it missed.
const SUBSCRIBER_QUEUE: usize = 65_536;

/// Fans published events out to every subscriber in the process.
#[derive(Default)]
pub struct LocalBus {
    subscribers: Mutex<Vec<Subscriber>>,
}

struct Subscriber {
    tx: mpsc::Sender<Envelope>,
    /// The instance that subscribed: its own events are not sent back to it.
    origin: String,
    /// Set when an event was dropped; a Resync is owed.
    lagged: bool,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Bus for LocalBus {
    fn publish(&self, event: Envelope) -> Result<(), BusError> {
        // Held briefly, never across an await; try_send never blocks.
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|s| !s.tx.is_closed());
        for s in subs.iter_mut().filter(|s| s.origin != event.origin) {
            if s.lagged {
                let resync = Envelope { origin: String::new(), event: BusEvent::Resync };
                if s.tx.try_send(resync).is_ok() {
                    s.lagged = false;
                }
            }
            if !s.lagged && s.tx.try_send(event.clone()).is_err() {
                s.lagged = true;
            }
        }
        Ok(())
    }

    fn subscribe(&self, origin: &str) -> mpsc::Receiver<Envelope> {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let sub = Subscriber { tx, origin: origin.to_owned(), lagged: false };
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner()).push(sub);
        rx
    }

    fn has_peers(&self, origin: &str) -> bool {
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|s| s.origin != origin && !s.tx.is_closed())
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_gets_every_event() {
        let bus = LocalBus::new();
        let mut a = bus.subscribe("a");
        let mut b = bus.subscribe("b");
        let mut me = bus.subscribe("x");
        assert!(bus.has_peers("x"));
        assert!(!LocalBus::new().has_peers("x"), "alone: nobody to publish to");
        let ev =
            Envelope { origin: "x".into(), event: BusEvent::SessionRevoked { user: "u".into(), session: "s".into() } };
        bus.publish(ev.clone()).unwrap();
        assert_eq!(a.recv().await.unwrap().event, ev.event);
        assert_eq!(b.recv().await.unwrap().event, ev.event);
        assert!(me.try_recv().is_err(), "no echo to the publisher");
    }
}
