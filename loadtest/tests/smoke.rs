//! A smoke run of every scenario against a real gateway (in-process, on a
//! fresh SQLite file) and of fanout against the reference server: small N,
//! a few seconds, zero loss and a well-formed report. No timing thresholds.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use chatgw::config::Config;
use chatgw::startup::Application;
use serde_json::Value;

struct Gateway {
    ws_url: String,
    metrics_url: String,
    seed: std::path::PathBuf,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn gateway(users: usize, rooms: usize, room_size: usize) -> Gateway {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_vars(&common::gateway_vars(dir.path())).unwrap();
    let seed = common::seed(&config, dir.path(), users, rooms, room_size).await;
    let app = Application::build(config).await.unwrap();
    let ws_url = format!("ws://{}/ws", app.local_addr());
    let metrics_url = format!("http://{}/metrics", app.metrics_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    Gateway { ws_url, metrics_url, seed, _dir: dir, stop: Some(tx) }
}

/// Runs the harness with `--assert --json` and returns the parsed report.
fn loadtest(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("report.json");
    let plot = dir.path().join("plot.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .args(["--quiet", "--assert", "--json", json.to_str().unwrap(), "--plot", plot.to_str().unwrap()])
        .output()
        .expect("run loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "loadtest {args:?} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("assertions passed"));
    assert!(std::fs::read_to_string(&plot).unwrap().starts_with("<svg"), "an SVG plot");
    serde_json::from_slice(&std::fs::read(&json).unwrap()).expect("a JSON report")
}

fn assert_clean(r: &Value) {
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["reordered"], 0, "{r}");
    assert_eq!(r["clients"], r["connected"], "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_chat_and_reconnect_lose_nothing() {
    let g = gateway(40, 4, 10).await;
    let seed = g.seed.to_str().unwrap().to_owned();
    let base = [
        "--url",
        &g.ws_url,
        "--seed",
        &seed,
        "--rooms",
        "4",
        "--room-size",
        "10",
        "--duration",
        "2",
        "--metrics-url",
        &g.metrics_url,
    ];
    for scenario in [
        vec!["fanout", "--rate", "100"],
        vec!["chat", "--rate", "100"],
        vec!["reconnect", "--rate", "100", "--reconnect-every", "0.5"],
    ] {
        let args: Vec<String> = scenario.iter().chain(base.iter()).map(|s| s.to_string()).collect();
        let r = tokio::task::spawn_blocking(move || loadtest(&args.iter().map(String::as_str).collect::<Vec<&str>>()))
            .await
            .unwrap();
        assert_clean(&r);
        assert!(r["deliveries"].as_u64().unwrap() > 0, "{scenario:?} delivered nothing");
        assert!(r["latency"]["p99_ms"].is_number());
        assert!(r["server"]["cpu_seconds"].is_number(), "server stats from the metrics URL");
        if scenario[0] == "reconnect" {
            assert!(r["reconnects"].as_u64().unwrap() > 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_connect_storm_report_what_they_held() {
    let g = gateway(50, 1, 10).await;
    let (url, seed, metrics) = (g.ws_url.clone(), g.seed.to_str().unwrap().to_owned(), g.metrics_url.clone());
    let r = tokio::task::spawn_blocking(move || {
        loadtest(&[
            "idle",
            "--url",
            &url,
            "--seed",
            &seed,
            "--connections",
            "50",
            "--duration",
            "1",
            "--metrics-url",
            &metrics,
        ])
    })
    .await
    .unwrap();
    assert_eq!(r["connected"], 50);
    assert!(r["server"]["kib_per_connection"].is_number());
    let (url, seed) = (g.ws_url.clone(), g.seed.to_str().unwrap().to_owned());
    let r = tokio::task::spawn_blocking(move || {
        loadtest(&["connect-storm", "--url", &url, "--seed", &seed, "--connections", "50"])
    })
    .await
    .unwrap();
    assert_eq!(r["connected"], 50);
    assert!(r["handshakes_per_sec"].as_f64().unwrap() > 0.0);
}

#[test]
fn fanout_against_the_reference_server() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_refserver"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start refserver");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().strip_prefix("refserver listening on ").expect("refserver prints its URL").to_owned();
    let pid = child.id().to_string();
    let r = loadtest(&[
        "fanout",
        "--url",
        &url,
        "--rooms",
        "3",
        "--room-size",
        "10",
        "--rate",
        "100",
        "--duration",
        "2",
        "--gateway-pid",
        &pid,
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert_clean(&r);
    assert!(r["server"]["cpu_us_per_delivery"].is_number());
}
