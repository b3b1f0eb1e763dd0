//! `auth-storm`: a burst of registrations and logins over REST, and what it
//! does to the gateway's memory.
//!
//! Every registration and login hashes a password with argon2id (19 MiB
//! while it runs). The storm sends `--requests` of them, half registrations
//! of new accounts and half logins of accounts made beforehand by
//! `--prepare`, with up to `--concurrency` in flight, from `--source-ips`
//! loopback addresses (127.0.0.2 upwards, so that it looks like many
//! clients). It reports the answers by status, the latency of the accepted
//! ones (201 and 200), and the gateway's RSS from `/proc/<pid>/status`:
//! before, the peak (VmHWM, and the highest VmRSS sampled every 20 ms),
//! and `--settle` seconds after the last answer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use futures_util::StreamExt;
use serde::Serialize;
use tokio::task::JoinHandle;

/// The password of every account the storm uses (valid: 8+ characters).
const PASSWORD: &str = "storm-password-0123";

#[derive(Args, Clone)]
pub struct AuthStormArgs {
    /// Gateway base URL, loopback only.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Requests in the storm: the even ones register new accounts, the odd
    /// ones log in to the accounts made by --prepare.
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 300)]
    concurrency: usize,
    /// Client sockets are bound to 127.0.0.2 ..= 127.0.0.(1+N), round-robin.
    #[arg(long, default_value_t = 64)]
    source_ips: u8,
    /// Only create the accounts the logins use (requests / 2 of them, a few
    /// at a time; 409 counts as already there), then exit. Run it against a
    /// gateway whose throttles are off, before the measured one.
    #[arg(long)]
    prepare: bool,
    /// Requests in flight while preparing.
    #[arg(long, default_value_t = 2)]
    prepare_concurrency: usize,
    /// The gateway's pid, for its RSS (Linux /proc).
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// Seconds between the last answer and the "after" RSS reading.
    #[arg(long, default_value_t = 10.0)]
    settle: f64,
    /// Client-side timeout of one request, in seconds (the gateway's own
    /// request timeout answers 408 before it by default).
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print only the summary line.
    #[arg(long)]
    quiet: bool,
}

/// Resident and peak-resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Mem {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

/// VmRSS and VmHWM from `/proc/<pid>/status`.
pub fn read_mem(pid: u32) -> Option<Mem> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_status(status: &str) -> Option<Mem> {
    let field = |name: &str| -> Option<u64> {
        status.lines().find(|l| l.starts_with(name))?.split_whitespace().nth(1)?.parse().ok()
    };
    Some(Mem { rss_kib: field("VmRSS:")?, hwm_kib: field("VmHWM:")? })
}

/// The `q`-quantile (0..=1) of sorted values, nearest rank.
fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[derive(Debug, Serialize)]
pub struct StormReport {
    pub scenario: &'static str,
    pub requests: usize,
    pub concurrency: usize,
    pub source_ips: u8,
    /// Answers by HTTP status ("error": no answer, e.g. a client timeout).
    pub by_status: BTreeMap<String, usize>,
    pub registrations_by_status: BTreeMap<String, usize>,
    pub logins_by_status: BTreeMap<String, usize>,
    /// Latency of the accepted requests (201 registrations, 200 logins).
    pub accepted_p50_ms: Option<f64>,
    pub accepted_p99_ms: Option<f64>,
    pub wall_secs: f64,
    pub rss_before_kib: Option<u64>,
    /// The highest VmRSS sampled every 20 ms during the storm.
    pub rss_peak_sampled_kib: Option<u64>,
    /// VmHWM after the storm: the kernel's exact peak.
    pub rss_hwm_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub settle_secs: f64,
}

