//! The test harness: `spawn_app` starts the real application on port 0 with
//! a fresh database (a new SQLite file, or a new PostgreSQL database created
//! for the test and dropped after it) and returns a [`TestApp`] with helpers.

#![allow(dead_code)] // a shared toolbox: not every test module uses every helper

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::Duration;

use chatgw::config::Config;
use chatgw::db::Store;
use chatgw::startup::Application;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Connection;
use tokio::sync::oneshot;

/// Which backend a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Runs an `async fn(Db)` test once per backend.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() { super::$name($crate::helpers::Db::Sqlite).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() { super::$name($crate::helpers::Db::Postgres).await }
        }
    )*};
}

static TRACING: Once = Once::new();

fn init_tracing() {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            chatgw::telemetry::init();
        }
    });
}

/// The admin URL of the PostgreSQL server tests create databases on.
pub fn pg_admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that exists for one test.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn new(db: Db) -> TestDb {
        match db {
            Db::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}/test.db", dir.path().display());
                TestDb { url, pg_name: None, _dir: Some(dir) }
            }
            Db::Postgres => {
                sqlx::any::install_default_drivers();
                let admin = pg_admin_url();
                let name = format!("chatgw_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = sqlx::AnyConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("PostgreSQL at TEST_DATABASE_URL ({admin}) is needed: {e}"));
                sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut conn).await.expect("create test database");
                let _ = conn.close().await;
                let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
                TestDb { url: format!("{base}/{name}"), pg_name: Some(name), _dir: None }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        // Drop runs outside async: use a thread with its own runtime.
        let admin = pg_admin_url();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                if let Ok(mut c) = sqlx::AnyConnection::connect(&admin).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
                }
            });
        })
        .join();
    }
}

/// A running gateway for one test.
pub struct TestApp {
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub base: String,
    pub http: reqwest::Client,
    pub store: Store,
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    // Declared last: dropped after the server stopped. In a cluster only
    // the last instance owns the database.
    _test_db: Option<TestDb>,
}

/// Environment a test app starts with; tests override entries.
pub fn base_vars(db_url: &str) -> HashMap<String, String> {
    let mut v = HashMap::new();
    v.insert("LISTEN_ADDR".into(), "127.0.0.1:0".into());
    v.insert("METRICS_ADDR".into(), "127.0.0.1:0".into());
    v.insert("DATABASE_URL".into(), db_url.into());
    v.insert("JWT_SECRET".into(), "test-secret-0123456789-abcdefghijklmnop".into());
    v.insert("LOGIN_ATTEMPTS_PER_MINUTE".into(), "10000".into());
    v.insert("SHUTDOWN_TIMEOUT_SECS".into(), "5".into());
    v
}

pub async fn spawn_app(db: Db) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

pub async fn spawn_app_with(db: Db, tweak: impl FnOnce(&mut HashMap<String, String>)) -> TestApp {
    init_tracing();
    let test_db = TestDb::new(db).await;
    let mut vars = base_vars(&test_db.url);
    tweak(&mut vars);
    let config = Config::from_vars(&vars).expect("test config is valid");
    let app = Application::build(config).await.expect("app builds");
    start(app, db, Some(test_db))
}

/// `n` gateway instances on one database, linked by one in-process bus: a
/// cluster in one test process (the bus seam is what Redis plugs into).
pub async fn spawn_cluster(db: Db, n: usize) -> Vec<TestApp> {
    let net = chatgw::bus::local::LocalNetwork::new();
    spawn_cluster_with(db, n, |_| std::sync::Arc::new(net.attach())).await
}

/// `n` instances on one database, instance `i` on the bus `bus(i)`.
pub async fn spawn_cluster_with(db: Db, n: usize, bus: impl Fn(usize) -> chatgw::bus::SharedBus) -> Vec<TestApp> {
    spawn_cluster_tweaked(db, n, bus, |_| {}).await
}

/// Like [`spawn_cluster_with`], every instance's environment changed by
/// `tweak` first.
pub async fn spawn_cluster_tweaked(
    db: Db,
    n: usize,
    bus: impl Fn(usize) -> chatgw::bus::SharedBus,
    tweak: impl Fn(&mut HashMap<String, String>),
) -> Vec<TestApp> {
    init_tracing();
    let test_db = TestDb::new(db).await;
    let mut apps = Vec::new();
    let mut owner = Some(test_db);
    for i in 0..n {
        let url = owner.as_ref().expect("owned until the last instance").url.clone();
        let mut vars = base_vars(&url);
        for k in ["WS_SEND_PER_SEC", "WS_SEND_BURST", "WS_EVENTS_PER_SEC", "WS_EVENTS_BURST"] {
            vars.insert(k.into(), "10000".into());
        }
        vars.insert("ADMIN_TOKEN".into(), crate::operators::ADMIN_TOKEN.into());
        tweak(&mut vars);
        let config = Config::from_vars(&vars).expect("test config is valid");
        let app = Application::build_with_bus(config, bus(i)).await.expect("app builds");
        apps.push(start(app, db, if i + 1 == n { owner.take() } else { None }));
    }
    apps
}

