//! `loadtest reconnect-storm`: N clients, each in a few rooms, lose their
//! sockets at the same moment and all resume at once with one `sync` each
//! (protocol §14); nothing may be lost, duplicated or reordered.
//!
//! 1. Connect: every client (the first `--clients` users of the seed file)
//!    connects, `--concurrency` handshakes in flight, and sends one `sync`
//!    listing its rooms (every seed room it is a member of) with
//!    `since_seq: 0`; it reads until `synced`, then keeps reading live
//!    frames, tracking per room the last seq it holds and the room's epoch.
//! 2. Before the storm: the first member of every room sends
//!    `--before-messages` into it (one fresh socket per writer user, for all
//!    the rooms it is first member of) and waits for the acks; the clients
//!    are given up to 30 s to see them live.
//! 3. The storm: every client closes its socket at the same moment and
//!    stores (room → last seq, epoch). While all are down, the writers send
//!    `--storm-messages` into every room and wait for the acks: the highest
//!    acknowledged seq per room is the end of what every member must get.
//! 4. Every client reconnects at once (`--concurrency` in flight; a 429 is
//!    retried after its `Retry-After`, a 503 or a socket error after a
//!    jittered backoff) and sends one `sync` with its stored seq and epoch
//!    per room, reading until `synced`. Per (client, room) it must receive
//!    exactly the seqs in (stored, last acked], each once, ascending.
//!
//! The report: lost / duplicated / reordered, the time from the first
//! reconnect attempt to the last `synced`, per-client resume time (its
//! first connect attempt → `synced`), handshake refusals by reason, and the
//! gateway's RSS (before the storm; VmHWM, reset at the storm's start when
//! `/proc/<pid>/clear_refs` allows it, and the highest VmRSS sampled every
//! 20 ms) and CPU seconds over the storm.
//!
//! ```sh
//! chatgw seed --users 10000 --rooms 1000 --room-size 50 --out seed.json   # 5 rooms per user
//! loadtest reconnect-storm --url ws://127.0.0.1:8080/ws --seed seed.json --clients 10000 \
//!     --concurrency 512 --source-ips 8 --gateway-pid $PID --json rstorm.json --assert
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::authstorm::read_mem;
use crate::client::{self, Target, Ws};
use crate::procstat::{self, Source};

#[derive(Args, Clone)]
pub struct RstormArgs {
    /// Gateway WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Seed file from `chatgw seed` (tokens, rooms and their members).
    #[arg(long)]
    seed: PathBuf,
    /// Clients: the first N users of the seed file (0: all of them). Each
    /// resumes every seed room it is a member of.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    /// Handshakes (with their `sync`) in flight, when connecting and when
    /// reconnecting.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Spread client sockets over the source addresses 127.0.0.1..=N.
    #[arg(long, default_value_t = 8)]
    source_ips: u8,
    /// Messages sent into every room before the storm (seen live).
    #[arg(long, default_value_t = 2)]
    before_messages: usize,
    /// Messages sent into every room while every client is down.
    #[arg(long, default_value_t = 3)]
    storm_messages: usize,
    /// Writer sockets (one per writer user) at work at once.
    #[arg(long, default_value_t = 64)]
    writers_in_flight: usize,
    /// Close with a bare TCP close (no WebSocket close frame) instead of a
    /// close handshake.
    #[arg(long)]
    abrupt: bool,
    /// Upper bound, in seconds, of each phase (connect, settle, write,
    /// resume).
    #[arg(long, default_value_t = 300.0)]
    phase_timeout: f64,
    /// Gateway pid: its RSS (VmRSS, VmHWM) and CPU time (Linux /proc).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print only a one-line summary (no progress line).
    #[arg(long)]
    quiet: bool,
    /// Exit non-zero on any loss, duplicate, reorder or client that did not
    /// resume.
    #[arg(long)]
    assert: bool,
}

// ---------------------------------------------------------------- accounting

/// What one client got for one room on resume, against what it had to get.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Seqs in (stored, last].
    pub expected: u64,
    /// Distinct expected seqs received.
    pub delivered: u64,
    /// Expected, never received.
    pub lost: u64,
    /// Received again, or at/below the stored seq.
    pub duplicated: u64,
    /// Received after a higher seq of the same room.
    pub reordered: u64,
    /// Above the room's last acknowledged seq (nobody sent it).
    pub unexpected: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.reordered += o.reordered;
        self.unexpected += o.unexpected;
    }
}

/// Accounts the seqs one client received for one room (in arrival order)
/// against its stored seq and the room's last acknowledged seq.
pub fn tally(stored: i64, last: i64, received: &[i64]) -> Tally {
    let mut t = Tally { expected: (last - stored).max(0) as u64, ..Default::default() };
    let mut seen = BTreeSet::new();
    let mut max = stored;
    for &s in received {
        if s <= stored || !seen.insert(s) {
            t.duplicated += 1;
            continue;
        }
        if s < max {
            t.reordered += 1;
        }
        max = max.max(s);
        if s > last {
            t.unexpected += 1;
        } else {
            t.delivered += 1;
        }
    }
    t.lost = t.expected - t.delivered;
    t
}

// ---------------------------------------------------------------- report

