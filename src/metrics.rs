//! Prometheus metrics, held in a registry owned by the application (no
//! global default registry), served on `METRICS_ADDR`.

use prometheus::{Encoder, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Metric names: part of the operator contract.
pub const HTTP_REQUESTS: &str = "chatgw_http_requests_total";
pub const DB_UP: &str = "chatgw_database_up";

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by matched route template and status class.
    pub http_requests: IntCounterVec,
    /// 1 when the last readiness check reached the database.
    pub db_up: IntGauge,
}

impl Metrics {
    /// # Panics
    /// Never: names are constants and registered once per registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(HTTP_REQUESTS, "HTTP requests by route and status"),
            &["method", "route", "status"],
        )
        .expect("valid metric");
        let db_up = IntGauge::new(
            DB_UP,
            "Whether the database answered the last readiness check",
        )
        .expect("valid metric");
        registry
            .register(Box::new(http_requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(db_up.clone()))
            .expect("registered once");
        Metrics {
            registry,
            http_requests,
            db_up,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
