//! The runs of the traffic, idle and connect-storm scenarios: connect the
//! population, meet the other shards, measure for the duration, and build
//! the report.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Barrier, Semaphore, watch};

use crate::cli::{Common, Traffic};
use crate::client::{self, Target};
use crate::population::{connection_population, traffic_population};
use crate::procstat::{self, Source};
use crate::report::{Report, Server, TargetCount};
use crate::scenarios::{self, Behaviour, Ctx, Phase, Population};
use crate::shard::{Shard, SyncDir};

/// The gateways to read CPU and memory from: pids, then metrics URLs.
fn gateway_sources(c: &Common) -> Vec<Source> {
    c.gateway_pid.iter().map(|p| Source::Pid(*p)).chain(c.metrics_url.iter().cloned().map(Source::Metrics)).collect()
}

/// A spinner with a message, or nothing with `--quiet`.
pub(crate) fn progress(quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(200));
    pb
}

/// The rendezvous directory of a sharded run (if any) and the run id.
async fn coordinate(c: &Common) -> anyhow::Result<(Option<SyncDir>, u32)> {
    let shard = c.shard.unwrap_or(Shard::WHOLE);
    if shard.count > 1 && c.sync_dir.is_none() {
        bail!("--shard {shard} needs --sync-dir (a fresh directory shared by the shards of this run)");
    }
    let sync = c.sync_dir.clone().map(|d| SyncDir::new(d, shard)).transpose()?;
    let proposal = c.run_id.unwrap_or_else(rand::random);
    let run_id = match &sync {
        // Shard 0's proposal wins.
        Some(s) => s.meet("start", u64::from(proposal)).await?[0] as u32,
        None => proposal,
    };
    Ok((sync, run_id))
}

/// The run's shared counters, with the targets parsed.
fn make_ctx(c: &Common, run_id: u32) -> anyhow::Result<Arc<Ctx>> {
    let targets: Vec<Target> = c.url.iter().map(|u| Target::parse(u)).collect::<anyhow::Result<_>>()?;
    Ok(Arc::new(Ctx {
        connected_by_target: targets.iter().map(|_| AtomicUsize::new(0)).collect(),
        targets,
        source_ips: c.source_ips.max(1),
        run_id,
        // Set to t0 when the run starts; until then (and in a shard that has
        // not yet stored it) deliveries count in second 0.
        start_ns: AtomicU64::new(u64::MAX),
        sends: Default::default(),
        deliveries: Default::default(),
        connected: Default::default(),
    }))
}

/// Clients, senders and connected clients per URL.
fn target_counts(c: &Common, pop: &Population, ctx: &Ctx) -> Vec<TargetCount> {
    c.url
        .iter()
        .enumerate()
        .map(|(i, url)| TargetCount {
            url: url.clone(),
            clients: pop.clients.iter().filter(|c| c.target == i).count(),
            senders: pop.clients.iter().filter(|c| c.target == i && c.sender).count(),
            connected: ctx.connected_by_target[i].load(Ordering::Relaxed),
        })
        .collect()
}

/// Shard label for the report.
fn shard_label(c: &Common) -> Option<String> {
    c.shard.map(|s| s.to_string())
}

/// The gateway's resource use between two samples, per delivery and per
/// connection where there were any.
fn server_stats(
    sources: &[Source],
    before: Option<procstat::Sample>,
    after: Option<procstat::Sample>,
    peak: u64,
    deliveries: u64,
    conns: usize,
) -> Option<Server> {
    let (b, a) = (before?, after?);
    let cpu = a.cpu_secs - b.cpu_secs;
    let ctx_switches = a.ctx_switches.zip(b.ctx_switches).map(|(a, b)| a.saturating_sub(b));
    Some(Server {
        sources: sources.iter().map(ToString::to_string).collect(),
        cpu_seconds: cpu,
        rss_kib_start: b.rss_kib,
        rss_kib_end: a.rss_kib,
        rss_kib_peak: peak.max(a.rss_kib),
        cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
        kib_per_connection: (conns > 0).then(|| (a.rss_kib as f64 - b.rss_kib as f64) / conns as f64),
        ctx_switches,
        ctx_switches_per_delivery: ctx_switches.filter(|_| deliveries > 0).map(|n| n as f64 / deliveries as f64),
    })
}