#[derive(Debug, Default, Serialize)]
pub struct Percentiles {
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |q: f64| (!v.is_empty()).then(|| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]);
    Percentiles { p50_ms: q(0.5), p99_ms: q(0.99), max_ms: v.last().copied() }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub target: String,
    pub clients: usize,
    /// Rooms with at least one client member.
    pub rooms: usize,
    /// (client, room) pairs resumed.
    pub memberships: usize,
    pub concurrency: usize,
    pub source_ips: u8,
    pub abrupt_close: bool,
    pub before_messages_per_room: usize,
    pub storm_messages_per_room: usize,

    /// Phase 1: clients connected and synced, seconds it took, failures.
    pub connected: usize,
    pub connect_secs: f64,
    pub connect_failures: BTreeMap<String, u64>,
    /// Phase 1: refused handshakes / failed attempts by reason (retried).
    pub connect_refusals: BTreeMap<String, u64>,
    /// Phase 2: live deliveries before the storm that skipped or repeated a
    /// seq, and clients that had seen every pre-storm message when the storm
    /// began (the others resume from further back, which is fine).
    pub pre_storm_gaps: u64,
    pub pre_storm_duplicates: u64,
    pub caught_up_before_storm: usize,
    /// Phase 3: messages acknowledged while every client was down.
    pub storm_messages_acked: u64,
    pub write_errors: BTreeMap<String, u64>,
    pub write_secs: f64,

    /// Phase 4.
    pub resumed: usize,
    pub resume_failed: usize,
    pub resume_failures: BTreeMap<String, u64>,
    /// (client, room) pairs that never got their `joined`.
    pub rooms_not_joined: u64,
    /// Messages every (client, room) had to receive on resume, in all.
    pub messages_expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub unexpected: u64,
    /// `reset` and `history_gone` frames (none expected).
    pub resets: u64,
    pub history_gone: u64,
    /// Per-room `error` answers to a `sync`, by code.
    pub room_errors_by_code: BTreeMap<String, u64>,
    /// `error` frames without a room (e.g. `rate_limited` for the `sync`).
    pub errors_by_code: BTreeMap<String, u64>,
    /// Refused handshakes / failed attempts by reason (all retried).
    pub handshake_failures_by_reason: BTreeMap<String, u64>,
    pub handshake_attempts: u64,
    /// Connections lost in the middle of a resume (then resumed again).
    pub resume_drops: BTreeMap<String, u64>,
    /// `sync` frames sent in the storm (more than the clients: retries).
    pub syncs_sent: u64,

    /// First reconnect attempt → last `synced`.
    pub time_to_all_resumed_ms: Option<f64>,
    /// Per client: its first connect attempt → `synced`.
    pub resume: Percentiles,
    /// Per client: the storm's reconnect signal → `synced` (queueing for a
    /// handshake slot included).
    pub resumed_after_signal: Percentiles,

    /// Gateway, KiB: VmRSS just before the sockets close, VmHWM after the
    /// last `synced` (since the storm began if `hwm_reset`, else since the
    /// process started), highest VmRSS sampled every 20 ms during the
    /// storm, VmRSS after the last `synced`.
    pub rss_before_kib: Option<u64>,
    /// VmRSS before the first connection, and once every socket is closed
    /// and the storm's messages are written (just before the reconnect).
    pub rss_idle_kib: Option<u64>,
    pub rss_all_closed_kib: Option<u64>,
    pub rss_hwm_kib: Option<u64>,
    pub hwm_reset: bool,
    pub rss_peak_sampled_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    /// Gateway CPU seconds from the close to the last `synced`, and of the
    /// reconnect phase alone.
    pub cpu_seconds_storm: Option<f64>,
    pub cpu_seconds_resume: Option<f64>,
    /// Gateway CPU seconds of the first connect-and-sync of every client.
    pub cpu_seconds_connect: Option<f64>,
}

impl Report {
    pub fn failures(&self) -> Vec<String> {
        let mut f = Vec::new();
        for (n, what) in [
            (self.lost, "lost"),
            (self.duplicated, "duplicated"),
            (self.reordered, "reordered"),
            (self.unexpected, "unexpected"),
        ] {
            if n > 0 {
                f.push(format!("{n} messages {what}"));
            }
        }
        if self.rooms_not_joined > 0 {
            f.push(format!("{} (client, room) pairs not joined", self.rooms_not_joined));
        }
        if self.resume_failed > 0 {
            f.push(format!("{} clients did not resume", self.resume_failed));
        }
        if self.connected < self.clients {
            f.push(format!("{} of {} clients connected before the storm", self.connected, self.clients));
        }
        f
    }

