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
pub const BUS_UP: &str = "chatgw_bus_up";
pub const BUS_RECONNECTS: &str = "chatgw_bus_reconnects_total";
pub const BUS_DROPPED: &str = "chatgw_bus_events_dropped_total";
pub const BUS_PUBLISH_QUEUE: &str = "chatgw_bus_publish_queue_depth";
pub const BUS_ROOMS: &str = "chatgw_bus_subscribed_rooms";
pub const HUB_GAP_FILLS: &str = "chatgw_hub_gap_fills_total";
pub const HUB_RESYNCS: &str = "chatgw_hub_resyncs_total";

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
    /// 1 while the bus answers its health check (always 1 in-process).
    pub bus_up: IntGauge,
    /// Reconnections of the bus to Redis.
    pub bus_reconnects: IntCounter,
    /// Bus events lost, by where (peers recover them from storage).
    pub bus_events_dropped: IntCounterVec,
    /// Events waiting in the publish queue (sampled per batch).
    pub bus_publish_queue: IntGauge,
    /// Room channels this instance is subscribed to.
    pub bus_rooms: IntGauge,
    /// Gaps in a room's sequence filled from storage.
    pub hub_gap_fills: IntCounter,
    /// Catch-ups of every room from storage after the bus lost events.
    pub hub_resyncs: IntCounter,
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
        let bus_up = IntGauge::new(BUS_UP, "Whether the bus answers its health check").expect("valid metric");
        bus_up.set(1);
        let bus_reconnects = IntCounter::new(BUS_RECONNECTS, "Bus reconnections to Redis").expect("valid metric");
        let bus_events_dropped = IntCounterVec::new(Opts::new(BUS_DROPPED, "Bus events lost, by reason"), &["reason"])
            .expect("valid metric");
        let bus_publish_queue =
            IntGauge::new(BUS_PUBLISH_QUEUE, "Events waiting to be published on the bus").expect("valid metric");
        let bus_rooms = IntGauge::new(BUS_ROOMS, "Room channels subscribed on the bus").expect("valid metric");
        let hub_gap_fills =
            IntCounter::new(HUB_GAP_FILLS, "Room sequence gaps filled from storage").expect("valid metric");
        let hub_resyncs =
            IntCounter::new(HUB_RESYNCS, "Catch-ups from storage after the bus lost events").expect("valid metric");
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
            Box::new(bus_up.clone()),
            Box::new(bus_reconnects.clone()),
            Box::new(bus_events_dropped.clone()),
            Box::new(bus_publish_queue.clone()),
            Box::new(bus_rooms.clone()),
            Box::new(hub_gap_fills.clone()),
            Box::new(hub_resyncs.clone()),
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
            bus_up,
            bus_reconnects,
            bus_events_dropped,
            bus_publish_queue,
            bus_rooms,
            hub_gap_fills,
            hub_resyncs,
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
