//! The served OpenAPI document parses and lists every route.

use reqwest::StatusCode;

use crate::helpers::{Db, spawn_app};

#[tokio::test]
async fn openapi_lists_every_route() {
    let app = spawn_app(Db::Sqlite).await;
    let r = app.send(app.http.get(app.url("/api/v1/openapi.json"))).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let expected = [
        ("post", "/api/v1/auth/register"),
        ("post", "/api/v1/auth/login"),
        ("post", "/api/v1/auth/refresh"),
        ("post", "/api/v1/auth/logout"),
        ("post", "/api/v1/auth/ws-ticket"),
        ("get", "/api/v1/me"),
        ("patch", "/api/v1/me"),
        ("delete", "/api/v1/me"),
        ("get", "/api/v1/me/export"),
        ("get", "/api/v1/users/{id}"),
        ("get", "/api/v1/rooms"),
        ("post", "/api/v1/rooms"),
        ("get", "/api/v1/rooms/{id}"),
        ("patch", "/api/v1/rooms/{id}"),
        ("delete", "/api/v1/rooms/{id}"),
        ("post", "/api/v1/rooms/{id}/members"),
        ("delete", "/api/v1/rooms/{id}/members/{user_id}"),
        ("get", "/api/v1/rooms/{id}/messages"),
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("post", "/api/v1/admin/users/{id}/ban"),
        ("delete", "/api/v1/admin/users/{id}/ban"),
        ("get", "/api/v1/admin/stats"),
        ("get", "/api/v1/admin/users/{id}/connections"),
        ("post", "/api/v1/admin/users/{id}/disconnect"),
        ("get", "/api/v1/admin/audit"),
        ("delete", "/api/v1/admin/rooms/{id}/messages/{seq}"),
        ("post", "/api/v1/admin/rooms/{id}/reset-history"),
        ("post", "/api/v1/admin/debug/sentry-test"),
    ];
    let paths = doc["paths"].as_object().unwrap();
    let mut listed = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            listed += 1;
            assert!(expected.contains(&(method.as_str(), path.as_str())), "undocumented extra: {method} {path}");
        }
    }
    for (method, path) in expected {
        assert!(paths.get(path).and_then(|p| p.get(method)).is_some(), "missing {method} {path}");
        // Every documented route is really served (not 404 from the fallback).
        let url = app.url(&path.replace("{id}", "x").replace("{user_id}", "y").replace("{seq}", "1"));
        let resp = app.http.request(method.to_uppercase().parse().unwrap(), url).send().await.unwrap();
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_ne!(body["error"]["message"], "route not found", "{method} {path} is not routed");
    }
    assert_eq!(listed, expected.len());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}
