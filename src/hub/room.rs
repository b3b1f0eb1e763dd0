//! Rooms on this instance: who is subscribed, and each room's sequencer
//! state (the order stored messages are fanned out in).
//!
//! Each room remembers the last seq it fanned out. A message that arrives
//! early (from another instance, or from a concurrent committer) is held
//! until the gap before it is filled, from the bus or from storage; a
//! duplicate is dropped. Each connection also filters by its own last seq
//! per room, which makes the replay/live seam of `join` exact.
//!
//! [`Rooms`] owns the map and every look at it; what happens to a message
//! the sequencer releases is the caller's (`emit`, given by
//! [`super::delivery`]), so this module knows nothing of the delivery path
//! beyond the room's guard it runs under.
//!
//! The room's bus interest follows its entry here: created with the first
//! local subscriber, released with the last, both under the entry's guard so
//! the bus sees them in the order they happened.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;

use super::registry::{ConnShared, Outbound};
use super::sequencer::{Offered, Sequencer};
use crate::bus::{Bus, BusFuture};
use crate::metrics::Metrics;
use crate::protocol;

#[derive(Default)]
struct RoomEntry {
    subs: Vec<Arc<ConnShared>>,
    /// The order messages are fanned out in, and those held past a gap.
    seq: Sequencer<Utf8Bytes>,
    /// A task is filling the room's gaps from storage.
    filling: bool,
    /// When the room last fanned a message out, on the fan-out histogram's
    /// clock (read there anyway, so the tail check costs the delivery path
    /// nothing); 0 before the first.
    last_delivery_ns: u64,
    /// The tail check's tick that last compared the room with storage:
    /// the longest unchecked go first when there are more quiet rooms
    /// than one tick takes.
    tail_tick: u64,
}

/// What [`Rooms::sequence`] did with a message.
pub(super) enum Sequenced {
    /// Fanned out now (with whatever it released behind it).
    Emitted,
    /// Held past a gap, and no fill is running: the caller starts one for
    /// this room (marked as filling already).
    StartFill(Arc<str>),
    /// Held past a gap a running fill will close, a duplicate, or a room
    /// without local subscribers.
    Dropped,
}

/// The rooms with at least one local subscriber.
#[derive(Default)]
pub(super) struct Rooms {
    map: DashMap<Arc<str>, RoomEntry>,
}

impl Rooms {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    /// Adds the connection to the room's subscribers. Returns whether it is
    /// the user's first socket in the room here (`None` when the
    /// connection was subscribed already) and the bus's confirmation of the
    /// room's subscription.
    pub(super) fn subscribe(&self, conn: &Arc<ConnShared>, room: &Arc<str>, bus: &dyn Bus) -> (bool, BusFuture) {
        let mut entry = self.map.entry(room.clone()).or_default();
        // Under the guard: interest changes reach the bus in order.
        let watched = bus.watch_room(room);
        if entry.subs.iter().any(|c| c.id == conn.id) {
            return (false, watched);
        }
        let first = !entry.subs.iter().any(|c| c.user == conn.user);
        entry.subs.push(conn.clone());
        (first, watched)
    }

    /// Removes the connection from the room; returns whether it was the
    /// user's last socket in the room here. The last subscriber's going
    /// releases the room's bus interest.
    pub(super) fn unsubscribe(&self, conn: &ConnShared, room: &Arc<str>, bus: &dyn Bus) -> bool {
        match self.map.entry(room.clone()) {
            dashmap::Entry::Occupied(mut e) => {
                let before = e.get().subs.len();
                e.get_mut().subs.retain(|c| c.id != conn.id);
                let removed = e.get().subs.len() != before;
                let last = removed && !e.get().subs.iter().any(|c| c.user == conn.user);
                if e.get().subs.is_empty() {
                    bus.unwatch_room(room);
                    e.remove();
                }
                last
            }
            dashmap::Entry::Vacant(_) => false,
        }
    }

    /// The seq a joining socket read from storage: the room's sequencer
    /// starts there if it had nothing yet, so a later gap is noticed.
    pub(super) fn seed(&self, room: &str, last_seq: i64) {
        if let Some(mut e) = self.map.get_mut(room) {
            e.seq.seed(last_seq);
        }
    }

    /// Offers an ephemeral frame to the room's sockets here, except those
    /// `skip` picks. Under the room's guard, like a message's fan-out:
    /// `offer` never waits.
    pub(super) fn offer_event(
        &self,
        room: &str,
        frame: &Utf8Bytes,
        metrics: &Metrics,
        skip: impl Fn(&ConnShared) -> bool,
    ) {
        let Some(entry) = self.map.get(room) else { return };
        let shared = Arc::new(frame.clone());
        let mut queued = 0;
        for c in entry.subs.iter().filter(|c| !skip(c)) {
            queued += u64::from(c.offer(Outbound::Event(shared.clone()), metrics));
        }
        metrics.frames_out.add(protocol::kind_of(frame), queued);
    }

