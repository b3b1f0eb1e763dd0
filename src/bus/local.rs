//! The in-process bus: the embedded default, and several hubs in one process
//! linked as a cluster (the tests' cluster without Redis).
//!
//! A [`LocalNetwork`] plays the part of Redis; each instance attaches one
//! [`LocalBus`] handle to it. Routing follows the same interest rules as the
//! Redis bus: room events reach only handles watching the room, control
//! events reach every handle, and nobody hears its own events.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::{Bus, BusEvent, BusFuture, PresenceChange};

/// Capacity of each handle's queue. A handle that falls this far behind
/// gets a [`BusEvent::Resync`] instead of the events it missed.
const SUBSCRIBER_QUEUE: usize = 65_536;

/// The shared medium handles attach to.
#[derive(Default)]
pub struct LocalNetwork {
    members: Mutex<Vec<Member>>,
    /// How many handles are attached: read on every message (has_peers),
    /// so without taking the lock.
    attached: AtomicUsize,
    next_id: AtomicU64,
    /// room -> user -> handles with sockets of the user in the room.
    presence: Mutex<HashMap<String, HashMap<String, HashSet<u64>>>>,
}

struct Member {
    id: u64,
    tx: mpsc::Sender<BusEvent>,
    rooms: HashSet<Arc<str>>,
    /// Set when an event was dropped; a Resync is owed.
    lagged: bool,
}

impl LocalNetwork {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// A new instance's handle on this network.
    pub fn attach(self: &Arc<Self>) -> LocalBus {
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().push(Member { id, tx, rooms: HashSet::new(), lagged: false });
        self.attached.fetch_add(1, Ordering::SeqCst);
        LocalBus { net: self.clone(), id, rx: Mutex::new(Some(rx)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Member>> {
        self.members.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn presence(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, HashSet<u64>>>> {
        self.presence.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One instance's handle on a [`LocalNetwork`].
pub struct LocalBus {
    net: Arc<LocalNetwork>,
    id: u64,
    rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
}

impl LocalBus {
    /// A bus of one: the embedded default (nothing is ever published).
    pub fn new() -> Self {
        LocalNetwork::new().attach()
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for LocalBus {
    fn drop(&mut self) {
        self.net.lock().retain(|m| m.id != self.id);
        self.net.attached.fetch_sub(1, Ordering::SeqCst);
        for users in self.net.presence().values_mut() {
            for handles in users.values_mut() {
                handles.remove(&self.id);
            }
        }
    }
}

impl Bus for LocalBus {
    fn publish(&self, event: BusEvent) {
        // Held briefly, never across an await; try_send never blocks.
        let mut members = self.net.lock();
        let room = event.room();
        for m in members.iter_mut().filter(|m| m.id != self.id && room.is_none_or(|r| m.rooms.contains(r))) {
            if m.lagged && m.tx.try_send(BusEvent::Resync).is_ok() {
                m.lagged = false;
            }
            if !m.lagged && m.tx.try_send(event.clone()).is_err() {
                m.lagged = true;
            }
        }
    }

    fn events(&self) -> mpsc::Receiver<BusEvent> {
        self.rx.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(|| mpsc::channel(1).1)
    }

    fn watch_room(&self, room: &str) -> BusFuture {
        if let Some(m) = self.net.lock().iter_mut().find(|m| m.id == self.id) {
            m.rooms.insert(Arc::from(room));
        }
        // In-process: the interest is in effect as soon as it is recorded.
        Box::pin(async { Ok(()) })
    }

    fn unwatch_room(&self, room: &str) {
        if let Some(m) = self.net.lock().iter_mut().find(|m| m.id == self.id) {
            m.rooms.remove(room);
        }
    }

    fn presence_set(&self, room: &str, user: &str, here: bool) -> BusFuture<PresenceChange> {
        let mut p = self.net.presence();
        let users = p.entry(room.to_owned()).or_default();
        let handles = users.entry(user.to_owned()).or_default();
        let before = !handles.is_empty();
        if here {
            handles.insert(self.id);
        } else {
            handles.remove(&self.id);
        }
        let after = !handles.is_empty();
        if !after {
            users.remove(user);
            if users.is_empty() {
                p.remove(room);
            }
        }
        Box::pin(async move { Ok(PresenceChange { before, after }) })
    }

    fn presence_of(&self, room: &str) -> BusFuture<Vec<String>> {
        let users: Vec<String> = self.net.presence().get(room).map(|u| u.keys().cloned().collect()).unwrap_or_default();
        Box::pin(async move { Ok(users) })
    }

    fn presence_refresh(&self, _room: &str, _users: Vec<String>) -> BusFuture<Vec<String>> {
        // In-process instances share one memory: nothing goes stale.
        Box::pin(async { Ok(Vec::new()) })
    }

    fn has_peers(&self) -> bool {
        self.net.attached.load(Ordering::Relaxed) > 1
    }

    fn name(&self) -> &'static str {
        "local"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(room: &str) -> BusEvent {
        BusEvent::Tail { room: Arc::from(room), seq: 1 }
    }

    #[tokio::test]
    async fn room_events_reach_watchers_and_control_events_reach_all() {
        let net = LocalNetwork::new();
        let (a, b, me) = (net.attach(), net.attach(), net.attach());
        let (mut ra, mut rb, mut rme) = (a.events(), b.events(), me.events());
        assert!(me.has_peers());
        assert!(!LocalBus::new().has_peers(), "alone: nobody to publish to");

        a.watch_room("r1").await.unwrap();
        me.watch_room("r1").await.unwrap();
        me.publish(msg("r1"));
        assert_eq!(ra.recv().await.unwrap(), msg("r1"));
        let control = BusEvent::SessionRevoked { user: "u".into(), session: "s".into() };
        me.publish(control.clone());
        assert_eq!(ra.recv().await.unwrap(), control);
        assert_eq!(rb.recv().await.unwrap(), control, "b watches nothing but hears control events");
        assert!(rb.try_recv().is_err(), "b does not watch r1");
        assert!(rme.try_recv().is_err(), "no echo to the publisher");

        a.unwatch_room("r1");
        me.publish(msg("r1"));
        me.publish(control.clone());
        assert_eq!(ra.recv().await.unwrap(), control, "r1's event no longer reaches a");
        drop(b);
        drop(a);
        assert!(!me.has_peers());
    }
}
