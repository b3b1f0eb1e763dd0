//! The run report: numbers, the human table, JSON and an SVG plot, and the
//! merge of several shards' reports into one.
//!
//! A report carries what an exact merge needs: the latency histograms
//! themselves (HdrHistogram V2 serialisation, base64) and a per-room
//! delivery ledger from which expected and lost deliveries are recomputed
//! once every shard's highest acknowledged seq is known.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
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

/// Parses `i/n`.
fn parse_shard(s: &str) -> Option<(usize, usize)> {
    let (i, n) = s.split_once('/')?;
    Some((i.parse().ok()?, n.parse().ok()?))
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

    /// Merges the reports of the shards of one run into the report of the
    /// whole run: counters are summed, histograms added (exact percentiles of
    /// the union), and lost deliveries recomputed from the merged ledgers
    /// (a room's last acknowledged seq may be known only to another shard).
    pub fn merge(reports: Vec<Report>) -> anyhow::Result<Report> {
        let Some(first) = reports.first() else { bail!("nothing to merge") };
        let mut shards = BTreeSet::new();
        let mut count = None;
        for r in &reports {
            let label = r.shard.as_deref().with_context(|| {
                format!("a {} report without --shard (already merged, or not split) cannot be merged", r.scenario)
            })?;
            let (i, n) = parse_shard(label).with_context(|| format!("bad shard label {label:?}"))?;
            if *count.get_or_insert(n) != n {
                bail!("shards of different splits: {label} vs n = {}", count.unwrap_or(0));
            }
            if !shards.insert(i) {
                bail!("shard {label} given twice");
            }
            if r.scenario != first.scenario {
                bail!("different scenarios: {} and {}", first.scenario, r.scenario);
            }
            if r.run_id != first.run_id {
                bail!("shard {label} is from another run (run id {:x}, not {:x})", r.run_id, first.run_id);
            }
        }
        let n = count.unwrap_or(0);
        if shards.len() != n {
            let missing: Vec<String> = (0..n).filter(|i| !shards.contains(i)).map(|i| format!("{i}/{n}")).collect();
            bail!("incomplete run: missing shard(s) {}", missing.join(", "));
        }

        let mut m = Report {
            scenario: first.scenario.clone(),
            run_id: first.run_id,
            warmup_secs: first.warmup_secs,
            merged_from: reports.iter().filter_map(|r| r.shard.clone()).collect(),
            ..Default::default()
        };
        let mut h = histogram();
        let mut per_sec: BTreeMap<u32, Histogram<u64>> = BTreeMap::new();
        let mut handshakes = None;
        for r in &reports {
            for t in &r.targets {
                if !m.targets.contains(t) {
                    m.targets.push(t.clone());
                }
            }
            for t in &r.per_target {
                match m.per_target.iter_mut().find(|x| x.url == t.url) {
                    Some(x) => {
                        x.clients += t.clients;
                        x.senders += t.senders;
                        x.connected += t.connected;
                    }
                    None => m.per_target.push(t.clone()),
                }
            }
            m.clients += r.clients;
            m.connected += r.connected;
            m.duration_secs = m.duration_secs.max(r.duration_secs);
            m.send_rate += r.send_rate;
            m.sends += r.sends;
            m.acks += r.acks;
            m.deliveries += r.deliveries;
            m.measured_deliveries += r.measured_deliveries;
            // The shards measure the same window concurrently: rates add up.
            m.deliveries_per_sec += r.deliveries_per_sec;
            m.duplicated += r.duplicated;
            m.reordered += r.reordered;
            m.reconnects += r.reconnects;
            sum_into(&mut m.errors_by_code, &r.errors_by_code);
            sum_into(&mut m.closes_by_code, &r.closes_by_code);
            sum_into(&mut m.connect_failures_by_reason, &r.connect_failures_by_reason);
            if let Some(x) = r.handshakes_per_sec {
                *handshakes.get_or_insert(0.0) += x;
            }
            for (room, l) in &r.ledger {
                m.ledger.entry(room.clone()).or_default().merge(l);
            }
            let label = r.shard.as_deref().unwrap_or("?");
            h.add(decode(&r.histograms.latency_us).with_context(|| format!("shard {label}: latency histogram"))?)
                .context("adding histograms")?;
            for (t, text) in &r.histograms.per_second {
                let s = decode(text).with_context(|| format!("shard {label}: histogram of second {t}"))?;
                per_sec.entry(*t).or_insert_with(histogram).add(s).context("adding histograms")?;
            }
        }
        m.handshakes_per_sec = handshakes;
        m.server = merge_server(&reports, m.measured_deliveries, m.connected);
        m.account();
        m.set_histograms(h, per_sec);
        Ok(m)
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

    /// The human summary.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<28} {v}\n"));
        row("scenario", self.scenario.clone());
        row("targets", self.targets.join(", "));
        if let Some(sh) = &self.shard {
            row("shard", format!("{sh} (run {:x})", self.run_id));
        }
        if !self.merged_from.is_empty() {
            row("merged from shards", format!("{} (run {:x})", self.merged_from.join(", "), self.run_id));
        }
        row("clients (connected)", format!("{} ({})", self.clients, self.connected));
        if self.per_target.len() > 1 || self.per_target.iter().any(|t| t.senders > 0 && t.senders < t.clients) {
            for t in &self.per_target {
                row(
                    &format!("  {}", t.url),
                    format!("{} clients ({} connected), {} senders", t.clients, t.connected, t.senders),
                );
            }
        }
        row("duration", format!("{:.1} s", self.duration_secs));
        if let Some(h) = self.handshakes_per_sec {
            row("handshakes/s", format!("{h:.0}"));
        }
        if self.send_rate > 0.0 {
            row("send rate (target)", format!("{:.1}/s", self.send_rate));
        }
        row("sends / acks", format!("{} / {}", self.sends, self.acks));
        row("deliveries", format!("{} ({:.0}/s)", self.deliveries, self.deliveries_per_sec));
        if self.expected_deliveries > 0 {
            row("expected deliveries", self.expected_deliveries.to_string());
        }
        row("lost / dup / reordered", format!("{} / {} / {}", self.lost, self.duplicated, self.reordered));
        if self.reconnects > 0 {
            row("reconnects", self.reconnects.to_string());
        }
        let l = &self.latency;
        row("latency p50/p90/p99 ms", format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p90_ms, l.p99_ms));
        row("latency p99.9/max ms", format!("{:.2} / {:.2}", l.p999_ms, l.max_ms));
        if !self.errors_by_code.is_empty() {
            row("errors by code", format!("{:?}", self.errors_by_code));
        }
        if !self.closes_by_code.is_empty() {
            row("closes by code", format!("{:?}", self.closes_by_code));
        }
        if !self.connect_failures_by_reason.is_empty() {
            row("connect failures", format!("{:?}", self.connect_failures_by_reason));
        }
        if let Some(sv) = &self.server {
            row("server CPU", format!("{:.2} s", sv.cpu_seconds));
            if let Some(x) = sv.cpu_us_per_delivery {
                row("server CPU µs / delivery", format!("{x:.2}"));
            }
            row(
                "server RSS start/end/peak",
                format!("{} / {} / {} KiB", sv.rss_kib_start, sv.rss_kib_end, sv.rss_kib_peak),
            );
            if let Some(x) = sv.kib_per_connection {
                row("server KiB / connection", format!("{x:.2}"));
            }
            if let (Some(n), Some(x)) = (sv.ctx_switches, sv.ctx_switches_per_delivery) {
                row("server context switches", format!("{n} ({x:.3} / delivery)"));
            }
        }
        s
    }

    /// Latency over time (p50, p99) and a latency histogram, as one SVG.
    pub fn plot(&self, path: &Path) -> anyhow::Result<()> {
        use plotters::prelude::*;
        let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
        root.fill(&WHITE)?;
        let (top, bottom) = root.split_vertically(400);
        let tmax = self.timeline.last().map(|s| s.t + 1).unwrap_or(1);
        let ymax = self.timeline.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.1;
        let mut c = ChartBuilder::on(&top)
            .caption(format!("{}: latency over time", self.scenario), ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d(0u32..tmax, 0f64..ymax)?;
        c.configure_mesh().x_desc("second").y_desc("ms").draw()?;
        c.draw_series(LineSeries::new(self.timeline.iter().map(|s| (s.t, s.p50_ms)), &BLUE))?
            .label("p50")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
        c.draw_series(LineSeries::new(self.timeline.iter().map(|s| (s.t, s.p99_ms)), &RED))?
            .label("p99")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
        c.configure_series_labels().border_style(BLACK).draw()?;

        // The latency distribution, 0.25 ms buckets up to p99.9.
        let n = self.distribution.len().max(1) as u32;
        let hmax = self.distribution.iter().map(|d| d.1).max().unwrap_or(1).max(1);
        let mut c = ChartBuilder::on(&bottom)
            .caption("latency distribution (0.25 ms buckets, up to p99.9)", ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(60)
            .build_cartesian_2d((0u32..n).into_segmented(), 0u64..hmax)?;
        c.configure_mesh().x_desc("bucket (× 0.25 ms)").y_desc("deliveries").draw()?;
        c.draw_series(
            Histogram::vertical(&c)
                .style(GREEN.filled())
                .data(self.distribution.iter().enumerate().map(|(i, d)| (i as u32, d.1))),
        )?;
        root.present()?;
        Ok(())
    }
}

/// Server readings of several shards: shards that read the same processes
/// saw the same CPU over (nearly) the same window, so the largest reading is
/// kept; readings of different processes are added. Per-delivery and
/// per-connection figures are recomputed over the merged totals.
fn merge_server(reports: &[Report], deliveries: u64, connected: usize) -> Option<Server> {
    let readings: Vec<&Server> = reports.iter().filter_map(|r| r.server.as_ref()).collect();
    let first = readings.first()?;
    let same = readings.iter().all(|s| s.sources == first.sources);
    let mut out = if same {
        (*readings.iter().max_by(|a, b| a.cpu_seconds.total_cmp(&b.cpu_seconds))?).clone()
    } else {
        let mut sum = Server::default();
        for s in &readings {
            sum.sources.extend(s.sources.iter().cloned());
            sum.cpu_seconds += s.cpu_seconds;
            sum.rss_kib_start += s.rss_kib_start;
            sum.rss_kib_end += s.rss_kib_end;
            sum.rss_kib_peak += s.rss_kib_peak;
            // Counted only if every process was counted.
            sum.ctx_switches = if sum.sources.len() == s.sources.len() {
                s.ctx_switches
            } else {
                sum.ctx_switches.zip(s.ctx_switches).map(|(a, b)| a + b)
            };
        }
        sum
    };
    out.ctx_switches_per_delivery = out.ctx_switches.filter(|_| deliveries > 0).map(|n| n as f64 / deliveries as f64);
    out.cpu_us_per_delivery = (deliveries > 0).then(|| out.cpu_seconds * 1e6 / deliveries as f64);
    let held = reports.iter().any(|r| r.server.as_ref().is_some_and(|s| s.kib_per_connection.is_some()));
    out.kib_per_connection =
        (held && connected > 0).then(|| (out.rss_kib_end as f64 - out.rss_kib_start as f64) / connected as f64);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(i: usize, n: usize, values: &[u64], ledger: RoomLedger) -> Report {
        let mut h = histogram();
        let mut per_sec = BTreeMap::new();
        for (k, v) in values.iter().enumerate() {
            h.record(*v).unwrap();
            per_sec.entry(k as u32 % 3).or_insert_with(histogram).record(*v).unwrap();
        }
        let mut r = Report {
            scenario: "fanout".into(),
            shard: Some(format!("{i}/{n}")),
            deliveries: ledger.seen,
            ledger: [("room".to_owned(), ledger)].into(),
            ..Default::default()
        };
        r.account();
        r.set_histograms(h, per_sec);
        // Through JSON, as `loadtest merge` reads it.
        serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap()
    }

    #[test]
    fn merged_histograms_equal_the_histogram_of_all_values() {
        let a: Vec<u64> = (1..5000).map(|x| x * 7 % 3001 + 1).collect();
        let b: Vec<u64> = (1..3000).map(|x| x * x % 90_001 + 100).collect();
        let l = RoomLedger::default;
        let m = Report::merge(vec![shard(0, 2, &a, l()), shard(1, 2, &b, l())]).unwrap();
        let mut all = histogram();
        for v in a.iter().chain(&b) {
            all.record(*v).unwrap();
        }
        assert_eq!(m.latency.samples, (a.len() + b.len()) as u64);
        let merged = decode(&m.histograms.latency_us).unwrap();
        assert_eq!(merged, all, "the merged histogram is the histogram of the union");
        for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
            assert_eq!(merged.value_at_quantile(q), all.value_at_quantile(q));
        }
        assert_eq!(m.timeline.iter().map(|s| s.deliveries).sum::<u64>(), m.latency.samples);
    }

    #[test]
    fn loss_is_recomputed_with_the_run_wide_last_seq() {
        // Room with seqs 1..=10. Shard 0 holds the sender (acked 10) and one
        // receiver that saw 1..=10 but 4. Shard 1 holds only receivers: one
        // saw 1..=8 (9 and 10 lost, invisible to shard 1 alone), one saw 1..=10.
        let view = |seen: &[i64]| RoomView {
            baseline: 0,
            seen: seen.iter().copied().collect(),
            max_seen: seen.iter().copied().max().unwrap_or(0),
        };
        let mut l0 = RoomLedger { acked: 10, ..Default::default() };
        l0.add_view(&view(&[1, 2, 3, 5, 6, 7, 8, 9, 10]));
        let mut l1 = RoomLedger::default();
        l1.add_view(&view(&[1, 2, 3, 4, 5, 6, 7, 8]));
        l1.add_view(&view(&(1..=10).collect::<Vec<_>>()));
        let (s0, s1) = (shard(0, 2, &[5], l0), shard(1, 2, &[5], l1));
        assert_eq!((s0.lost, s1.lost), (1, 0), "alone, shard 1 cannot see its tail loss");
        let m = Report::merge(vec![s0, s1]).unwrap();
        assert_eq!(m.expected_deliveries, 30);
        assert_eq!(m.deliveries, 27);
        assert_eq!(m.lost, 3);
    }

    #[test]
    fn merge_refuses_incomplete_or_repeated_shards() {
        let l = RoomLedger::default;
        assert!(Report::merge(vec![shard(0, 2, &[1], l())]).is_err());
        assert!(Report::merge(vec![shard(0, 2, &[1], l()), shard(0, 2, &[1], l())]).is_err());
        assert!(Report::merge(vec![shard(0, 2, &[1], l()), shard(1, 3, &[1], l())]).is_err());
        let mut other = shard(1, 2, &[1], l());
        other.run_id = 7;
        assert!(Report::merge(vec![shard(0, 2, &[1], l()), other]).is_err());
    }
}
