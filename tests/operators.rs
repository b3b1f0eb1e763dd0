//! What operators see: the delivery path measured in `/metrics`, and the
//! live admin view (stats, a user's sockets across instances, disconnect),
//! through the API and through `chatgw admin`.

use std::collections::HashMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Db, TestApp, eventually, spawn_app_with, spawn_cluster};
use crate::ws::client::WsClient;

pub const ADMIN_TOKEN: &str = "admin-token-0123456789-abcdefghijklmnop";

/// Every sample of `/metrics` as (series with labels, value).
pub async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let addr = app.metrics_addr.expect("a metrics listener");
    let text = app.http.get(format!("http://{addr}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().unwrap_or(f64::NAN)))
        .collect()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    *m.get(key).unwrap_or_else(|| panic!("no series {key}"))
}

/// Sends, fan-out and the socket's own frames show up in the histograms
/// and counters, exactly as many times as they happened; no series carries
/// a user or room id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_measure_the_delivery_path_without_ids_in_labels() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("WS_SEND_PER_SEC".into(), "1000".into());
        v.insert("WS_SEND_BURST".into(), "1000".into());
    })
    .await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let cat = app.register("cat").await;
    let room = app.create_room(&ann, "general", &[&bob, &cat]).await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    let mut b = WsClient::connect(&app, &bob.access).await;
    let mut c = WsClient::connect(&app, &cat.access).await;
    for w in [&mut a, &mut b, &mut c] {
        w.join(&room, None).await;
    }
    const N: usize = 20;
    for i in 0..N {
        a.send_msg(&room, &format!("m-{i}"), "hello").await;
    }
    for w in [&mut a, &mut b, &mut c] {
        let mut seen = 0;
        while seen < N {
            if w.next().await["type"] == "message" {
                seen += 1;
            }
        }
    }
    let m = scrape(&app).await;
    assert_eq!(get(&m, "chatgw_ready"), 1.0);
    assert_eq!(get(&m, "chatgw_hub_rooms"), 1.0);
    assert_eq!(get(&m, "chatgw_presence_entries"), 3.0);
    assert_eq!(get(&m, r#"chatgw_ws_frames_received_total{type="send"}"#), N as f64);
    assert_eq!(get(&m, r#"chatgw_ws_frames_received_total{type="join"}"#), 3.0);
    assert_eq!(get(&m, r#"chatgw_ws_frames_sent_total{type="joined"}"#), 3.0);
    assert_eq!(get(&m, r#"chatgw_ws_frames_sent_total{type="hello"}"#), 3.0);
    assert_eq!(get(&m, r#"chatgw_ws_frames_sent_total{type="message"}"#), (3 * N) as f64);
    assert_eq!(get(&m, "chatgw_ws_messages_stored_total"), N as f64);
    assert_eq!(get(&m, "chatgw_message_persist_seconds_count"), N as f64);
    assert_eq!(get(&m, "chatgw_ws_outbound_queue_depth_count"), N as f64, "one sample per fan-out");
    assert!(get(&m, "chatgw_http_request_duration_seconds_count{method=\"POST\",route=\"/api/v1/rooms\"}") >= 1.0);
    assert!(m.keys().any(|k| k.starts_with("chatgw_db_pool_connections{pool=\"write\",state=\"idle\"}")));
    assert!(
        m.keys().any(|k| k.starts_with("chatgw_build_info{") && !k.contains("commit=\"\"")),
        "build info with a commit"
    );
    // Fan-out latency is folded per connection: all of it once they end.
    for w in [a, b, c] {
        w.close().await;
    }
    let folded = eventually(Duration::from_secs(10), || async {
        let m = scrape(&app).await;
        let n = get(&m, "chatgw_message_fanout_seconds_count");
        (n == (3 * N) as f64).then_some(m)
    })
    .await;
    assert!(get(&folded, "chatgw_message_fanout_seconds_sum") > 0.0);
    let inf = get(&folded, r#"chatgw_message_fanout_seconds_bucket{le="+Inf"}"#);
    assert_eq!(inf, (3 * N) as f64);
    // Bounded labels: no id of a user, room or session anywhere.
    for key in folded.keys() {
        for id in [&ann.user_id, &bob.user_id, &cat.user_id, &room] {
            assert!(!key.contains(id.as_str()), "an id in a label: {key}");
        }
    }
    // The public listener does not serve metrics.
    let public = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(public.status(), StatusCode::NOT_FOUND);
}

/// Rate-limited frames are counted by budget.
#[tokio::test]
async fn rate_limited_frames_are_counted_by_budget() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("WS_EVENTS_PER_SEC".into(), "1".into());
        v.insert("WS_EVENTS_BURST".into(), "2".into());
    })
    .await;
    let ann = app.register("ann").await;
    let mut a = WsClient::connect(&app, &ann.access).await;
    for i in 0..5 {
        a.send(json!({"type": "ping", "id": i})).await;
    }
    let mut limited = 0;
    for _ in 0..5 {
        let f = a.next().await;
        if f["type"] == "error" && f["code"] == "rate_limited" {
            limited += 1;
        }
    }
    assert!(limited >= 2, "the burst is 2");
    let m = scrape(&app).await;
    assert_eq!(get(&m, r#"chatgw_ws_rate_limited_total{kind="event"}"#), limited as f64);
    assert_eq!(get(&m, r#"chatgw_ws_rate_limited_total{kind="send"}"#), 0.0);
    assert_eq!(get(&m, r#"chatgw_ws_errors_total{code="rate_limited"}"#), limited as f64);
}

async fn admin(app: &TestApp, method: reqwest::Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut req = app.http.request(method, app.url(path)).bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// An operator sees a user's sockets on both instances from either one,
/// and disconnects all of them with a code and reason of their choosing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_sees_and_disconnects_a_user_across_instances() {
    let apps = spawn_cluster(Db::Sqlite, 2).await;
    let (a, b) = (&apps[0], &apps[1]);
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let room = a.create_room(&ann, "ops", &[&bob]).await;
    let mut on_a = WsClient::connect(a, &ann.access).await;
    on_a.join(&room, None).await;
    let on_b = WsClient::connect(b, &ann.access).await;
    let mut bob_ws = WsClient::connect(b, &bob.access).await;
    bob_ws.join(&room, None).await;

    // Stats of the instance asked.
    let (s, stats) = admin(a, reqwest::Method::GET, "/api/v1/admin/stats", None).await;
    assert_eq!(s, StatusCode::OK, "{stats}");
    assert_eq!(stats["hub"]["connections"], 1);
    assert_eq!(stats["hub"]["rooms"], 1);
    assert_eq!(stats["ready"], true);
    assert_eq!(stats["database"]["backend"], "sqlite");
    assert_eq!(stats["bus"]["up"], true);
    assert!(stats["instance"].as_str().unwrap().ends_with(&format!(":{}", a.addr.port())));

    // Ann's sockets, from instance b: both instances answer.
    let path = format!("/api/v1/admin/users/{}/connections", ann.user_id);
    let (s, conns) = admin(b, reqwest::Method::GET, &path, None).await;
    assert_eq!(s, StatusCode::OK, "{conns}");
    assert_eq!(conns["instances"].as_array().unwrap().len(), 2, "{conns}");
    let list = conns["connections"].as_array().unwrap();
    assert_eq!(list.len(), 2, "{conns}");
    let with_room: Vec<&Value> = list.iter().filter(|c| c["rooms"] == json!([room])).collect();
    assert_eq!(with_room.len(), 1, "the socket on a joined the room: {conns}");
    assert!(with_room[0]["instance"].as_str().unwrap().ends_with(&format!(":{}", a.addr.port())));

    // Refusals: no token, a bad code, an overlong reason.
    let no_token = a.http.get(a.url("/api/v1/admin/stats")).send().await.unwrap();
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
    let dpath = format!("/api/v1/admin/users/{}/disconnect", ann.user_id);
    let (s, e) = admin(a, reqwest::Method::POST, &dpath, Some(json!({"code": 1011}))).await;
    assert_eq!((s, e["error"]["code"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    let (s, _) = admin(a, reqwest::Method::POST, &dpath, Some(json!({"reason": "x".repeat(121)}))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);

    // Disconnect from instance a: both of Ann's sockets close with the
    // code and reason; Bob's stays.
    let (s, d) =
        admin(a, reqwest::Method::POST, &dpath, Some(json!({"code": 4000, "reason": "maintenance on your account"})))
            .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{d}");
    assert_eq!(d["closed_here"], 1);
    for mut ws in [on_a, on_b] {
        let (code, reason, _) = ws.until_close().await;
        assert_eq!((code, reason.as_str()), (4000, "maintenance on your account"));
    }
    bob_ws.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(bob_ws.next_of("pong").await["id"], 1);
    let gone = eventually(Duration::from_secs(5), || async {
        let (_, c) = admin(a, reqwest::Method::GET, &path, None).await;
        c["connections"].as_array().is_some_and(|l| l.is_empty()).then_some(c)
    })
    .await;
    assert_eq!(gone["instances"].as_array().unwrap().len(), 2);
}

/// `chatgw admin` prints the same answers without curl.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_subcommands_call_the_api() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("ADMIN_TOKEN".into(), ADMIN_TOKEN.into());
    })
    .await;
    let ann = app.register("ann").await;
    let ws = WsClient::connect(&app, &ann.access).await;
    let run = |args: Vec<String>, token: Option<&'static str>| {
        let base = app.base.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_chatgw"));
            cmd.arg("admin").arg("--url").arg(base).args(args).env_remove("ADMIN_TOKEN");
            if let Some(t) = token {
                cmd.env("ADMIN_TOKEN", t);
            }
            cmd.output().expect("run chatgw admin")
        })
    };
    let out = run(vec!["stats".into()], Some(ADMIN_TOKEN)).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(stats["hub"]["connections"], 1);

    let out = run(vec!["connections".into(), ann.user_id.clone()], Some(ADMIN_TOKEN)).await.unwrap();
    let conns: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(conns["connections"].as_array().unwrap().len(), 1);

    let out = run(vec!["stats".into()], Some("wrong-token-0123456789-0123456789")).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(vec!["stats".into()], None).await.unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ADMIN_TOKEN"));

    let args = vec!["disconnect".into(), ann.user_id.clone(), "--reason".into(), "bye".into()];
    let out = run(args, Some(ADMIN_TOKEN)).await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut ws = ws;
    let (code, reason, _) = ws.until_close().await;
    assert_eq!((code, reason.as_str()), (4000, "bye"));
}
