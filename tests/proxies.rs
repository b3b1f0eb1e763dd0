//! Trusted proxies (`TRUSTED_PROXIES`): the client address behind them,
//! parsed from `X-Forwarded-For` or `Forwarded`, and the per-IP limits
//! that use it. A forwarding header from anyone else changes nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use chatgw::net::{ForwardedHeader, TrustedProxies};
use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, Resp, TestApp, spawn_app_with};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn trusted(list: &str) -> TrustedProxies {
    TrustedProxies::new(TrustedProxies::parse_list(list).unwrap(), ForwardedHeader::XForwardedFor)
}

fn trusted_forwarded(list: &str) -> TrustedProxies {
    TrustedProxies::new(TrustedProxies::parse_list(list).unwrap(), ForwardedHeader::Forwarded)
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn xff(v: &str) -> HeaderMap {
    headers(&[("x-forwarded-for", v)])
}

const PROXY: &str = "10.0.0.1";

#[test]
fn cidr_lists_take_ipv4_ipv6_and_bare_addresses() {
    let t = trusted("10.0.0.1, fd00::/8, 192.168.0.0/16, ::1");
    assert!(t.contains(ip("10.0.0.1")) && !t.contains(ip("10.0.0.2")), "a bare IPv4 is a /32");
    assert!(t.contains(ip("::1")) && !t.contains(ip("::2")), "a bare IPv6 is a /128");
    assert!(t.contains(ip("fd12:3456::1")) && !t.contains(ip("fe80::1")));
    assert!(t.contains(ip("192.168.44.3")) && !t.contains(ip("192.169.0.1")));
    assert!(t.contains(ip("::ffff:10.0.0.1")), "an IPv4-mapped peer matches its IPv4 entry");
    assert!(TrustedProxies::parse_list("").unwrap().is_empty());
    for bad in ["10.0.0.0/33", "proxy.internal", "10.0.0.0/8,nope", "fd00::/129", "*"] {
        assert!(TrustedProxies::parse_list(bad).is_err(), "{bad} accepted");
    }
}

#[test]
fn nobody_trusted_means_the_peer_whatever_the_headers() {
    let t = TrustedProxies::none();
    let h = headers(&[("x-forwarded-for", "203.0.113.7"), ("forwarded", "for=203.0.113.8")]);
    assert_eq!(t.client_addr(ip("198.51.100.1"), &h), ip("198.51.100.1"));
    // A trusted set that does not hold the peer: the same.
    assert_eq!(trusted("10.0.0.0/8").client_addr(ip("198.51.100.1"), &h), ip("198.51.100.1"));
}

#[test]
fn x_forwarded_for_is_walked_from_the_right_past_trusted_hops() {
    let t = trusted("10.0.0.0/8");
    let peer = ip(PROXY);
    assert_eq!(t.client_addr(peer, &xff("203.0.113.7")), ip("203.0.113.7"));
    // Two proxies: the client is the first untrusted from the right.
    assert_eq!(t.client_addr(peer, &xff("203.0.113.7, 10.0.0.2")), ip("203.0.113.7"));
    // A spoofed left entry (sent by the client, kept by the proxy) is
    // ignored: the proxy appended the real address.
    assert_eq!(t.client_addr(peer, &xff("6.6.6.6, 203.0.113.7")), ip("203.0.113.7"));
    assert_eq!(t.client_addr(peer, &xff("10.9.9.9, 203.0.113.7, 10.0.0.2")), ip("203.0.113.7"));
    // Every hop trusted: the leftmost.
    assert_eq!(t.client_addr(peer, &xff("10.0.0.3, 10.0.0.2")), ip("10.0.0.3"));
    // Several header lines are one list, in order.
    let h = headers(&[("x-forwarded-for", "6.6.6.6"), ("x-forwarded-for", "203.0.113.9, 10.0.0.2")]);
    assert_eq!(t.client_addr(peer, &h), ip("203.0.113.9"));
    // No header: the peer.
    assert_eq!(t.client_addr(peer, &HeaderMap::new()), peer);
}

#[test]
fn x_forwarded_for_takes_ipv6_and_ports() {
    let t = trusted("10.0.0.0/8, fd00::/8");
    assert_eq!(t.client_addr(ip(PROXY), &xff("2001:db8::17")), ip("2001:db8::17"));
    assert_eq!(t.client_addr(ip(PROXY), &xff("[2001:db8::17]:4711")), ip("2001:db8::17"));
    assert_eq!(t.client_addr(ip(PROXY), &xff("[2001:db8::17]")), ip("2001:db8::17"));
    assert_eq!(t.client_addr(ip(PROXY), &xff("203.0.113.7:5555")), ip("203.0.113.7"));
    assert_eq!(t.client_addr(ip("fd00::1"), &xff("2001:db8::17, fd00::2")), ip("2001:db8::17"));
    assert_eq!(t.client_addr(ip(PROXY), &xff("::ffff:203.0.113.7")), ip("203.0.113.7"), "mapped form folded");
}

#[test]
fn malformed_forwarding_falls_back_to_the_peer() {
    let t = trusted("10.0.0.0/8");
    let peer = ip(PROXY);
    for bad in ["garbage", "203.0.113.7, garbage", "", " , ", "203.0.113.7,,", "unknown", "1.2.3.4.5"] {
        assert_eq!(t.client_addr(peer, &xff(bad)), peer, "{bad:?}");
    }
    // Garbage left of the client is never reached: the client stands.
    assert_eq!(t.client_addr(peer, &xff("garbage, 203.0.113.7")), ip("203.0.113.7"));
    // A chain of trusted hops longer than any real one: the peer.
    let long = vec!["10.0.0.2"; 40].join(", ");
    assert_eq!(t.client_addr(peer, &xff(&long)), peer);
    // Not visible ASCII.
    let mut h = HeaderMap::new();
    h.insert("x-forwarded-for", HeaderValue::from_bytes(b"203.0.113.7\xff").unwrap());
    assert_eq!(t.client_addr(peer, &h), peer);
}

#[test]
fn rfc7239_forwarded_is_read_with_quotes_brackets_and_ports() {
    let t = trusted_forwarded("10.0.0.0/8");
    let peer = ip(PROXY);
    let fwd = |v: &str| headers(&[("forwarded", v)]);
    assert_eq!(t.client_addr(peer, &fwd("for=192.0.2.60;proto=http;by=203.0.113.43")), ip("192.0.2.60"));
    assert_eq!(t.client_addr(peer, &fwd("For=\"[2001:db8:cafe::17]:4711\"")), ip("2001:db8:cafe::17"));
    assert_eq!(t.client_addr(peer, &fwd("for=\"192.0.2.60:8080\"")), ip("192.0.2.60"));
    assert_eq!(t.client_addr(peer, &fwd("for=192.0.2.43, for=198.51.100.17;by=10.0.0.1")), ip("198.51.100.17"));
    assert_eq!(t.client_addr(peer, &fwd("for=6.6.6.6, for=192.0.2.43, for=10.0.0.2")), ip("192.0.2.43"));
    assert_eq!(t.client_addr(peer, &fwd("proto=https;for=192.0.2.61")), ip("192.0.2.61"));
    // `unknown`, obfuscated ids, a missing `for`, or garbage on the walk: the peer.
    for bad in [
        "for=unknown",
        "for=_hidden",
        "for=\"_gazonk\"",
        "proto=https",
        "for=192.0.2.1, for=unknown",
        "for=\"192.0.2.1",
        "for=192.0.2.1;for=192.0.2.2",
        "for",
    ] {
        assert_eq!(t.client_addr(peer, &fwd(bad)), peer, "{bad:?}");
    }
}

#[test]
fn only_the_configured_header_is_believed() {
    let peer = ip(PROXY);
    // The proxy writes X-Forwarded-For and passes Forwarded from the client
    // untouched: believing Forwarded would let the client choose.
    let h = headers(&[("forwarded", "for=6.6.6.6"), ("x-forwarded-for", "203.0.113.7")]);
    assert_eq!(trusted("10.0.0.0/8").client_addr(peer, &h), ip("203.0.113.7"));
    assert_eq!(trusted_forwarded("10.0.0.0/8").client_addr(peer, &h), ip("6.6.6.6"));
    assert_eq!(trusted_forwarded("10.0.0.0/8").client_addr(peer, &xff("203.0.113.7")), peer);
}

// ---- Against a running gateway ----------------------------------------

/// A gateway where each source address may register once a minute and
/// log in 4 times a minute, and handshake once a second.
async fn app(db: Db, trusted: Option<&str>) -> TestApp {
    spawn_app_with(db, |v| {
        v.insert("LOGIN_ATTEMPTS_PER_MINUTE".into(), "1".into());
        v.insert("WS_HANDSHAKES_PER_IP_PER_SEC".into(), "1".into());
        if let Some(t) = trusted {
            v.insert("TRUSTED_PROXIES".into(), t.into());
        }
    })
    .await
}

async fn register_from(app: &TestApp, name: &str, from: &str) -> Resp {
    let body =
        json!({"email": format!("{name}@example.com"), "password": "correct horse battery", "display_name": name});
    app.send(app.http.post(app.url("/api/v1/auth/register")).header("x-forwarded-for", from).json(&body)).await
}

/// A failed login (unknown account): spends the address's login budget.
async fn login_from(app: &TestApp, n: usize, from: &str) -> Resp {
    let body = json!({"email": format!("nobody{n}@example.com"), "password": "wrong password"});
    app.send(app.http.post(app.url("/api/v1/auth/login")).header("x-forwarded-for", from).json(&body)).await
}

async fn assert_healthy(app: &TestApp) {
    let r = app.send(app.http.get(app.url("/healthz"))).await;
    assert_eq!(r.status, StatusCode::OK, "gateway unhealthy after the refusals");
}

fn assert_limited(r: &Resp) {
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.error_code(), "rate_limited");
}

