//! The report for people: the table printed after a run, and the SVG plot
//! of latency over time and its distribution.

use std::path::Path;

use super::Report;

/// The human summary.
pub(crate) fn table(r: &Report) -> String {
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<28} {v}\n"));
    row("scenario", r.scenario.clone());
    row("targets", r.targets.join(", "));
    if let Some(sh) = &r.shard {
        row("shard", format!("{sh} (run {:x})", r.run_id));
    }
    if !r.merged_from.is_empty() {
        row("merged from shards", format!("{} (run {:x})", r.merged_from.join(", "), r.run_id));
    }
    row("clients (connected)", format!("{} ({})", r.clients, r.connected));
    if r.per_target.len() > 1 || r.per_target.iter().any(|t| t.senders > 0 && t.senders < t.clients) {
        for t in &r.per_target {
            row(
                &format!("  {}", t.url),
                format!("{} clients ({} connected), {} senders", t.clients, t.connected, t.senders),
            );
        }
    }
    row("duration", format!("{:.1} s", r.duration_secs));
    if let Some(h) = r.handshakes_per_sec {
        row("handshakes/s", format!("{h:.0}"));
    }
    if r.send_rate > 0.0 {
        row("send rate (target)", format!("{:.1}/s", r.send_rate));
    }
    row("sends / acks", format!("{} / {}", r.sends, r.acks));
    row("deliveries", format!("{} ({:.0}/s)", r.deliveries, r.deliveries_per_sec));
    if r.expected_deliveries > 0 {
        row("expected deliveries", r.expected_deliveries.to_string());
    }
    row("lost / dup / reordered", format!("{} / {} / {}", r.lost, r.duplicated, r.reordered));
    if r.reconnects > 0 {
        row("reconnects", r.reconnects.to_string());
    }
    let l = &r.latency;
    row("latency p50/p90/p99 ms", format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p90_ms, l.p99_ms));
    row("latency p99.9/max ms", format!("{:.2} / {:.2}", l.p999_ms, l.max_ms));
    if !r.errors_by_code.is_empty() {
        row("errors by code", format!("{:?}", r.errors_by_code));
    }
    if !r.closes_by_code.is_empty() {
        row("closes by code", format!("{:?}", r.closes_by_code));
    }
    if !r.connect_failures_by_reason.is_empty() {
        row("connect failures", format!("{:?}", r.connect_failures_by_reason));
    }
    if let Some(sv) = &r.server {
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
pub(crate) fn plot(r: &Report, path: &Path) -> anyhow::Result<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1000, 800)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(400);
    let tmax = r.timeline.last().map(|s| s.t + 1).unwrap_or(1);
    let ymax = r.timeline.iter().map(|s| s.p99_ms).fold(1.0, f64::max) * 1.1;
    let mut c = ChartBuilder::on(&top)
        .caption(format!("{}: latency over time", r.scenario), ("sans-serif", 20))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(50)
        .build_cartesian_2d(0u32..tmax, 0f64..ymax)?;
    c.configure_mesh().x_desc("second").y_desc("ms").draw()?;
    c.draw_series(LineSeries::new(r.timeline.iter().map(|s| (s.t, s.p50_ms)), &BLUE))?
        .label("p50")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], BLUE));
    c.draw_series(LineSeries::new(r.timeline.iter().map(|s| (s.t, s.p99_ms)), &RED))?
        .label("p99")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 15, y)], RED));
    c.configure_series_labels().border_style(BLACK).draw()?;

    // The latency distribution, 0.25 ms buckets up to p99.9.
    let n = r.distribution.len().max(1) as u32;
    let hmax = r.distribution.iter().map(|d| d.1).max().unwrap_or(1).max(1);
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
            .data(r.distribution.iter().enumerate().map(|(i, d)| (i as u32, d.1))),
    )?;
    root.present()?;
    Ok(())
}
