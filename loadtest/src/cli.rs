//! The command line: the scenarios and their flags. The flags, their
//! defaults and their help are the harness's interface (`bench/run.sh` and
//! BENCHMARKS.md depend on them): change them only on purpose.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::shard::Shard;
use crate::{authstorm, resume};

#[derive(Parser)]
#[command(version, about = "Load-test harness for the chatgw gateway (and the bare reference server)", long_about = None)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) scenario: Scenario,
}

#[derive(Subcommand)]
pub(crate) enum Scenario {
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
    ReconnectStorm(RstormArgs),
    /// Merge the JSON reports of the shards of one run (`--shard i/n`,
    /// every shard exactly once) into the report of the whole run.
    Merge(MergeArgs),
}

#[derive(Args, Clone)]
pub(crate) struct Common {
    /// Gateway WebSocket URL(s), loopback only (repeat or comma-separate for
    /// several instances; clients are spread over them).
    #[arg(long, value_delimiter = ',', default_value = "ws://127.0.0.1:8080/ws")]
    pub(crate) url: Vec<String>,
    /// Seed file from `chatgw seed` (tokens and rooms). Without it clients
    /// send no token and use synthetic room names (the reference server).
    #[arg(long)]
    pub(crate) seed: Option<PathBuf>,
    /// Measured duration in seconds (after connecting).
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Gateway pid(s): report their CPU time and RSS over the measured
    /// window (summed over several instances; repeat or comma-separate).
    #[arg(long, value_delimiter = ',')]
    pub(crate) gateway_pid: Vec<u32>,
    /// Or the gateways' metrics URL(s) (http://127.0.0.1:PORT/metrics).
    #[arg(long, value_delimiter = ',')]
    pub(crate) metrics_url: Vec<String>,
    /// Spread client sockets over this many source addresses 127.0.0.1..N
    /// (needed beyond ~28k sockets per target port).
    #[arg(long, default_value_t = 1)]
    pub(crate) source_ips: u8,
    /// Run only shard i of n of the workload (the clients whose index % n == i);
    /// see `loadtest merge`.
    #[arg(long, value_name = "I/N")]
    pub(crate) shard: Option<Shard>,
    /// A fresh directory shared by the shards of one run, where they meet
    /// (required with --shard i/n, n > 1).
    #[arg(long, value_name = "DIR")]
    pub(crate) sync_dir: Option<PathBuf>,
    /// Run id in hex (room names without --seed, client_msg_ids). Default:
    /// random, agreed between shards through --sync-dir.
    #[arg(long, value_parser = parse_hex_u32, value_name = "HEX")]
    pub(crate) run_id: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) output: Output,
    /// No progress line (for CI logs).
    #[arg(long)]
    pub(crate) quiet: bool,
}

#[derive(Args, Clone)]
pub(crate) struct Traffic {
    #[command(flatten)]
    pub(crate) common: Common,
    /// Rooms (with --seed: the first R rooms of the seed file).
    #[arg(long, default_value_t = 10)]
    pub(crate) rooms: usize,
    /// Members per room (with --seed: taken from the seed file).
    #[arg(long, default_value_t = 100)]
    pub(crate) room_size: usize,
    /// Total sends per second over all senders (of all shards).
    #[arg(long, default_value_t = 500.0)]
    pub(crate) rate: f64,
    /// Message body size in bytes.
    #[arg(long, default_value_t = 100)]
    pub(crate) body_bytes: usize,
    /// Seconds at the start of the measured window excluded from latency
    /// percentiles.
    #[arg(long, default_value_t = 1)]
    pub(crate) warmup: u32,
    /// Senders per room: the first K members of each room send, the others
    /// only receive (default: every member sends).
    #[arg(long, value_name = "K")]
    pub(crate) senders_per_room: Option<usize>,
    /// Senders connect to the URL at this index (0-based) of --url;
    /// receivers are spread over all URLs.
    #[arg(long, value_name = "INDEX")]
    pub(crate) senders_on: Option<usize>,
    /// With --senders-on: spread receivers over the other URLs only.
    #[arg(long, requires = "senders_on")]
    pub(crate) receivers_elsewhere: bool,
}

#[derive(Args)]
pub(crate) struct MergeArgs {
    /// The shards' JSON reports.
    #[arg(required = true)]
    pub(crate) reports: Vec<PathBuf>,
    /// Write the merged report as JSON here.
    #[arg(short, long)]
    pub(crate) out: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) output: Output,
}

/// What to do with a finished report, besides printing it (runs and merges).
#[derive(Args, Clone)]
pub(crate) struct Output {
    /// Write an SVG plot (latency over time and its distribution) here.
    #[arg(long)]
    pub(crate) plot: Option<PathBuf>,
    /// Exit non-zero on any loss, duplicate or reorder, or past the limits.
    #[arg(long)]
    pub(crate) assert: bool,
    /// With --assert: the highest acceptable p99 latency in ms.
    #[arg(long)]
    pub(crate) max_p99_ms: Option<f64>,
    /// With --assert: the highest acceptable error rate (errors / attempts).
    #[arg(long)]
    pub(crate) max_error_rate: Option<f64>,
}

/// A run id in hex, with or without `0x`.
fn parse_hex_u32(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).map_err(|e| format!("{s:?}: {e}"))
}

/// The reconnect storm's arguments (`loadtest reconnect-storm`), kept
/// with the command line so that it names them without importing the storm.
#[derive(Args, Clone)]
pub struct RstormArgs {
    /// Gateway WebSocket URL (loopback only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    pub(crate) url: String,
    /// Seed file from `chatgw seed` (tokens, rooms and their members).
    #[arg(long)]
    pub(crate) seed: PathBuf,
    /// Clients: the first N users of the seed file (0: all of them). Each
    /// resumes every seed room it is a member of.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) clients: usize,
    /// Handshakes (with their `sync`) in flight, when connecting and when
    /// reconnecting.
    #[arg(long, default_value_t = 512)]
    pub(crate) concurrency: usize,
    /// Spread client sockets over the source addresses 127.0.0.1..=N.
    #[arg(long, default_value_t = 8)]
    pub(crate) source_ips: u8,
    /// Messages sent into every room before the storm (seen live).
    #[arg(long, default_value_t = 2)]
    pub(crate) before_messages: usize,
    /// Messages sent into every room while every client is down.
    #[arg(long, default_value_t = 3)]
    pub(crate) storm_messages: usize,
    /// Writer sockets (one per writer user) at work at once.
    #[arg(long, default_value_t = 64)]
    pub(crate) writers_in_flight: usize,
    /// Close with a bare TCP close (no WebSocket close frame) instead of a
    /// close handshake.
    #[arg(long)]
    pub(crate) abrupt: bool,
    /// Upper bound, in seconds, of each phase (connect, settle, write,
    /// resume).
    #[arg(long, default_value_t = 300.0)]
    pub(crate) phase_timeout: f64,
    /// Gateway pid: its RSS (VmRSS, VmHWM) and CPU time (Linux /proc).
    #[arg(long)]
    pub(crate) gateway_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Print only a one-line summary (no progress line).
    #[arg(long)]
    pub(crate) quiet: bool,
    /// Exit non-zero on any loss, duplicate, reorder or client that did not
    /// resume.
    #[arg(long)]
    pub(crate) assert: bool,
}
