//! Rooms on this instance: who is subscribed, and the sequencer that fans
//! stored messages out in seq order.
//!
//! Each room remembers the last seq it fanned out. A message that arrives
//! early (from another instance, or from a concurrent committer) is held
//! until the gap before it is filled, from the bus or from storage; a
//! duplicate is dropped. Each connection also filters by its own last seq
//! per room, which makes the replay/live seam of `join` exact.
//!
//! The room's bus interest follows its entry here: created with the first
//! local subscriber, released with the last, both under the entry's guard so
//! the bus sees them in the order they happened.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;

use super::sequencer::{Offered, Sequencer};
use super::{ConnShared, Delivery, Hub, Outbound};
use crate::bus::BusFuture;
use crate::hub::wire::message_frame;
use crate::metrics::Metrics;
use crate::protocol;

/// Messages fetched per storage read when catching a room up.
const CATCH_UP_PAGE: i64 = 1000;

#[derive(Default)]
pub(super) struct RoomEntry {
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

/// The rooms with at least one local subscriber.
#[derive(Default)]
pub(super) struct Rooms {
    map: DashMap<Arc<str>, RoomEntry>,
}

impl Rooms {
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }
}

impl Hub {
    /// Adds the connection to the room's subscribers; announces presence when
    /// it is the user's first socket in the room here. The returned future
    /// resolves once the bus confirmed the room's subscription: storage read
    /// after it misses nothing that other instances publish.
    pub fn subscribe(&self, conn: &Arc<ConnShared>, room: &Arc<str>) -> BusFuture {
        let (first, watched) = {
            let mut entry = self.inner.rooms.map.entry(room.clone()).or_default();
            // Under the guard: interest changes reach the bus in order.
            let watched = self.inner.bus.watch_room(room);
            if entry.subs.iter().any(|c| c.id == conn.id) {
                return watched;
            }
            let first = !entry.subs.iter().any(|c| c.user == conn.user);
            entry.subs.push(conn.clone());
            (first, watched)
        };
        if first {
            self.presence_changed(room, &conn.user);
        }
        watched
    }

    /// Removes the connection from the room; announces the user's departure
    /// when it was their last socket in the room here.
    pub fn unsubscribe(&self, conn: &Arc<ConnShared>, room: &str) {
        let room: Arc<str> = Arc::from(room);
        let last = match self.inner.rooms.map.entry(room.clone()) {
            dashmap::Entry::Occupied(mut e) => {
                let before = e.get().subs.len();
                e.get_mut().subs.retain(|c| c.id != conn.id);
                let removed = e.get().subs.len() != before;
                let last = removed && !e.get().subs.iter().any(|c| c.user == conn.user);
                if e.get().subs.is_empty() {
                    self.inner.bus.unwatch_room(&room);
                    e.remove();
                }
                last
            }
            dashmap::Entry::Vacant(_) => false,
        };
        if last {
            self.presence_changed(&room, &conn.user);
        }
    }

    /// The seq a joining socket read from storage: the room's sequencer
    /// starts there if it had nothing yet, so a later gap is noticed.
    pub fn seed_room(&self, room: &str, last_seq: i64) {
        if let Some(mut e) = self.inner.rooms.map.get_mut(room) {
            e.seq.seed(last_seq);
        }
    }

    /// Sends an ephemeral frame to the room's sockets here (except
    /// `exclude`) and on other instances.
    pub fn broadcast(&self, room: &str, frame: Utf8Bytes, exclude: Option<u64>) {
        self.fan_out_event(room, &frame, exclude);
        self.publish(|| crate::bus::BusEvent::Ephemeral { room: Arc::from(room), frame });
    }

    pub(super) fn fan_out_event(&self, room: &str, frame: &Utf8Bytes, exclude: Option<u64>) {
        // Under the room's guard, like message fan-out: `offer` never waits.
        let Some(entry) = self.inner.rooms.map.get(room) else { return };
        let shared = Arc::new(frame.clone());
        let metrics = &self.inner.metrics;
        let mut queued = 0;
        for c in entry.subs.iter().filter(|c| Some(c.id) != exclude) {
            queued += u64::from(c.offer(Outbound::Event(shared.clone()), metrics));
        }
        metrics.frames_out.add(protocol::kind_of(frame), queued);
    }

