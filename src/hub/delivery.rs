//! Delivery: a stored message's way from "stored" to "offered to each
//! subscribed socket's queue", one name per step, in this file's order:
//!
//! 1. [`Hub::stored`]: what a batch stored (the committer's or an
//!    erasure's `AppendOutcome`s); each message's frame is encoded here,
//!    once for every recipient on every instance.
//! 2. [`Hub::publish_stored`]: notes the room's newest seq for the
//!    per-user stream and publishes the message to the other instances.
//! 3. [`Hub::fan_out`]: the room's sequencer puts the message in seq order
//!    ([`super::room::Rooms::sequence`], under the room's guard); a message
//!    heard on the bus enters here. A message held past a gap starts a gap
//!    fill.
//! 4. [`offer_to_subscribers`]: one [`Delivery`] per message, its `Arc`
//!    offered to each subscriber's queue with
//!    [`ConnShared::offer`](super::ConnShared) (a full queue cuts that
//!    socket off, never slows the room).
//!
//! The gap fill ([`Hub::fill_gap`], [`Hub::give_up_gap`]) and the catch-up
//! from storage ([`Hub::catch_up`], for `Tail`, `Resync` and the tail
//! check) live here, not with the room: they feed step 3 again, and they
//! need storage, the hub's task tracker and its stop token, which the
//! room's map has no business holding. [`super::room::Rooms`] keeps the
//! sequencer state and its guarded primitives (`sequence`, `next_gap`,
//! `give_up_gap`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;

use super::Hub;
use super::registry::{ConnShared, Delivery, Outbound};
use super::room::Sequenced;
use super::wire::message_frame;
use crate::bus::BusEvent;
use crate::db::AppendOutcome;
use crate::metrics::Metrics;

/// Messages fetched per storage read when catching a room up.
const CATCH_UP_PAGE: i64 = 1000;

impl Hub {
    /// Step 1: delivers what a batch stored, in seq order per room: outcomes
    /// of one room are in ascending seq already (allocated in batch order).
    pub(super) fn stored(&self, outcomes: &[AppendOutcome]) {
        for o in outcomes {
            match o {
                AppendOutcome::Stored(m) => {
                    self.metrics().ws_messages_stored.inc();
                    self.publish_stored(&m.room, m.seq, message_frame(m));
                }
                // A re-send: the first attempt may have been stored by an
                // instance that died before fanning it out. Delivering again
                // is free of duplicates (rooms and sockets drop seqs they
                // have) and closes that hole.
                AppendOutcome::Duplicate(m) | AppendOutcome::Conflict(m) => {
                    self.publish_stored(&m.room, m.seq, message_frame(m))
                }
                _ => {}
            }
        }
    }

    /// Step 2: a message stored by this instance goes to the per-user
    /// stream's seq map and to the other instances, then to the room here.
    pub(super) fn publish_stored(&self, room: &str, seq: i64, frame: Utf8Bytes) {
        self.inner.user_stream.note_seq(room, seq);
        self.publish(|| BusEvent::Message { room: Arc::from(room), seq, frame: frame.clone() });
        self.fan_out(room, seq, frame);
    }

    /// Step 3: fans a stored message out to this instance's subscribers in
    /// seq order. Says whether it was fanned out now (not a duplicate, not
    /// held past a gap): what fills from storage count.
    pub(super) fn fan_out(&self, room: &str, seq: i64, frame: Utf8Bytes) -> bool {
        let metrics = &self.inner.metrics;
        let sequenced = self.inner.rooms.sequence(room, seq, frame, metrics, |subs, room, s, f, ready| {
            offer_to_subscribers(subs, room, s, f, ready, metrics)
        });
        match sequenced {
            Sequenced::Emitted => true,
            Sequenced::StartFill(room) => {
                let hub = self.clone();
                self.spawn_task(async move { hub.fill_gap(room).await });
                false
            }
            Sequenced::Dropped => false,
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
            let Some((after, until)) = self.inner.rooms.next_gap(&room) else { break None };
            match self.inner.store.history(&room, Some(after), Some(until), until - after).await {
                Ok(page) => {
                    failures = 0;
                    for m in &page.messages {
                        delivered += u64::from(self.fan_out(&room, m.seq, message_frame(m)));
                    }
                    // No progress: the first missing seq is not in storage
                    // (unless the last local socket left meanwhile).
                    let Some(now) = self.inner.rooms.delivered(&room) else { break None };
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

    /// Releases what the room holds past a gap that could not be filled,
    /// through step 4 like any released message.
    fn give_up_gap(&self, room: &Arc<str>) {
        let metrics = &self.inner.metrics;
        self.inner.rooms.give_up_gap(room, metrics, |subs, room, s, f, ready| {
            offer_to_subscribers(subs, room, s, f, ready, metrics)
        });
    }

    /// Delivers whatever storage has beyond the room's last delivered seq
    /// (up to `until`, inclusive, when given); returns how many messages
    /// that fanned out (those the bus brought meanwhile are not counted).
    pub(super) async fn catch_up(&self, room: &Arc<str>, until: Option<i64>) -> u64 {
        let mut delivered = 0;
        loop {
            let Some(after) = self.inner.rooms.delivered(room).flatten() else { return delivered };
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
                delivered += u64::from(self.fan_out(room, m.seq, message_frame(m)));
            }
            if !page.has_more || page.messages.is_empty() {
                return delivered;
            }
        }
    }
}

/// Step 4: one allocation for the message, its `Arc` offered to every
/// subscriber's queue. Shared metrics are updated once per message, never
/// per recipient.
fn offer_to_subscribers(
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
    metrics.ws_deliveries.inc_by(queued);
    metrics.frames_out.add("message", queued);
    metrics.outbound_queue_depth.observe(deepest as f64);
}