impl StormReport {
    pub fn summary(&self) -> String {
        let mib = |k: Option<u64>| k.map_or("-".to_owned(), |k| format!("{:.1}", k as f64 / 1024.0));
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let status =
            |m: &BTreeMap<String, usize>| m.iter().map(|(k, v)| format!("{k}:{v}")).collect::<Vec<_>>().join(" ");
        format!(
            "auth-storm requests={} in_flight={} ips={} answers[{}] register[{}] login[{}] accepted p50={}ms p99={}ms \
             wall={:.1}s rss_mib before={} peak={} hwm={} after{}s={}",
            self.requests,
            self.concurrency,
            self.source_ips,
            status(&self.by_status),
            status(&self.registrations_by_status),
            status(&self.logins_by_status),
            ms(self.accepted_p50_ms),
            ms(self.accepted_p99_ms),
            self.wall_secs,
            mib(self.rss_before_kib),
            mib(self.rss_peak_sampled_kib),
            mib(self.rss_hwm_kib),
            self.settle_secs,
            mib(self.rss_after_kib),
        )
    }
}

fn check_loopback(url: &str) -> anyhow::Result<String> {
    let rest = url.strip_prefix("http://").context("--url must be http://")?;
    let host = rest.split('/').next().unwrap_or_default();
    let addr: std::net::SocketAddr = host.parse().context("--url must name an IP:port")?;
    if !addr.ip().is_loopback() {
        bail!("only loopback targets are accepted, not {addr}");
    }
    Ok(format!("http://{addr}/api/v1/auth"))
}

fn login_email(i: usize) -> String {
    format!("storm-login-{i}@bench.test")
}

#[derive(Clone, Copy)]
enum Kind {
    Register,
    Login,
}

