//! A latency histogram for the per-recipient path.
//!
//! Fan-out latency is observed once per recipient, on that recipient's
//! connection task. A shared histogram would put an atomic write on a
//! shared cache line per delivered frame, which is exactly the cost the
//! delivery path avoids elsewhere (one counter update per message, not per
//! recipient). So each connection counts into its own plain [`Local`]
//! buckets and folds them into the shared [`BatchedHistogram`] at most once
//! a second, and when it ends. A scrape may therefore lag by up to a
//! second per busy connection (longer for a connection that received one
//! frame and went quiet: it folds at its next heartbeat).
//!
//! Times are integer nanoseconds on the histogram's own clock
//! ([`BatchedHistogram::now_ns`]): a recipient's observation is then a
//! subtraction and a few compares, with no `Duration` arithmetic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
#[cfg(test)]
use std::time::Duration;
use std::time::Instant;

use prometheus::core::{Collector, Desc};
use prometheus::proto;

/// Upper bounds in seconds, shared by the latency histograms.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const N: usize = LATENCY_BUCKETS.len();

/// The same bounds in nanoseconds, so an observation is integer compares.
const BOUNDS_NS: [u64; N] = {
    let mut out = [0u64; N];
    let mut i = 0;
    while i < N {
        out[i] = (LATENCY_BUCKETS[i] * 1e9) as u64;
        i += 1;
    }
    out
};

/// How often a [`Local`] folds into the shared histogram at most (ns).
const FOLD_EVERY_NS: u64 = 1_000_000_000;

struct Shared {
    desc: Desc,
    /// The zero of [`BatchedHistogram::now_ns`].
    epoch: Instant,
    /// Per bucket (non-cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; N + 1],
    sum_ns: AtomicU64,
}

/// The shared side: registered once, exported as a Prometheus histogram.
#[derive(Clone)]
pub struct BatchedHistogram(Arc<Shared>);

impl BatchedHistogram {
    /// # Panics
    /// When `name` or `help` is not a valid metric name or help text.
    pub fn new(name: &str, help: &str) -> Self {
        let desc = Desc::new(name.into(), help.into(), Vec::new(), Default::default()).expect("valid metric");
        BatchedHistogram(Arc::new(Shared {
            desc,
            epoch: Instant::now(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }))
    }

    /// Nanoseconds since this histogram was made: the clock observations
    /// are taken on.
    pub fn now_ns(&self) -> u64 {
        self.0.epoch.elapsed().as_nanos() as u64
    }

    /// Observations folded in so far (tests).
    pub fn count(&self) -> u64 {
        self.0.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }
}

impl Collector for BatchedHistogram {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.0.desc]
    }

    fn collect(&self) -> Vec<proto::MetricFamily> {
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(N);
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.0.buckets[i].load(Ordering::Relaxed);
            let mut b = proto::Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        cumulative += self.0.buckets[N].load(Ordering::Relaxed);
        let mut h = proto::Histogram::default();
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(self.0.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let mut m = proto::Metric::default();
        m.set_histogram(h);
        let mut family = proto::MetricFamily::default();
        family.set_name(self.0.desc.fq_name.clone());
        family.set_help(self.0.desc.help.clone());
        family.set_field_type(proto::MetricType::HISTOGRAM);
        family.set_metric(vec![m]);
        vec![family]
    }
}

/// One task's unshared buckets; folds into the shared histogram when
/// dropped too.
pub struct Local {
    shared: BatchedHistogram,
    buckets: [u32; N + 1],
    sum_ns: u64,
    pending: u32,
    /// When the next fold is due, on the shared clock.
    fold_at_ns: u64,
}

impl Local {
    pub fn new(shared: &BatchedHistogram) -> Self {
        let fold_at_ns = shared.now_ns() + FOLD_EVERY_NS;
        Local { shared: shared.clone(), buckets: [0; N + 1], sum_ns: 0, pending: 0, fold_at_ns }
    }

    /// Records `since_ns..now_ns` (both from [`BatchedHistogram::now_ns`]);
    /// folds when a second has passed since the last fold. `now_ns` is
    /// passed in so a batch of frames reads the clock once.
    pub fn observe(&mut self, since_ns: u64, now_ns: u64) {
        let ns = now_ns.saturating_sub(since_ns);
        let i = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(N);
        self.buckets[i] += 1;
        self.sum_ns = self.sum_ns.saturating_add(ns);
        self.pending += 1;
        if now_ns >= self.fold_at_ns || self.pending == u32::MAX {
            self.fold(now_ns);
        }
    }

    /// Adds what was counted here to the shared histogram.
    pub fn fold(&mut self, now_ns: u64) {
        self.fold_at_ns = now_ns + FOLD_EVERY_NS;
        if self.pending == 0 {
            return;
        }
        for (shared, local) in self.shared.0.buckets.iter().zip(self.buckets.iter_mut()) {
            if *local > 0 {
                shared.fetch_add(u64::from(*local), Ordering::Relaxed);
                *local = 0;
            }
        }
        self.shared.0.sum_ns.fetch_add(self.sum_ns, Ordering::Relaxed);
        self.sum_ns = 0;
        self.pending = 0;
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        // The next fold time no longer matters.
        self.fold(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_buckets_fold_into_the_exported_histogram() {
        let shared = BatchedHistogram::new("t_seconds", "test");
        let t0 = shared.now_ns();
        let at = |d: Duration| t0 + d.as_nanos() as u64;
        {
            let mut local = Local::new(&shared);
            local.observe(t0, at(Duration::from_micros(300))); // <= 0.0005
            local.observe(t0, at(Duration::from_millis(3))); // <= 0.005
            local.observe(t0, at(Duration::from_secs(60))); // +Inf, and a fold (a second passed)
            assert_eq!(shared.count(), 3);
            local.observe(at(Duration::from_secs(60)), at(Duration::from_secs(60) + Duration::from_millis(3)));
            assert_eq!(shared.count(), 3, "not folded within the second");
        }
        assert_eq!(shared.count(), 4, "folded at drop");
        let family = &shared.collect()[0];
        let h = family.get_metric()[0].get_histogram();
        let cum: Vec<u64> = h.get_bucket().iter().map(|b| b.cumulative_count()).collect();
        assert_eq!(cum[0], 1);
        assert_eq!(cum[3], 3);
        assert_eq!(cum[N - 1], 3);
        assert_eq!(h.get_sample_count(), 4);
        assert!((h.get_sample_sum() - 60.0063).abs() < 1e-6, "{}", h.get_sample_sum());
    }
}