    pub fn summary(&self) -> String {
        let mib = |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        format!(
            "reconnect-storm clients={}/{} resumed={} rooms={} expected={} lost={} dup={} reord={} unexp={} \
             all_resumed={}ms resume p50={}ms p99={}ms max={}ms rss_mib before={} peak={} hwm={}{} cpu_s={:.2} \
             refusals={:?} room_errors={:?}",
            self.connected,
            self.clients,
            self.resumed,
            self.rooms,
            self.messages_expected,
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected,
            ms(self.time_to_all_resumed_ms),
            ms(self.resume.p50_ms),
            ms(self.resume.p99_ms),
            ms(self.resume.max_ms),
            mib(self.rss_before_kib),
            mib(self.rss_peak_sampled_kib),
            mib(self.rss_hwm_kib),
            if self.hwm_reset { "" } else { "(since start)" },
            self.cpu_seconds_storm.unwrap_or(0.0),
            self.handshake_failures_by_reason,
            self.room_errors_by_code,
        )
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let mut row = |k: &str, v: String| s.push_str(&format!("  {k:<34} {v}\n"));
        let mib = |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
        row("scenario", self.scenario.into());
        row("target", self.target.clone());
        row("clients (connected)", format!("{} ({})", self.clients, self.connected));
        row("rooms / memberships", format!("{} / {}", self.rooms, self.memberships));
        row("connect phase", format!("{:.1} s", self.connect_secs));
        if !self.connect_failures.is_empty() {
            row("connect failures", format!("{:?}", self.connect_failures));
        }
        if !self.connect_refusals.is_empty() {
            row("connect refusals (retried)", format!("{:?}", self.connect_refusals));
        }
        row(
            "pre-storm gaps / dups / caught up",
            format!("{} / {} / {}", self.pre_storm_gaps, self.pre_storm_duplicates, self.caught_up_before_storm),
        );
        row("storm messages acked", format!("{} (in {:.1} s)", self.storm_messages_acked, self.write_secs));
        if !self.write_errors.is_empty() {
            row("write errors", format!("{:?}", self.write_errors));
        }
        row(
            "resumed / failed / rooms unjoined",
            format!("{} / {} / {}", self.resumed, self.resume_failed, self.rooms_not_joined),
        );
        if !self.resume_failures.is_empty() {
            row("resume failures", format!("{:?}", self.resume_failures));
        }
        row("messages expected / delivered", format!("{} / {}", self.messages_expected, self.delivered));
        row(
            "lost / dup / reordered / unexp",
            format!("{} / {} / {} / {}", self.lost, self.duplicated, self.reordered, self.unexpected),
        );
        if self.resets + self.history_gone > 0 {
            row("resets / history_gone", format!("{} / {}", self.resets, self.history_gone));
        }
        row("time to all resumed", format!("{} ms", ms(self.time_to_all_resumed_ms)));
        row(
            "resume p50 / p99 / max",
            format!("{} / {} / {} ms", ms(self.resume.p50_ms), ms(self.resume.p99_ms), ms(self.resume.max_ms)),
        );
        row(
            "since signal p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                ms(self.resumed_after_signal.p50_ms),
                ms(self.resumed_after_signal.p99_ms),
                ms(self.resumed_after_signal.max_ms)
            ),
        );
        row("handshake attempts / syncs", format!("{} / {}", self.handshake_attempts, self.syncs_sent));
        if !self.handshake_failures_by_reason.is_empty() {
            row("handshake failures", format!("{:?}", self.handshake_failures_by_reason));
        }
        if !self.resume_drops.is_empty() {
            row("dropped mid-resume", format!("{:?}", self.resume_drops));
        }
        if !self.room_errors_by_code.is_empty() {
            row("room errors by code", format!("{:?}", self.room_errors_by_code));
        }
        if !self.errors_by_code.is_empty() {
            row("errors by code", format!("{:?}", self.errors_by_code));
        }
        row("server RSS idle / connected", format!("{} / {}", mib(self.rss_idle_kib), mib(self.rss_before_kib)));
        row(
            "server RSS all closed / resumed",
            format!("{} / {}", mib(self.rss_all_closed_kib), mib(self.rss_after_kib)),
        );
        row(
            "server RSS peak sampled / HWM",
            format!(
                "{} / {}{}",
                mib(self.rss_peak_sampled_kib),
                mib(self.rss_hwm_kib),
                if self.hwm_reset { "" } else { " (since process start)" }
            ),
        );
        if let (Some(a), Some(b), Some(c)) = (self.cpu_seconds_connect, self.cpu_seconds_storm, self.cpu_seconds_resume)
        {
            row("server CPU connect / storm / resume", format!("{a:.2} / {b:.2} / {c:.2} s"));
        }
        s
    }
}

// ---------------------------------------------------------------- the run

#[derive(Clone, Debug)]
enum Phase {
    Connect,
    /// Pre-storm traffic acked: the last acked seq per room.
    Settle(Arc<Vec<i64>>),
    Close,
    Reconnect,
    Done,
}

/// One room as a client holds it.
#[derive(Clone, Debug, Default)]
struct Held {
    room: usize,
    last: i64,
    epoch: Option<String>,
}

/// What one client did.
#[derive(Default, Debug)]
struct Outcome {
    connect_error: Option<String>,
    pre_gaps: u64,
    pre_dups: u64,
    caught_up: bool,
    /// (room, stored seq, received seqs in order, joined).
    rooms: Vec<(usize, i64, Vec<i64>, bool)>,
    resumed: bool,
    resume_error: Option<String>,
    attempts: u64,
    refusals: BTreeMap<String, u64>,
    pre_refusals: BTreeMap<String, u64>,
    drops: BTreeMap<String, u64>,
    room_errors: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    resets: u64,
    history_gone: u64,
    syncs: u64,
    started: Option<Instant>,
    synced: Option<Instant>,
}

struct Shared {
    target: Target,
    source_ips: u8,
    room_ids: Vec<String>,
    room_index: HashMap<String, usize>,
    permits: Semaphore,
    /// Clients past their phase-1 sync (ok or not), caught up, closed,
    /// finished with the storm's resume.
    connected: AtomicUsize,
    settled: AtomicUsize,
    closed: AtomicUsize,
    resumed: AtomicUsize,
    abrupt: bool,
    frame_timeout: Duration,
    deadline_secs: f64,
}

impl Shared {
    fn source(&self, i: usize) -> Option<IpAddr> {
        (self.source_ips > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % self.source_ips as usize) as u8)))
    }
}

