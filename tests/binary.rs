//! The real binary: it starts with no variables at all, and refuses weak
//! configuration with one line naming the variable.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn gateway() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_chatgw"));
    c.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn production_refuses_weak_or_missing_secrets() {
    for secret in [None, Some("tiny1"), Some("changeme-changeme-changeme-changeme"), Some("your-256-bit-secret")] {
        let mut c = gateway();
        c.env("APP_ENV", "production").env("LISTEN_ADDR", "127.0.0.1:0");
        if let Some(s) = secret {
            c.env("JWT_SECRET", s);
        }
        let out = c.output().expect("run gateway");
        assert!(!out.status.success(), "started with {secret:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains("JWT_SECRET"), "{err}");
        if let Some(s) = secret {
            assert!(!err.contains(s), "the secret is not echoed");
        }
    }
    let out = gateway().env("LISTEN_ADDR", "not-an-address").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("LISTEN_ADDR"));
}

/// `cargo run` with nothing set: development mode, SQLite under ./data, the
/// URL printed, and the API answering on it.
#[test]
fn starts_with_no_variables_on_sqlite_and_prints_its_url() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = gateway()
        .current_dir(dir.path())
        // The default port may be busy on a test machine; everything else
        // is the default.
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn gateway");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let lines = log.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("chatgw listening on ") {
                let _ = tx.send(url.to_owned());
            }
            lines.lock().unwrap().push(line);
        }
    });
    let url = rx.recv_timeout(Duration::from_secs(60)).expect("gateway printed its URL");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(async { reqwest::get(format!("{url}/readyz")).await.map(|r| r.status()) });
    let demo = rt.block_on(async { reqwest::get(format!("{url}/demo/")).await.map(|r| r.status()) });
    // A REST flow whose secrets must not reach the logs.
    let secrets = rt.block_on(async {
        let c = reqwest::Client::new();
        let post = |path: &str, token: Option<&str>, body: serde_json::Value| {
            let mut req = c.post(format!("{url}{path}")).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move { req.send().await.unwrap().json::<serde_json::Value>().await.unwrap() }
        };
        let r = post(
            "/api/v1/auth/register",
            None,
            serde_json::json!({"email": "Secret.Person@example.com", "password": "hunter2-hunter2", "display_name": "Sam"}),
        )
        .await;
        let access = r["access_token"].as_str().unwrap().to_owned();
        let refresh = r["refresh_token"].as_str().unwrap().to_owned();
        c.get(format!("{url}/api/v1/me")).bearer_auth(&access).send().await.unwrap();
        c.post(format!("{url}/api/v1/auth/refresh")).json(&serde_json::json!({"refresh_token": refresh})).send().await.unwrap();
        let t: serde_json::Value = c.post(format!("{url}/api/v1/auth/ws-ticket")).bearer_auth(&access).send().await.unwrap().json().await.unwrap();
        let ticket = t["ticket"].as_str().unwrap().to_owned();
        c.get(format!("{url}/ws?ticket={ticket}")).send().await.unwrap();
        // A socket that lives, sends a message with a private body, and
        // closes; and a refused handshake.
        let room = post("/api/v1/rooms", Some(&access), serde_json::json!({"name": "logs"})).await;
        let room = room["id"].as_str().unwrap().to_owned();
        let ws_url = url.replace("http://", "ws://") + "/ws";
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url.as_str()).unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {access}").parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("socket");
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let frames = [
            serde_json::json!({"type": "join", "room": room}),
            serde_json::json!({"type": "send", "room": room, "client_msg_id": "c1", "body": "the-private-body-1234"}),
        ];
        for f in frames {
            ws.send(Message::text(f.to_string())).await.unwrap();
        }
        // hello, joined, ack and the message itself.
        let mut got = 0;
        while got < 4 {
            if let Some(Ok(Message::Text(_))) = ws.next().await {
                got += 1;
            }
        }
        use tokio_tungstenite::tungstenite::protocol::{CloseFrame, frame::coding::CloseCode};
        ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: "".into() })).await.unwrap();
        while ws.next().await.is_some() {}
        let mut bad = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url.as_str()).unwrap();
        bad.headers_mut().insert("authorization", "Bearer not-a-token".parse().unwrap());
        assert!(tokio_tungstenite::connect_async(bad).await.is_err());
        vec![
            "Secret.Person@example.com".to_lowercase(),
            "hunter2-hunter2".into(),
            access,
            refresh,
            ticket,
            "the-private-body-1234".into(),
            "not-a-token".into(),
        ]
    });
    // SIGTERM: a clean, prompt exit.
    unsafe_kill_term(child.id());
    let exit = child.wait().unwrap();
    reader.join().unwrap();
    assert_eq!(status.unwrap(), reqwest::StatusCode::OK);
    let log = log.lock().unwrap();
    // Development serves the browser demo, and says where.
    assert!(log.iter().any(|l| l.starts_with(&format!("demo on {url}/demo/"))), "demo URL printed: {log:?}");
    assert_eq!(demo.unwrap(), reqwest::StatusCode::OK);
    assert!(log.iter().any(|l| l.contains("\"request_id\"")), "JSON logs with request ids");
    let events: Vec<serde_json::Value> = log
        .iter()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
        .collect();
    for e in &events {
        for key in ["timestamp", "level", "target"] {
            assert!(e.get(key).is_some(), "{key} in every line: {e}");
        }
    }
    // The socket's life: one line when it opens and one when it closes,
    // both in its span (connection id and user id), the close with its
    // code, duration and frame counts; the refusal with its outcome.
    let msg = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or_default().to_owned();
    let connected: Vec<_> = events.iter().filter(|e| msg(e) == "connected").collect();
    assert_eq!(connected.len(), 1, "one connected line");
    assert!(
        connected[0]["span"]["conn_id"].is_u64() && connected[0]["span"]["user_id"].is_string(),
        "{}",
        connected[0]
    );
    let closed: Vec<_> = events.iter().filter(|e| msg(e) == "closed").collect();
    assert_eq!(closed.len(), 1, "one closed line");
    let f = &closed[0]["fields"];
    assert_eq!(closed[0]["span"]["conn_id"], connected[0]["span"]["conn_id"]);
    assert_eq!((f["by"].as_str(), f["code"].as_u64()), (Some("peer"), Some(1000)), "{}", closed[0]);
    assert_eq!((f["frames_in"].as_u64(), f["frames_out"].as_u64()), (Some(2), Some(4)), "{}", closed[0]);
    assert!(f["duration_ms"].is_u64());
    let refused: Vec<_> = events.iter().filter(|e| msg(e) == "handshake refused").collect();
    assert!(refused.iter().any(|e| e["fields"]["outcome"] == "unauthorized"), "a refused handshake line");
    for line in log.iter().filter(|l| l.starts_with('{')) {
        let lower = line.to_lowercase();
        for s in &secrets {
            assert!(!lower.contains(&s.to_lowercase()), "a secret reached the logs: {line}");
        }
    }
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    assert!(dir.path().join("data/chatgw.db").exists(), "SQLite file under ./data");
}

fn unsafe_kill_term(pid: u32) {
    let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
}

/// A SIGTERM sent the moment the URL appears drains and exits cleanly: the
/// handler is in place before the URL is printed.
#[test]
fn sigterm_as_soon_as_the_url_is_printed_exits_cleanly() {
    for _ in 0..3 {
        let dir = tempfile::tempdir().unwrap();
        let mut child = gateway()
            .current_dir(dir.path())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn gateway");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.map_while(Result::ok) {
            if line.starts_with("chatgw listening on ") {
                unsafe_kill_term(child.id());
                break;
            }
        }
        let exit = child.wait().unwrap();
        assert!(exit.success(), "clean exit: {exit:?}");
    }
}
