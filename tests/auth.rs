//! Register, login, refresh rotation and reuse detection, logout, tickets.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, TestApp, spawn_app, spawn_app_with};

both_backends!(
    full_auth_flow,
    refresh_reuse_revokes_the_family,
    login_never_reveals_whether_an_email_exists,
    login_is_throttled_per_account,
    tickets_are_issued_hashed,
    a_lost_refresh_answer_is_retried_within_the_grace,
    a_retry_after_the_grace_is_reuse,
    a_retry_after_the_successor_was_used_is_reuse
);

async fn full_auth_flow(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;

    // Case-insensitive email uniqueness.
    let dup = app
        .post(
            None,
            "/api/v1/auth/register",
            json!({"email": "ANN@Example.com", "password": "another password", "display_name": "x"}),
        )
        .await;
    assert_eq!(dup.status, StatusCode::CONFLICT);
    assert_eq!(dup.error_code(), "conflict");

    let me = app.get(&ann.access, "/api/v1/me").await;
    assert_eq!(me.status, StatusCode::OK);
    assert_eq!(me.body["id"], ann.user_id.as_str());

    // Login with any case.
    let login = app
        .post(None, "/api/v1/auth/login", json!({"email": "Ann@EXAMPLE.com", "password": "correct horse battery"}))
        .await;
    assert_eq!(login.status, StatusCode::OK, "{}", login.body);
    assert_eq!(login.body["user"]["id"], ann.user_id.as_str());
    assert_eq!(login.body["expires_in"], 900);
    assert!(login.headers["cache-control"].to_str().unwrap().contains("no-store"));

    // Refresh rotates: a new refresh token, a working access token.
    let r1 = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": ann.refresh})).await;
    assert_eq!(r1.status, StatusCode::OK, "{}", r1.body);
    let access2 = r1.body["access_token"].as_str().unwrap().to_owned();
    let refresh2 = r1.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, ann.refresh);
    assert_eq!(app.get(&access2, "/api/v1/me").await.status, StatusCode::OK);

    // Logout ends the session: its access and refresh tokens stop working,
    // another session (the login above) keeps working.
    let out = app.post(Some(&access2), "/api/v1/auth/logout", json!({})).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    let after = app.get(&access2, "/api/v1/me").await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert_eq!(after.error_code(), "unauthorized");
    assert_eq!(
        app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": refresh2})).await.status,
        StatusCode::UNAUTHORIZED
    );
    let other = login.body["access_token"].as_str().unwrap();
    assert_eq!(app.get(other, "/api/v1/me").await.status, StatusCode::OK);

    // No token, junk token, wrong scheme.
    assert_eq!(app.send(app.http.get(app.url("/api/v1/me"))).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("not.a.jwt", "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
    let basic = app.send(app.http.get(app.url("/api/v1/me")).header("authorization", "Basic YTpi")).await;
    assert_eq!(basic.status, StatusCode::UNAUTHORIZED);
}

/// With retries turned off (`REFRESH_GRACE_SECS=0`), any second use of a
/// refresh token is reuse; the grace window has tests of its own below.
async fn refresh_reuse_revokes_the_family(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("REFRESH_GRACE_SECS".into(), "0".into());
    })
    .await;
    let bob = app.register("bob").await;
    let r1 = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": bob.refresh})).await;
    assert_eq!(r1.status, StatusCode::OK);
    let rt2 = r1.body["refresh_token"].as_str().unwrap().to_owned();
    let at2 = r1.body["access_token"].as_str().unwrap().to_owned();

    // An attacker replays the first (spent) token: refused, and the whole
    // family dies, including the legitimate rt2 and its access token.
    let replay = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": bob.refresh})).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.error_code(), "unauthorized");
    assert_eq!(
        app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": rt2})).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.get(&at2, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get(&bob.access, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);

    // Concurrent refreshes with one token: exactly one wins.
    let fresh =
        app.post(None, "/api/v1/auth/login", json!({"email": bob.email, "password": "correct horse battery"})).await;
    let rt = fresh.body["refresh_token"].as_str().unwrap().to_owned();
    let (a, b) = tokio::join!(
        app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": rt})),
        app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": rt}))
    );
    let wins = [a.status, b.status].iter().filter(|s| **s == StatusCode::OK).count();
    assert!(wins <= 1, "both concurrent refreshes succeeded");
}

async fn login_never_reveals_whether_an_email_exists(db: Db) {
    let app = spawn_app(db).await;
    app.register("cat").await;
    let wrong_pw =
        app.post(None, "/api/v1/auth/login", json!({"email": "cat@example.com", "password": "wrong password!"})).await;
    let no_user = app
        .post(None, "/api/v1/auth/login", json!({"email": "nobody@example.com", "password": "wrong password!"}))
        .await;
    assert_eq!(wrong_pw.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_pw.status, no_user.status);
    assert_eq!(wrong_pw.body, no_user.body, "identical bodies");
}

