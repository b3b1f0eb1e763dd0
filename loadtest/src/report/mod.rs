//! The run report: numbers, the human table, JSON and an SVG plot, and the
//! merge of several shards' reports into one.
//!
//! A report carries what an exact merge needs: the latency histograms
//! themselves (HdrHistogram V2 serialisation, base64) and a per-room
//! delivery ledger from which expected and lost deliveries are recomputed
//! once every shard's highest acknowledged seq is known.
//!
//! The merge lives in `merge.rs` and the table and plot in `render.rs`;
//! both read the types here, which use neither.

pub(crate) mod merge;
pub(crate) mod render;

use std::collections::{BTreeMap, HashMap};

use anyhow::Context;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use serde::{Deserialize, Serialize};

use crate::client::{Observed, RoomView};
use base64::Engine;
use base64::prelude::BASE64_STANDARD;

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

/// One second of the run (`t`: seconds since the start of the measured
/// window, the same instant in every shard).
#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct Second {
    pub t: u32,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The gateway's resource use over the measured window (summed over every
/// `--gateway-pid` / `--metrics-url` given).
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
#[serde(default)]
pub struct Server {
    /// What was read: `pid:N` / `metrics:URL`.
    pub sources: Vec<String>,
    pub cpu_seconds: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
    pub rss_kib_peak: u64,
    /// Server CPU µs per delivered message.
    pub cpu_us_per_delivery: Option<f64>,
    /// RSS growth per connection held.
    pub kib_per_connection: Option<f64>,
    /// Context switches of the server's threads over the window.
    pub ctx_switches: Option<u64>,
    /// Context switches per delivered message.
    pub ctx_switches_per_delivery: Option<f64>,
}

/// Clients per gateway URL.
#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq)]
pub struct TargetCount {
    pub url: String,
    pub clients: usize,
    /// Of which senders (traffic scenarios).
    pub senders: usize,
    pub connected: usize,
}

/// One room's delivery accounting, mergeable across shards.
///
/// Every client view of the room expects every seq in `(baseline, last]`,
/// where `last` = max(highest seq acknowledged to any sender of the run,
/// highest seq the view saw). So expected = Σ last − Σ baseline, and
/// lost = expected − distinct seqs seen. `last` depends on the whole run's
/// acknowledgements, hence the views whose own `max_seen` exceeds this
/// report's `acked` are kept individually in `beyond`.
#[derive(Debug, Default, Serialize, Deserialize, Clone, PartialEq)]
pub struct RoomLedger {
    /// Highest seq acknowledged to a sender (0: none).
    pub acked: i64,
    /// Client views of the room.
    pub views: u64,
    /// Σ baseline (last seq at join) over the views.
    pub baselines: i64,
    /// Σ distinct seqs seen above the baseline over the views.
    pub seen: u64,
    /// `max_seen` of the views that saw more than `acked`.
    pub beyond: Vec<i64>,
}

impl RoomLedger {
    fn add_view(&mut self, v: &RoomView) {
        self.views += 1;
        self.baselines += v.baseline;
        self.seen += v.seen.len() as u64;
        if v.max_seen > self.acked {
            self.beyond.push(v.max_seen);
        }
    }

    /// Folds another shard's ledger of the same room into this one.
    fn merge(&mut self, other: &RoomLedger) {
        self.acked = self.acked.max(other.acked);
        self.views += other.views;
        self.baselines += other.baselines;
        self.seen += other.seen;
        self.beyond.extend_from_slice(&other.beyond);
        // A view at or below `acked` expects up to `acked` either way.
        let acked = self.acked;
        self.beyond.retain(|m| *m > acked);
        self.beyond.sort_unstable();
    }

    /// Deliveries every view of the room should have seen.
    pub fn expected(&self) -> u64 {
        let f = i128::from(self.acked);
        let plain = i128::from(self.views) - self.beyond.len() as i128;
        let last: i128 = plain * f + self.beyond.iter().map(|m| i128::from(*m).max(f)).sum::<i128>();
        (last - i128::from(self.baselines)).max(0) as u64
    }
}

