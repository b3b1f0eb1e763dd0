//! The browser demo at `/demo/` (README "Client SDK"): served in
//! development, off in production and with `DEMO=0`, from the copy built
//! into the binary or from `DEMO_DIR`, always under a same-origin CSP.
//! The page itself is tested in Chromium by
//! `clients/typescript/test/browser/demo.test.ts`.

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use crate::helpers::{Db, TestApp, spawn_app_with};

async fn get(app: &TestApp, path: &str) -> (StatusCode, HeaderMap, String) {
    let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = client.get(app.url(path)).send().await.unwrap();
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.unwrap())
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
}

/// Development: the page, its script and its style, each with its type, a
/// CSP that allows this origin only, and no caching that would outlive a
/// rebuilt gateway; `/` and `/demo` lead to it; nothing else is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_served_in_development_under_a_same_origin_csp() {
    let app = spawn_app_with(Db::Sqlite, |_| {}).await;
    let (status, h, page) = get(&app, "/demo/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "content-type"), "text/html; charset=utf-8");
    assert_eq!(header(&h, "cache-control"), "no-cache");
    let csp = header(&h, "content-security-policy");
    for part in ["default-src 'self'", "script-src 'self'", "style-src 'self'", "frame-ancestors 'none'"] {
        assert!(csp.contains(part), "{part} in {csp}");
    }
    assert!(!csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"), "{csp}");
    // The built page (npm run demo:build), not a placeholder.
    assert!(page.contains("/demo/app.js") && page.contains("/demo/app.css"), "{page}");
    for (file, kind) in [("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8")] {
        let (status, h, body) = get(&app, &format!("/demo/{file}")).await;
        assert_eq!((status, header(&h, "content-type")), (StatusCode::OK, kind), "{file}");
        assert!(body.len() > 100, "{file} is the build output");
    }
    for path in ["/", "/demo"] {
        let (status, h, _) = get(&app, path).await;
        assert_eq!((status, header(&h, "location")), (StatusCode::SEE_OTHER, "/demo/"), "{path}");
    }
    for path in ["/demo/index.js", "/demo/..%2fCargo.toml", "/demo/app.js/x", "/demo/.env"] {
        let (status, h, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(header(&h, "content-type").starts_with("application/json"), "{path}: {body}");
    }
    // The API is untouched by the demo's routes.
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
}

/// Production leaves the demo off unless asked; `DEMO=0` turns it off in
/// development. Off means 404 at all its paths, as before it existed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_is_off_in_production_and_with_demo_0() {
    let production = |v: &mut std::collections::HashMap<String, String>| {
        v.insert("APP_ENV".into(), "production".into());
        v.insert("JWT_SECRET".into(), "vQ3x9Lr2Tz7Kp4Wm8Yb1Nc6Hd5Gf0Ja2Se7Ru".into());
    };
    let prod = spawn_app_with(Db::Sqlite, production).await;
    let off = spawn_app_with(Db::Sqlite, |v| {
        v.insert("DEMO".into(), "0".into());
    })
    .await;
    for app in [&prod, &off] {
        for path in ["/", "/demo", "/demo/", "/demo/app.js"] {
            assert_eq!(get(app, path).await.0, StatusCode::NOT_FOUND, "{path}");
        }
    }
    let on = spawn_app_with(Db::Sqlite, |v| {
        production(v);
        v.insert("DEMO".into(), "1".into());
    })
    .await;
    assert_eq!(get(&on, "/demo/").await.0, StatusCode::OK, "DEMO=1 in production");
}

/// `DEMO_DIR` serves the files from disk as they are now, so the demo can
/// be worked on without rebuilding the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_dir_serves_the_files_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    for (file, text) in [("index.html", "<!doctype html><p>one"), ("app.js", "console.log(1)"), ("app.css", "p{}")] {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let path = dir.path().to_str().unwrap().to_owned();
    let app = spawn_app_with(Db::Sqlite, |v| {
        v.insert("DEMO_DIR".into(), path);
    })
    .await;
    assert_eq!(get(&app, "/demo/").await.2, "<!doctype html><p>one");
    std::fs::write(dir.path().join("index.html"), "<!doctype html><p>two").unwrap();
    assert_eq!(get(&app, "/demo/").await.2, "<!doctype html><p>two", "read on every request");
    assert_eq!(get(&app, "/demo/app.js").await.2, "console.log(1)");
    std::fs::remove_file(dir.path().join("app.css")).unwrap();
    let (status, _, body) = get(&app, "/demo/app.css").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK, "a missing file breaks nothing else");
}
