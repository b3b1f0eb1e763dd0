//! What operators get: the alert rules (`deploy/prometheus/alerts.yml`) and
//! their unit tests under `promtool`, a live gateway's `/metrics` linted by
//! `promtool`, and a real Prometheus scraping two clustered gateway processes
//! (PostgreSQL + Redis) with the shipped configuration, in which every query
//! of the Grafana dashboard (`deploy/grafana/chatgw-dashboard.json`) and of
//! the alert rules evaluates, and every metric they read has series.
//!
//! `promtool` and `prometheus` come from Debian's `prometheus` package, which
//! `scripts/test.sh` installs; without them these tests fail (never skip).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, Command};

use crate::helpers::{Db, TestApp, eventually, spawn_app_with};
use crate::procs::{Gateway, RedisProc, cluster_db, cluster_env, free_port, test_prefix};
use crate::ws::client::{Refused, WsClient};

/// Upper bound of every wait in these tests (a guard, not a measurement).
const GUARD: Duration = Duration::from_secs(90);

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// A tool of the `prometheus` package, found on `PATH` or in `/usr/bin`.
fn prometheus_tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed: run ./scripts/test.sh, which installs Debian's `prometheus` package \
                 (it provides /usr/bin/prometheus and /usr/bin/promtool)"
            )
        })
}

#[test]
#[should_panic(expected = "run ./scripts/test.sh")]
fn a_missing_prometheus_tool_fails_the_test_saying_how_to_install_it() {
    prometheus_tool("promtool-that-is-not-installed");
}

/// Runs a command to completion and returns (success, stdout + stderr).
async fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> (bool, String) {
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(input) = stdin {
        // Written while the output is read, so neither pipe can fill up.
        let mut pipe = child.stdin.take().expect("piped stdin");
        let input = input.to_vec();
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
        });
    }
    let out = tokio::time::timeout(GUARD, child.wait_with_output()).await.expect("finished in time").expect("ran");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

// ---------------------------------------------------------------------------
// The files under deploy/: alert names, dashboard expressions, metric names.

/// The alert names of `alerts.yml`, in file order (`- alert: Name` lines).
fn alert_names() -> Vec<String> {
    let text = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).expect("deploy/prometheus/alerts.yml");
    text.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(|n| n.trim().to_owned()).collect()
}

/// The dashboard, parsed.
fn dashboard() -> Value {
    let text = std::fs::read_to_string(repo("deploy/grafana/chatgw-dashboard.json"))
        .expect("deploy/grafana/chatgw-dashboard.json");
    serde_json::from_str(&text).expect("the dashboard is JSON")
}

/// Every PromQL expression of the dashboard's panels (rows' nested panels
/// included), with the panel title.
fn dashboard_exprs(d: &Value) -> Vec<(String, String)> {
    fn walk(panels: &Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push((title.clone(), e.to_owned()));
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// A dashboard expression as Grafana would send it with every instance
/// selected and a 1-minute rate interval.
fn substitute(expr: &str) -> String {
    let e = expr
        .replace("${instance}", ".*")
        .replace("$instance", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "5m");
    assert!(!e.contains('$'), "an unknown template variable in {expr}");
    e
}

/// The metric names an expression reads: identifiers outside string
/// literals that are chatgw's (`chatgw_…`), the process collector's
/// (`process_…`) or `up`. Histograms are read as `…_bucket` (or `_sum`,
/// `_count`), which is also the name their series have in Prometheus, so
/// names are kept as written.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let chars: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // Skip a string literal (label values, regexes).
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let id: String = chars[start..i].iter().collect();
            if id.starts_with("chatgw_") || id.starts_with("process_") || id == "up" {
                names.insert(id);
            }
        } else if c.is_ascii_digit() {
            // A number or a duration (`1m`, `0.99`, `1e3`): not a name.
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    names
}

/// `lhs` of an expression `lhs <comparison> <number>`.
fn without_threshold(q: &str) -> Option<&str> {
    let q = q.trim_end();
    let number = q.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '+' || c == '-'))? + 1;
    q[number..].parse::<f64>().ok()?;
    let rest = q[..number].trim_end();
    ["==", "!=", ">=", "<=", ">", "<"].iter().find_map(|op| rest.strip_suffix(op)).map(str::trim_end)
}

