//! The served OpenAPI document parses and lists every route: every route
//! the router really serves ([`routed`]) is documented, and every
//! documented operation is served.

use std::collections::{BTreeSet, HashMap};

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
        ("get", "/api/v1/healthz"),
        ("get", "/api/v1/readyz"),
        ("get", "/api/v1/openapi.json"),
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

/// Every `(METHOD, path template)` the gateway's REST router serves, read
/// from the router itself (`chatgw::api::rest_routes`), so that a route
/// added there is seen here without anyone listing it. axum has no route
/// listing; its `Debug` output names each route's path and, per method,
/// `None` or the endpoint. HEAD is left out: axum serves it with GET.
pub fn routed() -> BTreeSet<(String, String)> {
    let debug = format!("{:?}", chatgw::api::rest_routes());
    // The fallback router has route ids of its own.
    let main = debug.split("fallback_router:").next().expect("a router");
    let (routes, node) = main.split_once("node: Node").expect("axum's Debug of a router shows its node");
    let mut methods: HashMap<&str, Vec<String>> = HashMap::new();
    for part in routes.split("RouteId(").skip(1) {
        let (id, rest) = part.split_once(')').expect("RouteId(n)");
        let Some((_, fields)) = rest.split_once("MethodRouter { ") else { continue };
        let served = fields
            .split(", ")
            .map_while(|f| f.split_once(": "))
            .take_while(|(k, _)| *k != "fallback")
            .filter(|(k, v)| *k != "head" && !v.starts_with("None"))
            .map(|(k, _)| k.to_uppercase())
            .collect();
        methods.insert(id, served);
    }
    let mut out = BTreeSet::new();
    for part in node.split("RouteId(").skip(1) {
        let (id, rest) = part.split_once("): \"").expect("RouteId(n): \"path\"");
        let path = rest.split('"').next().expect("a quoted path");
        if path.contains("__private__axum") {
            continue;
        }
        let served = methods.get(id).unwrap_or_else(|| panic!("no methods read for {path} in {debug}"));
        assert!(!served.is_empty(), "no method read for {path} in {debug}");
        out.extend(served.iter().map(|m| (m.clone(), path.to_owned())));
    }
    assert!(out.contains(&("POST".into(), "/api/v1/auth/register".into())), "routes not read: {out:?} from {debug}");
    out
}

/// Each route the router serves is in the OpenAPI document, and each
/// documented operation is routed: neither can be added without the other.
#[test]
fn every_routed_path_is_documented() {
    use utoipa::OpenApi;
    let doc = serde_json::to_value(chatgw::api::openapi::ApiDoc::openapi()).expect("the document serialises");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| item.as_object().expect("operations").keys().map(|m| (m.to_uppercase(), path.clone())))
        .collect();
    let routed = routed();
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(undocumented.is_empty(), "routed but not in the OpenAPI document: {undocumented:?}");
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
}
