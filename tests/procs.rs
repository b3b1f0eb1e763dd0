//! Real processes for the cluster tests: `redis-server`s the test owns (on
//! free ports, killed, paused and restarted by the test, never the machine's
//! shared one), a 3-master Redis Cluster, and gateway instances run from the
//! built binary.

#![allow(dead_code)] // a shared toolbox: not every test module uses every helper

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::helpers::{Db, TestApp, TestDb, eventually};

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
    l.local_addr().expect("bound").port()
}

/// Sends a signal by name (`KILL`, `TERM`, `STOP`, `CONT`) to a process.
pub fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
    assert!(ok.is_ok_and(|s| s.success()), "kill -{sig} {pid}");
}

/// One raw command to a Redis, answered as text (for checks only).
pub async fn redis_cmd(port: u16, args: &[&str]) -> Option<String> {
    let mut s =
        tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(("127.0.0.1", port))).await.ok()?.ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await.ok()?.ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A `redis-server` owned by one test.
pub struct RedisProc {
    pub port: u16,
    child: Option<Child>,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl RedisProc {
    /// Starts a standalone Redis on a free port.
    pub async fn start() -> RedisProc {
        Self::start_with(free_port(), Vec::new()).await
    }

    /// Starts a standalone Redis on a given port (one a gateway already
    /// tries to reach).
    pub async fn start_on(port: u16) -> RedisProc {
        Self::start_with(port, Vec::new()).await
    }

    async fn start_with(port: u16, extra: Vec<String>) -> RedisProc {
        let mut r = RedisProc { port, child: None, extra, dir: tempfile::tempdir().expect("temp dir") };
        r.spawn().await;
        r
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is installed (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(20), || async move {
            redis_cmd(port, &["PING"]).await.filter(|r| r.contains("PONG")).map(|_| ())
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    /// SIGKILL: everything in it is gone, connections drop.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// A new, empty server on the same port.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    /// SIGSTOP: connections stay open but nothing is answered.
    pub fn pause(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn resume(&self) {
        signal(self.pid(), "CONT");
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        if let Some(c) = &self.child
            && let Some(pid) = c.id()
        {
            // A paused server ignores SIGKILL until continued on some systems.
            let _ = std::process::Command::new("kill").args(["-CONT", &pid.to_string()]).status();
        }
    }
}

/// A Redis Cluster of `n` masters (no replicas) on free ports.
pub struct RedisCluster {
    pub nodes: Vec<RedisProc>,
}

impl RedisCluster {
    pub async fn start(n: usize) -> RedisCluster {
        let mut nodes = Vec::new();
        for _ in 0..n {
            let port = free_port();
            let extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                format!("nodes-{port}.conf"),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ];
            nodes.push(RedisProc::start_with(port, extra).await);
        }
        let addrs: Vec<String> = nodes.iter().map(|r| format!("127.0.0.1:{}", r.port)).collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .await
            .expect("redis-cli is installed");
        assert!(out.status.success(), "cluster create: {}", String::from_utf8_lossy(&out.stdout));
        for r in &nodes {
            let port = r.port;
            eventually(Duration::from_secs(30), || async move {
                redis_cmd(port, &["CLUSTER", "INFO"]).await.filter(|i| i.contains("cluster_state:ok")).map(|_| ())
            })
            .await;
        }
        RedisCluster { nodes }
    }

    /// `redis-cluster://first?node=second&node=third`
    pub fn url(&self) -> String {
        let mut url = format!("redis-cluster://127.0.0.1:{}", self.nodes[0].port);
        for (i, n) in self.nodes.iter().enumerate().skip(1) {
            url.push_str(if i == 1 { "?" } else { "&" });
            url.push_str(&format!("node=127.0.0.1:{}", n.port));
        }
        url
    }

    /// The port of the master that owns `key`'s hash slot.
    pub async fn owner_of(&self, key: &str) -> u16 {
        // Only the owner answers a key command without a MOVED redirect.
        for n in &self.nodes {
            let r = redis_cmd(n.port, &["GET", key]).await.unwrap_or_default();
            if !r.starts_with("-MOVED") {
                return n.port;
            }
        }
        panic!("no node owns {key}");
    }
}

/// A gateway run from the built binary.
pub struct Gateway {
    pub addr: SocketAddr,
    pub env: Vec<(String, String)>,
    child: Option<Child>,
}

impl Gateway {
    /// Starts `chatgw` with `env` (on top of a clean environment) and waits
    /// for the URL it prints.
    pub async fn start(env: &[(String, String)]) -> Gateway {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgw"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LISTEN_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", std::env::var("TEST_LOG").map(|_| "info").unwrap_or("warn"))
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn gateway");
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let url = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("chatgw listening on ") {
                    return url.to_owned();
                }
            }
            panic!("gateway exited before printing its URL");
        })
        .await
        .expect("gateway printed its URL");
        // Keep draining its logs so it never blocks on a full pipe.
        let echo = std::env::var_os("TEST_LOG").is_some();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if echo {
                    eprintln!("[gateway] {line}");
                }
            }
        });
        let addr = url.trim_start_matches("http://").parse().expect("printed URL is host:port");
        Gateway { addr, env: env.to_vec(), child: Some(child) }
    }

    /// A [`TestApp`] view of this instance, for REST helpers and clients.
    pub async fn app(&self, db_url: &str) -> TestApp {
        TestApp::remote(self.addr, db_url, Db::Postgres).await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).expect("running")
    }

    /// SIGKILL: no drain, no goodbye.
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.start_kill();
            let _ = c.wait().await;
        }
    }

    /// SIGTERM and wait for the exit; returns whether it was clean.
    pub async fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else { return false };
        if let Some(pid) = c.id() {
            signal(pid, "TERM");
        }
        c.wait().await.is_ok_and(|s| s.success())
    }

    /// The same configuration again (on a new port).
    pub async fn restart(&mut self) {
        self.kill().await;
        *self = Gateway::start(&self.env).await;
    }
}