#[test]
fn metric_names_and_thresholds_are_extracted_from_promql() {
    let names = metric_names(
        r#"histogram_quantile(0.99, sum by (le) (rate(chatgw_a_bucket{instance=~"chatgw_not.*",x='process_no'}[1m]))) / up + process_open_fds offset 5m"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["chatgw_a_bucket", "process_open_fds", "up"]);
    assert_eq!(without_threshold("a / b{x=\"1\"} > 0.9"), Some("a / b{x=\"1\"}"));
    assert_eq!(without_threshold("sum(rate(x[5m])) >= 1e3 "), Some("sum(rate(x[5m]))"));
    assert_eq!(without_threshold("up == 0"), Some("up"));
    assert_eq!(without_threshold("sum(rate(x[5m]))"), None);
}

// ---------------------------------------------------------------------------
// The exposition format.

/// One sample of the text format: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("sample line without a value: {line}"));
        let name = line[..name_end].to_owned();
        let mut labels = BTreeMap::new();
        let mut rest = &line[name_end..];
        if let Some(mut l) = rest.strip_prefix('{') {
            loop {
                l = l.trim_start_matches(',');
                if let Some(after) = l.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = l.split_once("=\"").unwrap_or_else(|| panic!("bad labels: {line}"));
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c)) => value.push(c),
                            None => panic!("bad escape: {line}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value: {line}"),
                    }
                };
                labels.insert(key.to_owned(), value);
                l = &after[end + 1..];
            }
        }
        let value = rest.split_whitespace().next().unwrap_or_else(|| panic!("no value: {line}"));
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|e| panic!("bad value in {line}: {e}")),
        };
        out.push((name, labels, value));
    }
    out
}

/// The sum of every sample of `name` whose labels include `with`.
fn total(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|(n, l, _)| n == name && with.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|(_, _, v)| *v)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

// ---------------------------------------------------------------------------
// Traffic.

/// Traffic that gives the metrics of the dashboard and the alert rules
/// samples on every instance of `apps`: messages both ways between the
/// first and the last instance (stored, fanned out, and across the bus when
/// they are processes on Redis), typing and read markers, REST requests
/// including a 404, and on each instance a refused handshake, an error
/// frame, `send` and event frames over their rate limits (defaults: burst
/// 40 and 100) and a socket closed for an oversized frame (1009). Returns
/// the two chatting sockets, still open.
async fn drive_traffic(apps: &[&TestApp]) -> Vec<WsClient> {
    const MESSAGES: usize = 10;
    let (first, last) = (apps[0], apps[apps.len() - 1]);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let ann = first.register(&format!("ann-{tag}")).await;
    let bob = last.register(&format!("bob-{tag}")).await;
    let room = first.create_room(&ann, "metrics", &[&bob]).await;
    let mut a = WsClient::connect(first, &ann.access).await;
    let mut b = WsClient::connect(last, &bob.access).await;
    a.join(&room, None).await;
    b.join(&room, None).await;
    for i in 0..MESSAGES {
        a.send_msg(&room, &format!("a{i}"), "from ann").await;
        b.send_msg(&room, &format!("b{i}"), "from bob").await;
    }
    for c in [&mut a, &mut b] {
        let (mut messages, mut acks) = (0, 0);
        while messages < 2 * MESSAGES || acks < MESSAGES {
            let f = c.next().await;
            match f["type"].as_str() {
                Some("message") => messages += 1,
                Some("ack") => acks += 1,
                _ => {}
            }
        }
    }
    a.send(json!({"type": "typing", "room": room})).await;
    b.send(json!({"type": "read", "room": room, "seq": 2 * MESSAGES})).await;
    a.drain_until_pong().await;
    b.drain_until_pong().await;

    for app in apps {
        let r = app.get(&ann.access, &format!("/api/v1/rooms/{room}/messages?limit=5")).await;
        assert_eq!(r.status, StatusCode::OK, "history: {}", r.body);
        let r = app.get(&ann.access, "/api/v1/rooms/no-such-room").await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);

        match WsClient::try_connect(app, Some("not-a-token"), None, None).await {
            Err(Refused::Http(401, _)) => {}
            Err(Refused::Http(s, body)) => panic!("a bad token is refused with 401, not {s}: {body}"),
            Ok(_) => panic!("a bad token was accepted"),
        }

        let mut c = WsClient::connect(app, &ann.access).await;
        c.send(json!({"type": "join", "id": "nope", "room": "no-such-room"})).await;
        let e = c.next_of("error").await;
        assert_eq!(e["id"], "nope", "{e}");
        let solo = app.create_room(&ann, "solo", &[]).await;
        c.join(&solo, None).await;
        // 60 sends at once against a burst of 40: about 20 refused (fewer
        // than the 50 strikes that close a socket).
        for i in 0..60 {
            c.send_msg(&solo, &format!("burst{i}"), "x").await;
        }
        let refused = replies(&mut c, 60, "ack").await;
        assert!(refused > 0, "no send was rate limited");
        // 120 pings against a burst of 100.
        for i in 0..120 {
            c.send(json!({"type": "ping", "id": format!("p{i}")})).await;
        }
        let refused = replies(&mut c, 120, "pong").await;
        assert!(refused > 0, "no event was rate limited");
        c.send(json!({"type": "send", "room": solo, "client_msg_id": "huge", "body": "y".repeat(70_000)})).await;
        let (code, reason, _) = c.until_close().await;
        assert_eq!(code, 1009, "an oversized frame closes the socket: {reason}");
    }
    vec![a, b]
}