async fn login_is_throttled_per_account(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("LOGIN_ATTEMPTS_PER_MINUTE".into(), "3".into());
    })
    .await;
    app.register("dan").await;
    let attempt =
        || app.post(None, "/api/v1/auth/login", json!({"email": "dan@example.com", "password": "wrong password!"}));
    for _ in 0..3 {
        assert_eq!(attempt().await.status, StatusCode::UNAUTHORIZED);
    }
    let limited = attempt().await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.error_code(), "rate_limited");
    assert!(limited.body["error"]["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(limited.headers.contains_key("retry-after"));
    // Even the right password is refused while throttled.
    let right = app
        .post(None, "/api/v1/auth/login", json!({"email": "dan@example.com", "password": "correct horse battery"}))
        .await;
    assert_eq!(right.status, StatusCode::TOO_MANY_REQUESTS);
    // The same throttle applies to an email that does not exist (no hint).
    for _ in 0..3 {
        app.post(None, "/api/v1/auth/login", json!({"email": "ghost@example.com", "password": "x"})).await;
    }
    let ghost = app.post(None, "/api/v1/auth/login", json!({"email": "ghost@example.com", "password": "x"})).await;
    assert_eq!(ghost.status, StatusCode::TOO_MANY_REQUESTS);
}

async fn tickets_are_issued_hashed(db: Db) {
    let app = spawn_app(db).await;
    let eve = app.register("eve").await;
    let t = app.post(Some(&eve.access), "/api/v1/auth/ws-ticket", json!({})).await;
    assert_eq!(t.status, StatusCode::CREATED, "{}", t.body);
    let ticket = t.body["ticket"].as_str().unwrap();
    assert!(ticket.starts_with("wst_"));
    assert_eq!(t.body["expires_in"], 30);
    // The store holds only the hash: spending it works once.
    let hash = chatgw::auth::tokens::hash_token(ticket);
    assert!(app.store.consume_ws_ticket(&hash).await.unwrap().is_some());
    assert!(app.store.consume_ws_ticket(&hash).await.unwrap().is_none(), "single use");
    assert!(app.store.consume_ws_ticket(ticket).await.unwrap().is_none(), "raw ticket is not stored");
    // Unauthenticated callers get none.
    assert_eq!(app.post(None, "/api/v1/auth/ws-ticket", json!({})).await.status, StatusCode::UNAUTHORIZED);
}

/// Asymmetric signing (EdDSA here; RS256 and ES256 take the same path) with
/// a `kid`, and rotation: tokens signed by the previous key stay valid.
#[tokio::test]
async fn asymmetric_keys_and_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let keypair = |name: &str| crate::helpers::openssl_keypair(dir.path(), name, &["-algorithm", "ed25519"]);
    let (old_priv, old_pub) = keypair("old");
    let (new_priv, new_pub) = keypair("new");
    let db = crate::helpers::TestDb::new(Db::Sqlite).await;

    // Instance 1 signs with the old key.
    let mut vars = crate::helpers::base_vars(&db.url);
    vars.remove("JWT_SECRET");
    for (k, v) in [
        ("JWT_ALGORITHM", "EdDSA"),
        ("JWT_PRIVATE_KEY_FILE", old_priv.as_str()),
        ("JWT_PUBLIC_KEY_FILE", old_pub.as_str()),
        ("JWT_KID", "k1"),
    ] {
        vars.insert(k.into(), v.to_string());
    }
    let old = chatgw::auth::JwtKeys::from_config(&chatgw::config::Config::from_vars(&vars).unwrap().jwt).unwrap();
    let token = old.issue("u", "s").unwrap();
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!((header.alg, header.kid.as_deref()), (jsonwebtoken::Algorithm::EdDSA, Some("k1")));
    assert!(old.verify(&token).is_ok());

    // After rotation: new key signs, the old one only verifies.
    let mut rotated = vars.clone();
    for (k, v) in
        [("JWT_PRIVATE_KEY_FILE", new_priv.as_str()), ("JWT_PUBLIC_KEY_FILE", new_pub.as_str()), ("JWT_KID", "k2")]
    {
        rotated.insert(k.into(), v.to_string());
    }
    for (k, v) in [
        ("JWT_PREVIOUS_KID", "k1"),
        ("JWT_PREVIOUS_ALGORITHM", "EdDSA"),
        ("JWT_PREVIOUS_PUBLIC_KEY_FILE", old_pub.as_str()),
    ] {
        rotated.insert(k.into(), v.to_string());
    }
    let new = chatgw::auth::JwtKeys::from_config(&chatgw::config::Config::from_vars(&rotated).unwrap().jwt).unwrap();
    assert!(new.verify(&token).is_ok(), "a token of the previous key still verifies");
    let fresh = new.issue("u", "s").unwrap();
    assert_eq!(jsonwebtoken::decode_header(&fresh).unwrap().kid.as_deref(), Some("k2"));
    assert!(old.verify(&fresh).is_err(), "the old instance does not know k2");

    // A token whose header claims another algorithm (HS256 with the public
    // key as secret: the classic confusion attack) is refused.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header { kid: Some("k2".into()), ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256) },
        &serde_json::json!({"sub": "u", "sid": "s", "iat": 0, "exp": 4_000_000_000i64, "jti": "x"}),
        &jsonwebtoken::EncodingKey::from_secret(std::fs::read(&new_pub).unwrap().as_slice()),
    )
    .unwrap();
    assert!(new.verify(&forged).is_err());

    // The whole app runs on the asymmetric key.
    let app = spawn_app_with(Db::Sqlite, |v| {
        *v = rotated
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .chain(v.iter().filter(|(k, _)| k.as_str() == "DATABASE_URL").map(|(k, v)| (k.clone(), v.clone())))
            .collect();
    })
    .await;
    let eve = app.register("eve").await;
    assert_eq!(app.get(&eve.access, "/api/v1/me").await.status, StatusCode::OK);
}