/// Behind a trusted proxy (the test client is 127.0.0.1), each forwarded
/// address has its own registration and login budget.
async fn forwarded_addresses_get_their_own_budgets(db: Db) {
    let app = app(db, Some("127.0.0.1/32")).await;
    assert_eq!(register_from(&app, "a1", "203.0.113.1").await.status, StatusCode::CREATED);
    assert_limited(&register_from(&app, "a2", "203.0.113.1").await);
    // Another client behind the same proxy is unaffected.
    assert_eq!(register_from(&app, "b1", "203.0.113.2").await.status, StatusCode::CREATED);
    // A spoofed left entry does not buy a fresh budget: the proxy's
    // appended address (the right one) counts.
    assert_limited(&register_from(&app, "a3", "6.6.6.6, 203.0.113.1").await);

    for n in 0..4 {
        assert_eq!(login_from(&app, n, "203.0.113.1").await.status, StatusCode::UNAUTHORIZED);
    }
    assert_limited(&login_from(&app, 4, "203.0.113.1").await);
    assert_eq!(login_from(&app, 5, "203.0.113.2").await.status, StatusCode::UNAUTHORIZED, "another client throttled");
    assert_healthy(&app).await;
}

/// From an untrusted peer a forwarding header changes nothing: every
/// request counts against the peer's budget, whatever it claims.
async fn spoofed_headers_from_untrusted_peers_change_nothing(db: Db) {
    // Nobody trusted, and a trusted set that does not hold 127.0.0.1.
    for trusted in [None, Some("10.0.0.0/8, fd00::/8")] {
        let app = app(db, trusted).await;
        assert_eq!(register_from(&app, "a1", "203.0.113.1").await.status, StatusCode::CREATED);
        assert_limited(&register_from(&app, "a2", "203.0.113.2").await);
        let r = app
            .send(
                app.http.post(app.url("/api/v1/auth/register")).header("forwarded", "for=203.0.113.3").json(
                    &json!({"email": "a3@example.com", "password": "correct horse battery", "display_name": "a3"}),
                ),
            )
            .await;
        assert_limited(&r);

        for n in 0..4 {
            let from = format!("203.0.113.{}", 10 + n);
            assert_eq!(login_from(&app, n, &from).await.status, StatusCode::UNAUTHORIZED);
        }
        assert_limited(&login_from(&app, 4, "203.0.113.99").await);
        assert_healthy(&app).await;
    }
}