/// Reads `n` answers (`ok` frames or `rate_limited` errors) and returns how
/// many were refused.
async fn replies(c: &mut WsClient, n: usize, ok: &str) -> usize {
    let mut refused = 0;
    let mut seen = 0;
    while seen < n {
        let f = c.next().await;
        if f["type"] == ok {
            seen += 1;
        } else if f["type"] == "error" {
            assert_eq!(f["code"], "rate_limited", "{f}");
            refused += 1;
            seen += 1;
        }
    }
    refused
}

// ---------------------------------------------------------------------------
// a. The rules and their unit tests.

#[tokio::test]
async fn promtool_checks_the_alert_rules_and_their_unit_tests() {
    let promtool = prometheus_tool("promtool");
    for args in [
        ["check", "rules", "deploy/prometheus/alerts.yml"],
        ["test", "rules", "deploy/prometheus/alerts_test.yml"],
        ["check", "config", "deploy/prometheus/prometheus.yml"],
    ] {
        let (ok, out) = run(Command::new(&promtool).args(args).current_dir(repo(".")), None).await;
        assert!(ok, "promtool {} failed:\n{out}", args.join(" "));
        println!("promtool {}:\n{out}", args.join(" "));
    }

    // Every alert's runbook annotation (`README.md#alert-<name>`) leads to a
    // README heading: GitHub's anchor of a heading is its text lowercased,
    // punctuation dropped, spaces as hyphens.
    let readme = std::fs::read_to_string(repo("README.md")).expect("README.md");
    let anchors: BTreeSet<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix('#'))
        .map(|h| {
            h.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect();
    let rules = std::fs::read_to_string(repo("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    for name in alert_names() {
        let anchor = format!("alert-{}", name.to_lowercase());
        assert!(rules.contains(&format!("runbook: \"README.md#{anchor}\"")), "{name} has the runbook #{anchor}");
        assert!(anchors.contains(&anchor), "README.md has no heading for #{anchor} (\"Alert: {name}\")");
    }

    // Every alert has a unit test that fires it and an evaluation where it
    // stays silent.
    let tests = std::fs::read_to_string(repo("deploy/prometheus/alerts_test.yml")).expect("alerts_test.yml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    let names = alert_names();
    assert!(names.len() >= 11, "alerts.yml has its alerts: {names:?}");
    for name in &names {
        let evals: Vec<&str> =
            lines.windows(2).filter(|w| w[0] == format!("alertname: {name}")).map(|w| w[1]).collect();
        assert!(evals.contains(&"exp_alerts:"), "no unit test fires {name}");
        assert!(evals.contains(&"exp_alerts: []"), "no unit test where {name} stays silent");
    }
}

/// What Grafana needs to import the dashboard and what makes its
/// variables work: a `${datasource}` Prometheus variable every panel and
/// query uses, an `instance` multi-value variable that every metric
/// selector filters on, unique panel ids, and panels that do not overlap.
#[test]
fn the_grafana_dashboard_is_importable_and_every_query_follows_its_variables() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_i64().unwrap_or(0) >= 36, "schemaVersion {}", d["schemaVersion"]);
    assert!(d["uid"].is_string() && d["title"].is_string(), "uid and title");
    let vars = d["templating"]["list"].as_array().expect("templating variables");
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no ${name} variable"));
    let ds = var("datasource");
    assert_eq!((ds["type"].as_str(), ds["query"].as_str()), (Some("datasource"), Some("prometheus")));
    let inst = var("instance");
    assert_eq!(inst["type"], "query");
    assert_eq!(inst["definition"], "label_values(chatgw_build_info, instance)");
    assert_eq!((inst["multi"].as_bool(), inst["includeAll"].as_bool()), (Some(true), Some(true)));
    assert_eq!(inst["allValue"], ".*", "All matches every instance");
    assert_eq!(inst["datasource"]["uid"], "${datasource}");

    let mut panels = Vec::new();
    fn collect<'a>(list: &'a Value, out: &mut Vec<&'a Value>) {
        for p in list.as_array().into_iter().flatten() {
            out.push(p);
            collect(&p["panels"], out);
        }
    }
    collect(&d["panels"], &mut panels);
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(&str, [i64; 4])> = Vec::new();
    for p in &panels {
        let title = p["title"].as_str().unwrap_or("?");
        assert!(ids.insert(p["id"].as_i64().expect("panel id")), "duplicate panel id in {title:?}");
        let g = &p["gridPos"];
        let rect = ["x", "y", "w", "h"].map(|k| g[k].as_i64().unwrap_or_else(|| panic!("{title:?} gridPos.{k}")));
        assert!(rect[0] + rect[2] <= 24, "{title:?} is wider than the dashboard");
        for (other, r) in &boxes {
            let apart = rect[0] + rect[2] <= r[0]
                || r[0] + r[2] <= rect[0]
                || rect[1] + rect[3] <= r[1]
                || r[1] + r[3] <= rect[1];
            assert!(apart, "{title:?} overlaps {other:?}");
        }
        boxes.push((title, rect));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title:?} uses the datasource variable");
        let targets = p["targets"].as_array().unwrap_or_else(|| panic!("{title:?} has no queries"));
        let mut ref_ids = BTreeSet::new();
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${datasource}", "a query of {title:?}");
            assert!(ref_ids.insert(t["refId"].as_str().expect("refId")), "duplicate refId in {title:?}");
            let expr = t["expr"].as_str().unwrap_or_else(|| panic!("a query of {title:?} has no expr"));
            // Every metric selector is filtered by the instance variable.
            for name in metric_names(expr) {
                for (at, _) in expr.match_indices(name.as_str()) {
                    let after = &expr[at + name.len()..];
                    if after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_') {
                        continue; // a longer name
                    }
                    assert!(
                        after.starts_with("{instance=~\"$instance\""),
                        "{title:?}: {name} is not filtered by $instance in {expr}"
                    );
                }
            }
        }
    }
    assert!(panels.iter().filter(|p| p["type"] == "row").count() >= 5, "panels are grouped in rows");
}