pub async fn run(a: RstormArgs) -> anyhow::Result<()> {
    let target = Target::parse(&a.url)?;
    let seed = crate::load_seed(&a.seed)?;
    let n = if a.clients == 0 { seed.users.len() } else { a.clients };
    if n > seed.users.len() {
        bail!("--clients {n}: the seed file has {} users", seed.users.len());
    }
    // Rooms with at least one client member; each client's rooms; each
    // room's writer (its first member, a client or not).
    let mut rooms_of: Vec<Vec<usize>> = vec![Vec::new(); n];
    let (mut room_ids, mut writer_of) = (Vec::new(), Vec::new());
    for r in &seed.rooms {
        if !r.members.iter().any(|&m| m < n) || r.members.is_empty() {
            continue;
        }
        let idx = room_ids.len();
        for &m in r.members.iter().filter(|&&m| m < n) {
            rooms_of[m].push(idx);
        }
        let w = r.members[0];
        if w >= seed.users.len() {
            bail!("seed: no user {w}");
        }
        room_ids.push(r.id.clone());
        writer_of.push(w);
    }
    let memberships: usize = rooms_of.iter().map(Vec::len).sum();
    let mut writers: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (room, &w) in writer_of.iter().enumerate() {
        writers.entry(w).or_default().push(room);
    }
    let shared = Arc::new(Shared {
        target,
        source_ips: a.source_ips.max(1),
        room_index: room_ids.iter().enumerate().map(|(i, r)| (r.clone(), i)).collect(),
        room_ids,
        permits: Semaphore::new(a.concurrency.max(1)),
        connected: AtomicUsize::new(0),
        settled: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        resumed: AtomicUsize::new(0),
        abrupt: a.abrupt,
        frame_timeout: Duration::from_secs(60),
        deadline_secs: a.phase_timeout,
    });
    let nonce: u32 = rand::random();
    let phase_timeout = Duration::from_secs_f64(a.phase_timeout);
    let pb = crate::progress(a.quiet);
    let sources: Vec<Source> = a.gateway_pid.into_iter().map(Source::Pid).collect();

    // 1. Connect and sync every client.
    let mem_idle = a.gateway_pid.and_then(read_mem);
    let cpu_idle = procstat::sample_all(&sources);
    pb.set_message(format!("connecting {n} clients"));
    let (phase_tx, phase_rx) = watch::channel(Phase::Connect);
    let connect_started = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for (i, rooms) in rooms_of.into_iter().enumerate() {
        let token = seed.users[i].token.clone();
        tasks.push(tokio::spawn(client_task(shared.clone(), i, token, rooms, phase_rx.clone())));
    }
    wait_for(&pb, phase_timeout, "connected", || shared.connected.load(Ordering::Relaxed), n).await;
    let connect_secs = connect_started.elapsed().as_secs_f64();
    let cpu_connected = procstat::sample_all(&sources);

    // 2. Traffic before the storm, seen live.
    pb.set_message("writing before the storm");
    let tokens: Vec<String> = seed.users.iter().map(|u| u.token.clone()).collect();
    let mut write_errors = BTreeMap::new();
    let mut acked = vec![0i64; shared.room_ids.len()];
    let w = write_all(&shared, &writers, &tokens, a.before_messages, a.writers_in_flight, nonce, "b").await;
    merge_writes(&mut acked, &mut write_errors, w);
    phase_tx.send_replace(Phase::Settle(Arc::new(acked.clone())));
    let live = n - tasks.iter().filter(|t| t.is_finished()).count();
    wait_for(&pb, Duration::from_secs(30), "caught up", || shared.settled.load(Ordering::Relaxed), live).await;

    // 3. The storm: every socket closes at once, writers send while all are down.
    let before = procstat::sample_all(&sources);
    let mem_before = a.gateway_pid.and_then(read_mem);
    let hwm_reset = a.gateway_pid.is_some_and(|p| std::fs::write(format!("/proc/{p}/clear_refs"), "5").is_ok());
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(mem_before.map_or(0, |m| m.rss_kib)));
    let sampler = a.gateway_pid.map(|pid| {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                if let Some(m) = read_mem(pid) {
                    peak.fetch_max(m.rss_kib, Ordering::Relaxed);
                }
            }
        })
    });
    phase_tx.send_replace(Phase::Close);
    let live = n - tasks.iter().filter(|t| t.is_finished()).count();
    wait_for(&pb, phase_timeout, "closed", || shared.closed.load(Ordering::Relaxed), live).await;
    pb.set_message("writing while every client is down");
    let write_started = Instant::now();
    let pre = acked.clone();
    let w = write_all(&shared, &writers, &tokens, a.storm_messages, a.writers_in_flight, nonce, "s").await;
    merge_writes(&mut acked, &mut write_errors, w);
    let write_secs = write_started.elapsed().as_secs_f64();
    let storm_acked: i64 = acked.iter().zip(&pre).map(|(a, p)| a - p).sum();

    // 4. Everyone reconnects at once.
    let mem_closed = a.gateway_pid.and_then(read_mem);
    let resume_before = procstat::sample_all(&sources);
    let signal = Instant::now();
    phase_tx.send_replace(Phase::Reconnect);
    let live = n - tasks.iter().filter(|t| t.is_finished()).count();
    wait_for(&pb, phase_timeout, "resumed", || shared.resumed.load(Ordering::Relaxed), live).await;
    let after = procstat::sample_all(&sources);
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let mem_after = a.gateway_pid.and_then(read_mem);
    phase_tx.send_replace(Phase::Done);
    pb.set_message("closing");
    let mut outcomes = Vec::with_capacity(n);
    for t in tasks {
        outcomes.push(t.await?);
    }
    pb.finish_and_clear();

    // The accounting.
    let mut r = Report {
        scenario: "reconnect-storm",
        target: shared.target.url.clone(),
        clients: n,
        rooms: shared.room_ids.len(),
        memberships,
        concurrency: a.concurrency,
        source_ips: shared.source_ips,
        abrupt_close: a.abrupt,
        before_messages_per_room: a.before_messages,
        storm_messages_per_room: a.storm_messages,
        connect_secs,
        storm_messages_acked: storm_acked as u64,
        write_errors,
        write_secs,
        hwm_reset,
        rss_before_kib: mem_before.map(|m| m.rss_kib),
        rss_idle_kib: mem_idle.map(|m| m.rss_kib),
        rss_all_closed_kib: mem_closed.map(|m| m.rss_kib),
        cpu_seconds_connect: cpu_idle.zip(cpu_connected).map(|(b, e)| e.cpu_secs - b.cpu_secs),
        rss_hwm_kib: mem_after.map(|m| m.hwm_kib),
        rss_after_kib: mem_after.map(|m| m.rss_kib),
        rss_peak_sampled_kib: a
            .gateway_pid
            .map(|_| peak.load(Ordering::Relaxed).max(mem_after.map_or(0, |m| m.rss_kib))),
        cpu_seconds_storm: before.zip(after).map(|(b, e)| e.cpu_secs - b.cpu_secs),
        cpu_seconds_resume: resume_before.zip(after).map(|(b, e)| e.cpu_secs - b.cpu_secs),
        ..Default::default()
    };
    let mut total = Tally::default();
    let (mut first, mut last) = (None::<Instant>, None::<Instant>);
    let (mut resume_ms, mut since_signal_ms) = (Vec::new(), Vec::new());
    let add = |m: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>| {
        for (k, v) in from {
            *m.entry(k.clone()).or_default() += v;
        }
    };
    for o in &outcomes {
        add(&mut r.connect_refusals, &o.pre_refusals);
        if let Some(e) = &o.connect_error {
            *r.connect_failures.entry(e.clone()).or_default() += 1;
            continue;
        }
        r.connected += 1;
        r.pre_storm_gaps += o.pre_gaps;
        r.pre_storm_duplicates += o.pre_dups;
        r.caught_up_before_storm += usize::from(o.caught_up);
        if o.resumed {
            r.resumed += 1;
        } else {
            r.resume_failed += 1;
            *r.resume_failures.entry(o.resume_error.clone().unwrap_or_else(|| "?".into())).or_default() += 1;
        }
        for (room, stored, received, joined) in &o.rooms {
            total.add(&tally(*stored, acked[*room], received));
            r.rooms_not_joined += u64::from(!joined);
        }
        r.handshake_attempts += o.attempts;
        r.syncs_sent += o.syncs;
        r.resets += o.resets;
        r.history_gone += o.history_gone;
        add(&mut r.handshake_failures_by_reason, &o.refusals);
        add(&mut r.resume_drops, &o.drops);
        add(&mut r.room_errors_by_code, &o.room_errors);
        add(&mut r.errors_by_code, &o.errors);
        if let Some(s) = o.started {
            first = Some(first.map_or(s, |f| f.min(s)));
        }
        if let (Some(s), Some(e)) = (o.started, o.synced) {
            last = Some(last.map_or(e, |l| l.max(e)));
            resume_ms.push((e - s).as_secs_f64() * 1000.0);
            since_signal_ms.push((e - signal).as_secs_f64() * 1000.0);
        }
    }
    r.messages_expected = total.expected;
    r.delivered = total.delivered;
    r.lost = total.lost;
    r.duplicated = total.duplicated;
    r.reordered = total.reordered;
    r.unexpected = total.unexpected;
    r.time_to_all_resumed_ms = first.zip(last).map(|(f, l)| l.saturating_duration_since(f).as_secs_f64() * 1000.0);
    r.resume = percentiles(resume_ms);
    r.resumed_after_signal = percentiles(since_signal_ms);

    if a.quiet {
        println!("{}", r.summary());
    } else {
        println!("{}", r.table());
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(&r)?)?;
        if !a.quiet {
            println!("report written to {}", p.display());
        }
    }
    if a.assert {
        let f = r.failures();
        if !f.is_empty() {
            eprintln!("ASSERTION FAILED: {}", f.join("; "));
            std::process::exit(1);
        }
        if !a.quiet {
            println!("assertions passed");
        }
    }
    Ok(())
}