/// A handshake attempt without credentials: 401 once past the per-IP
/// limit, 429 when that is spent.
async fn handshake_from(app: &TestApp, from: &str) -> Resp {
    app.send(app.http.get(app.url("/ws")).header("x-forwarded-for", from)).await
}

/// Sends handshakes from `from` until one is refused for rate (the budget
/// is one a second, so back-to-back attempts reach it), and returns when
/// that refusal arrived.
async fn spend_handshakes(app: &TestApp, from: &str) -> Instant {
    for _ in 0..50 {
        let r = handshake_from(app, from).await;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.error_code(), "rate_limited");
            return Instant::now();
        }
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.body);
    }
    panic!("the handshake limit never refused {from}");
}

async fn handshake_limit_follows_the_forwarded_client(db: Db) {
    let app = app(db, Some("127.0.0.1")).await;
    spend_handshakes(&app, "203.0.113.1").await;
    // Another forwarded client has its own budget, however soon it comes.
    let r = handshake_from(&app, "203.0.113.2").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "throttled with another client's budget: {}", r.body);
    assert_healthy(&app).await;
}

async fn handshake_limit_ignores_spoofed_headers(db: Db) {
    let app = app(db, None).await;
    // The budget refills after a second: the check is meaningful only when
    // the spoofed attempt follows the refusal within it, so a round where
    // the machine stalled that long is tried again.
    for _ in 0..5 {
        let refused_at = spend_handshakes(&app, "203.0.113.1").await;
        let r = handshake_from(&app, "203.0.113.2").await;
        if refused_at.elapsed() >= Duration::from_millis(500) {
            continue;
        }
        assert_limited(&r);
        assert_healthy(&app).await;
        return;
    }
    panic!("no round fit in the limiter's one-second window");
}