// ---------------------------------------------------------------------------
// b. A live gateway's /metrics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_checks_a_live_gateways_metrics() {
    let promtool = prometheus_tool("promtool");
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let metrics_addr = app.metrics_addr.expect("METRICS_ADDR is set by the test harness");
    let _open = drive_traffic(&[&app]).await;

    // Metrics are on METRICS_ADDR only, never on the public listener.
    let r = app.http.get(app.url("/metrics")).send().await.expect("request");
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "/metrics must not be served on LISTEN_ADDR");

    let r = app.http.get(format!("http://{metrics_addr}/metrics")).send().await.expect("scrape");
    assert_eq!(r.status(), StatusCode::OK);
    let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(content_type.starts_with("text/plain"), "Prometheus text format, not {content_type:?}");
    let text = r.text().await.expect("body");

    let (ok, out) = run(Command::new(&promtool).args(["check", "metrics"]), Some(text.as_bytes())).await;
    assert!(ok && out.trim().is_empty(), "promtool check metrics complains:\n{out}\n--- /metrics:\n{text}");

    // The traffic left its marks (every unmet expectation listed at once).
    let samples = parse_exposition(&text);
    /// A metric, the labels its samples must have, a test of their sum,
    /// and the test in words.
    type Expectation = (&'static str, &'static [(&'static str, &'static str)], fn(f64) -> bool, &'static str);
    let expectations: [Expectation; 11] = [
        ("chatgw_ready", &[], |v| v == 1.0, "= 1 (ready)"),
        ("chatgw_build_info", &[("version", env!("CARGO_PKG_VERSION"))], |v| v == 1.0, "= 1"),
        ("chatgw_message_persist_seconds_count", &[], |v| v > 0.0, "> 0"),
        ("chatgw_message_fanout_seconds_count", &[], |v| v > 0.0, "> 0"),
        ("chatgw_http_request_duration_seconds_count", &[], |v| v > 0.0, "> 0"),
        ("chatgw_ws_outbound_queue_depth_count", &[], |v| v > 0.0, "> 0"),
        ("chatgw_commit_batch_size_count", &[], |v| v > 0.0, "> 0"),
        ("chatgw_ws_rate_limited_total", &[("kind", "send")], |v| v > 0.0, "> 0"),
        ("chatgw_ws_rate_limited_total", &[("kind", "event")], |v| v > 0.0, "> 0"),
        ("chatgw_ws_closes_total", &[("code", "1009")], |v| v > 0.0, "> 0"),
        ("chatgw_ws_handshakes_total", &[("outcome", "unauthorized")], |v| v > 0.0, "> 0"),
    ];
    let unmet: Vec<String> = expectations
        .iter()
        .filter_map(|(name, with, ok, want)| match total(&samples, name, with) {
            Some(v) if ok(v) => None,
            Some(v) => Some(format!("{name}{with:?} is {v}, expected {want}")),
            None => Some(format!("{name}{with:?} has no sample, expected {want}")),
        })
        .collect();
    assert!(unmet.is_empty(), "after the traffic, in /metrics:\n  {}\n--- /metrics:\n{text}", unmet.join("\n  "));
}