/// Waits (bounded) until `count()` reaches `want`, showing progress.
async fn wait_for(pb: &indicatif::ProgressBar, limit: Duration, what: &str, count: impl Fn() -> usize, want: usize) {
    let started = Instant::now();
    while count() < want && started.elapsed() < limit {
        pb.set_message(format!("{}/{want} {what}", count()));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- connecting

/// Why a handshake failed, and how long to wait before the next attempt
/// (`None`: do not retry).
fn refusal(e: &anyhow::Error, attempt: u32) -> (String, Option<Duration>) {
    let backoff = || {
        // Full jitter: random(0, min(5 s, 50 ms × 2^attempt)).
        let cap = (0.05 * 2f64.powi(attempt.min(10) as i32)).min(5.0);
        Some(Duration::from_secs_f64(rand::random::<f64>() * cap))
    };
    if let Some(tungstenite::Error::Http(resp)) = e.downcast_ref::<tungstenite::Error>() {
        let status = resp.status().as_u16();
        let body: Value = resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or("?");
        let reason = format!("HTTP {status} {code}");
        return match status {
            429 => {
                // At least Retry-After (seconds), or retry_after_ms if longer; plus jitter.
                let header = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                let body_ms = body["error"]["retry_after_ms"].as_f64().unwrap_or(0.0) / 1000.0;
                let wait = header.max(body_ms).max(0.05);
                (reason, Some(Duration::from_secs_f64(wait * (1.0 + 0.2 * rand::random::<f64>()))))
            }
            500..=599 => (reason, backoff()),
            _ => (reason, None),
        };
    }
    (client::failure_reason(e), backoff())
}

/// Connects (retrying refusals as a client would) and reads `hello`.
async fn connect(sh: &Shared, token: &str, src: Option<IpAddr>, o: &mut Outcome) -> anyhow::Result<Ws> {
    let deadline = Instant::now() + Duration::from_secs_f64(sh.deadline_secs);
    let mut attempt = 0u32;
    loop {
        o.attempts += 1;
        let r = tokio::time::timeout(Duration::from_secs(30), client::connect(&sh.target, Some(token), src))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("handshake timed out")));
        let e = match r {
            Ok(mut ws) => match next_json(&mut ws, sh.frame_timeout).await {
                Ok(v) if v["type"] == "hello" => return Ok(ws),
                Ok(v) => anyhow::anyhow!("expected hello, got {}", v["type"]),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let (reason, wait) = refusal(&e, attempt);
        *o.refusals.entry(reason.clone()).or_default() += 1;
        attempt += 1;
        match wait {
            Some(w) if Instant::now() + w < deadline => tokio::time::sleep(w).await,
            _ => bail!("{reason}"),
        }
    }
}

/// The next text frame as JSON.
async fn next_json(ws: &mut Ws, limit: Duration) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(limit, ws.next()).await.context("no frame in time")?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(f))) => bail!("closed {}", f.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

fn sync_frame(sh: &Shared, id: u64, held: &[Held]) -> Value {
    let rooms: Vec<Value> = held
        .iter()
        .map(|h| {
            let mut e = json!({"room": sh.room_ids[h.room], "since_seq": h.last});
            if let Some(ep) = &h.epoch {
                e["epoch"] = json!(ep);
            }
            e
        })
        .collect();
    json!({"type": "sync", "id": id, "rooms": rooms})
}

// ---------------------------------------------------------------- one client

async fn client_task(
    sh: Arc<Shared>,
    i: usize,
    token: String,
    rooms: Vec<usize>,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let mut o = Outcome::default();
    let src = sh.source(i);
    let mut held: Vec<Held> = rooms.iter().map(|&room| Held { room, ..Default::default() }).collect();
    let slot: HashMap<usize, usize> = rooms.iter().enumerate().map(|(k, &r)| (r, k)).collect();

    // 1. Connect and sync from 0.
    let first = async {
        let _permit = sh.permits.acquire().await?;
        let mut ws = connect(&sh, &token, src, &mut o).await?;
        client::send(&mut ws, &sync_frame(&sh, 1, &held)).await?;
        loop {
            let v = next_json(&mut ws, sh.frame_timeout).await?;
            match v["type"].as_str() {
                Some("message") => live_message(&sh, &slot, &mut held, &v, &mut o),
                Some("joined") => live_joined(&sh, &slot, &mut held, &v, &mut o),
                Some("synced") if v["failed"] == 0 => break,
                Some("synced") => bail!("sync: {} rooms refused", v["failed"]),
                Some("error") => bail!("sync error {}", v["code"]),
                _ => {}
            }
        }
        anyhow::Ok(ws)
    };
    let first = first.await;
    o.attempts = 0;
    o.pre_refusals = std::mem::take(&mut o.refusals);
    sh.connected.fetch_add(1, Ordering::Relaxed);
    let mut ws = match first {
        Ok(ws) => ws,
        Err(e) => {
            o.connect_error = Some(format!("{e:#}").chars().take(60).collect());
            return o;
        }
    };

    // 2. Live until the storm; note when every pre-storm message is here.
    let mut targets: Option<Arc<Vec<i64>>> = None;
    loop {
        if let Some(t) = &targets
            && !o.caught_up
            && held.iter().all(|h| h.last >= t[h.room])
        {
            o.caught_up = true;
            sh.settled.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() { break; }
                let p = phase.borrow_and_update().clone();
                match p {
                    Phase::Settle(t) => targets = Some(t),
                    Phase::Connect => {}
                    _ => break,
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    match v["type"].as_str() {
                        Some("message") => live_message(&sh, &slot, &mut held, &v, &mut o),
                        Some("joined") => live_joined(&sh, &slot, &mut held, &v, &mut o),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                other => {
                    // Lost before the storm: resume anyway with what it holds.
                    let what = match other { Some(Err(e)) => format!("pre-storm: {e}"), _ => "pre-storm: ended".into() };
                    *o.drops.entry(what).or_default() += 1;
                    let _ = phase.wait_for(|p| !matches!(p, Phase::Connect | Phase::Settle(_))).await;
                    break;
                }
            }
        }
    }

    // 3. Close at the signal and store what it holds.
    if sh.abrupt {
        drop(ws);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        drop(ws);
    }
    sh.closed.fetch_add(1, Ordering::Relaxed);
    let stored: Vec<i64> = held.iter().map(|h| h.last).collect();
    let mut received: Vec<Vec<i64>> = vec![Vec::new(); held.len()];
    let mut joined = vec![false; held.len()];
    if phase.wait_for(|p| matches!(p, Phase::Reconnect | Phase::Done)).await.is_err() {
        return o;
    }

    // 4. Reconnect and resume, until every room has answered `joined`.
    let permit = sh.permits.acquire().await;
    o.started = Some(Instant::now());
    let mut ws_held = None;
    let mut sync_id = 1u64;
    let mut room_retries = 0;
    let result: anyhow::Result<()> = async {
        'connection: loop {
            let mut ws = connect(&sh, &token, src, &mut o).await?;
            // Resume what is not yet joined, each room from what it now holds.
            let mut pending: Vec<Held> =
                held.iter().enumerate().filter(|(k, _)| !joined[*k]).map(|(_, h)| h.clone()).collect();
            loop {
                sync_id += 1;
                o.syncs += 1;
                client::send(&mut ws, &sync_frame(&sh, sync_id, &pending)).await?;
                let mut retry_rooms = Vec::new();
                loop {
                    let v = match next_json(&mut ws, sh.frame_timeout).await {
                        Ok(v) => v,
                        Err(e) => {
                            let what: String = format!("{e:#}").chars().take(40).collect();
                            *o.drops.entry(what).or_default() += 1;
                            if o.drops.values().sum::<u64>() > 5 {
                                return Err(e);
                            }
                            continue 'connection;
                        }
                    };
                    let room = v["room"].as_str().and_then(|r| sh.room_index.get(r)).and_then(|r| slot.get(r)).copied();
                    match (v["type"].as_str(), room) {
                        (Some("message"), Some(k)) => {
                            let seq = v["seq"].as_i64().unwrap_or(0);
                            received[k].push(seq);
                            // As a client does: it holds up to the highest seq in order.
                            if seq == held[k].last + 1 {
                                held[k].last = seq;
                            }
                        }
                        (Some("joined"), Some(k)) => {
                            joined[k] = true;
                            if let Some(ep) = v["epoch"].as_str() {
                                held[k].epoch = Some(ep.to_owned());
                            }
                        }
                        (Some("reset"), _) => o.resets += 1,
                        (Some("history_gone"), _) => o.history_gone += 1,
                        (Some("error"), Some(k)) => {
                            let code = v["code"].as_str().unwrap_or("?").to_owned();
                            if matches!(code.as_str(), "unavailable" | "internal") {
                                retry_rooms.push(held[k].clone());
                            }
                            *o.room_errors.entry(code).or_default() += 1;
                        }
                        (Some("error"), None) => {
                            let code = v["code"].as_str().unwrap_or("?").to_owned();
                            *o.errors.entry(code.clone()).or_default() += 1;
                            if code == "rate_limited" && v["id"] == json!(sync_id) {
                                let ms = v["retry_after_ms"].as_u64().unwrap_or(100);
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                                break;
                            }
                            if v["id"] == json!(sync_id) {
                                bail!("sync refused: {code}");
                            }
                        }
                        (Some("synced"), _) if v["id"] == json!(sync_id) => {
                            if retry_rooms.is_empty() {
                                ws_held = Some(ws);
                                return Ok(());
                            }
                            room_retries += 1;
                            if room_retries > 5 {
                                bail!("rooms still unavailable after 5 retries");
                            }
                            tokio::time::sleep(Duration::from_millis(200 * room_retries)).await;
                            break;
                        }
                        _ => {}
                    }
                }
                pending = held.iter().enumerate().filter(|(k, _)| !joined[*k]).map(|(_, h)| h.clone()).collect();
            }
        }
    }
    .await;
    o.synced = result.is_ok().then(Instant::now);
    drop(permit);
    sh.resumed.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(()) if joined.iter().all(|j| *j) => o.resumed = true,
        Ok(()) => o.resume_error = Some("rooms refused".into()),
        Err(e) => o.resume_error = Some(format!("{e:#}").chars().take(60).collect()),
    }
    o.rooms = held
        .iter()
        .enumerate()
        .map(|(k, h)| (h.room, stored[k], std::mem::take(&mut received[k]), joined[k]))
        .collect();

    // Hold the socket (answering pings) until every client is done.
    if let Some(mut ws) = ws_held {
        loop {
            tokio::select! {
                r = phase.wait_for(|p| matches!(p, Phase::Done)) => { let _ = r; break; }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(t))) => {
                        if t.contains("\"message\"") {
                            // Nothing is sent after the storm: a late copy is a duplicate.
                            if let Ok(v) = serde_json::from_str::<Value>(&t)
                                && v["type"] == "message"
                                && let Some(k) = v["room"].as_str().and_then(|r| sh.room_index.get(r)).and_then(|r| slot.get(r))
                            {
                                o.rooms[*k].2.push(v["seq"].as_i64().unwrap_or(0));
                            }
                        }
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    }
    o
}

fn live_message(sh: &Shared, slot: &HashMap<usize, usize>, held: &mut [Held], v: &Value, o: &mut Outcome) {
    let Some(&k) = v["room"].as_str().and_then(|r| sh.room_index.get(r)).and_then(|r| slot.get(r)) else { return };
    let seq = v["seq"].as_i64().unwrap_or(0);
    let h = &mut held[k];
    if seq <= h.last {
        o.pre_dups += 1;
    } else {
        o.pre_gaps += (seq - h.last - 1) as u64;
        h.last = seq;
    }
}

fn live_joined(sh: &Shared, slot: &HashMap<usize, usize>, held: &mut [Held], v: &Value, o: &mut Outcome) {
    let Some(&k) = v["room"].as_str().and_then(|r| sh.room_index.get(r)).and_then(|r| slot.get(r)) else { return };
    let h = &mut held[k];
    let last = v["last_seq"].as_i64().unwrap_or(0);
    if last > h.last {
        o.pre_gaps += (last - h.last) as u64;
        h.last = last;
    }
    h.epoch = v["epoch"].as_str().map(str::to_owned);
}

// ---------------------------------------------------------------- writers

/// Per room the highest acked seq, and errors by reason.
type Writes = (Vec<(usize, i64)>, BTreeMap<String, u64>);

fn merge_writes(acked: &mut [i64], errors: &mut BTreeMap<String, u64>, (seqs, errs): Writes) {
    for (room, seq) in seqs {
        acked[room] = acked[room].max(seq);
    }
    for (k, v) in errs {
        *errors.entry(k).or_default() += v;
    }
}

/// Every writer user sends `k` messages into each of its rooms on a fresh
/// socket and waits for the acks.
async fn write_all(
    sh: &Arc<Shared>,
    writers: &BTreeMap<usize, Vec<usize>>,
    tokens: &[String],
    k: usize,
    in_flight: usize,
    nonce: u32,
    tag: &str,
) -> Writes {
    if k == 0 {
        return Default::default();
    }
    let results: Vec<Writes> = futures_util::stream::iter(writers.iter())
        .map(|(&user, rooms)| {
            let sh = sh.clone();
            let token = tokens[user].clone();
            let rooms = rooms.clone();
            let tag = format!("rs{nonce:x}-{tag}");
            async move {
                let mut errs = BTreeMap::new();
                match write_one(&sh, user, &token, &rooms, k, &tag, &mut errs).await {
                    Ok(seqs) => (seqs, errs),
                    Err(e) => {
                        *errs.entry(format!("{e:#}").chars().take(60).collect()).or_default() += 1;
                        (Vec::new(), errs)
                    }
                }
            }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let mut out: Writes = Default::default();
    for (s, e) in results {
        out.0.extend(s);
        for (k, v) in e {
            *out.1.entry(k).or_default() += v;
        }
    }
    out
}

async fn write_one(
    sh: &Shared,
    user: usize,
    token: &str,
    rooms: &[usize],
    k: usize,
    tag: &str,
    errs: &mut BTreeMap<String, u64>,
) -> anyhow::Result<Vec<(usize, i64)>> {
    let mut o = Outcome::default();
    let mut ws = connect(sh, token, sh.source(user), &mut o).await?;
    for (r, n) in o.refusals {
        *errs.entry(format!("handshake: {r}")).or_default() += n;
    }
    // id → (room, client_msg_id): sent in order, acked in any order; a retry
    // repeats the same client_msg_id and body.
    let mut outbox: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    let mut id = 0u64;
    for &room in rooms {
        for j in 0..k {
            id += 1;
            outbox.insert(id, (room, format!("{tag}-{user}-{room}-{j}")));
        }
    }
    let send = |id: u64, room: usize, cmid: &str| json!({"type": "send", "id": id, "room": sh.room_ids[room], "client_msg_id": cmid, "body": cmid});
    for (&id, (room, cmid)) in &outbox {
        client::send(&mut ws, &send(id, *room, cmid)).await?;
    }
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !outbox.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = next_json(&mut ws, left).await.context("waiting for acks")?;
        let Some(id) = v["id"].as_u64() else { continue };
        match v["type"].as_str() {
            Some("ack") => {
                if let Some((room, _)) = outbox.remove(&id) {
                    seqs.push((room, v["seq"].as_i64().unwrap_or(0)));
                }
            }
            Some("error") => {
                let code = v["code"].as_str().unwrap_or("?");
                *errs.entry(format!("send: {code}")).or_default() += 1;
                // Retryable: the same client_msg_id is safe to send again.
                if !matches!(code, "rate_limited" | "unavailable" | "internal") {
                    bail!("send refused: {code}");
                }
                let ms = v["retry_after_ms"].as_u64().unwrap_or(200);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if let Some((room, cmid)) = outbox.get(&id) {
                    client::send(&mut ws, &send(id, *room, cmid)).await?;
                }
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_resume_is_clean() {
        let t = tally(5, 10, &[6, 7, 8, 9, 10]);
        assert_eq!(t, Tally { expected: 5, delivered: 5, ..Default::default() });
        // Nothing new: nothing expected.
        assert_eq!(tally(10, 10, &[]), Tally::default());
    }

    #[test]
    fn lost_duplicated_reordered_and_unexpected() {
        // Stored 5, last acked 10: 6..=10 expected. 5 (at the stored seq) and
        // the second 7 are duplicates; 9 is lost; 6 after 7 is reordered; 11
        // was never acked.
        let t = tally(5, 10, &[5, 7, 6, 7, 8, 10, 11]);
        assert_eq!(
            t,
            Tally { expected: 5, delivered: 4, lost: 1, duplicated: 2, reordered: 1, unexpected: 1 },
            "{t:?}"
        );
        // Nothing received at all: everything lost.
        assert_eq!(tally(0, 3, &[]).lost, 3);
        // Stored beyond the room's last seq (should not happen): nothing expected.
        assert_eq!(tally(4, 3, &[4]), Tally { duplicated: 1, ..Default::default() });
    }

    #[test]
    fn percentiles_nearest_rank() {
        let p = percentiles((1..=100).map(f64::from).collect());
        assert_eq!((p.p50_ms, p.p99_ms, p.max_ms), (Some(50.0), Some(99.0), Some(100.0)));
        assert!(percentiles(Vec::new()).p50_ms.is_none());
    }
}
