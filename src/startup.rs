//! Building and running the application: the seam tests and `main` share.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::routing::get;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{JwtKeys, Passwords};
use crate::bus::SharedBus;
use crate::bus::local::LocalBus;
use crate::bus::redis::RedisBus;
use crate::config::Config;
use crate::db::{DbError, PURGE_BATCH, Store};
use crate::hub::{Hub, HubSettings};
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::push::PushWorker;
use crate::state::{AppState, Readiness};

/// A built, bound, migrated gateway, not yet serving.
pub struct Application {
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    state: AppState,
    stop: CancellationToken,
    tasks: TaskTracker,
    /// The offline-push worker, when `WEBHOOK_URL` is set.
    push: Option<PushWorker>,
}

impl Application {
    /// Connects and migrates the database, then binds the listeners (port 0
    /// picks a free one; see [`Application::local_addr`]).
    ///
    /// # Errors
    /// The database is unreachable, a migration fails, or a port is taken.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, None).await
    }

    /// Like [`Application::build`] with a given bus; tests link several
    /// instances in one process through one [`crate::bus::local::LocalNetwork`].
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with_bus(config: Config, bus: SharedBus) -> anyhow::Result<Self> {
        Self::build_with(config, Some(bus)).await
    }

    /// Builds with `bus` if given, else the one the configuration asks for:
    /// Redis when `REDIS_URL` is set, in-process otherwise.
    async fn build_with(config: Config, bus: Option<SharedBus>) -> anyhow::Result<Self> {
        let store = Store::connect_with(
            config.database_url.expose_secret(),
            config.db_max_connections,
            config.sqlite_synchronous,
        )
        .await
        .context("connecting to DATABASE_URL")?;
        store.migrate().await.context("applying database migrations")?;
        let keys = JwtKeys::from_config(&config.jwt).context("loading JWT keys")?;
        let listener =
            listen(config.listen_addr).with_context(|| format!("binding LISTEN_ADDR {}", config.listen_addr))?;
        let metrics_listener = match config.metrics_addr {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| format!("binding METRICS_ADDR {addr}"))?),
            None => None,
        };
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let bus: SharedBus = match (bus, &config.redis) {
            (Some(bus), _) => bus,
            (None, Some(redis)) => Arc::new(RedisBus::start(redis.clone(), metrics.clone()).context("REDIS_URL")?),
            (None, None) => Arc::new(LocalBus::new()),
        };
        let push_wake = config.webhook.as_ref().map(|_| Arc::new(tokio::sync::Notify::new()));
        let push = match (&config.webhook, &push_wake) {
            (Some(w), Some(wake)) => Some(
                PushWorker::new(w.clone(), store.clone(), bus.clone(), metrics.clone(), wake.clone())
                    .context("building the WEBHOOK_URL client")?,
            ),
            _ => None,
        };
        let instance = instance_name(listener.local_addr().map(|a| a.port()).unwrap_or(0));
        metrics.ws_max_connections.set(config.ws.max_connections as i64);
        // The configured settings plus the two the running instance
        // decides; nothing else is copied.
        let settings = HubSettings { instance: Arc::from(instance.as_str()), push_wake, ..config.ws.clone() };
        let hub = Hub::start(store.clone(), bus, settings, metrics.clone(), stop.clone(), &tasks);
        let passwords = Passwords::new(config.password_hash_threads, config.password_hash_queue);
        let state = AppState {
            limits: Arc::new(Limits::from_settings(&config.limits)),
            hub,
            config: Arc::new(config),
            store,
            keys: Arc::new(keys),
            passwords,
            metrics,
            readiness: Readiness::default(),
            started: std::time::Instant::now(),
        };
        Ok(Application { listener, metrics_listener, state, stop, tasks, push })
    }

    /// The address the API listens on.
    ///
    /// # Panics
    /// Never for a bound TCP listener.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (tests use its store directly).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then drains in order: readiness
    /// goes false, the listener stops accepting, in-flight requests finish
    /// (bounded by `SHUTDOWN_TIMEOUT_SECS`), background tasks stop, and the
    /// database pool closes.
    ///
    /// # Errors
    /// The server failed (not on a clean shutdown).
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Application { listener, metrics_listener, state, stop, tasks, push } = self;

        tasks.spawn(housekeeping(state.clone(), stop.clone()));
        if let Some(push) = push {
            tasks.spawn(push.run(stop.clone()));
        }
        tasks.spawn(crate::retention::run(
            state.store.clone(),
            state.config.retention.clone(),
            state.metrics.clone(),
            stop.clone(),
        ));
        if let Some(l) = metrics_listener {
            // Scrape-time gauges are read first (one database ping); the
            // rest are maintained as things happen.
            let app = Router::new()
                .route(
                    "/metrics",
                    get(|State(state): State<AppState>| async move {
                        crate::api::stats::InstanceStats::gather(&state).await;
                        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
                    }),
                )
                .with_state(state.clone());
            let stop = stop.clone();
            tasks.spawn(async move {
                let _ = axum::serve(l, app).with_graceful_shutdown(stop.cancelled_owned()).await;
            });
        }

        let ws = Router::new().route("/ws", get(crate::api::ws::handler));
        let app = crate::api::router(state.clone(), ws);
        let drain = {
            let (state, stop) = (state.clone(), stop.clone());
            async move {
                shutdown.await;
                tracing::info!("shutdown requested: draining");
                // Readiness first, so load balancers stop routing here; then
                // sockets (the HTTP drain does not see upgraded ones).
                state.readiness.set_draining();
                state.hub.drain(state.config.shutdown_timeout).await;
                stop.cancel();
            }
        };
        let server = crate::serve::serve(listener, app, state.config.header_timeout, drain);
        let mut server = std::pin::pin!(server);
        let timeout = state.config.shutdown_timeout;
        tokio::select! {
            () = &mut server => {}
            () = async { stop.cancelled().await; tokio::time::sleep(timeout).await } => {
                tracing::warn!(timeout_secs = timeout.as_secs(), "in-flight requests did not finish in time");
            }
        }
        // Every background task watches `stop`: committers store what is
        // queued and end, the bus listener and publisher end. The bound is
        // a guard against a stuck database, not something shutdown waits
        // out.
        tasks.close();
        if tokio::time::timeout(timeout, tasks.wait()).await.is_err() {
            tracing::warn!(remaining = tasks.len(), "background tasks did not stop in time");
        }
        // After the committers: their last messages are published first.
        let _ = tokio::time::timeout(timeout, state.hub.bus().close()).await;
        state.store.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// `host:port`: unique per instance even when several share a host, and
