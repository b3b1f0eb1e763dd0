//! Prometheus metrics, held in a registry owned by the application (no
//! global default registry), served on `METRICS_ADDR` only.
//!
//! Conventions: base units (`_seconds`, frames, bytes), `_total` counters,
//! bounded label sets (never a user, room, session or connection id; HTTP
//! routes as templates). Labelled series a hot path touches are resolved
//! once here, so an update is one atomic add and no hashing. The README's
//! "Operating" section lists every series with its meaning.
//!
//! Cost on the delivery path: per message, a handful of shared updates
//! (stored, deliveries, queue depth); per recipient, nothing shared (see
//! [`batched`]).

pub mod batched;

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub use batched::{BatchedHistogram, LATENCY_BUCKETS, Local};

/// Frame types a client sends, as counted (`invalid`: did not parse).
pub const FRAMES_IN: [&str; 8] = ["join", "leave", "send", "typing", "read", "ping", "auth", "invalid"];
/// Frame types the server sends, as counted.
pub const FRAMES_OUT: [&str; 11] =
    ["hello", "joined", "left", "ack", "message", "typing", "read", "presence", "pong", "auth_ok", "error"];
/// Handshake outcomes (`ok` or why it was refused).
pub const HANDSHAKE_OUTCOMES: [&str; 11] = [
    "ok",
    "unauthorized",
    "origin",
    "rate_limited",
    "banned",
    "erased",
    "capacity",
    "user_cap",
    "draining",
    "unavailable",
    "not_websocket",
];
/// Server close codes (protocol/README.md).
pub const CLOSE_CODES: [&str; 8] = ["1000", "1001", "1007", "1009", "4001", "4003", "4008", "4009"];
/// Where a storage error surfaced.
pub const DB_ERROR_SOURCES: [&str; 5] = ["http", "ws", "commit", "background", "audit"];
/// What became of an offline-push event (README, "Offline push webhook").
pub const WEBHOOK_EVENT_OUTCOMES: [&str; 4] = ["delivered", "skipped", "retried", "given_up"];
/// How a webhook POST ended.
pub const WEBHOOK_RESULTS: [&str; 4] = ["ok", "http_error", "timeout", "error"];
/// Why a room's gap fill gave up (README, "Metrics").
pub const GAP_FILL_GIVEUP_REASONS: [&str; 3] = ["not_stored", "storage_error", "shutdown"];
/// Why the bus lost events.
pub const BUS_DROP_REASONS: [&str; 5] =
    ["publish_queue_full", "publish_failed", "inbound_full", "inbound_lagged", "undecodable"];

/// Pre-resolved children of a labelled counter, looked up by a static name
/// (a linear scan over a few short strings: cheaper than hashing labels).
#[derive(Clone)]
pub struct Counters<const K: usize> {
    names: [&'static str; K],
    counters: [IntCounter; K],
    vec: IntCounterVec,
}

impl<const K: usize> Counters<K> {
    fn new(vec: IntCounterVec, names: [&'static str; K]) -> Self {
        let counters = names.map(|n| vec.with_label_values(&[n]));
        Counters { names, counters, vec }
    }

    /// Increments `name` by `n`. A name outside the fixed set gets its own
    /// series (still bounded: callers pass codes and kinds, never ids).
    pub fn add(&self, name: &str, n: u64) {
        match self.names.iter().position(|x| *x == name) {
            Some(i) => self.counters[i].inc_by(n),
            None => self.vec.with_label_values(&[name]).inc_by(n),
        }
    }

    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }
}

/// Handles to every metric: one pointer, cheap to clone. It lives in the
/// state every connection task holds, so it must stay small.
#[derive(Clone)]
pub struct Metrics(Arc<Series>);

impl std::ops::Deref for Metrics {
    type Target = Series;