fn start(app: Application, db: Db, test_db: Option<TestDb>) -> TestApp {
    let addr = app.local_addr();
    let metrics_addr = app.metrics_addr();
    let store = app.state().store.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = rx.await;
    }));
    TestApp {
        addr,
        metrics_addr,
        base: format!("http://{addr}"),
        http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
        store,
        db,
        stop: Some(tx),
        server: Some(server),
        _test_db: test_db,
    }
}

/// A registered user with live tokens.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub email: String,
    pub access: String,
    pub refresh: String,
}

/// A response's status and JSON body (`Null` when empty or not JSON).
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Asserts the one error shape and returns its code.
    pub fn error_code(&self) -> &str {
        let e = &self.body["error"];
        assert!(e["message"].is_string(), "error body without message: {}", self.body);
        e["code"].as_str().unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }
}

impl TestApp {
    /// A view of a gateway running elsewhere (a process of a cluster test):
    /// the same helpers, with a store on its database for checks.
    pub async fn remote(addr: SocketAddr, db_url: &str, db: Db) -> TestApp {
        let store = Store::connect(db_url, 2).await.expect("store on the cluster's database");
        TestApp {
            addr,
            metrics_addr: None,
            base: format!("http://{addr}"),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("client"),
            store,
            db,
            stop: None,
            server: None,
            _test_db: None,
        }
    }

    /// The URL of the test's database, for checks that must bypass the
    /// gateway (raw rows, refused statements); `None` on instances that do
    /// not own it.
    pub fn db_url(&self) -> Option<&str> {
        self._test_db.as_ref().map(|d| d.url.as_str())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let r = req.send().await.expect("request sent");
        let status = r.status();
        let headers = r.headers().clone();
        let text = r.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Resp { status, headers, body }
    }

    pub async fn get(&self, token: &str, path: &str) -> Resp {
        self.send(self.http.get(self.url(path)).bearer_auth(token)).await
    }

    pub async fn delete(&self, token: &str, path: &str) -> Resp {
        self.send(self.http.delete(self.url(path)).bearer_auth(token)).await
    }

    pub async fn post(&self, token: Option<&str>, path: &str, body: Value) -> Resp {
        let mut r = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        self.send(r).await
    }

    pub async fn patch(&self, token: &str, path: &str, body: Value) -> Resp {
        self.send(self.http.patch(self.url(path)).bearer_auth(token).json(&body)).await
    }

    /// Registers `name@example.com` and returns its session.
    pub async fn register(&self, name: &str) -> Session {
        let email = format!("{name}@example.com");
        let r = self
            .post(
                None,
                "/api/v1/auth/register",
                json!({"email": email, "password": "correct horse battery", "display_name": name}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "register {name}: {}", r.body);
        Session {
            user_id: r.body["user"]["id"].as_str().expect("user id").to_owned(),
            email,
            access: r.body["access_token"].as_str().expect("access").to_owned(),
            refresh: r.body["refresh_token"].as_str().expect("refresh").to_owned(),
        }
    }

    /// Creates a room owned by `owner` with `members`; returns its id.
    pub async fn create_room(&self, owner: &Session, name: &str, members: &[&Session]) -> String {
        let ids: Vec<&str> = members.iter().map(|m| m.user_id.as_str()).collect();
        let r = self.post(Some(&owner.access), "/api/v1/rooms", json!({"name": name, "members": ids})).await;
        assert_eq!(r.status, StatusCode::CREATED, "create room: {}", r.body);
        r.body["id"].as_str().expect("room id").to_owned()
    }

    /// Stops the server the way SIGTERM would and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.await.expect("server task").expect("clean shutdown");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// A seed for a test's random choices: `CHATGW_TEST_SEED` if set, else a
/// fresh one. Printed, so a failing run can be replayed.
pub fn test_seed() -> u64 {
    let seed = std::env::var("CHATGW_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("test seed: {seed} (replay with CHATGW_TEST_SEED={seed})");
    seed
}

/// Polls `f` until it returns `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually_what(deadline, "condition reached", f).await
}

/// Like [`eventually`], the failure naming what was awaited.
pub async fn eventually_what<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < end, "not within {deadline:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut` for at most `deadline`: a hang fails the test saying what
/// was awaited.
pub async fn within<T>(deadline: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => v,
        Err(_) => panic!("not within {deadline:?}: {what}"),
    }
}

/// A key pair made by `openssl genpkey <args>` in `dir`: the private and the
/// public PEM file paths.
pub fn openssl_keypair(dir: &std::path::Path, name: &str, genpkey_args: &[&str]) -> (String, String) {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    let ok = std::process::Command::new("openssl").arg("genpkey").args(genpkey_args).arg("-out").arg(&private).status();
    assert!(ok.is_ok_and(|s| s.success()), "openssl genpkey {genpkey_args:?}");
    let ok = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status();
    assert!(ok.is_ok_and(|s| s.success()), "openssl pkey -pubout");
    (private.to_str().expect("utf-8 path").to_owned(), public.to_str().expect("utf-8 path").to_owned())
}
