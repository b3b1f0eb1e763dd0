//! The harness across several instances and several generator processes,
//! and its accounting checked against a reference server that misbehaves on
//! purpose and counts what it did. Real processes, real sockets, small N, a
//! few seconds; no timing thresholds.
//!
//! The reference server stands in for a cluster: with `--listen` repeated it
//! serves one set of rooms on several ports, so "senders on one instance,
//! receivers on another" delivers everything, as a gateway cluster should.
//! The last test runs the same against two real gateway instances (in this
//! process, on one SQLite file, linked by chatgw's in-process bus).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use chatgw::config::Config;
use chatgw::startup::Application;
use serde_json::{Value, json};

/// A running `refserver`; [`RefServer::stats`] stops it and returns what it
/// says it did.
struct RefServer {
    child: Child,
    urls: Vec<String>,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for RefServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn refserver(listeners: usize, extra: &[&str]) -> RefServer {
    let dir = tempfile::tempdir().unwrap();
    let stats = dir.path().join("stats.json");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_refserver"));
    for _ in 0..listeners {
        cmd.args(["--listen", "127.0.0.1:0"]);
    }
    let mut child =
        cmd.arg("--stats-file").arg(&stats).args(extra).stdout(Stdio::piped()).spawn().expect("start refserver");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let urls = (0..listeners)
        .map(|_| {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            line.trim().strip_prefix("refserver listening on ").expect("refserver prints its URLs").to_owned()
        })
        .collect();
    RefServer { child, urls, stats, _dir: dir }
}

impl RefServer {
    /// SIGTERM, wait for the exit (the server first lets its connections
    /// end), and read its stats file.
    fn stats(mut self) -> Value {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        assert!(self.child.wait().unwrap().success(), "refserver exits cleanly on SIGTERM");
        serde_json::from_slice(&std::fs::read(&self.stats).unwrap()).expect("refserver stats")
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loadtest")).args(args).output().expect("run loadtest")
}

fn ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap()).expect("a JSON report")
}

