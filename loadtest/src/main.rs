//! `loadtest`: finds out what a chatgw deployment holds, and checks that it
//! loses, duplicates and reorders nothing while doing it.
//!
//! Clients speak protocol v1 (see `protocol/README.md`). Against the gateway
//! they authenticate with tokens from a seed file (`chatgw seed`); against
//! the bare reference server (`refserver`) they need none. Every run is
//! bounded in time and stops by itself; only loopback targets are accepted.
//! The harness makes no REST calls: seeding is `chatgw seed`, run once
//! against the shared database, and tokens come from its file. The one
//! exception is `auth-storm`, whose point is the REST sign-in path itself
//! (registrations and logins, and the gateway's memory under them).
//!
//! # Several gateway instances
//!
//! `--url` takes several URLs (repeat it, or separate with commas); clients
//! are spread over them round-robin by client index. In the traffic
//! scenarios (fanout, chat, reconnect):
//!
//! * `--senders-per-room K`: only the first K members of each room send (the
//!   total `--rate` is spread over them); the others only receive. Default:
//!   every member sends.
//! * `--senders-on I`: senders connect to the I-th URL (0-based); receivers
//!   round-robin over all URLs, or with `--receivers-elsewhere` over all but
//!   the I-th, so every delivery crosses from one instance to another.
//!
//! The report's `per_target` gives clients, senders and connected clients
//! per URL. `--gateway-pid` and `--metrics-url` take several values too; the
//! server figures are then sums over the instances.
//!
//! ```sh
//! # Two instances (same database, cluster bus): one sender per room on the
//! # first, every receiver on the second.
//! loadtest fanout --url ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws \
//!     --seed seed.json --rooms 10 --room-size 100 --rate 500 \
//!     --senders-per-room 1 --senders-on 0 --receivers-elsewhere \
//!     --gateway-pid $PID_A,$PID_B --json two-instances.json
//! ```
//!
//! # Several generator processes: `--shard i/n` and `loadtest merge`
//!
//! One process holds at most ~20,000 sockets here, so a bigger run is split:
//! shard `i/n` runs exactly the clients whose index in the unsplit
//! population satisfies `index % n == i` (same rooms, same roles, same URL
//! and token per client as in the unsplit run), so the n shards together
//! run the unsplit workload. `--rate` stays the total: every sender sends at
//! rate / (senders of the whole run), so shard i sends
//! rate × (its senders / all senders) (its report's `send_rate`).
//! `--connections` of idle and connect-storm is the total too.
//!
//! The shards of a run meet through `--sync-dir DIR` (required for n > 1: a
//! fresh directory per run, shared by the shards; they may be started in
//! any order). There they agree on a run id (room names without `--seed`,
//! client_msg_ids; or pass the same `--run-id` to each), nobody sends before
//! every client of every shard has joined, the timeline's second 0 is the
//! same instant in every shard, and no receiver starts its final drain
//! before the senders of every shard have stopped.
//!
//! Each shard writes its own `--json` report, which carries its latency
//! histograms (HdrHistogram V2 serialisation, base64) and a per-room ledger
//! (last acknowledged seq, baselines, seqs seen). `loadtest merge` checks
//! that it has every shard of one run exactly once, adds the counters and
//! the histograms (exact percentiles of the whole run, not an average of
//! percentiles), and recomputes expected and lost deliveries per room with
//! the highest seq acknowledged in any shard. A single shard's own `lost` is
//! a lower bound: it cannot see a loss at the tail of a room whose senders
//! are all in other shards.
//!
//! ```sh
//! # 10,000 clients in two generator processes against the reference server.
//! refserver --listen 127.0.0.1:9000 &
//! for i in 0 1; do
//!     loadtest fanout --url ws://127.0.0.1:9000/ws --rooms 10 --room-size 1000 --rate 100 \
//!         --duration 15 --shard $i/2 --sync-dir /tmp/run1 --json s$i.json --quiet &
//! done
//! wait
//! loadtest merge s0.json s1.json -o merged.json --plot merged.svg --assert
//!
//! # Past one process's sockets on both sides: 36,000 clients, two shards of
//! # 18,000, two gateway instances (shard i lands on instance i here, as
//! # both split by index; every room spans both instances).
//! for i in 0 1; do
//!     loadtest fanout --url ws://127.0.0.1:8080/ws,ws://127.0.0.1:8081/ws --seed seed.json \
//!         --rooms 36 --room-size 1000 --rate 200 --source-ips 4 \
//!         --shard $i/2 --sync-dir /tmp/run2 --json c$i.json --quiet &
//! done
//! wait
//! loadtest merge c0.json c1.json -o cluster.json
//! ```
//!
//! # Checking the accounting itself
//!
//! `refserver --drop-permille D --dup-permille U --swap-permille S --seed X
//! --stats-file stats.json` drops, duplicates or swaps (message, recipient)
//! deliveries at random and writes what it did on exit (SIGTERM); a fanout
//! run against it must report `lost` = dropped + held_lost, `duplicated` =
//! duplicated and `reordered` = swapped (`tests/cluster.rs`).