/// Runs the sign-in storm (or, with `--prepare`, registers its accounts)
/// and reports answers by status, latency and the gateway's RSS.
pub async fn run(args: AuthStormArgs) -> anyhow::Result<()> {
    let base = check_loopback(&args.url)?;
    let timeout = Duration::from_secs_f64(args.timeout);
    let ips = args.source_ips.clamp(1, 250);
    let clients = (0..ips)
        .map(|k| {
            reqwest::Client::builder()
                .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + k)))
                .timeout(timeout)
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let accounts = (args.requests / 2).max(1);

    if args.prepare {
        return prepare(&args, &clients, &base, accounts).await;
    }

    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or_default();
    let before = args.gateway_pid.and_then(read_mem);

    // RSS sampler: the highest VmRSS seen while the storm runs.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(before.map_or(0, |m| m.rss_kib)));
    let sampler = spawn_rss_sampler(args.gateway_pid, &stop, &peak);

    let started = Instant::now();
    let answers = storm(&args, &clients, &base, nonce, accounts).await;
    let wall = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(s) = sampler {
        let _ = s.await;
    }
    let at_end = args.gateway_pid.and_then(read_mem);
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let after = args.gateway_pid.and_then(read_mem);

    let mut by_status = BTreeMap::new();
    let mut reg = BTreeMap::new();
    let mut login = BTreeMap::new();
    let mut accepted = Vec::new();
    for (kind, status, took) in &answers {
        let key = status.map_or("error".to_owned(), |s| s.to_string());
        *by_status.entry(key.clone()).or_insert(0) += 1;
        let m = match kind {
            Kind::Register => &mut reg,
            Kind::Login => &mut login,
        };
        *m.entry(key).or_insert(0) += 1;
        if matches!((kind, status), (Kind::Register, Some(201)) | (Kind::Login, Some(200))) {
            accepted.push(took.as_secs_f64() * 1000.0);
        }
    }
    accepted.sort_by(f64::total_cmp);
    let sampled = peak.load(Ordering::Relaxed);
    let report = StormReport {
        scenario: "auth-storm",
        requests: args.requests,
        concurrency: args.concurrency,
        source_ips: ips,
        by_status,
        registrations_by_status: reg,
        logins_by_status: login,
        accepted_p50_ms: quantile(&accepted, 0.50),
        accepted_p99_ms: quantile(&accepted, 0.99),
        wall_secs: wall.as_secs_f64(),
        rss_before_kib: before.map(|m| m.rss_kib),
        rss_peak_sampled_kib: args.gateway_pid.map(|_| sampled.max(at_end.map_or(0, |m| m.rss_kib))),
        rss_hwm_kib: at_end.map(|m| m.hwm_kib),
        rss_after_kib: after.map(|m| m.rss_kib),
        settle_secs: args.settle,
    };
    if !args.quiet {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    println!("{}", report.summary());
    if let Some(p) = &args.json {
        std::fs::write(p, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(())
}

/// `--prepare`: registers the accounts the logins of a storm use (409:
/// already there), retrying refusals.
async fn prepare(args: &AuthStormArgs, clients: &[reqwest::Client], base: &str, accounts: usize) -> anyhow::Result<()> {
    let made = AtomicU64::new(0);
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..accounts)
        .map(|i| {
            let client = &clients[i % clients.len()];
            let (base, made) = (&base, &made);
            async move {
                for _attempt in 0..100 {
                    let body = serde_json::json!({
                        "email": login_email(i), "password": PASSWORD, "display_name": format!("storm {i}"),
                    });
                    let r = client.post(format!("{base}/register")).json(&body).send().await?;
                    match r.status().as_u16() {
                        201 => {
                            made.fetch_add(1, Ordering::Relaxed);
                            return Ok(());
                        }
                        409 => return Ok(()),
                        429 | 503 => tokio::time::sleep(Duration::from_millis(100)).await,
                        s => {
                            bail!("preparing {}: HTTP {s}: {}", login_email(i), r.text().await.unwrap_or_default())
                        }
                    }
                }
                bail!("preparing {}: still refused after 100 attempts", login_email(i))
            }
        })
        .buffer_unordered(args.prepare_concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    println!("prepared {accounts} accounts ({} new)", made.load(Ordering::Relaxed));
    Ok(())
}

/// The storm itself: `--requests` calls, registrations and logins
/// alternating, `--concurrency` in flight; each answer's kind, status
/// (`None`: no answer) and latency.
async fn storm(
    args: &AuthStormArgs,
    clients: &[reqwest::Client],
    base: &str,
    nonce: u128,
    accounts: usize,
) -> Vec<(Kind, Option<u16>, Duration)> {
    futures_util::stream::iter(0..args.requests)
        .map(|i| {
            let client = &clients[i % clients.len()];
            let base = &base;
            async move {
                let (kind, url, body) = if i % 2 == 0 {
                    let body = serde_json::json!({
                        "email": format!("storm-reg-{nonce}-{i}@bench.test"), "password": PASSWORD,
                        "display_name": format!("storm {i}"),
                    });
                    (Kind::Register, format!("{base}/register"), body)
                } else {
                    let body = serde_json::json!({ "email": login_email((i / 2) % accounts), "password": PASSWORD });
                    (Kind::Login, format!("{base}/login"), body)
                };
                let t = Instant::now();
                let status = match client.post(url).json(&body).send().await {
                    // Read the body so the latency covers the whole answer.
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.bytes().await;
                        Some(s)
                    }
                    Err(_) => None,
                };
                (kind, status, t.elapsed())
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await
}

/// Samples the gateway's VmRSS every 20 ms into `peak` until `stop` (no
/// gateway pid: no sampler). Shared with `reconnect-storm`.
pub fn spawn_rss_sampler(pid: Option<u32>, stop: &Arc<AtomicBool>, peak: &Arc<AtomicU64>) -> Option<JoinHandle<()>> {
    pid.map(|pid| {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_rss_and_peak_from_proc_status() {
        let status = "Name:\tchatgw\nVmPeak:\t  999 kB\nVmHWM:\t   2048 kB\nVmRSS:\t   1024 kB\n";
        let m = parse_status(status).unwrap();
        assert_eq!((m.rss_kib, m.hwm_kib), (1024, 2048));
        // This process has both fields.
        assert!(read_mem(std::process::id()).is_some_and(|m| m.hwm_kib >= m.rss_kib));
    }

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
    }

    #[test]
    fn only_loopback_targets() {
        assert_eq!(check_loopback("http://127.0.0.1:8080").unwrap(), "http://127.0.0.1:8080/api/v1/auth");
        assert!(check_loopback("http://10.0.0.1:8080").is_err());
        assert!(check_loopback("https://127.0.0.1:8080").is_err());
    }
}
