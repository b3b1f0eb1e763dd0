//! `loadtest`: finds out what a chatgw deployment holds, and checks that it
//! loses, duplicates and reorders nothing while doing it.
//!
//! Clients speak protocol v1 (see `protocol/README.md`). Against the gateway
//! they authenticate with tokens from a seed file (`chatgw seed`); against
//! the bare reference server (`refserver`) they need none. Every run is
//! bounded in time and stops by itself; only loopback targets are accepted.

mod client;
mod procstat;
mod report;
mod scenarios;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Barrier, Semaphore, watch};

use client::Target;
use procstat::Source;
use report::{Report, Server};
use scenarios::{Behaviour, Ctx, Population};

#[derive(Parser)]
#[command(version, about = "Load-test harness for the chatgw gateway (and the bare reference server)", long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// R rooms of S members; a total send rate spread over all members;
    /// every message checked at every receiver.
    Fanout(Traffic),
    /// Many small rooms with mixed traffic: sends, typing, read markers,
    /// leave/rejoin with resume.
    Chat(Traffic),
    /// Like fanout, while clients drop their sockets and resume with
    /// since_seq continuously; must lose and duplicate nothing.
    Reconnect {
        #[command(flatten)]
        traffic: Traffic,
        /// Mean seconds between one client's reconnects.
        #[arg(long, default_value_t = 3.0)]
        reconnect_every: f64,
    },
    /// Hold N connections (heartbeats only) and report the gateway's memory
    /// per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to hold.
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Handshakes in flight while connecting.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// Open N sockets as fast as the gateway accepts them.
    ConnectStorm {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Handshakes in flight.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
}

#[derive(Args, Clone)]
struct Common {
    /// Gateway WebSocket URL(s), loopback only (repeat or comma-separate for
    /// several instances; clients are spread over them).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    url: Vec<String>,
    /// Seed file from `chatgw seed` (tokens and rooms). Without it clients
    /// send no token and use synthetic room names (the reference server).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// Measured duration in seconds (after connecting).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Gateway pid: report its CPU time and RSS over the measured window.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Or the gateway's metrics URL (http://127.0.0.1:PORT/metrics).
    #[arg(long)]
    metrics_url: Option<String>,
    /// Spread client sockets over this many source addresses 127.0.0.1..N
    /// (needed beyond ~28k sockets per target port).
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG plot (latency over time and its distribution) here.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Exit non-zero on any loss, duplicate or reorder, or past the limits.
    #[arg(long)]
    assert: bool,
    /// With --assert: the highest acceptable p99 latency in ms.
    #[arg(long)]
    max_p99_ms: Option<f64>,
    /// With --assert: the highest acceptable error rate (errors / attempts).
    #[arg(long)]
    max_error_rate: Option<f64>,
    /// No progress line (for CI logs).
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Clone)]
struct Traffic {
    #[command(flatten)]
    common: Common,
    /// Rooms (with --seed: the first R rooms of the seed file).
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Members per room (with --seed: taken from the seed file).
    #[arg(long, default_value_t = 100)]
    room_size: usize,
    /// Total sends per second over all clients.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Seconds at the start excluded from latency percentiles.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
}

#[derive(serde::Deserialize)]
struct SeedFile {
    users: Vec<SeedUser>,
    rooms: Vec<SeedRoom>,
}
#[derive(serde::Deserialize)]
struct SeedUser {
    token: String,
}
#[derive(serde::Deserialize)]
struct SeedRoom {
    id: String,
    members: Vec<usize>,
}

fn load_seed(path: &PathBuf) -> anyhow::Result<SeedFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).context("parsing the seed file")
}

/// Clients for a traffic scenario: one per (room, member) slot.
fn traffic_population(t: &Traffic) -> anyhow::Result<Population> {
    match &t.common.seed {
        Some(p) => {
            let seed = load_seed(p)?;
            if seed.rooms.len() < t.rooms {
                bail!("the seed file has {} rooms, {} requested", seed.rooms.len(), t.rooms);
            }
            let mut pop = Population { tokens: Vec::new(), rooms: Vec::new() };
            for room in &seed.rooms[..t.rooms] {
                for &m in room.members.iter().take(t.room_size) {
                    pop.tokens.push(Some(seed.users[m].token.clone()));
                    pop.rooms.push(vec![room.id.clone()]);
                }
            }
            Ok(pop)
        }
        None => {
            let run = rand::random::<u32>();
            let n = t.rooms * t.room_size;
            Ok(Population {
                tokens: vec![None; n],
                rooms: (0..n).map(|i| vec![format!("r{run:x}-{}", i / t.room_size)]).collect(),
            })
        }
    }
}