// ---------------------------------------------------------------------------
// c. A real Prometheus.

/// A `prometheus` server owned by one test, killed when dropped.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with the shipped `deploy/prometheus/prometheus.yml`,
    /// rewritten only where a test must: 1 s intervals, the absolute path
    /// of the shipped `alerts.yml`, and `targets` as the scrape targets.
    async fn start(targets: &[String]) -> Prometheus {
        let bin = prometheus_tool("prometheus");
        let shipped = std::fs::read_to_string(repo("deploy/prometheus/prometheus.yml")).expect("prometheus.yml");
        let alerts = repo("deploy/prometheus/alerts.yml");
        let mut config = String::new();
        let mut replaced = 0;
        for line in shipped.lines() {
            let indent = &line[..line.len() - line.trim_start().len()];
            let t = line.trim();
            if t.starts_with("scrape_interval:") || t.starts_with("evaluation_interval:") {
                let key = t.split(':').next().unwrap_or_default();
                config.push_str(&format!("{indent}{key}: 1s\n"));
                replaced += 1;
            } else if t == "- alerts.yml" {
                config.push_str(&format!("{indent}- {:?}\n", alerts.display().to_string()));
                replaced += 1;
            } else if t.starts_with("- \"") && t.ends_with(":9100\"") {
                // The example targets: the first one becomes all of ours.
                if !config.contains(&targets[0]) {
                    for target in targets {
                        config.push_str(&format!("{indent}- {target:?}\n"));
                    }
                    replaced += 1;
                }
            } else {
                config.push_str(line);
                config.push('\n');
            }
        }
        assert_eq!(replaced, 4, "the shipped prometheus.yml was rewritten for the test:\n{config}");
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &config).expect("write config");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start prometheus");
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().expect("client"),
            dir,
        };
        let end = tokio::time::Instant::now() + GUARD;
        loop {
            let ready = p.http.get(format!("{}/-/ready", p.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            assert!(tokio::time::Instant::now() < end, "prometheus never became ready:\n{}", p.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/{path}`: the `data` of a success, or the error.
    async fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}/api/v1/{path}", self.base))
            .query(params)
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        let body: Value = r.json().await.map_err(|e| format!("body: {e}"))?;
        if body["status"] == "success" {
            Ok(body["data"].clone())
        } else {
            Err(format!("{}: {}", body["errorType"], body["error"]))
        }
    }

    /// An instant query's result vector.
    async fn query(&self, q: &str) -> Result<Vec<Value>, String> {
        let data = self.api("query", &[("query", q)]).await?;
        Ok(match data["resultType"].as_str() {
            Some("vector" | "matrix") => data["result"].as_array().cloned().unwrap_or_default(),
            // A scalar or a string: one value.
            _ => vec![data["result"].clone()],
        })
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_prometheus_scrapes_two_instances_and_every_dashboard_and_alert_query_evaluates() {
    // Fail early, before starting anything, when the tools are missing.
    prometheus_tool("prometheus");

    let db = cluster_db().await;
    let redis = RedisProc::start().await;
    let mut env = cluster_env(&db.url, &redis.url(), &test_prefix());
    // The default per-connection limits, so the traffic can exceed them.
    env.retain(|(k, _)| !k.starts_with("WS_SEND_") && !k.starts_with("WS_EVENTS_"));
    let mut gws = Vec::new();
    let mut targets = Vec::new();
    for _ in 0..2 {
        let metrics = format!("127.0.0.1:{}", free_port());
        let mut env = env.clone();
        env.push(("METRICS_ADDR".into(), metrics.clone()));
        gws.push(Gateway::start(&env).await);
        targets.push(metrics);
    }
    let mut apps = Vec::new();
    for gw in &gws {
        let app = gw.app(&db.url).await;
        eventually(GUARD, || async {
            let r = app.http.get(app.url("/readyz")).send().await.ok()?;
            r.status().is_success().then_some(())
        })
        .await;
        apps.push(app);
    }
    let _open = drive_traffic(&apps.iter().collect::<Vec<_>>()).await;

    let prom = Prometheus::start(&targets).await;

    // Both targets up.
    let end = tokio::time::Instant::now() + GUARD;
    loop {
        let active = prom.api("targets", &[("state", "active")]).await.map(|d| d["activeTargets"].clone());
        let up: BTreeSet<String> = active
            .iter()
            .flat_map(|t| t.as_array().into_iter().flatten())
            .filter(|t| t["health"] == "up" && t["labels"]["job"] == "chatgw")
            .filter_map(|t| t["labels"]["instance"].as_str().map(str::to_owned))
            .collect();
        if targets.iter().all(|t| up.contains(t)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "both targets up; got {active:?}\n--- prometheus log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Enough scrapes of each that rate() over 1m has points to work with.
    eventually(GUARD, || async {
        let r = prom.query(r#"count(count_over_time(up{job="chatgw"}[1m]) >= 3)"#).await.ok()?;
        (r.first()?["value"][1] == "2").then_some(())
    })
    .await;

    // Every problem found below is collected, so one run lists them all.
    let mut problems: Vec<String> = Vec::new();

    // Messages crossed Redis both ways: each instance timed their transit.
    let transit = prom.query("min(chatgw_bus_transit_seconds_count)").await.ok();
    let crossed = transit.as_ref().and_then(|r| r.first()?["value"][1].as_str()?.parse::<f64>().ok());
    if !crossed.is_some_and(|n| n > 0.0) {
        problems.push(format!("chatgw_bus_transit_seconds has no observations on some instance: {transit:?}"));
    }

    // (iii) The rules are loaded, evaluated without error, and complete.
    let rules = eventually(GUARD, || async {
        let data = prom.api("rules", &[("type", "alert")]).await.ok()?;
        let rules: Vec<Value> = data["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        // Every rule evaluated at least once.
        (!rules.is_empty() && rules.iter().all(|r| r["health"] != "unknown")).then_some(rules)
    })
    .await;
    let loaded: BTreeSet<String> = rules.iter().filter_map(|r| r["name"].as_str().map(str::to_owned)).collect();
    let names: BTreeSet<String> = alert_names().into_iter().collect();
    if loaded != names {
        problems.push(format!("Prometheus loaded the alerts {loaded:?}, alerts.yml has {names:?}"));
    }
    for r in &rules {
        let name = r["name"].as_str().unwrap_or_default();
        if r["health"] != "ok" {
            problems.push(format!("alert {name} does not evaluate: {}", r["lastError"]));
        }
        if r["duration"].as_f64().unwrap_or(0.0) <= 0.0 {
            problems.push(format!("alert {name} has no `for:`"));
        }
        let severity = r["labels"]["severity"].as_str().unwrap_or_default();
        if !["critical", "warning"].contains(&severity) {
            problems.push(format!("alert {name} has severity {severity:?}"));
        }
        for a in ["summary", "description"] {
            if r["annotations"][a].as_str().unwrap_or_default().is_empty() {
                problems.push(format!("alert {name} has no {a}"));
            }
        }
        let runbook = format!("README.md#alert-{}", name.to_lowercase());
        if r["annotations"]["runbook"] != runbook.as_str() {
            problems.push(format!("alert {name}: runbook {} instead of {runbook}", r["annotations"]["runbook"]));
        }
    }
    // A healthy cluster: none of the alerts on a state is even pending.
    let active = prom.api("alerts", &[]).await.expect("alerts");
    for a in active["alerts"].as_array().into_iter().flatten() {
        let name = a["labels"]["alertname"].as_str().unwrap_or_default();
        if matches!(
            name,
            "ChatgwInstanceDown"
                | "ChatgwNotReady"
                | "ChatgwRedisDisconnected"
                | "ChatgwPersistenceErrors"
                | "ChatgwConnectionsNearLimit"
                | "ChatgwFdsNearLimit"
        ) {
            problems.push(format!("{name} is {} on a healthy cluster: {}", a["state"], a["labels"]));
        }
    }

    // Every expression: the dashboard's (as Grafana sends them) and the
    // alert rules' (as Prometheus parsed them).
    let d = dashboard();
    let variables: Vec<&str> =
        d["templating"]["list"].as_array().into_iter().flatten().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(variables, ["datasource", "instance"], "the dashboard's template variables");
    let mut exprs: Vec<(String, String)> =
        dashboard_exprs(&d).into_iter().map(|(title, e)| (format!("panel {title:?}"), substitute(&e))).collect();
    assert!(exprs.len() > 40, "the dashboard has its panels");
    for r in &rules {
        exprs.push((format!("alert {}", r["name"]), r["query"].as_str().expect("rule query").to_owned()));
    }
    let mut names_read: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(def) = v["definition"].as_str() {
            names_read.extend(metric_names(def));
        }
    }

    // (ii) Every expression evaluates.
    let mut empty = Vec::new();
    for (what, e) in &exprs {
        match prom.query(e).await {
            Ok(result) if result.is_empty() && what.starts_with("panel") => empty.push(format!("{what}: {e}")),
            Ok(_) => {}
            Err(err) => problems.push(format!("{what} does not evaluate: {e}\n    {err}")),
        }
    }
    // An alert is silent on a healthy cluster, but what it compares with its
    // threshold must exist: an empty left-hand side (a misspelt name, labels
    // that do not match across a division) means it could never fire.
    for r in &rules {
        let q = r["query"].as_str().unwrap_or_default();
        let Some(lhs) = without_threshold(q) else { continue };
        match prom.query(lhs).await {
            Ok(result) if result.is_empty() => {
                problems.push(format!("alert {} could never fire: {lhs} has no result on a live cluster", r["name"]))
            }
            Ok(_) => {}
            Err(err) => problems.push(format!("alert {}: {lhs} does not evaluate: {err}", r["name"])),
        }
    }
    println!("{} expressions evaluated; panels empty right now (no such events in this run):", exprs.len());
    for e in &empty {
        println!("  {e}");
    }

    // (i) Every metric read has series, on both instances.
    let have = prom
        .query(r#"count by (__name__, instance) ({__name__=~"chatgw_.+|process_.+|up", job="chatgw"})"#)
        .await
        .expect("series query");
    let have: BTreeSet<(String, String)> = have
        .iter()
        .filter_map(|s| {
            Some((s["metric"]["__name__"].as_str()?.to_owned(), s["metric"]["instance"].as_str()?.to_owned()))
        })
        .collect();
    for name in &names_read {
        for t in &targets {
            if !have.contains(&(name.clone(), t.clone())) {
                problems.push(format!("no series of {name} on {t} (read by the dashboard or an alert)"));
            }
        }
    }
    assert!(problems.is_empty(), "{} problems:\n  {}", problems.len(), problems.join("\n  "));

    drop(prom);
    for gw in &mut gws {
        assert!(gw.terminate().await, "clean exit");
    }
}