/// what an operator recognises.
fn instance_name(port: u16) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}:{port}")
}

/// Periodic upkeep: shrink rate-limiter maps, purge expired tokens and
/// audit records past `AUDIT_RETENTION_DAYS`.
async fn housekeeping(state: AppState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                state.limits.shrink();
                if let Err(e) = state.store.purge_expired().await {
                    state.metrics.db_errors.inc("background");
                    tracing::warn!(error = %e, "purging expired tokens failed");
                }
                if let Some(retention) = state.config.audit_retention {
                    match purge_audit_log(&state.store, retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "audit records past retention purged"),
                        Err(e) => {
                            state.metrics.db_errors.inc("background");
                            tracing::warn!(error = %e, "purging the audit log failed");
                        }
                    }
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Batches of [`PURGE_BATCH`] deleted per housekeeping round at most: a
/// backlog (retention just shortened) drains over several minutes instead
/// of holding the writer for one long delete.
const PURGE_BATCHES_PER_ROUND: usize = 50;

/// Deletes audit records older than `retention`, in batches, at most
/// [`PURGE_BATCHES_PER_ROUND`] of them; returns how many went. The
/// housekeeping loop calls it every minute.
///
/// # Errors
/// The database failed; what was deleted before stays deleted.
pub async fn purge_audit_log(store: &Store, retention: Duration) -> Result<u64, DbError> {
    let cutoff = crate::clock::now_ms() - retention.as_millis() as i64;
    let mut total = 0;
    for _ in 0..PURGE_BATCHES_PER_ROUND {
        let n = store.purge_audit_batch(cutoff, PURGE_BATCH).await?;
        total += n;
        if n < PURGE_BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

/// Connections the kernel queues for the public listener before `accept`
/// (capped by `net.core.somaxconn`). The standard 128 overflowed when a few
/// hundred clients reconnected at once: each connection the queue dropped
/// came back only with the client's SYN retry a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the public listener (with `SO_REUSEADDR`, as `TcpListener::bind`
/// does) with a backlog sized for reconnect storms.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