/// Runs the harness (no --assert: some runs are meant to see loss) and
/// returns its report.
fn loadtest(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    ok(&run(&[args, &["--quiet", "--json", json.to_str().unwrap()]].concat()), &format!("loadtest {args:?}"));
    read_json(&json)
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

fn assert_clean(r: &Value, room_size: u64) {
    assert_eq!((n(r, "lost"), n(r, "duplicated"), n(r, "reordered")), (0, 0, 0), "{r}");
    assert_eq!(r["clients"], r["connected"], "{r}");
    assert!(n(r, "sends") > 0);
    assert_eq!(n(r, "acks"), n(r, "sends"));
    // Every message reaches every member of its room, its sender included.
    assert_eq!(n(r, "deliveries"), n(r, "sends") * room_size, "{r}");
    assert_eq!(n(r, "expected_deliveries"), n(r, "deliveries"));
}

/// The server drops, duplicates and swaps (message, recipient) deliveries
/// at random and counts each thing it did; the harness must report exactly
/// those counts:
///
/// * a drop is one seq a receiver never sees, below the room's last
///   acknowledged seq: one `lost`;
/// * a duplicate is a seq seen a second time: one `duplicated`;
/// * a swap sends a held message right after the next message of the same
///   room to the same recipient, so exactly one seq arrives below the
///   highest seen so far: one `reordered` (the message that overtook it
///   arrives in order, and a copy or a drop of it is counted as such).
///   A held message that found no partner within the hold time went out in
///   order: the server counts it apart (`held_in_order`) and the harness
///   sees nothing wrong; one still held when its connection ended was never
///   sent (`held_lost`), which the harness counts as lost.
#[test]
fn the_harness_counts_exactly_what_a_misbehaving_server_did() {
    let srv = refserver(1, &["--drop-permille", "20", "--dup-permille", "20", "--swap-permille", "20", "--seed", "7"]);
    let url = srv.urls[0].clone();
    let r = loadtest(&[
        "fanout",
        "--url",
        &url,
        "--rooms",
        "3",
        "--room-size",
        "10",
        "--rate",
        "300",
        "--duration",
        "1.5",
        "--warmup",
        "0",
    ]);
    let s = srv.stats();
    assert!(n(&s, "dropped") > 0 && n(&s, "duplicated") > 0 && n(&s, "swapped") > 0, "it misbehaved: {s}");
    assert_eq!(r["connected"], 30, "{r}");
    assert_eq!(n(&r, "sends"), n(&s, "messages"));
    assert_eq!(n(&r, "acks"), n(&r, "sends"));
    assert_eq!(n(&r, "expected_deliveries"), n(&r, "sends") * 10, "every member expects every message");

    assert_eq!(n(&r, "lost"), n(&s, "dropped") + n(&s, "held_lost"), "lost: {r}\n{s}");
    assert_eq!(n(&r, "duplicated"), n(&s, "duplicated"), "duplicated: {r}\n{s}");
    assert_eq!(n(&r, "reordered"), n(&s, "swapped"), "reordered: {r}\n{s}");

    // And what arrived is what was written.
    assert_eq!(n(&r, "deliveries") + n(&r, "lost"), n(&r, "expected_deliveries"));
    assert_eq!(n(&r, "deliveries") + n(&r, "duplicated"), n(&s, "delivered"));
}

#[test]
fn senders_on_one_instance_receivers_on_the_other() {
    let srv = refserver(2, &[]);
    let (a, b) = (srv.urls[0].clone(), srv.urls[1].clone());
    let r = loadtest(&[
        "fanout",
        "--url",
        &a,
        "--url",
        &b,
        "--senders-on",
        "0",
        "--receivers-elsewhere",
        "--senders-per-room",
        "2",
        "--rooms",
        "3",
        "--room-size",
        "10",
        "--rate",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0",
    ]);
    let s = srv.stats();
    assert_clean(&r, 10);
    assert_eq!(
        r["per_target"],
        json!([
            {"url": a, "clients": 6, "senders": 6, "connected": 6},
            {"url": b, "clients": 24, "senders": 0, "connected": 24},
        ])
    );
    assert_eq!(s["connections"], json!([6, 24]), "the server saw the same split");
    assert_eq!(n(&r, "sends"), n(&s, "messages"));
}

/// Two generator processes split one run (`--shard 0/2`, `--shard 1/2`);
/// `loadtest merge` must give the totals of the whole run: every message
/// sent in either shard delivered to all 10 members of its room, wherever
/// they are, and histograms that add up.
#[test]
fn two_shards_merge_into_the_whole_run() {
    let srv = refserver(2, &[]);
    let urls = srv.urls.join(",");
    let dir = tempfile::tempdir().unwrap();
    let sync = dir.path().join("sync");
    let json = |i: usize| dir.path().join(format!("s{i}.json"));
    let shard = |i: usize| {
        Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(["fanout", "--url", &urls, "--rooms", "4", "--room-size", "10", "--rate", "200"])
            .args(["--duration", "1.5", "--warmup", "0", "--senders-per-room", "5", "--senders-on", "0"])
            .args(["--shard", &format!("{i}/2"), "--quiet", "--sync-dir", sync.to_str().unwrap()])
            .arg("--json")
            .arg(json(i))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a shard")
    };
    let (p0, p1) = (shard(0), shard(1));
    ok(&p0.wait_with_output().unwrap(), "shard 0/2");
    ok(&p1.wait_with_output().unwrap(), "shard 1/2");
    let merged = dir.path().join("merged.json");
    let (j0, j1) = (json(0), json(1));
    let (j0, j1) = (j0.to_str().unwrap(), j1.to_str().unwrap());
    let out = ok(&run(&["merge", j0, j1, "-o", merged.to_str().unwrap(), "--assert"]), "merge");
    assert!(out.contains("assertions passed"));
    let s = srv.stats();
    let (s0, s1, m) = (read_json(&json(0)), read_json(&json(1)), read_json(&merged));

    // Each shard ran its half of the clients, of the same run.
    assert_eq!((n(&s0, "clients"), n(&s1, "clients")), (20, 20));
    assert_eq!((s0["shard"].clone(), s1["shard"].clone()), (json!("0/2"), json!("1/2")));
    assert_eq!(s0["run_id"], s1["run_id"]);
    assert_eq!(m["merged_from"], json!(["0/2", "1/2"]));
    // The rate is the whole run's: 20 senders at 10/s, 12 in shard 0 and 8 in shard 1.
    assert_eq!((s0["send_rate"].as_f64(), s1["send_rate"].as_f64()), (Some(120.0), Some(80.0)));
    assert_eq!(m["send_rate"].as_f64(), Some(200.0));

    // The whole run: 40 clients, every delivery accounted for.
    assert_eq!(n(&m, "clients"), 40);
    assert_clean(&m, 10);
    assert_eq!(n(&m, "sends"), n(&s0, "sends") + n(&s1, "sends"));
    assert_eq!(n(&m, "sends"), n(&s, "messages"));
    assert_eq!(n(&m, "deliveries"), n(&s0, "deliveries") + n(&s1, "deliveries"));
    assert_eq!(
        m["per_target"],
        json!([
            {"url": srv_url(&urls, 0), "clients": 30, "senders": 20, "connected": 30},
            {"url": srv_url(&urls, 1), "clients": 10, "senders": 0, "connected": 10},
        ])
    );
    assert_eq!(s["connections"], json!([30, 10]));

    // Histograms: merged counts are the sums (and, without warmup, one
    // latency sample per delivery).
    let samples = |r: &Value| r["latency"]["samples"].as_u64().unwrap();
    assert_eq!(samples(&m), samples(&s0) + samples(&s1));
    assert_eq!(samples(&m), n(&m, "deliveries"));
    let per_second: u64 = m["timeline"].as_array().unwrap().iter().map(|s| n(s, "deliveries")).sum();
    assert_eq!(per_second, n(&m, "deliveries"));

    // A shard given twice is refused.
    assert!(!run(&["merge", j0, j0]).status.success());
}

/// `n` gateway instances on one database, linked by one in-process bus.
struct Gateways {
    urls: Vec<String>,
    seed: PathBuf,
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Gateways {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
    }
}

async fn gateways(n: usize, users: usize, rooms: usize, room_size: usize) -> Gateways {
    let dir = tempfile::tempdir().unwrap();
    let vars = common::gateway_vars(dir.path());
    let seed = common::seed(&Config::from_vars(&vars).unwrap(), dir.path(), users, rooms, room_size).await;
    let net = chatgw::bus::local::LocalNetwork::new();
    let (mut urls, mut stops) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let config = Config::from_vars(&vars).unwrap();
        let app = Application::build_with_bus(config, Arc::new(net.attach())).await.unwrap();
        urls.push(format!("ws://{}/ws", app.local_addr()));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(app.run_until_stopped(async move {
            let _ = rx.await;
        }));
        stops.push(tx);
    }
    Gateways { urls, seed, stops, _dir: dir }
}

