//! Prometheus metrics, held in a registry owned by the application (no
//! global default registry), served on `METRICS_ADDR`.

use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

/// Metric names: part of the operator contract.
pub const HTTP_REQUESTS: &str = "chatgw_http_requests_total";
pub const DB_UP: &str = "chatgw_database_up";
pub const WS_CONNECTIONS: &str = "chatgw_ws_connections";
pub const WS_DELIVERIES: &str = "chatgw_ws_deliveries_total";
pub const WS_MESSAGES_STORED: &str = "chatgw_ws_messages_stored_total";
pub const WS_CLOSES: &str = "chatgw_ws_closes_total";
pub const WS_ERRORS: &str = "chatgw_ws_errors_total";
pub const WS_HANDSHAKES: &str = "chatgw_ws_handshakes_total";
pub const COMMIT_BATCH: &str = "chatgw_commit_batch_size";

/// Handles to every metric; cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests by matched route template and status class.
    pub http_requests: IntCounterVec,
    /// 1 when the last readiness check reached the database.
    pub db_up: IntGauge,
    /// Open WebSocket connections.
    pub ws_connections: IntGauge,
    /// Message frames queued to sockets (one per recipient).
    pub ws_deliveries: IntCounter,
    /// Messages newly stored from sends.
    pub ws_messages_stored: IntCounter,
    /// Server-initiated closes by code.
    pub ws_closes: IntCounterVec,
    /// Error frames sent, by code.
    pub ws_errors: IntCounterVec,
    /// Handshake outcomes (`ok`, or the refusal reason).
    pub ws_handshakes: IntCounterVec,
    /// Messages per group-commit transaction.
    pub commit_batch_size: Histogram,
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
        let db_up =
            IntGauge::new(DB_UP, "Whether the database answered the last readiness check").expect("valid metric");
        let ws_connections = IntGauge::new(WS_CONNECTIONS, "Open WebSocket connections").expect("valid metric");
        let ws_deliveries = IntCounter::new(WS_DELIVERIES, "Message frames queued to sockets").expect("valid metric");
        let ws_messages_stored =
            IntCounter::new(WS_MESSAGES_STORED, "Messages stored from sends").expect("valid metric");
        let ws_closes =
            IntCounterVec::new(Opts::new(WS_CLOSES, "Server-initiated WebSocket closes by code"), &["code"])
                .expect("valid metric");
        let ws_errors =
            IntCounterVec::new(Opts::new(WS_ERRORS, "Error frames sent by code"), &["code"]).expect("valid metric");
        let ws_handshakes =
            IntCounterVec::new(Opts::new(WS_HANDSHAKES, "WebSocket handshakes by outcome"), &["outcome"])
                .expect("valid metric");
        let commit_batch_size = Histogram::with_opts(
            HistogramOpts::new(COMMIT_BATCH, "Messages per group-commit transaction")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
        )
        .expect("valid metric");
        for m in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(db_up.clone()),
            Box::new(ws_connections.clone()),
            Box::new(ws_deliveries.clone()),
            Box::new(ws_messages_stored.clone()),
            Box::new(ws_closes.clone()),
            Box::new(ws_errors.clone()),
            Box::new(ws_handshakes.clone()),
            Box::new(commit_batch_size.clone()),
        ] {
            registry.register(m).expect("registered once");
        }
        // process_cpu_seconds_total and process_resident_memory_bytes: what
        // `loadtest --metrics-url` reads for CPU per delivery and KiB per
        // connection.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registered once");
        Metrics {
            registry,
            http_requests,
            db_up,
            ws_connections,
            ws_deliveries,
            ws_messages_stored,
            ws_closes,
            ws_errors,
            ws_handshakes,
            commit_batch_size,
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