fn connection_population(c: &Common, n: usize) -> anyhow::Result<Population> {
    let tokens = match &c.seed {
        Some(p) => {
            let seed = load_seed(p)?;
            if seed.users.len() < n {
                bail!("the seed file has {} users, {n} requested", seed.users.len());
            }
            seed.users.into_iter().take(n).map(|u| Some(u.token)).collect()
        }
        None => vec![None; n],
    };
    Ok(Population { tokens, rooms: vec![Vec::new(); n] })
}

fn gateway_source(c: &Common) -> Option<Source> {
    c.gateway_pid.map(Source::Pid).or_else(|| c.metrics_url.clone().map(Source::Metrics))
}

fn progress(quiet: bool) -> ProgressBar {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Many sockets need many descriptors; raise the soft limit to the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cli = Cli::parse();
    let (common, report) = match cli.scenario {
        Scenario::Fanout(t) => (t.common.clone(), run_traffic("fanout", &t, false, None).await?),
        Scenario::Chat(t) => (t.common.clone(), run_traffic("chat", &t, true, None).await?),
        Scenario::Reconnect { traffic, reconnect_every } => (
            traffic.common.clone(),
            run_traffic("reconnect", &traffic, false, Some(Duration::from_secs_f64(reconnect_every))).await?,
        ),
        Scenario::Idle { common, connections, concurrency } => {
            (common.clone(), run_idle(&common, connections, concurrency).await?)
        }
        Scenario::ConnectStorm { common, connections, concurrency } => {
            (common.clone(), run_storm(&common, connections, concurrency).await?)
        }
    };
    println!("{}", report.table());
    if let Some(p) = &common.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
        println!("report written to {}", p.display());
    }
    if let Some(p) = &common.plot {
        report.plot(p)?;
        println!("plot written to {}", p.display());
    }
    if common.assert {
        let failures = report.failures(common.max_p99_ms, common.max_error_rate);
        if !failures.is_empty() {
            eprintln!("ASSERTION FAILED: {}", failures.join("; "));
            std::process::exit(1);
        }
        println!("assertions passed");
    }
    Ok(())
}

fn make_ctx(c: &Common) -> anyhow::Result<Arc<Ctx>> {
    Ok(Arc::new(Ctx {
        targets: c.url.iter().map(|u| Target::parse(u)).collect::<anyhow::Result<_>>()?,
        source_ips: c.source_ips.max(1),
        run_id: rand::random(),
        start_ns: client::now_ns(),
        sends: Default::default(),
        deliveries: Default::default(),
        connected: Default::default(),
    }))
}

fn server_stats(
    before: Option<procstat::Sample>,
    after: Option<procstat::Sample>,
    peak: u64,
    deliveries: u64,
    conns: usize,
) -> Option<Server> {
    let (b, a) = (before?, after?);
    let cpu = a.cpu_secs - b.cpu_secs;
    Some(Server {
        cpu_seconds: cpu,
        rss_kib_start: b.rss_kib,
        rss_kib_end: a.rss_kib,
        rss_kib_peak: peak.max(a.rss_kib),
        cpu_us_per_delivery: (deliveries > 0).then(|| cpu * 1e6 / deliveries as f64),
        kib_per_connection: (conns > 0).then(|| (a.rss_kib as f64 - b.rss_kib as f64) / conns as f64),
    })
}