    fn deref(&self) -> &Series {
        &self.0
    }
}

/// Every series, registered in the application's own registry.
pub struct Series {
    registry: Registry,
    /// Requests by method, route template and status.
    pub http_requests: IntCounterVec,
    /// Request latency by method and route template.
    pub http_duration: HistogramVec,
    /// 1 when the last readiness check reached the database.
    pub db_up: IntGauge,
    /// 1 when `/readyz` would answer 200 (set at scrape).
    pub ready: IntGauge,
    /// 1 once shutdown began.
    pub draining: IntGauge,
    /// Open WebSocket connections.
    pub ws_connections: IntGauge,
    /// `MAX_CONNECTIONS`, for "near the cap" alerts.
    pub ws_max_connections: IntGauge,
    /// Message frames queued to sockets (one per recipient).
    pub ws_deliveries: IntCounter,
    /// Messages newly stored from sends.
    pub ws_messages_stored: IntCounter,
    /// Server-initiated closes by code.
    pub ws_closes: Counters<8>,
    /// Error frames sent, by code.
    pub ws_errors: IntCounterVec,
    /// Handshake outcomes (`ok`, or the refusal reason).
    pub ws_handshakes: Counters<11>,
    /// Client frames by type.
    pub frames_in: Counters<8>,
    /// Server frames by type.
    pub frames_out: Counters<11>,
    /// Frames refused by a connection's rate limit, by budget.
    pub rate_limited: Counters<2>,
    /// Sockets cut off because their outbound queue was full (4009).
    pub slow_consumers: IntCounter,
    /// Deepest outbound queue among a message's recipients, sampled at
    /// each fan-out.
    pub outbound_queue_depth: Histogram,
    /// `send` received -> `ack` written.
    pub persist_seconds: Histogram,
    /// Ready for fan-out on this instance -> written to a recipient's
    /// socket, per recipient.
    pub fanout_seconds: BatchedHistogram,
    /// Published on one instance -> received on another.
    pub bus_transit_seconds: Histogram,
    /// Messages per group-commit transaction.
    pub commit_batch_size: Histogram,
    /// Messages whose group commit failed.
    pub commit_failures: IntCounter,
    /// Sends waiting for the committer (set at scrape).
    pub commit_queue_depth: IntGauge,
    /// Storage errors surfaced to a caller, by where.
    pub db_errors: Counters<5>,
    /// Pool connections by pool and state (set at scrape).
    pub db_pool_connections: IntGaugeVec,
    /// Pool sizes by pool.
    pub db_pool_max: IntGaugeVec,
    /// 1 while the bus answers its health check (always 1 in-process).
    pub bus_up: IntGauge,
    /// Reconnections of the bus to Redis.
    pub bus_reconnects: IntCounter,
    /// Bus events lost, by where (peers recover them from storage).
    pub bus_events_dropped: Counters<5>,
    /// Events waiting in the publish queue (sampled per batch).
    pub bus_publish_queue: IntGauge,
    /// Room channels this instance is subscribed to.
    pub bus_rooms: IntGauge,
    /// Gap fills that delivered at least one message from storage.
    pub hub_gap_fills: IntCounter,
    /// Gap fills given up, by reason (`GAP_FILL_GIVEUP_REASONS`): what the
    /// room held is released and each socket replays from storage itself.
    pub hub_gap_fill_giveups: Counters<3>,
    /// Rooms the tail check compared with storage.
    pub hub_tail_checks: IntCounter,
    /// Messages the tail check delivered: lost by the bus without anyone
    /// noticing, or stored by an instance that died before publishing.
    pub hub_tail_recovered: IntCounter,
    /// Catch-ups of every room from storage after the bus lost events.
    pub hub_resyncs: IntCounter,
    /// Rooms with at least one local subscriber (set at scrape).
    pub hub_rooms: IntGauge,
    /// (room, user) pairs online through this instance (set at scrape).
    pub presence_entries: IntGauge,
    /// Offline-push events by outcome: delivered (2xx), skipped (nobody
    /// offline), retried (rescheduled), given_up (`WEBHOOK_MAX_ATTEMPTS`).
    pub webhook_events: Counters<4>,
    /// Webhook POSTs by result.
    pub webhook_requests: Counters<4>,
    /// Webhook POST latency, whatever the result.
    pub webhook_request_seconds: Histogram,
}

fn latency(name: &str, help: &str) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec())).expect("valid metric")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric")
}