    /// Like [`Hub::fan_out_event`], skipping every socket of `user`.
    pub(super) fn fan_out_event_except(&self, room: &str, frame: &Utf8Bytes, user: &str) {
        let Some(entry) = self.inner.rooms.map.get(room) else { return };
        let shared = Arc::new(frame.clone());
        let metrics = &self.inner.metrics;
        let mut queued = 0;
        for c in entry.subs.iter().filter(|c| &*c.user != user) {
            queued += u64::from(c.offer(Outbound::Event(shared.clone()), metrics));
        }
        metrics.frames_out.add(protocol::kind_of(frame), queued);
    }

    /// Delivers a message to this instance's subscribers in seq order.
    pub fn deliver(&self, room: &str, seq: i64, frame: Utf8Bytes) {
        self.offer(room, seq, frame);
    }

    /// [`Hub::deliver`], saying whether the message was fanned out now
    /// (not a duplicate, not held past a gap): what fills from storage
    /// count.
    fn offer(&self, room: &str, seq: i64, frame: Utf8Bytes) -> bool {
        let Some(mut entry) = self.inner.rooms.map.get_mut(room) else { return false };
        let room_arc: Arc<str> = entry.key().clone();
        let e = entry.value_mut();
        let metrics = &self.inner.metrics;
        // One clock read for the run this message releases, none for a
        // duplicate.
        let mut now = None;
        let subs = &e.subs;
        let offered = e.seq.offer(seq, frame, |s, f| {
            let ready = *now.get_or_insert_with(|| metrics.fanout_seconds.now_ns());
            fan_out_message(subs, &room_arc, s, f, ready, metrics);
        });
        if let Some(ns) = now {
            e.last_delivery_ns = ns;
        }
        match offered {
            Offered::Held { .. } if !e.filling => {
                e.filling = true;
                let hub = self.clone();
                self.spawn_task(async move { hub.fill_gap(room_arc).await });
                false
            }
            Offered::Emitted => true,
            Offered::Held { .. } | Offered::Stale => false,
        }
    }

