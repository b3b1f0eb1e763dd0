//! Every class of bad input gets a 4xx with the one error shape, and
//! nothing else breaks.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{Db, spawn_app, spawn_app_with};

both_backends!(malformed_bodies_get_clear_errors);

async fn malformed_bodies_get_clear_errors(db: Db) {
    let app = spawn_app_with(db, |v| {
        v.insert("MAX_BODY_BYTES".into(), "4096".into());
    })
    .await;
    let ann = app.register("ann").await;
    let raw = |path: &str, ct: Option<&str>, body: String| {
        let mut r = app.http.post(app.url(path)).bearer_auth(&ann.access).body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        app.send(r)
    };
    let json_ct = Some("application/json");

    let cases: Vec<(&str, Option<&str>, String, StatusCode, &str)> = vec![
        ("/api/v1/rooms", json_ct, "{not json".into(), StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/rooms", json_ct, "".into(), StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/rooms", json_ct, "[]".into(), StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/rooms", json_ct, r#"{"name": 5}"#.into(), StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/rooms", json_ct, r#"{"name": "x", "admin": true}"#.into(), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/api/v1/rooms",
            None,
            r#"{"name": "x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/api/v1/rooms",
            Some("text/plain"),
            r#"{"name": "x"}"#.into(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "/api/v1/rooms",
            json_ct,
            format!(r#"{{"name": "{}"}}"#, "x".repeat(10_000)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        ),
        (
            "/api/v1/rooms",
            json_ct,
            json!({"name": "x".repeat(101)}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        ("/api/v1/rooms", json_ct, json!({"name": "bell\u{7}"}).to_string(), StatusCode::BAD_REQUEST, "bad_request"),
        ("/api/v1/rooms", json_ct, json!({"name": "   "}).to_string(), StatusCode::BAD_REQUEST, "bad_request"),
        (
            "/api/v1/rooms",
            json_ct,
            json!({"name": "x", "members": ["../etc"]}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/rooms",
            json_ct,
            json!({"name": "x", "members": ["00000000-0000-7000-8000-000000000000"]}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/auth/register",
            json_ct,
            json!({"email": "nope", "password": "long enough pw", "display_name": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/auth/register",
            json_ct,
            json!({"email": "a@b.io", "password": "short", "display_name": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/auth/register",
            json_ct,
            json!({"email": "a@b.io", "password": "p".repeat(300), "display_name": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/auth/register",
            json_ct,
            json!({"email": "a@b.io", "password": "long enough pw", "display_name": "x".repeat(65)}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/auth/register",
            json_ct,
            json!({"email": "a@b.io", "password": "long enough pw", "display_name": "a\u{202E}b"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/auth/register",
            json_ct,
            json!({"email": "a@b.io", "password": "long enough pw"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "/api/v1/auth/refresh",
            json_ct,
            json!({"refresh_token": "rt_garbage"}).to_string(),
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        ),
        (
            "/api/v1/auth/login",
            json_ct,
            json!({"email": "x".repeat(300), "password": "x"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
    ];
    for (path, ct, body, status, code) in cases {
        let preview: String = body.chars().take(60).collect();
        let r = raw(path, ct, body).await;
        assert_eq!(r.status, status, "{path} {preview}: {}", r.body);
        assert_eq!(r.error_code(), code, "{path} {preview}");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(!msg.contains("sqlx") && !msg.contains("panicked"), "internals leaked: {msg}");
    }

    // Bad ids in paths, unknown routes and methods.
    let bad_id = app.get(&ann.access, "/api/v1/rooms/bad%20id").await;
    assert_eq!(bad_id.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        app.get(&ann.access, &format!("/api/v1/users/{}", "x".repeat(65))).await.status,
        StatusCode::BAD_REQUEST
    );
    let unknown = app.get(&ann.access, "/api/v1/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.error_code(), "not_found");
    let method = app.send(app.http.put(app.url("/api/v1/me")).bearer_auth(&ann.access)).await;
    assert!(method.status.is_client_error());
    method.error_code();

    // None of it broke anything: the user and the API still work.
    assert_eq!(app.get(&ann.access, "/api/v1/me").await.status, StatusCode::OK);
    assert!(app.get(&ann.access, "/api/v1/rooms").await.body["rooms"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn security_headers_request_ids_and_cors() {
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("ALLOWED_ORIGINS".into(), "https://app.example.com".into());
    })
    .await;
    let r = app.send(app.http.get(app.url("/healthz"))).await;
    for (h, v) in [("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"), ("cache-control", "no-store")] {
        assert_eq!(r.headers[h], v);
    }
    assert!(!r.headers["x-request-id"].is_empty(), "generated request id");
    let echoed = app.send(app.http.get(app.url("/healthz")).header("x-request-id", "abc-123")).await;
    assert_eq!(echoed.headers["x-request-id"], "abc-123");

    let allowed = app
        .send(
            app.http
                .request(reqwest::Method::OPTIONS, app.url("/api/v1/me"))
                .header("origin", "https://app.example.com")
                .header("access-control-request-method", "GET"),
        )
        .await;
    assert_eq!(allowed.headers["access-control-allow-origin"], "https://app.example.com");
    assert!(!allowed.headers.contains_key("access-control-allow-credentials"));
    let other = app.send(app.http.get(app.url("/healthz")).header("origin", "https://evil.example")).await;
    assert!(!other.headers.contains_key("access-control-allow-origin"), "unknown origin gets no CORS headers");

    // Metrics are on their own listener.
    let m = reqwest::get(format!("http://{}/metrics", app.metrics_addr.unwrap())).await.unwrap().text().await.unwrap();
    assert!(m.contains("chatgw_http_requests_total"));
}

#[tokio::test]
async fn readyz_reports_an_unreachable_database() {
    let app = spawn_app(Db::Sqlite).await;
    assert_eq!(app.send(app.http.get(app.url("/readyz"))).await.status, StatusCode::OK);
    app.store.close().await;
    let r = app.send(app.http.get(app.url("/readyz"))).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body["reason"], "database unreachable");
}
