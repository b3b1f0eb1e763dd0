//! Credential attacks: forged, expired, not-yet-valid, tampered, revoked and
//! misused tokens and tickets, each tried on REST (`Authorization: Bearer`),
//! on the `/ws` handshake and, for access tokens, in an `auth` frame on an
//! open socket. The documented refusals (protocol/README.md 2.4, 4.7;
//! README "REST API"): 401 `unauthorized`, except a banned or erased user's
//! handshake, which is 403 `forbidden`.
//!
//! Issuer and audience are not used: the gateway verifies only tokens it
//! signed itself, by `kid` (src/auth/jwt.rs), so a token from another issuer
//! fails as "unknown kid" or "wrong secret" below.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chatgw::clock::now_ms;
use chatgw::db::SessionIdentity;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Bystander, refused};
use crate::both_backends;
use crate::helpers::{Db, TestApp, spawn_app, spawn_app_with};
use crate::ws::client::WsClient;

both_backends!(revoked_banned_and_erased_credentials_are_refused, tickets_are_single_use_and_expire);

/// The HS256 secret `helpers::base_vars` configures.
const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

/// The claims of a token, read without verifying.
fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT has a payload");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON claims")
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token).expect("a JWT header").kid.expect("tokens carry a kid")
}

/// A token with the given claims, HS256-signed with `secret` under `kid`.
fn hs256(kid: &str, claims: &Value, secret: &[u8]) -> String {
    let header = Header { kid: Some(kid.to_owned()), ..Header::new(Algorithm::HS256) };
    encode(&header, claims, &EncodingKey::from_secret(secret)).expect("signing")
}

/// Valid claims for `sub`/`sid` with the given times (Unix seconds).
fn claims(sub: &str, sid: &str, iat: i64, exp: i64) -> Value {
    json!({"sub": sub, "sid": sid, "iat": iat, "exp": exp, "jti": "forged"})
}

/// A bad credential is 401 `unauthorized` on REST, on the handshake, and
/// `error unauthorized` in an `auth` frame (the socket stays open).
async fn refused_everywhere(app: &TestApp, owner_socket: &mut WsClient, what: &str, token: &str) {
    let r = app.get(token, "/api/v1/me").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "REST with {what}: {}", r.body);
    assert_eq!(r.error_code(), "unauthorized", "REST with {what}");
    assert_eq!(refused(app, Some(token), None, None).await, (401, "unauthorized".into()), "handshake with {what}");
    if token.len() <= 4096 {
        owner_socket.send(json!({"type": "auth", "id": what, "token": token})).await;
        let f = owner_socket.next_reply().await;
        assert_eq!(
            (f["type"].as_str(), f["code"].as_str()),
            (Some("error"), Some("unauthorized")),
            "auth frame with {what}: {f}"
        );
        assert_eq!(f["id"], what);
    }
    assert!(owner_socket.drain_until_pong().await.is_empty(), "the socket is open after an auth frame with {what}");
}