mod authstorm;
mod client;
mod procstat;
mod report;
mod resume;
mod rstorm;
mod scenarios;
mod shard;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::{Barrier, Semaphore, watch};

use client::Target;
use procstat::Source;
use report::{Report, Server, TargetCount};
use scenarios::{Behaviour, Client, Ctx, Phase, Population};
use shard::{Shard, SyncDir};

#[derive(Parser)]
#[command(version, about = "Load-test harness for the chatgw gateway (and the bare reference server)", long_about = None)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// R rooms of S members; a total send rate spread over all senders;
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
        /// Connections to hold (over all shards).
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
        /// Sockets to open (over all shards).
        #[arg(long, default_value_t = 5000)]
        connections: usize,
        /// Handshakes in flight.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
    },
    /// A burst of registrations and logins (REST) from many source
    /// addresses: answers by status, latency, and the gateway's RSS before,
    /// at peak and after (see BENCHMARKS.md, "Sign-in storm").
    AuthStorm(authstorm::AuthStormArgs),
    /// One client in many rooms resumes them all, with one `sync` frame or
    /// one `join` per room: round trip and gateway CPU per resume, median
    /// of runs (see BENCHMARKS.md, "Bulk resume").
    Resume(resume::ResumeArgs),
    /// N clients in a few rooms each drop their sockets at once and all
    /// resume with one `sync`, while messages are sent into every room: lost,
    /// duplicated, time until all have resumed, the gateway's peak RSS.
    ReconnectStorm(rstorm::RstormArgs),
    /// Merge the JSON reports of the shards of one run (`--shard i/n`,
    /// every shard exactly once) into the report of the whole run.
    Merge(MergeArgs),
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
    /// Gateway pid(s): report their CPU time and RSS over the measured
    /// window (summed over several instances; repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    gateway_pid: Vec<u32>,
    /// Or the gateways' metrics URL(s) (http://127.0.0.1:PORT/metrics).
    #[arg(long, value_delimiter = ',')]
    metrics_url: Vec<String>,
    /// Spread client sockets over this many source addresses 127.0.0.1..N
    /// (needed beyond ~28k sockets per target port).
    #[arg(long, default_value_t = 1)]
    source_ips: u8,
    /// Run only shard i of n of the workload (the clients whose index % n == i);
    /// see `loadtest merge`.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// A fresh directory shared by the shards of one run, where they meet
    /// (required with --shard i/n, n > 1).
    #[arg(long, value_name = "DIR")]
    sync_dir: Option<PathBuf>,
    /// Run id in hex (room names without --seed, client_msg_ids). Default:
    /// random, agreed between shards through --sync-dir.
    #[arg(long, value_parser = parse_hex_u32, value_name = "HEX")]
    run_id: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
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
    /// Total sends per second over all senders (of all shards).
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Seconds at the start of the measured window excluded from latency
    /// percentiles.
    #[arg(long, default_value_t = 1)]
    warmup: u32,
    /// Senders per room: the first K members of each room send, the others
    /// only receive (default: every member sends).
    #[arg(long, value_name = "K")]
    senders_per_room: Option<usize>,
    /// Senders connect to the URL at this index (0-based) of --url;
    /// receivers are spread over all URLs.
    #[arg(long, value_name = "INDEX")]
    senders_on: Option<usize>,
    /// With --senders-on: spread receivers over the other URLs only.
    #[arg(long, requires = "senders_on")]
    receivers_elsewhere: bool,
}

#[derive(Args)]
struct MergeArgs {
    /// The shards' JSON reports.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// Write the merged report as JSON here.
    #[arg(short, long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    output: Output,
}

/// What to do with a finished report, besides printing it (runs and merges).
#[derive(Args, Clone)]
struct Output {
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
}

fn parse_hex_u32(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

/// The parts of `chatgw seed`'s file the scenarios read.
#[derive(serde::Deserialize)]
pub(crate) struct SeedFile {
    pub(crate) users: Vec<SeedUser>,
    pub(crate) rooms: Vec<SeedRoom>,
}
#[derive(serde::Deserialize)]
pub(crate) struct SeedUser {
    pub(crate) token: String,
}
#[derive(serde::Deserialize)]
pub(crate) struct SeedRoom {
    pub(crate) id: String,
    pub(crate) members: Vec<usize>,
}

pub(crate) fn load_seed(path: &PathBuf) -> anyhow::Result<SeedFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).context("parsing the seed file")
}

