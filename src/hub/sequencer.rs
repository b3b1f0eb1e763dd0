//! The per-room seq filter, kept pure so its guarantees can be checked
//! apart from sockets and storage (see the properties below).
//!
//! Two filters stand between a committed message and a socket:
//! - [`Sequencer`], one per room on an instance: it fans each seq out once,
//!   in ascending order, holds what arrives ahead of a gap, and names the
//!   gap for the hub to fill from storage.
//! - [`admit`], one cursor per room on a connection: it drops what the
//!   socket already has (the replay/live seam of `join`) and asks for a
//!   replay from storage when a seq would skip some.
//!
//! Guarantees (the properties in `props`): what is emitted is strictly
//! increasing and exactly once; every seq above the last one emitted when it
//! arrives is emitted in the end; with storage to fill gaps, the output is
//! every seq from the start to the highest one seen.

use std::collections::BTreeMap;

/// One room's delivery order on this instance.
#[derive(Debug)]
pub(super) struct Sequencer<T> {
    /// Last seq emitted; `None` until known (seeded by a join's storage
    /// read, or set by the first message).
    delivered: Option<i64>,
    /// Messages that arrived ahead of a gap, by seq.
    pending: BTreeMap<i64, T>,
}

impl<T> Default for Sequencer<T> {
    fn default() -> Self {
        Sequencer { delivered: None, pending: BTreeMap::new() }
    }
}

/// What [`Sequencer::offer`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offered {
    /// At or below the last emitted seq: dropped.
    Stale,
    /// Held: the seqs between `after` and it are missing.
    Held { after: i64 },
    /// Emitted, with whatever held messages it made contiguous.
    Emitted,
}

impl<T> Sequencer<T> {
    /// The last seq emitted.
    pub(super) fn delivered(&self) -> Option<i64> {
        self.delivered
    }

    /// Starts the order at `last` if nothing set it yet.
    pub(super) fn seed(&mut self, last: i64) {
        if self.delivered.is_none() {
            self.delivered = Some(last);
        }
    }

    /// Offers one message; `emit` receives every seq it releases, in order.
    pub(super) fn offer(&mut self, seq: i64, item: T, mut emit: impl FnMut(i64, T)) -> Offered {
        match self.delivered {
            Some(d) if seq <= d => return Offered::Stale,
            // `d < seq <= i64::MAX`: `d + 1` cannot overflow.
            Some(d) if seq > d + 1 => {
                self.pending.insert(seq, item);
                return Offered::Held { after: d };
            }
            _ => {}
        }
        // Everything held is above `seq` (held only past a gap, drained as
        // soon as it is contiguous): continue the run from here.
        self.delivered = Some(seq);
        emit(seq, item);
        let mut last = seq;
        while let Some(next) = last.checked_add(1)
            && let Some(item) = self.pending.remove(&next)
        {
            last = next;
            self.delivered = Some(last);
            emit(last, item);
        }
        Offered::Emitted
    }

    /// The first gap still open: the seqs strictly between `after` and
    /// `until` are missing and `until` is held.
    pub(super) fn gap(&self) -> Option<(i64, i64)> {
        let d = self.delivered?;
        let (&first, _) = self.pending.first_key_value()?;
        Some((d, first))
    }

    /// Gives up on the missing seqs: emits everything held, in order (each
    /// connection then fills its own gap from storage).
    pub(super) fn release(&mut self, mut emit: impl FnMut(i64, T)) {
        for (seq, item) in std::mem::take(&mut self.pending) {
            if self.delivered.is_none_or(|d| seq > d) {
                self.delivered = Some(seq);
                emit(seq, item);
            }
        }
    }
}

/// What a connection's cursor does with a room's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    /// The socket has it already.
    Stale,
    /// The next one: write it.
    Next,
    /// Seqs between `after` and it are missing: replay them from storage,
    /// then write it.
    AfterReplay { after: i64 },
}

/// The connection-side filter: `last` is the last seq written to the socket
/// for the room (`i64::MAX` while a join's replay is being written, so that
/// nothing live passes).
pub(super) fn admit(last: i64, seq: i64) -> Admit {
    // Past the first branch `last < seq`: `last + 1` cannot overflow.
    if seq <= last {
        Admit::Stale
    } else if seq == last + 1 {
        Admit::Next
    } else {
        Admit::AfterReplay { after: last }
    }
}

#[cfg(test)]
mod props {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    /// A run of events on one room's sequencer.
    #[derive(Debug, Clone)]
    enum Event {
        Offer(i64),
        /// The hub gave up on a gap.
        Release,
    }

    fn events(max: i64) -> impl Strategy<Value = Vec<Event>> {
        prop::collection::vec(prop_oneof![8 => (0..=max).prop_map(Event::Offer), 1 => Just(Event::Release)], 0..80)
    }