/// Every way to forge an HS256 access token fails, and nothing else is
/// disturbed. `nbf` in the future and `iat` in the future are refused too
/// (`JwtKeys::verify`): a token from the future is forged or comes from a
/// clock gone wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_access_tokens_are_refused() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let bob = app.register("bob").await;
    let mut ann_ws = WsClient::connect(&app, &ann.access).await;
    let kid = kid_of(&ann.access);
    let real = claims_of(&ann.access);
    let (sub, sid) = (real["sub"].as_str().unwrap(), real["sid"].as_str().unwrap());
    let now = now_ms() / 1000;

    // The control: a token signed with the real secret by the test is good.
    let good = hs256(&kid, &claims(sub, sid, now, now + 600), SECRET.as_bytes());
    assert_eq!(app.get(&good, "/api/v1/me").await.status, StatusCode::OK, "the forging harness is right");

    let mut attacks: Vec<(&str, String)> = Vec::new();
    // alg none, with and without a kid, with an empty or a junk signature.
    let none = |header: Value| format!("{}.{}.", b64(&header), b64(&claims(sub, sid, now, now + 600)));
    attacks.push(("alg none", none(json!({"alg": "none", "typ": "JWT", "kid": kid}))));
    attacks.push(("alg none without kid", none(json!({"alg": "none", "typ": "JWT"}))));
    attacks.push(("alg None", none(json!({"alg": "None", "typ": "JWT", "kid": kid})) + "c2ln"));
    // Another secret under the right kid; an unknown kid; no kid.
    attacks.push((
        "wrong secret",
        hs256(&kid, &claims(sub, sid, now, now + 600), b"another-secret-0123456789-abcdefghij"),
    ));
    attacks.push(("unknown kid", hs256("kid-nobody-has", &claims(sub, sid, now, now + 600), SECRET.as_bytes())));
    let no_kid = encode(
        &Header::new(Algorithm::HS256),
        &claims(sub, sid, now, now + 600),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    attacks.push(("no kid", no_kid));
    // A real token with its signature cut, swapped or flipped.
    let parts: Vec<&str> = ann.access.split('.').collect();
    attacks.push(("no signature", format!("{}.{}.", parts[0], parts[1])));
    attacks.push(("bob's signature", format!("{}.{}.{}", parts[0], parts[1], bob.access.split('.').nth(2).unwrap())));
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    attacks.push(("flipped signature bit", format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig))));
    // Tampered claims, signature kept: become bob; live forever.
    let mut as_bob = real.clone();
    as_bob["sub"] = json!(bob.user_id);
    attacks.push(("sub changed to bob", format!("{}.{}.{}", parts[0], b64(&as_bob), parts[2])));
    let mut forever = real.clone();
    forever["exp"] = json!(4_000_000_000i64);
    attacks.push(("exp extended", format!("{}.{}.{}", parts[0], b64(&forever), parts[2])));
    // Times: expired, not yet valid, issued in the future.
    attacks.push(("expired", hs256(&kid, &claims(sub, sid, now - 1200, now - 600), SECRET.as_bytes())));
    let mut early = claims(sub, sid, now, now + 7200);
    early["nbf"] = json!(now + 3600);
    attacks.push(("nbf in the future", hs256(&kid, &early, SECRET.as_bytes())));
    attacks.push(("iat in the future", hs256(&kid, &claims(sub, sid, now + 3600, now + 7200), SECRET.as_bytes())));
    // Shape: missing claims, junk, oversized.
    attacks.push(("no exp", hs256(&kid, &json!({"sub": sub, "sid": sid, "iat": now, "jti": "x"}), SECRET.as_bytes())));
    attacks.push((
        "no sid",
        hs256(&kid, &json!({"sub": sub, "iat": now, "exp": now + 600, "jti": "x"}), SECRET.as_bytes()),
    ));
    attacks.push(("junk", "not.a.jwt".into()));
    attacks.push(("oversized", format!("{}.{}.{}", parts[0], "A".repeat(8000), parts[2])));

    for (what, token) in &attacks {
        refused_everywhere(&app, &mut ann_ws, what, token).await;
    }
    // Ann's real token and socket are unaffected, and so is everyone else.
    assert_eq!(app.get(&ann.access, "/api/v1/me").await.status, StatusCode::OK);
    ann_ws.send(json!({"type": "auth", "id": "real", "token": ann.access})).await;
    assert_eq!(ann_ws.next_reply().await["type"], "auth_ok");
    bystander.still_fine(&app).await;
}