/// Clients for a traffic scenario: one per (room, member) slot, with their
/// role and target; this shard's share of them, and the number of senders
/// in the whole (unsplit) run.
fn traffic_population(t: &Traffic, run_id: u32) -> anyhow::Result<(Population, usize)> {
    // (token, room, position in the room), in the order of the unsplit run.
    let mut slots: Vec<(Option<String>, String, usize)> = Vec::new();
    match &t.common.seed {
        Some(p) => {
            let seed = load_seed(p)?;
            if seed.rooms.len() < t.rooms {
                bail!("the seed file has {} rooms, {} requested", seed.rooms.len(), t.rooms);
            }
            for room in &seed.rooms[..t.rooms] {
                for (k, &m) in room.members.iter().take(t.room_size).enumerate() {
                    let user = seed.users.get(m).with_context(|| format!("seed: no user {m}"))?;
                    slots.push((Some(user.token.clone()), room.id.clone(), k));
                }
            }
        }
        None => {
            for i in 0..t.rooms * t.room_size {
                slots.push((None, format!("r{run_id:x}-{}", i / t.room_size), i % t.room_size));
            }
        }
    }
    let urls = t.common.url.len();
    let senders_per_room = t.senders_per_room.unwrap_or(usize::MAX);
    let receiver_targets: Vec<usize> = match t.senders_on {
        None => Vec::new(),
        Some(s) if s >= urls => bail!("--senders-on {s}: there are {urls} URL(s), indexed from 0"),
        Some(s) => (0..urls).filter(|u| !t.receivers_elsewhere || *u != s).collect(),
    };
    if t.senders_on.is_some() && receiver_targets.is_empty() {
        bail!("--receivers-elsewhere needs at least two --url");
    }
    let shard = t.common.shard.unwrap_or(Shard::WHOLE);
    let (mut senders, mut receivers) = (0, 0);
    let mut clients = Vec::new();
    for (index, (token, room, k)) in slots.into_iter().enumerate() {
        let sender = k < senders_per_room;
        let target = match t.senders_on {
            None => index % urls,
            Some(s) if sender => s,
            Some(_) => receiver_targets[receivers % receiver_targets.len()],
        };
        if sender {
            senders += 1;
        } else {
            receivers += 1;
        }
        if shard.owns(index) {
            clients.push(Client { index, target, token, rooms: vec![room], sender });
        }
    }
    if t.senders_on.is_some() && receivers == 0 {
        bail!("--senders-on: every client is a sender; set --senders-per-room below the room size");
    }
    Ok((Population { clients }, senders))
}

/// Clients for idle and connect-storm: this shard's share of `n`.
fn connection_population(c: &Common, n: usize) -> anyhow::Result<Population> {
    let mut tokens: Vec<Option<String>> = match &c.seed {
        Some(p) => {
            let seed = load_seed(p)?;
            if seed.users.len() < n {
                bail!("the seed file has {} users, {n} requested", seed.users.len());
            }
            seed.users.into_iter().take(n).map(|u| Some(u.token)).collect()
        }
        None => vec![None; n],
    };
    let shard = c.shard.unwrap_or(Shard::WHOLE);
    let clients = (0..n)
        .filter(|i| shard.owns(*i))
        .map(|index| Client { index, target: index % c.url.len(), token: tokens[index].take(), ..Default::default() })
        .collect();
    Ok(Population { clients })
}

fn gateway_sources(c: &Common) -> Vec<Source> {
    c.gateway_pid.iter().map(|p| Source::Pid(*p)).chain(c.metrics_url.iter().cloned().map(Source::Metrics)).collect()
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
        Scenario::AuthStorm(a) => return authstorm::run(a).await,
        Scenario::Resume(a) => return resume::run(a).await,
        Scenario::ReconnectStorm(a) => return rstorm::run(a).await,
        Scenario::Merge(m) => {
            let mut reports = Vec::with_capacity(m.reports.len());
            for p in &m.reports {
                let text = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                reports.push(serde_json::from_slice(&text).with_context(|| format!("parsing {}", p.display()))?);
            }
            let report = Report::merge(reports)?;
            return emit(&report, m.out.as_deref(), &m.output);
        }
    };
    emit(&report, common.json.as_deref(), &common.output)
}

/// Prints the table, writes JSON and plot, and checks the assertions.
fn emit(report: &Report, json: Option<&Path>, out: &Output) -> anyhow::Result<()> {
    println!("{}", report.table());
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_vec_pretty(report)?)?;
        println!("report written to {}", p.display());
    }
    if let Some(p) = &out.plot {
        report.plot(p)?;
        println!("plot written to {}", p.display());
    }
    if out.assert {
        let failures = report.failures(out.max_p99_ms, out.max_error_rate);
        if !failures.is_empty() {
            eprintln!("ASSERTION FAILED: {}", failures.join("; "));
            std::process::exit(1);
        }
        println!("assertions passed");
    }
    Ok(())
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

async fn run_traffic(
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

async fn run_idle(c: &Common, connections: usize, concurrency: usize) -> anyhow::Result<Report> {
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

async fn run_storm(c: &Common, connections: usize, concurrency: usize) -> anyhow::Result<Report> {
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