/// Senders on one gateway instance and every receiver on the other, first
/// in one generator process, then split over two and merged: every message
/// crosses the bus to reach its room, and the totals are the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_across_two_gateway_instances_whole_and_in_two_shards() {
    let g = gateways(2, 40, 4, 10).await;
    let (urls, seed) = (g.urls.join(","), g.seed.to_str().unwrap().to_owned());
    let base: Vec<String> = [
        "fanout",
        "--url",
        &urls,
        "--seed",
        &seed,
        "--rooms",
        "4",
        "--room-size",
        "10",
        "--rate",
        "100",
        "--duration",
        "1",
        "--warmup",
        "0",
        "--senders-per-room",
        "2",
        "--senders-on",
        "0",
        "--receivers-elsewhere",
    ]
    .map(String::from)
    .into();
    let per_target = json!([
        {"url": g.urls[0], "clients": 8, "senders": 8, "connected": 8},
        {"url": g.urls[1], "clients": 32, "senders": 0, "connected": 32},
    ]);

    let args = base.clone();
    let whole = tokio::task::spawn_blocking(move || loadtest(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap();
    assert_clean(&whole, 10);
    assert_eq!(whole["per_target"], per_target);

    let dir = tempfile::tempdir().unwrap();
    let sync = dir.path().join("sync").to_str().unwrap().to_owned();
    let json_path = |i: usize| dir.path().join(format!("s{i}.json")).to_str().unwrap().to_owned();
    let shards: Vec<Child> = (0..2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_loadtest"))
                .args(&base)
                .args(["--shard", &format!("{i}/2"), "--sync-dir", &sync, "--quiet", "--json", &json_path(i)])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start a shard")
        })
        .collect();
    let (j0, j1, merged) = (json_path(0), json_path(1), dir.path().join("m.json").to_str().unwrap().to_owned());
    let m = tokio::task::spawn_blocking(move || {
        for (i, p) in shards.into_iter().enumerate() {
            ok(&p.wait_with_output().unwrap(), &format!("shard {i}/2"));
        }
        ok(&run(&["merge", &j0, &j1, "-o", &merged, "--assert"]), "merge");
        read_json(Path::new(&merged))
    })
    .await
    .unwrap();
    assert_eq!(n(&m, "clients"), 40);
    assert_clean(&m, 10);
    assert_eq!(m["per_target"], per_target);
    assert_eq!(m["latency"]["samples"], m["deliveries"]);
}

fn srv_url(urls: &str, i: usize) -> String {
    urls.split(',').nth(i).unwrap().to_owned()
}
