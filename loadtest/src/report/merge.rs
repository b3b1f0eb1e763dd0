//! `loadtest merge`: the shards' reports of one run into the report of the
//! whole run, exactly (histograms added, loss recomputed per room).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, bail};

use hdrhistogram::Histogram;

use super::{Report, Server, decode, histogram, sum_into};

/// Merges the reports of the shards of one run into the report of the
/// whole run: counters are summed, histograms added (exact percentiles of
/// the union), and lost deliveries recomputed from the merged ledgers
/// (a room's last acknowledged seq may be known only to another shard).
pub(crate) fn merge(reports: Vec<Report>) -> anyhow::Result<Report> {
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

/// Parses `i/n`.
fn parse_shard(s: &str) -> Option<(usize, usize)> {
    let (i, n) = s.split_once('/')?;
    Some((i.parse().ok()?, n.parse().ok()?))
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
    use std::collections::BTreeMap;

    use super::super::RoomLedger;
    use super::*;
    use crate::client::RoomView;

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
        let m = merge(vec![shard(0, 2, &a, l()), shard(1, 2, &b, l())]).unwrap();
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
        let m = merge(vec![s0, s1]).unwrap();
        assert_eq!(m.expected_deliveries, 30);
        assert_eq!(m.deliveries, 27);
        assert_eq!(m.lost, 3);
    }

    #[test]
    fn merge_refuses_incomplete_or_repeated_shards() {
        let l = RoomLedger::default;
        assert!(merge(vec![shard(0, 2, &[1], l())]).is_err());
        assert!(merge(vec![shard(0, 2, &[1], l()), shard(0, 2, &[1], l())]).is_err());
        assert!(merge(vec![shard(0, 2, &[1], l()), shard(1, 3, &[1], l())]).is_err());
        let mut other = shard(1, 2, &[1], l());
        other.run_id = 7;
        assert!(merge(vec![shard(0, 2, &[1], l()), other]).is_err());
    }
}
