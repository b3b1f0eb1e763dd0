//! The gateway's CPU time and memory, read from `/proc/<pid>` (Linux), or
//! from its Prometheus `process_*` metrics.

use std::io::{Read, Write};
use std::net::TcpStream;

/// One reading.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User + system CPU seconds since the process started.
    pub cpu_secs: f64,
    pub rss_kib: u64,
    /// Voluntary + involuntary context switches of all the process's
    /// threads alive now (`/proc/<pid>/task/*/status`; a thread that ended
    /// takes its count with it). `None` from a metrics source.
    pub ctx_switches: Option<u64>,
}

/// Where to read from.
#[derive(Debug, Clone)]
pub enum Source {
    Pid(u32),
    /// `http://127.0.0.1:9090/metrics`
    Metrics(String),
}

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ): 100 on Linux.
const USER_HZ: f64 = 100.0;

impl Source {
    pub fn sample(&self) -> Option<Sample> {
        match self {
            Source::Pid(pid) => {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                // Fields after the parenthesised command name.
                let rest = stat.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                let utime: f64 = f.get(11)?.parse().ok()?;
                let stime: f64 = f.get(12)?.parse().ok()?;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let rss_kib =
                    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
                Some(Sample { cpu_secs: (utime + stime) / USER_HZ, rss_kib, ctx_switches: ctx_switches(*pid) })
            }
            Source::Metrics(url) => {
                let body = http_get(url)?;
                let metric = |name: &str| {
                    body.lines()
                        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))?
                        .split_whitespace()
                        .nth(1)?
                        .parse::<f64>()
                        .ok()
                };
                Some(Sample {
                    cpu_secs: metric("process_cpu_seconds_total")?,
                    rss_kib: (metric("process_resident_memory_bytes")? / 1024.0) as u64,
                    ctx_switches: None,
                })
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Pid(pid) => write!(f, "pid:{pid}"),
            Source::Metrics(url) => write!(f, "metrics:{url}"),
        }
    }
}

/// One reading of several processes (the instances of a cluster): CPU and
/// RSS summed; `None` unless every source answered.
pub fn sample_all(sources: &[Source]) -> Option<Sample> {
    let mut samples = sources.iter().map(Source::sample);
    let first = samples.next()??;
    samples.try_fold(first, |acc, x| {
        let x = x?;
        Some(Sample {
            cpu_secs: acc.cpu_secs + x.cpu_secs,
            rss_kib: acc.rss_kib + x.rss_kib,
            ctx_switches: acc.ctx_switches.zip(x.ctx_switches).map(|(a, b)| a + b),
        })
    })
}

/// Context switches of every thread of `pid`: the count the kernel keeps
/// per thread in `/proc/<pid>/task/<tid>/status` (the process's own
/// `status` shows its main thread's only). A count, not a time: it holds on
/// a noisy machine.
pub fn ctx_switches(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = std::fs::read_to_string(task.path().join("status")) else { continue };
        total += status
            .lines()
            .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
            .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .sum::<u64>();
    }
    Some(total)
}

/// A tiny HTTP/1.0 GET for loopback metrics endpoints.
fn http_get(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let (hostport, path) = rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
    let addr: std::net::SocketAddr = hostport.parse().ok()?;
    if !addr.ip().is_loopback() {
        return None;
    }
    let mut s = TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {hostport}\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}