/// Environment for a gateway of a test cluster: one database, one Redis,
/// a key prefix of its own, limits that do not get in a test's way.
pub fn cluster_env(db_url: &str, redis_url: &str, prefix: &str) -> Vec<(String, String)> {
    [
        ("DATABASE_URL", db_url),
        ("REDIS_URL", redis_url),
        ("REDIS_PREFIX", prefix),
        ("REDIS_TIMEOUT_MS", "500"),
        ("JWT_SECRET", "test-secret-0123456789-abcdefghijklmnop"),
        ("LOGIN_ATTEMPTS_PER_MINUTE", "10000"),
        ("WS_SEND_PER_SEC", "10000"),
        ("WS_SEND_BURST", "10000"),
        ("WS_EVENTS_PER_SEC", "10000"),
        ("WS_EVENTS_BURST", "10000"),
        ("WS_HANDSHAKES_PER_IP_PER_SEC", "100000"),
        ("SHUTDOWN_TIMEOUT_SECS", "10"),
        ("DRAIN_RECONNECT_MAX_MS", "1000"),
        ("ADMIN_TOKEN", "admin-token-0123456789-abcdefghijklmnop"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect()
}

/// A unique Redis prefix for one test.
pub fn test_prefix() -> String {
    format!("t{}:", uuid::Uuid::new_v4().simple())
}

/// A PostgreSQL database for a test whose gateways are processes.
pub async fn cluster_db() -> TestDb {
    TestDb::new(Db::Postgres).await
}

/// nginx in front of gateway instances, with the shipped configuration
/// (`deploy/nginx/chatgw.conf`): only its port and upstream servers are
/// replaced.
pub struct Nginx {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub async fn start(upstreams: &[SocketAddr]) -> Nginx {
        let bin = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("nginx is installed (scripts/test.sh installs it)");
        let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nginx/chatgw.conf"))
            .expect("deploy/nginx/chatgw.conf");
        let port = free_port();
        let servers: String =
            upstreams.iter().map(|a| format!("    server {a} max_fails=3 fail_timeout=5s;\n")).collect();
        let mut site = String::new();
        for line in shipped.lines() {
            let t = line.trim_start();
            if t.starts_with("server gw") {
                continue;
            } else if t == "least_conn;" {
                site.push_str(line);
                site.push('\n');
                site.push_str(&servers);
                continue;
            } else if t == "listen 80;" {
                site.push_str(&format!("    listen 127.0.0.1:{port};\n"));
                continue;
            }
            site.push_str(line);
            site.push('\n');
        }
        assert!(site.contains(&servers) && site.contains(&format!("listen 127.0.0.1:{port};")), "config rewritten");
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path().display();
        std::fs::write(dir.path().join("chatgw.conf"), site).unwrap();
        let main = format!(
            "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{}}\nhttp {{\n  access_log off;\n  \
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  \
             uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  include {d}/chatgw.conf;\n}}\n"
        );
        std::fs::write(dir.path().join("nginx.conf"), main).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(dir.path().join("nginx.conf"))
            .args(["-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx");
        eventually(Duration::from_secs(20), || async move {
            TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ())
        })
        .await;
        Nginx { port, child, _dir: dir }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A PostgreSQL cluster owned by one test, on a free port, that the test
/// stops and starts again (the machine's shared server is never touched).
pub struct PgProc {
    pub port: u16,
    bin: std::path::PathBuf,
    dir: tempfile::TempDir,
}

impl PgProc {
    /// `initdb` and start; a few seconds.
    pub async fn start() -> PgProc {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql (scripts/test.sh installs them)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists())
            .expect("initdb");
        let dir = tempfile::tempdir().expect("temp dir");
        let pg = PgProc { port: free_port(), bin, dir };
        if pg.as_root() {
            // PostgreSQL refuses to run as root.
            let ok = std::process::Command::new("chown").arg("-R").arg("postgres:").arg(pg.dir.path()).status();
            assert!(ok.is_ok_and(|s| s.success()), "chown the cluster directory to postgres");
        }
        let data = pg.dir.path().join("data");
        let status = pg
            .command("initdb")
            .args(["-D", &data.display().to_string(), "-U", "postgres", "-A", "trust", "--no-sync"])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("run initdb");
        assert!(status.success(), "initdb");
        pg.start_again().await;
        pg
    }

    fn as_root(&self) -> bool {
        std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut c = if self.as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        c.stdin(Stdio::null());
        c
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut c = self.command("pg_ctl");
        c.args(["-D", &self.dir.path().join("data").display().to_string()]).args(args);
        c
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub async fn start_again(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        let status = self
            .pg_ctl(&["-l", &log, "-w", "-o", &opts, "start"])
            .stdout(Stdio::null())
            .status()
            .await
            .expect("pg_ctl");
        assert!(status.success(), "pg_ctl start");
    }

    /// A fast shutdown: sessions are terminated, the port closes.
    pub async fn stop(&self) {
        let status = self.pg_ctl(&["-m", "fast", "-w", "stop"]).stdout(Stdio::null()).status().await.expect("pg_ctl");
        assert!(status.success(), "pg_ctl stop");
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgProc {
    fn drop(&mut self) {
        let mut c = std::process::Command::new(if self.as_root() { "runuser" } else { "sh" });
        let data = self.dir.path().join("data");
        let pg_ctl = self.bin.join("pg_ctl");
        if self.as_root() {
            c.args(["-u", "postgres", "--"]).arg(pg_ctl);
        } else {
            c.arg("-c").arg(format!("exec {} \"$@\"", pg_ctl.display())).arg("pg_ctl");
        }
        let _ = c
            .arg("-D")
            .arg(data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