    /// Emitted seqs are strictly increasing, and every seq above the last
    /// emitted one when it was offered is emitted in the end (after a
    /// final release): nothing above the seen max is lost.
    fn check_order(seed: Option<i64>, events: &[Event]) -> Result<Vec<i64>, TestCaseError> {
        let mut s = Sequencer::default();
        if let Some(seed) = seed {
            s.seed(seed);
        }
        let mut out = Vec::new();
        let mut owed = BTreeSet::new();
        for e in events {
            match e {
                Event::Offer(seq) => {
                    let before = s.delivered();
                    let r = s.offer(*seq, *seq, |k, v| out.push((k, v)));
                    match before {
                        Some(d) if *seq <= d => prop_assert_eq!(r, Offered::Stale),
                        Some(d) if *seq > d + 1 => prop_assert_eq!(r, Offered::Held { after: d }),
                        _ => prop_assert_eq!(r, Offered::Emitted),
                    }
                    if before.is_none_or(|d| *seq > d) {
                        owed.insert(*seq);
                    }
                }
                Event::Release => s.release(|k, v| out.push((k, v))),
            }
        }
        s.release(|k, v| out.push((k, v)));
        prop_assert!(s.gap().is_none());
        for (k, v) in &out {
            prop_assert_eq!(k, v, "the item emitted with a seq is the one offered with it");
        }
        let seqs: Vec<i64> = out.iter().map(|(k, _)| *k).collect();
        prop_assert!(seqs.windows(2).all(|w| w[0] < w[1]), "not strictly increasing: {:?}", seqs);
        let emitted: BTreeSet<i64> = seqs.iter().copied().collect();
        prop_assert!(owed.is_subset(&emitted), "lost {:?}", owed.difference(&emitted).collect::<Vec<_>>());
        prop_assert!(seed.is_none_or(|d| seqs.iter().all(|k| *k > d)));
        Ok(seqs)
    }

    proptest! {
        #[test]
        fn emits_in_order_exactly_once(seed in prop::option::of(0i64..20), evs in events(60)) {
            check_order(seed, &evs)?;
        }

        /// Every seq from the seed to the highest, in any order, with stale
        /// ones and duplicates (at-least-once bus, concurrent committers):
        /// the output is exactly the run, without any release.
        #[test]
        fn a_complete_run_comes_out_whole(
            seed in 0i64..20,
            len in 0i64..60,
            shuffle_seed in any::<u64>(),
            dups in prop::collection::vec(0i64..80, 0..20),
        ) {
            let top = seed + len;
            let mut seqs: Vec<i64> = (seed + 1..=top).chain(dups.into_iter().filter(|d| *d <= top)).collect();
            // A deterministic shuffle from the generated seed.
            let mut x = shuffle_seed | 1;
            for i in (1..seqs.len()).rev() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                seqs.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut s = Sequencer::default();
            s.seed(seed);
            let mut out = Vec::new();
            for q in &seqs {
                s.offer(*q, (), |k, ()| out.push(k));
            }
            prop_assert!(s.gap().is_none(), "left a gap: {:?}", s.gap());
            prop_assert_eq!(out, (seed + 1..=top).collect::<Vec<_>>());
        }

        /// Filling each gap the sequencer names from storage (which holds
        /// every seq) until none is left: the output is every seq from the
        /// seed to the highest one offered, whatever arrived.
        #[test]
        fn filling_the_named_gaps_loses_nothing(seed in 0i64..20, offered in prop::collection::vec(0i64..80, 0..60)) {
            let mut s = Sequencer::default();
            s.seed(seed);
            let mut out = Vec::new();
            for q in &offered {
                s.offer(*q, (), |k, ()| out.push(k));
            }
            let mut fills = 0;
            while let Some((after, until)) = s.gap() {
                prop_assert!(until - after > 1, "a gap with nothing missing: {after}..{until}");
                for q in after + 1..until {
                    s.offer(q, (), |k, ()| out.push(k));
                }
                fills += 1;
                prop_assert!(fills <= offered.len(), "gap filling does not converge");
            }
            let top = offered.iter().copied().filter(|q| *q > seed).max().unwrap_or(seed);
            prop_assert_eq!(out, (seed + 1..=top).collect::<Vec<_>>());
        }

        /// The connection cursor with a replay from storage: whatever the
        /// room delivers (stale, duplicated, skipping), the socket gets every
        /// seq from its start to the highest delivered, once, in order.
        #[test]
        fn the_connection_cursor_writes_each_seq_once(start in 0i64..20, delivered in prop::collection::vec(0i64..80, 0..60)) {
            let mut last = start;
            let mut written = Vec::new();
            for seq in delivered.iter().copied() {
                match admit(last, seq) {
                    Admit::Stale => prop_assert!(seq <= last),
                    Admit::Next => written.push(seq),
                    Admit::AfterReplay { after } => {
                        prop_assert_eq!(after, last);
                        written.extend(after + 1..seq);
                        written.push(seq);
                    }
                }
                last = last.max(seq);
            }
            let top = delivered.iter().copied().filter(|q| *q > start).max().unwrap_or(start);
            prop_assert_eq!(written, (start + 1..=top).collect::<Vec<_>>());
        }

        /// While a join's replay is written (`i64::MAX`), nothing passes.
        #[test]
        fn nothing_passes_during_a_join(seq in any::<i64>()) {
            prop_assert_eq!(admit(i64::MAX, seq), Admit::Stale);
        }
    }
}
