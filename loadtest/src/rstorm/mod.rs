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
//!
//! The files: `shared.rs` (phases, what a client holds and did),
//! `connect.rs` (handshakes with retries, frames), `client.rs` (one client
//! through the phases), `writers.rs` (the senders), `report.rs` (the
//! accounting and the report); this file runs the phases.

mod client;
mod connect;
mod report;
mod shared;
mod writers;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::{Semaphore, watch};

use crate::authstorm::{read_mem, spawn_rss_sampler};
use crate::client::Target;
use crate::population::{SeedFile, load_seed};
use crate::procstat::{self, Source};
use client::client_task;
use report::Report;
use shared::{Phase, Shared};
use writers::{merge_writes, write_all};

pub use crate::cli::RstormArgs;

/// Who is in which room, from the seed file.
struct Plan {
    /// Each client's rooms (indexes into `room_ids`).
    rooms_of: Vec<Vec<usize>>,
    /// The rooms with at least one client member.
    room_ids: Vec<String>,
    /// Each writer user's rooms: a room's writer is its first member, a
    /// client or not.
    writers: BTreeMap<usize, Vec<usize>>,
    /// (client, room) pairs.
    memberships: usize,
}

/// The rooms of the first `n` users of the seed file.
fn plan(seed: &SeedFile, n: usize) -> anyhow::Result<Plan> {
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
    Ok(Plan { rooms_of, room_ids, writers, memberships })
}

/// Runs the storm's four phases (see the module doc) and reports.
///
/// One function because each phase takes readings (memory, CPU, acks,
/// instants) that the report at the end combines; split, they would travel
/// between the phases in a struct that serves nothing else.
pub async fn run(a: RstormArgs) -> anyhow::Result<()> {
    let target = Target::parse(&a.url)?;
    let seed = load_seed(&a.seed)?;
    let n = if a.clients == 0 { seed.users.len() } else { a.clients };
    if n > seed.users.len() {
        bail!("--clients {n}: the seed file has {} users", seed.users.len());
    }
    // Rooms with at least one client member; each client's rooms; each
    // room's writer (its first member, a client or not).
    let Plan { rooms_of, room_ids, writers, memberships } = plan(&seed, n)?;
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
    let pb = crate::runs::progress(a.quiet);
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
    let sampler = spawn_rss_sampler(a.gateway_pid, &stop, &peak);
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
    report::account(&mut r, &outcomes, &acked, signal);
    emit(&r, &a)
}

/// Prints the report (one line with `--quiet`), writes its JSON and checks
/// the assertions.
fn emit(r: &Report, a: &RstormArgs) -> anyhow::Result<()> {
    if a.quiet {
        println!("{}", r.summary());
    } else {
        println!("{}", r.table());
    }
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_vec_pretty(r)?)?;
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