async fn run_traffic(
    name: &str,
    t: &Traffic,
    chatty: bool,
    reconnect_every: Option<Duration>,
) -> anyhow::Result<Report> {
    let pop = traffic_population(t)?;
    let ctx = make_ctx(&t.common)?;
    let n = pop.tokens.len();
    let per_client = t.rate / n as f64;
    let behaviour = Behaviour {
        send_every: (per_client > 0.0).then(|| Duration::from_secs_f64(1.0 / per_client)),
        body_bytes: t.body_bytes.max(24),
        chatty,
        reconnect_every,
        drain: Duration::from_secs(2),
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let ready = Arc::new(Barrier::new(n + 1));
    let pb = progress(t.common.quiet);
    pb.set_message(format!("connecting {n} clients"));
    let mut tasks = Vec::with_capacity(n);
    for (i, (token, rooms)) in pop.tokens.into_iter().zip(pop.rooms).enumerate() {
        tasks.push(tokio::spawn(scenarios::traffic_client(
            ctx.clone(),
            i,
            token,
            rooms,
            behaviour,
            ready.clone(),
            stop_rx.clone(),
        )));
    }
    ready.wait().await;
    let source = gateway_source(&t.common);
    let before = source.as_ref().and_then(Source::sample);
    let started = Instant::now();
    let mut peak = 0;
    let duration = Duration::from_secs_f64(t.common.duration);
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(s) = source.as_ref().and_then(Source::sample) {
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
    let after = source.as_ref().and_then(Source::sample);
    // If the stop signal cannot be sent, every client has already ended.
    let _ = stop_tx.send(true);
    pb.set_message("draining");
    let mut all = Vec::with_capacity(n);
    let mut final_seq: HashMap<String, i64> = HashMap::new();
    for task in tasks {
        let (obs, acked) = task.await?;
        for (room, seq) in acked {
            let e = final_seq.entry(room).or_default();
            *e = (*e).max(seq);
        }
        all.push(obs);
    }
    pb.finish_and_clear();
    let mut report = Report {
        scenario: name.into(),
        targets: t.common.url.clone(),
        clients: n,
        connected: ctx.connected.load(Ordering::Relaxed),
        duration_secs: measured.as_secs_f64(),
        ..Default::default()
    };
    report.absorb(all, &final_seq, t.warmup);
    report.deliveries_per_sec = measured_deliveries as f64 / measured.as_secs_f64();
    report.server = server_stats(before, after, peak, measured_deliveries, 0);
    Ok(report)
}

async fn run_idle(c: &Common, connections: usize, concurrency: usize) -> anyhow::Result<Report> {
    let pop = connection_population(c, connections)?;
    let ctx = make_ctx(c)?;
    let source = gateway_source(c);
    let before = source.as_ref().and_then(Source::sample);
    let (stop_tx, stop_rx) = watch::channel(false);
    let permits = Arc::new(Semaphore::new(concurrency.max(1)));
    let pb = progress(c.quiet);
    let mut tasks = Vec::with_capacity(connections);
    for (i, token) in pop.tokens.into_iter().enumerate() {
        tasks.push(tokio::spawn(scenarios::idle_client(ctx.clone(), i, token, permits.clone(), stop_rx.clone())));
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
    let started = Instant::now();
    let duration = Duration::from_secs_f64(c.duration);
    let mut peak = 0;
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if let Some(s) = source.as_ref().and_then(Source::sample) {
            peak = peak.max(s.rss_kib);
        }
        pb.set_message(format!("idle: holding {} connections", ctx.connected.load(Ordering::Relaxed)));
    }
    let after = source.as_ref().and_then(Source::sample);
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
        clients: connections,
        connected,
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
    report.server = server_stats(before, after, peak, 0, connected);
    Ok(report)
}

async fn run_storm(c: &Common, connections: usize, concurrency: usize) -> anyhow::Result<Report> {
    let pop = connection_population(c, connections)?;
    let ctx = make_ctx(c)?;
    let source = gateway_source(c);
    let before = source.as_ref().and_then(Source::sample);
    let pb = progress(c.quiet);
    pb.set_message(format!("opening {connections} sockets"));
    let bounded = tokio::time::timeout(
        Duration::from_secs_f64(c.duration.max(1.0) * 30.0),
        scenarios::connect_storm(ctx.clone(), &pop, concurrency.max(1)),
    );
    let (elapsed, failures, open) = bounded.await.context("connect storm did not finish in time")?;
    let after = source.as_ref().and_then(Source::sample);
    pb.finish_and_clear();
    let ok = open.len();
    drop(open);
    Ok(Report {
        scenario: "connect-storm".into(),
        targets: c.url.clone(),
        clients: connections,
        connected: ok,
        duration_secs: elapsed.as_secs_f64(),
        handshakes_per_sec: Some(ok as f64 / elapsed.as_secs_f64()),
        connect_failures_by_reason: failures.into_iter().collect(),
        server: server_stats(before, after, 0, 0, ok),
        ..Default::default()
    })
}
