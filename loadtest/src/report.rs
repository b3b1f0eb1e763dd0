//! The run report: numbers, the human table, JSON and an SVG plot.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::Observed;

/// Latency percentiles in milliseconds.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub samples: u64,
}

/// One second of the run.
#[derive(Debug, Serialize, Clone)]
pub struct Second {
    pub t: u32,
    pub deliveries: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// The gateway's resource use over the measured window.
#[derive(Debug, Default, Serialize, Clone)]
pub struct Server {
    pub cpu_seconds: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
    pub rss_kib_peak: u64,
    /// Server CPU µs per delivered message.
    pub cpu_us_per_delivery: Option<f64>,
    /// RSS growth per connection held.
    pub kib_per_connection: Option<f64>,
}

/// Everything a run measured.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    pub targets: Vec<String>,
    pub clients: usize,
    pub connected: usize,
    pub duration_secs: f64,
    pub sends: u64,
    pub acks: u64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub reconnects: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub closes_by_code: BTreeMap<String, u64>,
    pub connect_failures_by_reason: BTreeMap<String, u64>,
    pub handshakes_per_sec: Option<f64>,
    pub latency: Latency,
    /// (upper bound in ms, deliveries) in 0.25 ms buckets up to p99.9.
    pub distribution: Vec<(f64, u64)>,
    pub timeline: Vec<Second>,
    pub server: Option<Server>,
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

impl Report {
    /// Merges what every client observed. `final_seq` is, per room, the
    /// highest seq acknowledged by any sender: every client should have seen
    /// everything between its baseline and it.
    pub fn absorb(&mut self, all: Vec<Observed>, final_seq: &HashMap<String, i64>, warmup_secs: u32) {
        let mut h = histogram();
        let mut per_sec: BTreeMap<u32, Histogram<u64>> = BTreeMap::new();
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
            for (room, view) in o.rooms {
                let last = final_seq.get(&room).copied().unwrap_or(view.max_seen).max(view.max_seen);
                let expected = (last - view.baseline).max(0) as u64;
                let got = view.seen.iter().filter(|s| **s > view.baseline && **s <= last).count() as u64;
                self.lost += expected.saturating_sub(got);
            }
        }
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
        if self.duration_secs > 0.0 {
            self.deliveries_per_sec = self.deliveries as f64 / self.duration_secs;
        }
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
        row("clients (connected)", format!("{} ({})", self.clients, self.connected));
        row("duration", format!("{:.1} s", self.duration_secs));
        if let Some(h) = self.handshakes_per_sec {
            row("handshakes/s", format!("{h:.0}"));
        }
        row("sends / acks", format!("{} / {}", self.sends, self.acks));
        row("deliveries", format!("{} ({:.0}/s)", self.deliveries, self.deliveries_per_sec));
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