/// Fanout, chat and reconnect: every client joins its room, senders send
/// at their share of `--rate`, every delivery is checked at every receiver.
pub(crate) async fn run_traffic(
    name: &str,
    t: &Traffic,
    chatty: bool,
    reconnect_every: Option<Duration>,
) -> anyhow::Result<Report> {
    let (sync, run_id) = coordinate(&t.common).await?;
    let (pop, all_senders) = traffic_population(t, run_id)?;
    let ctx = make_ctx(&t.common, run_id)?;
    let n = pop.clients.len();
    // The rate is the whole run's: every sender of every shard gets an equal part.
    let per_sender = if all_senders > 0 { t.rate / all_senders as f64 } else { 0.0 };
    let senders = pop.clients.iter().filter(|c| c.sender).count();
    let behaviour = Behaviour {
        send_every: (per_sender > 0.0).then(|| Duration::from_secs_f64(1.0 / per_sender)),
        body_bytes: t.body_bytes.max(24),
        chatty,
        reconnect_every,
        drain: Duration::from_secs(2),
    };
    let (phase_tx, phase_rx) = watch::channel(Phase::Setup);
    let ready = Arc::new(Barrier::new(n + 1));
    let pb = progress(t.common.quiet);
    pb.set_message(format!("connecting {n} clients"));
    let mut tasks = Vec::with_capacity(n);
    for c in pop.clients.iter().cloned() {
        let b = if c.sender { behaviour } else { Behaviour { send_every: None, ..behaviour } };
        tasks.push(tokio::spawn(scenarios::traffic_client(ctx.clone(), c, b, ready.clone(), phase_rx.clone())));
    }
    ready.wait().await;
    // t0: when the last shard had every client joined.
    let t0 = match &sync {
        Some(s) => {
            pb.set_message("waiting for the other shards to connect");
            s.meet("ready", client::now_ns()).await?.into_iter().max().unwrap_or_default()
        }
        None => client::now_ns(),
    };
    ctx.start_ns.store(t0, Ordering::Relaxed);
    phase_tx.send_replace(Phase::Run);
    let sources = gateway_sources(&t.common);
    let before = procstat::sample_all(&sources);
    let started = Instant::now();
    let mut peak = 0;
    let duration = Duration::from_secs_f64(t.common.duration);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(s) = procstat::sample_all(&sources) {
            peak = peak.max(s.rss_kib);
        }
        let secs = started.elapsed().as_secs_f64();
        pb.set_message(format!(
            "{name}: {}/{n} connected, {} sent ({:.0}/s), {} delivered ({:.0}/s)",
            ctx.connected.load(Ordering::Relaxed),
            ctx.sends.load(Ordering::Relaxed),
            ctx.sends.load(Ordering::Relaxed) as f64 / secs,
            ctx.deliveries.load(Ordering::Relaxed),
            ctx.deliveries.load(Ordering::Relaxed) as f64 / secs,
        ));
    }
    let measured = started.elapsed();
    // Deliveries counted at the measurement end, before the drain.
    let measured_deliveries = ctx.deliveries.load(Ordering::Relaxed);
    let after = procstat::sample_all(&sources);
    phase_tx.send_replace(Phase::StopSending);
    if let Some(s) = &sync {
        pb.set_message("waiting for the other shards to stop sending");
        s.meet("stopped", 0).await?;
    }
    phase_tx.send_replace(Phase::Drain);
    pb.set_message("draining");
    let mut all = Vec::with_capacity(n);
    let mut final_seq = std::collections::HashMap::new();
    for task in tasks {
        let (obs, acked) = task.await?;
        for (room, seq) in acked {
            let e: &mut i64 = final_seq.entry(room).or_default();
            *e = (*e).max(seq);
        }
        all.push(obs);
    }
    pb.finish_and_clear();
    let mut report = Report {
        scenario: name.into(),
        targets: t.common.url.clone(),
        shard: shard_label(&t.common),
        run_id,
        clients: n,
        connected: ctx.connected.load(Ordering::Relaxed),
        per_target: target_counts(&t.common, &pop, &ctx),
        duration_secs: measured.as_secs_f64(),
        send_rate: per_sender * senders as f64,
        measured_deliveries,
        ..Default::default()
    };
    report.absorb(all, &final_seq, t.warmup);
    report.deliveries_per_sec = measured_deliveries as f64 / measured.as_secs_f64();
    report.server = server_stats(&sources, before, after, peak, measured_deliveries, 0);
    Ok(report)
}