/// The histograms behind `latency` and `timeline`, for an exact merge.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
#[serde(default)]
pub struct Histograms {
    /// End-to-end latency in µs after the warmup: base64 of the HdrHistogram
    /// V2 serialisation.
    pub latency_us: String,
    /// (second since t0, histogram of that second's latencies in µs).
    pub per_second: Vec<(u32, String)>,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Report {
    pub scenario: String,
    pub targets: Vec<String>,
    /// `i/n` for one shard of a split run.
    pub shard: Option<String>,
    /// The shards a merged report was made from.
    pub merged_from: Vec<String>,
    /// Shared by all shards of a run (room names, client_msg_ids).
    pub run_id: u32,
    pub clients: usize,
    pub connected: usize,
    pub per_target: Vec<TargetCount>,
    pub duration_secs: f64,
    /// Intended sends per second of this process (its share of `--rate`).
    pub send_rate: f64,
    pub sends: u64,
    pub acks: u64,
    pub deliveries: u64,
    /// Deliveries counted at the end of the measured window (before the drain).
    pub measured_deliveries: u64,
    pub deliveries_per_sec: f64,
    /// What every receiver should have seen (from the ledger).
    pub expected_deliveries: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub reconnects: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub closes_by_code: BTreeMap<String, u64>,
    pub connect_failures_by_reason: BTreeMap<String, u64>,
    pub handshakes_per_sec: Option<f64>,
    pub warmup_secs: u32,
    pub latency: Latency,
    /// (upper bound in ms, deliveries) in 0.25 ms buckets up to p99.9.
    pub distribution: Vec<(f64, u64)>,
    pub timeline: Vec<Second>,
    pub server: Option<Server>,
    /// Per room: the accounting ledger.
    pub ledger: BTreeMap<String, RoomLedger>,
    pub histograms: Histograms,
}

fn percentiles(h: &Histogram<u64>) -> Latency {
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    Latency {
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: h.max() as f64 / 1000.0,
        samples: h.len(),
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 1 h at 3 significant figures; the bounds are constants.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn encode(h: &Histogram<u64>) -> String {
    let mut buf = Vec::new();
    V2Serializer::new().serialize(h, &mut buf).expect("serialising to memory");
    BASE64_STANDARD.encode(&buf)
}

fn decode(text: &str) -> anyhow::Result<Histogram<u64>> {
    if text.is_empty() {
        return Ok(histogram());
    }
    let bytes = BASE64_STANDARD.decode(text).context("histogram is not base64")?;
    let h: Histogram<u64> = Deserializer::new().deserialize(&mut bytes.as_slice()).context("not a V2 histogram")?;
    // Re-home into the standard bounds so that adding never overflows them.
    let mut out = histogram();
    out.add(&h).context("histogram outside the harness's bounds")?;
    Ok(out)
}

fn sum_into(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_default() += v;
    }
}

impl Report {
    /// Merges what every client observed. `final_seq` is, per room, the
    /// highest seq acknowledged by any sender: every client should have seen
    /// everything between its baseline and it.
    pub fn absorb(&mut self, all: Vec<Observed>, final_seq: &HashMap<String, i64>, warmup_secs: u32) {
        let mut h = histogram();
        let mut per_sec: BTreeMap<u32, Histogram<u64>> = BTreeMap::new();
        for (room, seq) in final_seq {
            let e = self.ledger.entry(room.clone()).or_default();
            e.acked = e.acked.max(*seq);
        }
        for o in all {
            for &(sec, us) in &o.samples {
                let v = u64::from(us.max(1));
                per_sec.entry(sec).or_insert_with(histogram).saturating_record(v);
                if sec >= warmup_secs {
                    h.saturating_record(v);
                }
            }
            self.deliveries += o.deliveries;
            self.duplicated += o.duplicates;
            self.reordered += o.reordered;
            self.acks += o.acks;
            self.sends += o.sends;
            self.reconnects += o.reconnects;
            for (k, v) in o.errors {
                *self.errors_by_code.entry(k).or_default() += v;
            }
            for (k, v) in o.closes {
                *self.closes_by_code.entry(k).or_default() += v;
            }
            for (room, view) in &o.rooms {
                self.ledger.entry(room.clone()).or_default().add_view(view);
            }
        }
        for l in self.ledger.values_mut() {
            l.beyond.sort_unstable();
        }
        self.warmup_secs = warmup_secs;
        self.account();
        self.set_histograms(h, per_sec);
        if self.duration_secs > 0.0 {
            self.deliveries_per_sec = self.deliveries as f64 / self.duration_secs;
        }
    }

    /// Expected and lost deliveries from the ledger.
    fn account(&mut self) {
        self.expected_deliveries = self.ledger.values().map(RoomLedger::expected).sum();
        let seen: u64 = self.ledger.values().map(|l| l.seen).sum();
        self.lost = self.expected_deliveries.saturating_sub(seen);
    }

    /// Percentiles, distribution, timeline, and the serialised histograms.
    fn set_histograms(&mut self, h: Histogram<u64>, per_sec: BTreeMap<u32, Histogram<u64>>) {
        self.latency = percentiles(&h);
        let cap_us = h.value_at_quantile(0.999).max(250);
        self.distribution = h
            .iter_linear(250)
            .take_while(|v| v.value_iterated_to() <= cap_us + 250)
            .map(|v| ((v.value_iterated_to() + 1) as f64 / 1000.0, v.count_since_last_iteration()))
            .collect();
        self.timeline = per_sec
            .iter()
            .map(|(t, h)| Second {
                t: *t,
                deliveries: h.len(),
                p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
            })
            .collect();
        self.histograms =
            Histograms { latency_us: encode(&h), per_second: per_sec.iter().map(|(t, h)| (*t, encode(h))).collect() };
    }

    /// True when the run is clean enough to pass `--assert`.
    pub fn failures(&self, max_p99_ms: Option<f64>, max_error_rate: Option<f64>) -> Vec<String> {
        let mut f = Vec::new();
        if self.lost > 0 {
            f.push(format!("{} messages lost", self.lost));
        }
        if self.duplicated > 0 {
            f.push(format!("{} messages duplicated", self.duplicated));
        }
        if self.reordered > 0 {
            f.push(format!("{} messages out of order", self.reordered));
        }
        if let Some(max) = max_p99_ms
            && self.latency.p99_ms > max
        {
            f.push(format!("p99 {:.2} ms > {max} ms", self.latency.p99_ms));
        }
        let errors: u64 =
            self.errors_by_code.values().sum::<u64>() + self.connect_failures_by_reason.values().sum::<u64>();
        let attempts = (self.sends + self.clients as u64).max(1);
        if let Some(max) = max_error_rate
            && errors as f64 / attempts as f64 > max
        {
            f.push(format!("error rate {:.4} > {max}", errors as f64 / attempts as f64));
        }
        f
    }
}
