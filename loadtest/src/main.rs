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

//!
//! The files: `cli.rs` (flags), `population.rs` (seed file and clients),
//! `runs.rs` (the traffic, idle and connect-storm runs), `scenarios.rs` and
//! `client.rs` (what one client does), `report.rs` (the report and the
//! merge of shards); one file or folder per other scenario.

mod authstorm;
mod cli;
mod client;
mod population;
mod procstat;
mod report;
mod resume;
mod rstorm;
mod runs;
mod scenarios;
mod shard;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use cli::{Cli, Output, Scenario};
use report::Report;
use runs::{run_idle, run_storm, run_traffic};

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
            let report = report::merge::merge(reports)?;
            return emit(&report, m.out.as_deref(), &m.output);
        }
    };
    emit(&report, common.json.as_deref(), &common.output)
}

/// Prints the table, writes JSON and plot, and checks the assertions.
fn emit(report: &Report, json: Option<&Path>, out: &Output) -> anyhow::Result<()> {
    println!("{}", report::render::table(report));
    if let Some(p) = json {
        std::fs::write(p, serde_json::to_vec_pretty(report)?)?;
        println!("report written to {}", p.display());
    }
    if let Some(p) = &out.plot {
        report::render::plot(report, p)?;
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