both_backends!(
    forwarded_addresses_get_their_own_budgets,
    spoofed_headers_from_untrusted_peers_change_nothing,
    handshake_limit_follows_the_forwarded_client,
    handshake_limit_ignores_spoofed_headers,
);

/// The real binary's JSON log lines name the client behind a trusted proxy
/// (request spans, a socket's span, a refused handshake), and the peer
/// when the proxy is not trusted; a spoofed left entry never shows.
#[test]
fn logs_name_the_forwarded_client_only_behind_a_trusted_proxy() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    for trust in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgw"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .current_dir(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if trust {
            cmd.env("TRUSTED_PROXIES", "127.0.0.1");
        }
        let mut child = cmd.spawn().expect("spawn gateway");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("chatgw listening on ") {
                    let _ = tx.send(url.to_owned());
                }
                lines.push(line);
            }
            lines
        });
        let url = rx.recv_timeout(Duration::from_secs(60)).expect("gateway printed its URL");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let c = reqwest::Client::new();
            let r = c
                .post(format!("{url}/api/v1/auth/register"))
                .header("x-forwarded-for", "6.6.6.6, 203.0.113.77")
                .json(&json!({"email": "sam@example.com", "password": "correct horse battery", "display_name": "Sam"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
            let access = r.json::<serde_json::Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
            let ws_url = url.replace("http://", "ws://") + "/ws";
            let mut req =
                tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(ws_url.as_str())
                    .unwrap();
            req.headers_mut().insert("authorization", format!("Bearer {access}").parse().unwrap());
            req.headers_mut().insert("x-forwarded-for", "203.0.113.78".parse().unwrap());
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("socket");
            use futures_util::StreamExt;
            // The hello frame: the socket's span has logged `connected`.
            ws.next().await.expect("hello").expect("hello frame");
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
            let r = c.get(format!("{url}/ws")).header("x-forwarded-for", "203.0.113.79").send().await.unwrap();
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        });
        let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
        assert!(child.wait().unwrap().success(), "clean exit");
        let lines = reader.join().unwrap();
        let events: Vec<serde_json::Value> =
            lines.iter().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect();
        let msg = |e: &serde_json::Value| e["fields"]["message"].as_str().unwrap_or_default().to_owned();
        let (register, socket, refused) = if trust {
            ("203.0.113.77", "203.0.113.78", "203.0.113.79")
        } else {
            ("127.0.0.1", "127.0.0.1", "127.0.0.1")
        };
        assert!(
            events.iter().any(|e| e["span"]["path"] == "/api/v1/auth/register" && e["span"]["client"] == register),
            "a request line with client {register}"
        );
        let connected: Vec<_> = events.iter().filter(|e| msg(e) == "connected").collect();
        assert_eq!(connected.len(), 1);
        assert_eq!(connected[0]["span"]["client"], socket, "{}", connected[0]);
        let refusal = events.iter().find(|e| msg(e) == "handshake refused").expect("a refused handshake line");
        assert_eq!(refusal["fields"]["client"], refused, "{refusal}");
        assert!(lines.iter().all(|l| !l.contains("6.6.6.6")), "a spoofed entry reached the logs");
        if !trust {
            assert!(lines.iter().all(|l| !l.contains("203.0.113.")), "an untrusted header reached the logs");
        }
    }
}