/// On an RS256 gateway, the classic key confusion (a token HS256-signed
/// with the public key PEM as the secret, under the right kid) and
/// `alg: none` are refused: the algorithm comes from the kid, never from
/// the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_key_confusion_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (private, public) =
        crate::helpers::openssl_keypair(dir.path(), "rsa", &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]);
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.remove("JWT_SECRET");
        v.insert("JWT_ALGORITHM".into(), "RS256".into());
        v.insert("JWT_PRIVATE_KEY_FILE".into(), private.clone());
        v.insert("JWT_PUBLIC_KEY_FILE".into(), public.clone());
        v.insert("JWT_KID".into(), "rsa-1".into());
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let mut ann_ws = WsClient::connect(&app, &ann.access).await;
    let header = jsonwebtoken::decode_header(&ann.access).unwrap();
    assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::RS256, Some("rsa-1")));
    let real = claims_of(&ann.access);
    let now = now_ms() / 1000;
    let c = claims(real["sub"].as_str().unwrap(), real["sid"].as_str().unwrap(), now, now + 600);

    let pem = std::fs::read(&public).unwrap();
    let confused = hs256("rsa-1", &c, &pem);
    refused_everywhere(&app, &mut ann_ws, "HS256 signed with the RSA public key", &confused).await;
    // The same with the PEM's base64 body (no armour, no newlines).
    let body: String = String::from_utf8(pem.clone()).unwrap().lines().filter(|l| !l.starts_with("-----")).collect();
    refused_everywhere(&app, &mut ann_ws, "HS256 signed with the bare key", &hs256("rsa-1", &c, body.as_bytes())).await;
    let none = format!("{}.{}.", b64(&json!({"alg": "none", "kid": "rsa-1"})), b64(&c));
    refused_everywhere(&app, &mut ann_ws, "alg none", &none).await;
    let ps = format!(
        "{}.{}.{}",
        b64(&json!({"alg": "PS256", "kid": "rsa-1"})),
        b64(&c),
        ann.access.split('.').nth(2).unwrap()
    );
    refused_everywhere(&app, &mut ann_ws, "alg PS256 with an RS256 signature", &ps).await;

    assert_eq!(app.get(&ann.access, "/api/v1/me").await.status, StatusCode::OK);
    bystander.still_fine(&app).await;
}

