//! One instance's state in numbers, gathered when asked: by the admin view
//! (`GET /api/v1/admin/stats`) and by every scrape of `/metrics`, which
//! sets the gauges that nothing on the hot path maintains.
//!
//! Part of the HTTP edge: it reads the application state and the readiness
//! check of [`super::health`].

use serde::Serialize;
use utoipa::ToSchema;

use crate::hub::live::HubStats;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct InstanceStats {
    /// host:port of this instance.
    pub instance: String,
    pub version: &'static str,
    pub commit: &'static str,
    pub uptime_secs: u64,
    /// Whether `/readyz` answers 200, and why not.
    pub ready: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready_reason: Option<String>,
    pub draining: bool,
    pub hub: HubStats,
    pub bus: BusStats,
    pub database: DatabaseStats,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BusStats {
    /// `local` (in-process), `redis` or `redis-cluster`.
    pub backend: &'static str,
    pub up: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub publish_queue: i64,
    pub subscribed_rooms: i64,
    pub reconnects: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseStats {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    pub up: bool,
    pub pools: Vec<crate::db::PoolStats>,
}

impl InstanceStats {
    /// Reads everything (one database round trip for readiness) and sets
    /// the scrape-time gauges.
    pub async fn gather(state: &AppState) -> InstanceStats {
        let ready = super::health::check(state).await;
        let m = &state.metrics;
        let hub = state.hub.stats();
        let pools = state.store.pool_stats();
        m.hub_rooms.set(hub.rooms as i64);
        m.presence_entries.set(hub.presence_entries as i64);
        m.commit_queue_depth.set(hub.commit_queue as i64);
        m.draining.set(state.readiness.is_draining() as i64);
        for p in &pools {
            m.db_pool_connections.with_label_values(&[p.pool, "idle"]).set(p.idle as i64);
            m.db_pool_connections.with_label_values(&[p.pool, "in_use"]).set(p.in_use as i64);
            m.db_pool_max.with_label_values(&[p.pool]).set(p.max as i64);
        }
        let bus = state.hub.bus();
        let bus_error = bus.health().err();
        InstanceStats {
            instance: state.hub.instance().to_owned(),
            version: env!("CARGO_PKG_VERSION"),
            commit: env!("CHATGW_GIT_COMMIT"),
            uptime_secs: state.started.elapsed().as_secs(),
            ready: ready.is_ok(),
            not_ready_reason: ready.err(),
            draining: state.readiness.is_draining(),
            hub,
            bus: BusStats {
                backend: bus.name(),
                up: bus_error.is_none(),
                error: bus_error,
                publish_queue: m.bus_publish_queue.get(),
                subscribed_rooms: m.bus_rooms.get(),
                reconnects: m.bus_reconnects.get(),
            },
            database: DatabaseStats {
                backend: match state.store.backend() {
                    crate::db::Backend::Postgres => "postgres",
                    crate::db::Backend::Sqlite => "sqlite",
                },
                up: m.db_up.get() == 1,
                pools,
            },
        }
    }
}