    /// Fills the room's gaps from storage, one after the other, until none
    /// is left. A gap storage cannot fill (nothing more there, or five
    /// failed reads in a row, or shutdown) is given up: what is held is
    /// released and each connection fills its own gap from storage.
    ///
    /// Counted once per fill: `chatgw_hub_gap_fills_total` when it
    /// delivered at least one message, `chatgw_hub_gap_fill_giveups_total`
    /// by reason when it gave up (a fill may do both).
    async fn fill_gap(&self, room: Arc<str>) {
        let mut failures = 0u64;
        let mut delivered = 0u64;
        let gave_up = loop {
            let Some((after, until)) = self.next_gap(&room) else { break None };
            match self.inner.store.history(&room, Some(after), Some(until), until - after).await {
                Ok(page) => {
                    failures = 0;
                    for m in &page.messages {
                        delivered += u64::from(self.offer(&room, m.seq, message_frame(m)));
                    }
                    // No progress: the first missing seq is not in storage
                    // (unless the last local socket left meanwhile).
                    let Some(now) = self.inner.rooms.map.get(&room).map(|e| e.seq.delivered()) else { break None };
                    if now.is_none_or(|d| d <= after) {
                        break Some("not_stored");
                    }
                }
                Err(err) => {
                    tracing::warn!(room = %room, error = %err, attempt = failures, "gap fill failed");
                    failures += 1;
                    if failures >= 5 {
                        break Some("storage_error");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(100 * failures)) => {}
                        () = self.inner.stop.cancelled() => break Some("shutdown"),
                    }
                }
            }
        };
        let metrics = &self.inner.metrics;
        if delivered > 0 {
            metrics.hub_gap_fills.inc();
        }
        if let Some(reason) = gave_up {
            metrics.hub_gap_fill_giveups.inc(reason);
            if reason != "shutdown" {
                tracing::warn!(room = %room, reason, "gap fill given up: each socket replays from storage itself");
            }
            self.give_up_gap(&room);
        }
    }

    /// The room's first open gap. With none left, clears `filling` under the
    /// same guard: a message held after that starts a new fill.
    fn next_gap(&self, room: &str) -> Option<(i64, i64)> {
        let mut e = self.inner.rooms.map.get_mut(room)?;
        let gap = e.seq.gap();
        if gap.is_none() {
            e.filling = false;
        }
        gap
    }

    /// Releases what the room holds past a gap that could not be filled.
    fn give_up_gap(&self, room: &Arc<str>) {
        let Some(mut entry) = self.inner.rooms.map.get_mut(room) else { return };
        let e = entry.value_mut();
        e.filling = false;
        let metrics = &self.inner.metrics;
        let now = metrics.fanout_seconds.now_ns();
        e.last_delivery_ns = now;
        let subs = &e.subs;
        e.seq.release(|s, f| fan_out_message(subs, room, s, f, now, metrics));
    }

    /// Delivers whatever storage has beyond the room's last delivered seq
    /// (up to `until`, inclusive, when given); returns how many messages
    /// that fanned out (those the bus brought meanwhile are not counted).
    pub(super) async fn catch_up(&self, room: &Arc<str>, until: Option<i64>) -> u64 {
        let mut delivered = 0;
        loop {
            let Some(after) = self.inner.rooms.map.get(room).and_then(|e| e.seq.delivered()) else { return delivered };
            if until.is_some_and(|u| after >= u) {
                return delivered;
            }
            let page = match self.inner.store.history(room, Some(after), until.map(|u| u + 1), CATCH_UP_PAGE).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(room = %room, error = %e, "catching a room up from storage failed");
                    return delivered;
                }
            };
            for m in &page.messages {
                delivered += u64::from(self.offer(room, m.seq, message_frame(m)));
            }
            if !page.has_more || page.messages.is_empty() {
                return delivered;
            }
        }
    }

    /// Up to `max` rooms whose sequencer has been quiet for `quiet_ns` (no
    /// message fanned out, no gap being filled), each with its last
    /// delivered seq; the ones compared longest ago first. Marks them as
    /// compared at `tick`.
    pub(super) fn quiet_rooms(&self, quiet_ns: u64, tick: u64, max: usize) -> Vec<(Arc<str>, i64)> {
        let now = self.inner.metrics.fanout_seconds.now_ns();
        let mut due: Vec<(u64, Arc<str>, i64)> = Vec::new();
        for e in self.inner.rooms.map.iter() {
            let r = e.value();
            let Some(delivered) = r.seq.delivered() else { continue };
            if r.filling || r.seq.gap().is_some() || now.saturating_sub(r.last_delivery_ns) < quiet_ns {
                continue;
            }
            due.push((r.tail_tick, e.key().clone(), delivered));
        }
        if due.len() > max {
            due.select_nth_unstable_by_key(max, |d| d.0);
            due.truncate(max);
        }
        for (_, room, _) in &due {
            if let Some(mut e) = self.inner.rooms.map.get_mut(room) {
                e.tail_tick = tick;
            }
        }
        due.into_iter().map(|(_, room, seq)| (room, seq)).collect()
    }

    /// Every room with local subscribers.
    pub(super) fn local_rooms(&self) -> Vec<Arc<str>> {
        self.inner.rooms.map.iter().map(|e| e.key().clone()).collect()
    }

    /// The users with a socket in `room` here.
    pub(super) fn local_users(&self, room: &str) -> Vec<Arc<str>> {
        let mut users: Vec<Arc<str>> = match self.inner.rooms.map.get(room) {
            Some(e) => e.subs.iter().map(|c| c.user.clone()).collect(),
            None => Vec::new(),
        };
        users.sort_unstable();
        users.dedup();
        users
    }

    /// The local sockets of `user` in `room`.
    /// Ids of the connections subscribed to `room` here, sorted.
    pub(super) fn subscriber_ids(&self, room: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = match self.inner.rooms.map.get(room) {
            Some(e) => e.subs.iter().map(|c| c.id).collect(),
            None => Vec::new(),
        };
        ids.sort_unstable();
        ids
    }

    pub(super) fn room_conns_of(&self, room: &str, user: &str) -> Vec<Arc<ConnShared>> {
        match self.inner.rooms.map.get(room) {
            Some(e) => e.subs.iter().filter(|c| &*c.user == user).cloned().collect(),
            None => Vec::new(),
        }
    }
}

fn fan_out_message(
    subs: &[Arc<ConnShared>],
    room: &Arc<str>,
    seq: i64,
    frame: Utf8Bytes,
    ready_ns: u64,
    metrics: &Metrics,
) {
    let d = Arc::new(Delivery { room: room.clone(), seq, frame, ready_ns });
    let mut queued = 0;
    let mut deepest = 0;
    for c in subs {
        // A load of the queue's own counter, which `try_send` touches anyway.
        deepest = deepest.max(c.queued());
        if c.offer(Outbound::Message(d.clone()), metrics) {
            queued += 1;
        }
    }
    // Shared-metric updates per message, never per recipient.
    metrics.ws_deliveries.inc_by(queued);
    metrics.frames_out.add("message", queued);
    metrics.outbound_queue_depth.observe(deepest as f64);
}
