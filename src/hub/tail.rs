//! The tail check: quiet rooms compared with storage, so that a message the
//! bus lost without anyone noticing still arrives.
//!
//! The bus is lossy by contract (see [`crate::bus`]). A loss is normally
//! found out: the room's next message exposes the gap (filled from storage),
//! a publisher that knows it dropped something announces a `Tail`, and a
//! bus that lost its connection asks for a `Resync`. Two losses have no such
//! trigger: Redis dropping a message silently (no publish error, no
//! disconnect) and an instance that stored a message and died before
//! publishing it. If that message is the last before a room goes quiet,
//! nothing would deliver it until the room's next message or a client's
//! resume.
//!
//! So every period, the rooms with local subscribers that have fanned
//! nothing out for at least a period (and are not filling a gap) are
//! compared with storage's `last_seq`, in one query for up to
//! [`ROOMS_PER_TICK`] rooms, and any that is behind is caught up from
//! storage through the room's sequencer (the `Tail` path): still in order,
//! still exactly once. A busy room is never checked: its next message
//! exposes a gap. Alone (no other instance may publish), every stored
//! message was fanned out here as it was stored, and the check is skipped.

use std::collections::HashMap;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;

/// Rooms compared with storage per tick (one query). With more quiet
/// rooms than this, each is compared every `ceil(rooms / ROOMS_PER_TICK)`
/// ticks, the longest unchecked first.
pub const ROOMS_PER_TICK: usize = 1000;

impl Hub {
    /// Runs the tail check every `period` until `stop`.
    pub(super) async fn run_tail_check(self, period: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let quiet_ns = u64::try_from(period.as_nanos()).unwrap_or(u64::MAX);
        let mut n = 0u64;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            if !self.inner.bus.has_peers() {
                continue;
            }
            n += 1;
            let now_ns = self.inner.metrics.fanout_seconds.now_ns();
            let due = self.inner.rooms.quiet(now_ns, quiet_ns, n, ROOMS_PER_TICK);
            if !due.is_empty() {
                self.check_tails(&due).await;
            }
        }
    }

    /// Compares each room's last delivered seq with storage's and catches
    /// up the rooms that are behind.
    async fn check_tails(&self, due: &[(std::sync::Arc<str>, i64)]) {
        let ids: Vec<&str> = due.iter().map(|(room, _)| &**room).collect();
        let stored: HashMap<String, i64> = match self.inner.store.last_seqs(&ids).await {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                tracing::warn!(error = %e, rooms = due.len(), "tail check: reading last seqs failed");
                return;
            }
        };
        let metrics = &self.inner.metrics;
        metrics.hub_tail_checks.inc_by(due.len() as u64);
        for (room, delivered) in due {
            if self.inner.stop.is_cancelled() {
                return;
            }
            let Some(&last) = stored.get(&**room) else { continue };
            if last <= *delivered {
                continue;
            }
            let recovered = self.catch_up(room, Some(last)).await;
            if recovered > 0 {
                metrics.hub_tail_recovered.inc_by(recovered);
                tracing::info!(room = %room, recovered, last_seq = last, "tail check: delivered what the bus never brought");
            }
        }
    }
}