impl Metrics {
    /// Creates and registers every series.
    ///
    /// Over 120 lines because it is a table: one entry per series with its
    /// name and help text, then one registration each; split up, a series'
    /// name would sit far from where it is registered.
    ///
    /// # Panics
    /// Never: names are constants and registered once per registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let build_info = IntGaugeVec::new(
            Opts::new("chatgw_build_info", "Version and git commit of the running binary (always 1)"),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("CHATGW_GIT_COMMIT")]).set(1);
        let m = Series {
            http_requests: IntCounterVec::new(
                Opts::new("chatgw_http_requests_total", "HTTP requests by route and status"),
                &["method", "route", "status"],
            )
            .expect("valid metric"),
            http_duration: HistogramVec::new(
                HistogramOpts::new("chatgw_http_request_duration_seconds", "HTTP request latency by route")
                    .buckets(LATENCY_BUCKETS.to_vec()),
                &["method", "route"],
            )
            .expect("valid metric"),
            db_up: gauge("chatgw_database_up", "Whether the database answered the last readiness check"),
            ready: gauge("chatgw_ready", "Whether the instance is ready (database and bus up, not draining)"),
            draining: gauge("chatgw_draining", "Whether the instance is shutting down"),
            ws_connections: gauge("chatgw_ws_connections", "Open WebSocket connections"),
            ws_max_connections: gauge(
                "chatgw_ws_max_connections",
                "Most WebSocket connections accepted (MAX_CONNECTIONS)",
            ),
            ws_deliveries: counter("chatgw_ws_deliveries_total", "Message frames queued to sockets"),
            ws_messages_stored: counter("chatgw_ws_messages_stored_total", "Messages stored from sends"),
            ws_closes: Counters::new(
                counter_vec("chatgw_ws_closes_total", "Server-initiated WebSocket closes by code", "code"),
                CLOSE_CODES,
            ),
            ws_errors: counter_vec("chatgw_ws_errors_total", "Error frames sent by code", "code"),
            ws_handshakes: Counters::new(
                counter_vec("chatgw_ws_handshakes_total", "WebSocket handshakes by outcome", "outcome"),
                HANDSHAKE_OUTCOMES,
            ),
            frames_in: Counters::new(
                counter_vec("chatgw_ws_frames_received_total", "Client frames received by type", "type"),
                FRAMES_IN,
            ),
            frames_out: Counters::new(
                counter_vec("chatgw_ws_frames_sent_total", "Server frames sent by type", "type"),
                FRAMES_OUT,
            ),
            rate_limited: Counters::new(
                counter_vec("chatgw_ws_rate_limited_total", "Frames refused by a connection's rate limit", "kind"),
                ["send", "event"],
            ),
            slow_consumers: counter(
                "chatgw_ws_slow_consumers_total",
                "Sockets cut off because their outbound queue was full (close 4009)",
            ),
            outbound_queue_depth: Histogram::with_opts(
                HistogramOpts::new(
                    "chatgw_ws_outbound_queue_depth",
                    "Frames already queued at the deepest recipient of each fan-out",
                )
                .buckets(vec![0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]),
            )
            .expect("valid metric"),
            persist_seconds: latency("chatgw_message_persist_seconds", "From a send received to its ack written"),
            fanout_seconds: BatchedHistogram::new(
                "chatgw_message_fanout_seconds",
                "From a message ready for fan-out on this instance to its frame written to a recipient's socket",
            ),
            bus_transit_seconds: latency(
                "chatgw_bus_transit_seconds",
                "From a message published on one instance to its receipt on another",
            ),
            commit_batch_size: Histogram::with_opts(
                HistogramOpts::new("chatgw_commit_batch_size", "Messages per group-commit transaction")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            )
            .expect("valid metric"),
            commit_failures: counter("chatgw_commit_failures_total", "Messages whose group commit failed"),
            commit_queue_depth: gauge("chatgw_commit_queue_depth", "Sends waiting for the committer"),
            db_errors: Counters::new(
                counter_vec("chatgw_db_errors_total", "Storage errors surfaced to a caller, by where", "source"),
                DB_ERROR_SOURCES,
            ),
            db_pool_connections: IntGaugeVec::new(
                Opts::new("chatgw_db_pool_connections", "Database pool connections by pool and state"),
                &["pool", "state"],
            )
            .expect("valid metric"),
            db_pool_max: IntGaugeVec::new(
                Opts::new("chatgw_db_pool_max_connections", "Database pool size limit by pool"),
                &["pool"],
            )
            .expect("valid metric"),
            bus_up: gauge("chatgw_bus_up", "Whether the bus answers its health check"),
            bus_reconnects: counter("chatgw_bus_reconnects_total", "Bus reconnections to Redis"),
            bus_events_dropped: Counters::new(
                counter_vec("chatgw_bus_events_dropped_total", "Bus events lost, by reason", "reason"),
                BUS_DROP_REASONS,
            ),
            bus_publish_queue: gauge("chatgw_bus_publish_queue_depth", "Events waiting to be published on the bus"),
            bus_rooms: gauge("chatgw_bus_subscribed_rooms", "Room channels subscribed on the bus"),
            hub_gap_fills: counter(
                "chatgw_hub_gap_fills_total",
                "Room sequence gap fills that delivered at least one message from storage",
            ),
            hub_gap_fill_giveups: Counters::new(
                counter_vec(
                    "chatgw_hub_gap_fill_giveups_total",
                    "Room sequence gap fills given up (sockets replay from storage themselves), by reason",
                    "reason",
                ),
                GAP_FILL_GIVEUP_REASONS,
            ),
            hub_tail_checks: counter(
                "chatgw_hub_tail_checks_total",
                "Quiet rooms compared with storage by the tail check",
            ),
            hub_tail_recovered: counter(
                "chatgw_hub_tail_recovered_total",
                "Messages the tail check delivered from storage that the bus never brought",
            ),
            hub_resyncs: counter("chatgw_hub_resyncs_total", "Catch-ups from storage after the bus lost events"),
            hub_rooms: gauge("chatgw_hub_rooms", "Rooms with at least one local subscriber"),
            presence_entries: gauge("chatgw_presence_entries", "(room, user) pairs online through this instance"),
            webhook_events: Counters::new(
                counter_vec("chatgw_webhook_events_total", "Offline-push events by outcome", "outcome"),
                WEBHOOK_EVENT_OUTCOMES,
            ),
            webhook_requests: Counters::new(
                counter_vec("chatgw_webhook_requests_total", "Offline-push webhook POSTs by result", "result"),
                WEBHOOK_RESULTS,
            ),
            webhook_request_seconds: latency(
                "chatgw_webhook_request_seconds",
                "Offline-push webhook POST latency, whatever the result",
            ),
            registry,
        };
        m.bus_up.set(1);
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(build_info),
            Box::new(m.http_requests.clone()),
            Box::new(m.http_duration.clone()),
            Box::new(m.db_up.clone()),
            Box::new(m.ready.clone()),
            Box::new(m.draining.clone()),
            Box::new(m.ws_connections.clone()),
            Box::new(m.ws_max_connections.clone()),
            Box::new(m.ws_deliveries.clone()),
            Box::new(m.ws_messages_stored.clone()),
            Box::new(m.ws_closes.vec.clone()),
            Box::new(m.ws_errors.clone()),
            Box::new(m.ws_handshakes.vec.clone()),
            Box::new(m.frames_in.vec.clone()),
            Box::new(m.frames_out.vec.clone()),
            Box::new(m.rate_limited.vec.clone()),
            Box::new(m.slow_consumers.clone()),
            Box::new(m.outbound_queue_depth.clone()),
            Box::new(m.persist_seconds.clone()),
            Box::new(m.fanout_seconds.clone()),
            Box::new(m.bus_transit_seconds.clone()),
            Box::new(m.commit_batch_size.clone()),
            Box::new(m.commit_failures.clone()),
            Box::new(m.commit_queue_depth.clone()),
            Box::new(m.db_errors.vec.clone()),
            Box::new(m.db_pool_connections.clone()),
            Box::new(m.db_pool_max.clone()),
            Box::new(m.bus_up.clone()),
            Box::new(m.bus_reconnects.clone()),
            Box::new(m.bus_events_dropped.vec.clone()),
            Box::new(m.bus_publish_queue.clone()),
            Box::new(m.bus_rooms.clone()),
            Box::new(m.hub_gap_fills.clone()),
            Box::new(m.hub_gap_fill_giveups.vec.clone()),
            Box::new(m.hub_tail_checks.clone()),
            Box::new(m.hub_tail_recovered.clone()),
            Box::new(m.hub_resyncs.clone()),
            Box::new(m.hub_rooms.clone()),
            Box::new(m.presence_entries.clone()),
            Box::new(m.webhook_events.vec.clone()),
            Box::new(m.webhook_requests.vec.clone()),
            Box::new(m.webhook_request_seconds.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("registered once");
        }
        // Every code an `error` frame may carry exists from the start, so
        // rate() and alerts see a zero before the first error rather than
        // no series (the REST-only codes are never a socket's).
        for code in crate::protocol::ErrorCode::SOCKET {
            m.ws_errors.with_label_values(&[code.as_str()]);
        }
        // process_cpu_seconds_total, process_resident_memory_bytes,
        // process_open_fds, process_max_fds: what `loadtest --metrics-url`
        // reads for CPU per delivery and KiB per connection, and what the fd
        // alert compares.
        #[cfg(target_os = "linux")]
        m.registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("registered once");
        Metrics(Arc::new(m))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, close};

    /// The close codes counted from the start are the protocol's (or 1000,
    /// the normal closure RFC 6455 defines), so a renumbered code cannot
    /// leave a series behind.
    #[test]
    fn close_codes_are_the_protocols() {
        let protocol = [
            close::OPERATOR,
            close::GOING_AWAY,
            close::INVALID_UTF8,
            close::TOO_BIG,
            close::INTERNAL,
            close::AUTH,
            close::IDLE,
            close::FORBIDDEN,
            close::RATE_LIMIT,
            close::SLOW_CONSUMER,
        ];
        for c in CLOSE_CODES {
            let n: u16 = c.parse().unwrap();
            assert!(n == 1000 || protocol.contains(&n), "{c} is not a close code of the protocol");
        }
    }

    /// One `chatgw_ws_errors_total` series per socket error code from the
    /// start, and none for the REST-only codes.
    #[test]
    fn socket_error_series_exist_from_the_start() {
        let text = Metrics::new().render();
        let series = |code: &str| format!("chatgw_ws_errors_total{{code=\"{code}\"}} 0");
        for c in ErrorCode::SOCKET {
            assert!(text.contains(&series(c.as_str())), "{}", c.as_str());
        }
        for c in [ErrorCode::UnsupportedMediaType, ErrorCode::Timeout] {
            assert!(!text.contains(&series(c.as_str())), "{}", c.as_str());
        }
    }
}