    /// Runs a stored message through the room's sequencer under the room's
    /// guard: each message it releases (this one, and those it held behind
    /// it) goes to `emit` with the room's subscribers and its ready time,
    /// read once per run on the fan-out clock and none for a duplicate.
    pub(super) fn sequence(
        &self,
        room: &str,
        seq: i64,
        frame: Utf8Bytes,
        metrics: &Metrics,
        mut emit: impl FnMut(&[Arc<ConnShared>], &Arc<str>, i64, Utf8Bytes, u64),
    ) -> Sequenced {
        let Some(mut entry) = self.map.get_mut(room) else { return Sequenced::Dropped };
        let room_arc: Arc<str> = entry.key().clone();
        let e = entry.value_mut();
        let mut now = None;
        let subs = &e.subs;
        let offered = e.seq.offer(seq, frame, |s, f| {
            let ready = *now.get_or_insert_with(|| metrics.fanout_seconds.now_ns());
            emit(subs, &room_arc, s, f, ready);
        });
        if let Some(ns) = now {
            e.last_delivery_ns = ns;
        }
        match offered {
            Offered::Held { .. } if !e.filling => {
                e.filling = true;
                Sequenced::StartFill(room_arc)
            }
            Offered::Emitted => Sequenced::Emitted,
            Offered::Held { .. } | Offered::Stale => Sequenced::Dropped,
        }
    }

    /// The room's first open gap. With none left, clears `filling` under the
    /// same guard: a message held after that starts a new fill.
    pub(super) fn next_gap(&self, room: &str) -> Option<(i64, i64)> {
        let mut e = self.map.get_mut(room)?;
        let gap = e.seq.gap();
        if gap.is_none() {
            e.filling = false;
        }
        gap
    }

    /// The room's last delivered seq: `None` when the room has no local
    /// subscriber any more, `Some(None)` before its first message.
    pub(super) fn delivered(&self, room: &str) -> Option<Option<i64>> {
        self.map.get(room).map(|e| e.seq.delivered())
    }

    /// Releases what the room holds past a gap that could not be filled,
    /// handing each message to `emit` as [`Rooms::sequence`] does.
    pub(super) fn give_up_gap(
        &self,
        room: &Arc<str>,
        metrics: &Metrics,
        mut emit: impl FnMut(&[Arc<ConnShared>], &Arc<str>, i64, Utf8Bytes, u64),
    ) {
        let Some(mut entry) = self.map.get_mut(room) else { return };
        let e = entry.value_mut();
        e.filling = false;
        let now = metrics.fanout_seconds.now_ns();
        e.last_delivery_ns = now;
        let subs = &e.subs;
        e.seq.release(|s, f| emit(subs, room, s, f, now));
    }

    /// Up to `max` rooms whose sequencer has been quiet for `quiet_ns` (no
    /// message fanned out, no gap being filled) at `now_ns`, each with its
    /// last delivered seq; the ones compared longest ago first. Marks them
    /// as compared at `tick`.
    pub(super) fn quiet(&self, now_ns: u64, quiet_ns: u64, tick: u64, max: usize) -> Vec<(Arc<str>, i64)> {
        let mut due: Vec<(u64, Arc<str>, i64)> = Vec::new();
        for e in self.map.iter() {
            let r = e.value();
            let Some(delivered) = r.seq.delivered() else { continue };
            if r.filling || r.seq.gap().is_some() || now_ns.saturating_sub(r.last_delivery_ns) < quiet_ns {
                continue;
            }
            due.push((r.tail_tick, e.key().clone(), delivered));
        }
        if due.len() > max {
            due.select_nth_unstable_by_key(max, |d| d.0);
            due.truncate(max);
        }
        for (_, room, _) in &due {
            if let Some(mut e) = self.map.get_mut(room) {
                e.tail_tick = tick;
            }
        }
        due.into_iter().map(|(_, room, seq)| (room, seq)).collect()
    }

    /// Every room with local subscribers.
    pub(super) fn names(&self) -> Vec<Arc<str>> {
        self.map.iter().map(|e| e.key().clone()).collect()
    }

    /// The users with a socket in `room` here, sorted.
    pub(super) fn users_in(&self, room: &str) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = match self.map.get(room) {
            Some(e) => e.subs.iter().map(|c| c.user.clone()).collect(),
            None => Vec::new(),
        };
        users.sort_unstable();
        users.dedup();
        users
    }

    /// Ids of the connections subscribed to `room` here, sorted.
    pub(super) fn subscriber_ids(&self, room: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = match self.map.get(room) {
            Some(e) => e.subs.iter().map(|c| c.id).collect(),
            None => Vec::new(),
        };
        ids.sort_unstable();
        ids
    }

    /// The local sockets of `user` in `room`.
    pub(super) fn conns_of(&self, room: &str, user: &str) -> Vec<Arc<ConnShared>> {
        match self.map.get(room) {
            Some(e) => e.subs.iter().filter(|c| &*c.user == user).cloned().collect(),
            None => Vec::new(),
        }
    }
}