/// Holds the connections (heartbeats only) for the duration.
pub(crate) async fn run_idle(c: &Common, connections: usize, concurrency: usize) -> anyhow::Result<Report> {
    let (sync, run_id) = coordinate(c).await?;
    let pop = connection_population(c, connections)?;
    let ctx = make_ctx(c, run_id)?;
    let sources = gateway_sources(c);
    let before = procstat::sample_all(&sources);
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let pb = progress(c.quiet);
    let mut tasks = Vec::with_capacity(pop.clients.len());
    for cl in pop.clients.iter().cloned() {
        tasks.push(tokio::spawn(scenarios::idle_client(ctx.clone(), cl, permits.clone(), stop_rx.clone())));
    }
    // Wait until every connection attempt has finished (bounded).
    let deadline = Instant::now() + Duration::from_secs(600);
    while permits.available_permits() < concurrency.max(1) || ctx.connected.load(Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            break;
        }
        pb.set_message(format!("idle: {} connected", ctx.connected.load(Ordering::Relaxed)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        if tasks.iter().all(|t| t.is_finished()) {
            break;
        }
    }
    if let Some(s) = &sync {
        pb.set_message("waiting for the other shards to connect");
        s.meet("ready", client::now_ns()).await?;
    }
    let started = Instant::now();
    let duration = Duration::from_secs_f64(c.duration);
    let mut peak = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(s) = procstat::sample_all(&sources) {
            peak = peak.max(s.rss_kib);
        }
        pb.set_message(format!("idle: holding {} connections", ctx.connected.load(Ordering::Relaxed)));
    }
    let after = procstat::sample_all(&sources);
    if let Some(s) = &sync {
        // Every shard holds its connections until every shard has measured.
        s.meet("stopped", 0).await?;
    }
    let _ = stop_tx.send(true);
    let mut all = Vec::new();
    for t in tasks {
        all.push(t.await?);
    }
    pb.finish_and_clear();
    let connected = ctx.connected.load(Ordering::Relaxed);
    let mut report = Report {
        scenario: "idle".into(),
        targets: c.url.clone(),
        shard: shard_label(c),
        run_id,
        clients: pop.clients.len(),
        connected,
        per_target: target_counts(c, &pop, &ctx),
        duration_secs: started.elapsed().as_secs_f64(),
        ..Default::default()
    };
    for o in &all {
        for (k, v) in &o.closes {
            if k.starts_with("connect") {
                *report.connect_failures_by_reason.entry(k.clone()).or_default() += v;
            } else {
                *report.closes_by_code.entry(k.clone()).or_default() += v;
            }
        }
    }
    report.absorb(Vec::new(), &Default::default(), 0);
    report.server = server_stats(&sources, before, after, peak, 0, connected);
    Ok(report)
}

/// Opens the sockets as fast as the gateway accepts them.
pub(crate) async fn run_storm(c: &Common, connections: usize, concurrency: usize) -> anyhow::Result<Report> {
    let (sync, run_id) = coordinate(c).await?;
    let pop = connection_population(c, connections)?;
    let ctx = make_ctx(c, run_id)?;
    let sources = gateway_sources(c);
    let pb = progress(c.quiet);
    if let Some(s) = &sync {
        pb.set_message("waiting for the other shards");
        s.meet("ready", client::now_ns()).await?;
    }
    let before = procstat::sample_all(&sources);
    pb.set_message(format!("opening {} sockets", pop.clients.len()));
    let bounded = tokio::time::timeout(
        Duration::from_secs_f64(c.duration.max(1.0) * 30.0),
        scenarios::connect_storm(ctx.clone(), &pop, concurrency.max(1)),
    );
    let (elapsed, failures, open) = bounded.await.context("connect storm did not finish in time")?;
    let after = procstat::sample_all(&sources);
    if let Some(s) = &sync {
        // Hold the sockets until every shard has opened its own.
        s.meet("stopped", 0).await?;
    }
    pb.finish_and_clear();
    let ok = open.len();
    drop(open);
    let mut report = Report {
        scenario: "connect-storm".into(),
        targets: c.url.clone(),
        shard: shard_label(c),
        run_id,
        clients: pop.clients.len(),
        connected: ok,
        per_target: target_counts(c, &pop, &ctx),
        duration_secs: elapsed.as_secs_f64(),
        handshakes_per_sec: Some(ok as f64 / elapsed.as_secs_f64()),
        connect_failures_by_reason: failures.into_iter().collect(),
        ..Default::default()
    };
    report.absorb(Vec::new(), &Default::default(), 0);
    report.server = server_stats(&sources, before, after, 0, 0, ok);
    Ok(report)
}
