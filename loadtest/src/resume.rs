//! `loadtest resume`: one client in many rooms reconnects and resumes them
//! all, with one `sync` frame (protocol §14) or with one `join` per room,
//! and the round trip and the gateway's CPU for it are measured.
//!
//! A cycle: connect, read `hello`, sample the gateway's CPU, send the
//! resume (the `sync`, or every `join` back to back), read until `synced`
//! (or the last `joined`), note the round trip, wait `--settle` seconds so
//! the asynchronous work the resume causes (presence, subscriptions) is
//! counted too, sample the CPU again, close. A run is `--cycles` cycles;
//! the figures are per resume, averaged over the run, and the median of
//! `--runs` runs is reported. The seed file's first user must be a member
//! of the rooms (`chatgw seed --users 1 --rooms 500 --room-size 1`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Target};
use crate::procstat::{Source, sample_all};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One `sync` frame for every room.
    Sync,
    /// One `join` per room, sent back to back (needs WS_EVENTS_BURST at
    /// least the number of rooms, or the rate limit refuses most of them).
    Join,
}

#[derive(Args, Clone)]
pub struct ResumeArgs {
    /// Gateway WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Seed file from `chatgw seed`; its first user resumes its rooms.
    #[arg(long)]
    seed: PathBuf,
    /// Rooms to resume (the first N of the seed file).
    #[arg(long, default_value_t = 500)]
    rooms: usize,
    #[arg(long, value_enum, default_value_t = Mode::Sync)]
    mode: Mode,
    /// Resumes per run (the run's figures are their average).
    #[arg(long, default_value_t = 10)]
    cycles: usize,
    /// Runs (the report gives their median).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Seconds after each resume before the CPU is read again.
    #[arg(long, default_value_t = 0.3)]
    settle: f64,
    /// Gateway pid, for its CPU time (/proc/<pid>/stat).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(serde::Serialize)]
struct Report {
    scenario: &'static str,
    mode: Mode,
    rooms: usize,
    cycles: usize,
    /// Per run: mean round trip of one resume, ms.
    rtt_ms_runs: Vec<f64>,
    /// Per run: mean gateway CPU of one resume, ms (with the settle time).
    cpu_ms_runs: Vec<f64>,
    rtt_ms_median: f64,
    cpu_ms_median: Option<f64>,
    /// Frames the client received per resume.
    frames_per_resume: usize,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() { 0.0 } else { s[s.len() / 2] }
}

pub async fn run(a: ResumeArgs) -> anyhow::Result<()> {
    let target = Target::parse(&a.url)?;
    let seed: Value = serde_json::from_str(&std::fs::read_to_string(&a.seed).context("reading the seed file")?)?;
    let token = seed["users"][0]["token"].as_str().context("seed file without users")?.to_owned();
    let rooms: Vec<String> = seed["rooms"]
        .as_array()
        .context("seed file without rooms")?
        .iter()
        .filter(|r| r["members"].as_array().is_some_and(|m| m.iter().any(|i| i == 0)))
        .filter_map(|r| r["id"].as_str().map(str::to_owned))
        .take(a.rooms)
        .collect();
    if rooms.len() < a.rooms {
        bail!("the seed's first user is in {} rooms, fewer than --rooms {}", rooms.len(), a.rooms);
    }
    let sources: Vec<Source> = a.gateway_pid.into_iter().map(Source::Pid).collect();
    let (mut rtts, mut cpus) = (Vec::new(), Vec::new());
    let mut frames = 0;
    for _ in 0..a.runs {
        let (mut rtt_sum, mut cpu_sum) = (0.0, 0.0);
        for _ in 0..a.cycles {
            let mut ws = client::connect(&target, Some(&token), None).await?;
            let hello = next_json(&mut ws).await?;
            if hello["type"] != "hello" {
                bail!("expected hello, got {hello}");
            }
            let before = sample_all(&sources);
            let t0 = Instant::now();
            frames = match a.mode {
                Mode::Sync => {
                    let entries: Vec<Value> = rooms.iter().map(|r| json!({"room": r, "since_seq": 0})).collect();
                    client::send(&mut ws, &json!({"type": "sync", "id": 1, "rooms": entries})).await?;
                    let mut n = 0;
                    loop {
                        let v = next_json(&mut ws).await?;
                        n += 1;
                        match v["type"].as_str() {
                            Some("synced") if v["failed"] == 0 => break n,
                            Some("synced") => bail!("rooms refused: {v}"),
                            _ => {}
                        }
                    }
                }
                Mode::Join => {
                    for r in &rooms {
                        client::send(&mut ws, &json!({"type": "join", "room": r, "since_seq": 0})).await?;
                    }
                    let (mut n, mut joined) = (0, 0);
                    while joined < rooms.len() {
                        let v = next_json(&mut ws).await?;
                        n += 1;
                        match v["type"].as_str() {
                            Some("joined") => joined += 1,
                            Some("error") => bail!("a join was refused (raise WS_EVENTS_BURST?): {v}"),
                            _ => {}
                        }
                    }
                    n
                }
            };
            rtt_sum += t0.elapsed().as_secs_f64() * 1000.0;
            tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
            if let (Some(b), Some(e)) = (before, sample_all(&sources)) {
                cpu_sum += (e.cpu_secs - b.cpu_secs) * 1000.0;
            }
            let _ = ws.close(None).await;
            // Let the server finish with this socket (unsubscribe, presence)
            // before the next cycle's reading starts.
            tokio::time::sleep(Duration::from_secs_f64(a.settle)).await;
        }
        rtts.push(rtt_sum / a.cycles as f64);
        cpus.push(cpu_sum / a.cycles as f64);
    }
    let report = Report {
        scenario: "resume",
        mode: a.mode,
        rooms: rooms.len(),
        cycles: a.cycles,
        rtt_ms_median: median(&rtts),
        cpu_ms_median: (!sources.is_empty()).then(|| median(&cpus)),
        rtt_ms_runs: rtts,
        cpu_ms_runs: if sources.is_empty() { Vec::new() } else { cpus },
        frames_per_resume: frames,
    };
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(p) = &a.json {
        std::fs::write(p, text)?;
    }
    Ok(())
}

/// The next text frame as JSON (30 s guard).
async fn next_json(ws: &mut client::Ws) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("no frame within 30 s")?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}