/// Refreshes with `token`; the status and body.
async fn refresh(app: &TestApp, token: &str) -> (StatusCode, serde_json::Value) {
    let r = app.post(None, "/api/v1/auth/refresh", json!({"refresh_token": token})).await;
    (r.status, r.body)
}

/// Refreshes with `token` and drops the answer unread, as a phone does
/// when the network goes away before the reply arrives; returns the
/// refresh token the lost answer carried, which only the test (in the
/// role of whoever might have caught it) ever looks at.
async fn refresh_and_lose_the_answer(app: &TestApp, token: &str) -> String {
    let r = app.http.post(app.url("/api/v1/auth/refresh")).json(&json!({"refresh_token": token})).send().await;
    let r = r.expect("request sent");
    assert_eq!(r.status(), StatusCode::OK);
    let lost: serde_json::Value = r.json().await.expect("body");
    lost["refresh_token"].as_str().unwrap().to_owned()
}

/// A client that never got the answer to its refresh retries with the
/// token it still holds, within the grace window: it gets a working pair,
/// and the token of the lost answer is spent (presenting it is reuse).
async fn a_lost_refresh_answer_is_retried_within_the_grace(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let lost = refresh_and_lose_the_answer(&app, &ann.refresh).await;

    let (status, retry) = refresh(&app, &ann.refresh).await;
    assert_eq!(status, StatusCode::OK, "the retry: {retry}");
    let access = retry["access_token"].as_str().unwrap();
    let next = retry["refresh_token"].as_str().unwrap();
    assert_ne!(next, lost);
    assert_eq!(app.get(access, "/api/v1/me").await.status, StatusCode::OK, "the retry's access token");
    let (status, body) = refresh(&app, next).await;
    assert_eq!(status, StatusCode::OK, "the retry's refresh token: {body}");
    let latest = body["refresh_token"].as_str().unwrap().to_owned();

    // Whoever holds the lost answer's token cannot use it: it revokes the
    // session, the client's new tokens included.
    let (status, body) = refresh(&app, &lost).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert_eq!(refresh(&app, &latest).await.0, StatusCode::UNAUTHORIZED, "the family is revoked");
    let audit = app.store.audit_of_user(&ann.user_id).await.unwrap();
    assert_eq!(audit.iter().filter(|r| r.action == "refresh_token_reused").count(), 1, "{audit:?}");
}

/// After the window a retry is reuse again: the family is revoked, the
/// lost answer's token with it.
async fn a_retry_after_the_grace_is_reuse(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("REFRESH_GRACE_SECS".into(), "1".into());
    })
    .await;
    let ann = app.register("ann").await;
    let lost = refresh_and_lose_the_answer(&app, &ann.refresh).await;
    // The window is wall-clock time on the server: it has to pass.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, body) = refresh(&app, &ann.refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a retry after the window: {body}");
    assert_eq!(body["error"]["message"], "refresh token reuse detected; session revoked");
    assert_eq!(refresh(&app, &lost).await.0, StatusCode::UNAUTHORIZED, "the lost answer's token is revoked");
    assert_eq!(app.get(&ann.access, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
}

/// A retry within the window whose successor has already been used is
/// reuse: the client that holds the successor did get the answer, so the
/// one retrying is someone else.
async fn a_retry_after_the_successor_was_used_is_reuse(db: Db) {
    let app = spawn_app(db).await;
    let ann = app.register("ann").await;
    let (status, body) = refresh(&app, &ann.refresh).await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = refresh(&app, body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let current = body["refresh_token"].as_str().unwrap().to_owned();
    let current_access = body["access_token"].as_str().unwrap().to_owned();

    let (status, body) = refresh(&app, &ann.refresh).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a retry after the successor was used: {body}");
    assert_eq!(body["error"]["message"], "refresh token reuse detected; session revoked");
    assert_eq!(refresh(&app, &current).await.0, StatusCode::UNAUTHORIZED, "the family is revoked");
    assert_eq!(app.get(&current_access, "/api/v1/me").await.status, StatusCode::UNAUTHORIZED);
}
