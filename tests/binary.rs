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

/// Every line the binary writes, stdout's and stderr's, read by one thread
/// per stream; the first `chatgw listening on` URL is sent on `url`.
struct Output {
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Output {
    fn capture(child: &mut std::process::Child, url: std::sync::mpsc::Sender<String>) -> Output {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        let readers = [(stdout, Some(url)), (stderr, None)]
            .into_iter()
            .map(|(stream, url)| {
                let lines = lines.clone();
                std::thread::spawn(move || {
                    for line in BufReader::new(stream).lines().map_while(Result::ok) {
                        if let (Some(tx), Some(u)) = (&url, line.strip_prefix("chatgw listening on ")) {
                            let _ = tx.send(u.to_owned());
                        }
                        lines.lock().unwrap().push(line);
                    }
                })
            })
            .collect();
        Output { lines, readers }
    }

    /// All lines, once the process has exited and both streams ended.
    fn finish(self) -> Vec<String> {
        for r in self.readers {
            r.join().unwrap();
        }
        std::mem::take(&mut *self.lines.lock().unwrap())
    }
}

/// The forms a secret takes in a log line: as sent (any case), hex (how
/// tungstenite prints frame payloads at trace) and percent-encoded (as in
/// a URL).
fn forms(secret: &str) -> Vec<String> {
    let hex: String = secret.bytes().map(|b| format!("{b:02x}")).collect();
    let pct: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02x}"),
        })
        .collect();
    vec![secret.to_lowercase(), hex, pct.to_lowercase()]
}

/// At the most verbose filter (`RUST_LOG=trace`), every line the binary
/// writes, to stdout or stderr, JSON or not, is free of every secret that
/// crossed the wire: passwords (right and wrong), access tokens, refresh
/// tokens (first and rotated), a ticket used in a real handshake, a token
/// renewed over the socket, the email address and a message body; through
/// register, a failed login, a login, two refreshes, a ticket, a ticketed
/// socket that joins, sends, renews and closes, and refused handshakes.
#[test]
fn no_secret_reaches_stdout_or_stderr_at_trace() {
    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let dir = tempfile::tempdir().unwrap();
    let mut child = gateway()
        .current_dir(dir.path())
        .env("LISTEN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn gateway");
    let (tx, rx) = std::sync::mpsc::channel();
    let output = Output::capture(&mut child, tx);
    let url = rx.recv_timeout(Duration::from_secs(60)).expect("gateway printed its URL");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (email, password, wrong) = ("Secret.Person@example.com", "hunter2-hunter2", "wrong-horse-battery-7");
    let secrets = rt.block_on(async {
        let c = reqwest::Client::new();
        let call = |path: &str, token: Option<&str>, body: Value| {
            let mut req = c.post(format!("{url}{path}")).json(&body);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            async move {
                let r = req.send().await.unwrap();
                (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
            }
        };
        let field = |v: &Value, k: &str| v[k].as_str().unwrap_or_else(|| panic!("{k} in {v}")).to_owned();
        let mut secrets = vec![email.to_owned(), password.to_owned(), wrong.to_owned()];
        let (status, r) =
            call("/api/v1/auth/register", None, json!({"email": email, "password": password, "display_name": "Sam"}))
                .await;
        assert_eq!(status, 201, "{r}");
        let (access, first_refresh) = (field(&r, "access_token"), field(&r, "refresh_token"));
        let (status, r) = call("/api/v1/auth/login", None, json!({"email": email, "password": wrong})).await;
        assert_eq!(status, 401, "a failed login: {r}");
        let (status, r) = call("/api/v1/auth/login", None, json!({"email": email, "password": password})).await;
        assert_eq!(status, 200, "a login: {r}");
        secrets.extend([access.clone(), first_refresh.clone(), field(&r, "access_token"), field(&r, "refresh_token")]);
        // Two rotations: the first refresh token, then the one it gave.
        let (mut refresh, mut renewal) = (first_refresh, String::new());
        for _ in 0..2 {
            let (status, r) = call("/api/v1/auth/refresh", None, json!({"refresh_token": refresh})).await;
            assert_eq!(status, 200, "a refresh: {r}");
            (refresh, renewal) = (field(&r, "refresh_token"), field(&r, "access_token"));
            secrets.extend([renewal.clone(), refresh.clone()]);
        }
        let me = c.get(format!("{url}/api/v1/me")).bearer_auth(&access).send().await.unwrap();
        assert_eq!(me.status(), 200);
        let (status, room) = call("/api/v1/rooms", Some(&access), json!({"name": "logs"})).await;
        assert_eq!(status, 201, "{room}");
        let room = field(&room, "id");
        let (status, t) = call("/api/v1/auth/ws-ticket", Some(&access), json!({})).await;
        assert_eq!(status, 201, "{t}");
        let ticket = field(&t, "ticket");
        secrets.push(ticket.clone());
        // A real ticketed socket: join, send a private body, renew the
        // token over the socket, close.
        let ws_url = url.replace("http://", "ws://") + "/ws";
        let (mut ws, _) =
            tokio_tungstenite::connect_async(format!("{ws_url}?ticket={ticket}")).await.expect("ticketed socket");
        let body = "the-private-body-1234";
        secrets.push(body.to_owned());
        for f in [
            json!({"type": "join", "id": "j", "room": room}),
            json!({"type": "send", "id": "s", "room": room, "client_msg_id": "c1", "body": body}),
            json!({"type": "auth", "id": "a", "token": renewal}),
        ] {
            ws.send(Message::text(f.to_string())).await.unwrap();
        }
        let mut seen = Vec::new();
        while !seen.contains(&"auth_ok".to_owned()) || !seen.contains(&"message".to_owned()) {
            let msg = tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("frames");
            if let Some(Ok(Message::Text(t))) = msg {
                let f: Value = serde_json::from_str(&t).unwrap();
                assert_ne!(f["type"], "error", "{f}");
                seen.push(f["type"].as_str().unwrap().to_owned());
            }
        }
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
        // Refused: the spent ticket, and a bearer that is no token.
        assert!(tokio_tungstenite::connect_async(format!("{ws_url}?ticket={ticket}")).await.is_err());
        let bogus = "not-a-token-5f3a9c";
        secrets.push(bogus.to_owned());
        let mut bad = ws_url.as_str().into_client_request().unwrap();
        bad.headers_mut().insert("authorization", format!("Bearer {bogus}").parse().unwrap());
        assert!(tokio_tungstenite::connect_async(bad).await.is_err());
        secrets
    });
    unsafe_kill_term(child.id());
    let exit = child.wait().unwrap();
    let lines = output.finish();
    assert!(exit.success(), "clean exit on SIGTERM: {exit:?}");
    // Trace was on: the most verbose lines are there to be scanned.
    assert!(lines.iter().any(|l| l.contains("\"level\":\"TRACE\"")), "trace lines logged");
    assert!(lines.iter().any(|l| l.contains("\"message\":\"connected\"")), "the socket was logged");
    // Every leak, not just the first: the fix needs to see them all.
    let mut leaks = Vec::new();
    for line in &lines {
        let lower = line.to_lowercase();
        for secret in &secrets {
            if let Some(form) = forms(secret).into_iter().find(|f| lower.contains(f)) {
                leaks.push(format!("{secret:.12}… (as {form:.16}…) in {line:.300}"));
            }
        }
    }
    assert!(leaks.is_empty(), "{} secrets reached the output:\n{}", leaks.len(), leaks.join("\n"));
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