/// A refresh token is not an access token and the reverse; neither is a
/// ticket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_kinds_are_not_interchangeable() {
    let app = spawn_app(Db::Sqlite).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let mut ann_ws = WsClient::connect(&app, &ann.access).await;
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    let ticket = t.body["ticket"].as_str().unwrap().to_owned();

    refused_everywhere(&app, &mut ann_ws, "refresh token as access token", &ann.refresh).await;
    refused_everywhere(&app, &mut ann_ws, "ticket as access token", &ticket).await;
    for (what, as_refresh) in [("access token", &ann.access), ("ticket", &ticket)] {
        let r = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": as_refresh})).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what} as refresh token: {}", r.body);
        assert_eq!(r.error_code(), "unauthorized");
    }
    for (what, as_ticket) in [("access token", &ann.access), ("refresh token", &ann.refresh)] {
        let q: String = url_escape(as_ticket);
        assert_eq!(refused(&app, None, Some(&q), None).await, (401, "unauthorized".into()), "{what} as ticket");
    }
    // None of it spent or broke anything: the ticket and refresh still work.
    let mut c = WsClient::try_connect(&app, None, Some(&ticket), None).await.ok().expect("the ticket still works");
    assert!(c.drain_until_pong().await.is_empty());
    let r = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": ann.refresh})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    bystander.still_fine(&app).await;
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Logged out, banned and erased: the old credentials die everywhere. On
/// REST every one is 401 `unauthorized` (the session is over; README
/// "REST API"); on the handshake, banned and erased are 403 `forbidden`
/// (do not retry) and logged out is 401.
async fn revoked_banned_and_erased_credentials_are_refused(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("ADMIN_TOKEN".into(), crate::operators::ADMIN_TOKEN.into());
    })
    .await;
    let mut bystander = Bystander::new(&app, "bystander").await;

    for (name, how, handshake) in [("lou", "logout", 401), ("ben", "ban", 403), ("era", "erase", 403)] {
        let u = app.register(name).await;
        let t = app.post(Some(&u.access), "/api/v1/auth/ws-ticket", json!({})).await;
        let ticket = t.body["ticket"].as_str().unwrap().to_owned();
        let mut open = WsClient::connect(&app, &u.access).await;
        let r = match how {
            "logout" => app.post(Some(&u.access), "/api/v1/auth/logout", json!({})).await,
            "ban" => {
                let req = app.http.post(app.url(&format!("/api/v1/admin/users/{}/ban", u.user_id)));
                app.send(req.bearer_auth(crate::operators::ADMIN_TOKEN)).await
            }
            _ => app.delete(&u.access, "/api/v1/me").await,
        };
        assert_eq!(r.status, StatusCode::NO_CONTENT, "{how}: {}", r.body);
        // The open socket is closed at once (4001 logout/erasure, 4003 ban).
        let (code, _, _) = open.until_close().await;
        assert_eq!(code, if how == "ban" { 4003 } else { 4001 }, "{how} closes the open socket");

        let rest = app.get(&u.access, "/api/v1/me").await;
        assert_eq!((rest.status, rest.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{how}: REST");
        let code = if handshake == 401 { "unauthorized" } else { "forbidden" };
        assert_eq!(
            refused(&app, Some(&u.access), None, None).await,
            (handshake, code.into()),
            "{how}: bearer handshake"
        );
        // Erasure deletes the account's tickets with its sessions: the
        // ticket is then simply unknown, 401 like any invalid ticket.
        let (t_status, t_code) = if how == "erase" { (401, "unauthorized") } else { (handshake, code) };
        assert_eq!(refused(&app, None, Some(&ticket), None).await, (t_status, t_code.into()), "{how}: earlier ticket");
        let refresh = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": u.refresh})).await;
        assert_eq!(
            (refresh.status, refresh.error_code()),
            (StatusCode::UNAUTHORIZED, "unauthorized"),
            "{how}: refresh"
        );
        if how != "logout" {
            let login = app
                .post(None, "/api/v1/auth/login", json!({"email": u.email, "password": "correct horse battery"}))
                .await;
            assert_eq!((login.status, login.error_code()), (StatusCode::UNAUTHORIZED, "unauthorized"), "{how}: login");
        }
        // A renewal on another user's live socket with the dead token.
        bystander.ws.send(json!({"type": "auth", "id": how, "token": u.access})).await;
        let f = bystander.ws.next().await;
        assert_eq!((f["type"].as_str(), f["code"].as_str()), (Some("error"), Some("unauthorized")), "{f}");
    }
    bystander.still_fine(&app).await;
}

/// A ticket opens one socket, once; a spent or expired ticket is 401; the
/// refusal spends nothing else.
async fn tickets_are_single_use_and_expire(db: Db) {
    let app = spawn_app(db).await;
    let mut bystander = Bystander::new(&app, "bystander").await;
    let ann = app.register("ann").await;
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    let ticket = t.body["ticket"].as_str().unwrap().to_owned();
    let mut first = WsClient::try_connect(&app, None, Some(&ticket), None).await.ok().expect("first use");
    assert_eq!(refused(&app, None, Some(&ticket), None).await, (401, "unauthorized".into()), "reuse");

    // Concurrent reuse of a fresh ticket: exactly one handshake wins.
    let t = app.post(Some(&ann.access), "/api/v1/auth/ws-ticket", json!({})).await;
    let raced = t.body["ticket"].as_str().unwrap().to_owned();
    let attempts =
        futures_util::future::join_all((0..8).map(|_| WsClient::try_connect(&app, None, Some(&raced), None))).await;
    let mut winners = 0;
    for a in attempts {
        match a {
            Ok(_) => winners += 1,
            Err(crate::ws::client::Refused::Http(status, body)) => {
                assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
            }
        }
    }
    assert_eq!(winners, 1, "a ticket opens exactly one socket");

    // An expired ticket (stored as the endpoint stores it, already past its
    // expiry: no waiting) is refused.
    let claims = claims_of(&ann.access);
    let who = SessionIdentity { user_id: ann.user_id.clone(), session_id: claims["sid"].as_str().unwrap().to_owned() };
    let expired = chatgw::auth::tokens::new_token(chatgw::auth::tokens::TICKET_PREFIX);
    app.store.create_ws_ticket(&who, &chatgw::auth::tokens::hash_token(&expired), now_ms() - 1).await.unwrap();
    assert_eq!(refused(&app, None, Some(&expired), None).await, (401, "unauthorized".into()), "expired ticket");
    // Shapes that never reach the database.
    for junk in ["", "wst_", "wst_short", &format!("wst_{}", "A".repeat(5000)), "rt_x%00"] {
        assert_eq!(refused(&app, None, Some(junk), None).await, (401, "unauthorized".into()), "ticket {junk:.20}");
    }
    assert!(first.drain_until_pong().await.is_empty(), "the socket the ticket opened is unaffected");
    bystander.still_fine(&app).await;
}
