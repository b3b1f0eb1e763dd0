//! The hub's settings: what the configuration decides for sockets, rooms
//! and the committer. Declared once, here; `config` builds them from the
//! environment (`WS_*`, `MAX_CONNECTIONS`, …) and nothing copies them.

use std::sync::Arc;
use std::time::Duration;

use crate::protocol;

/// Socket-level settings, from the configuration. Two fields are the
/// running instance's rather than the environment's, and start-up sets
/// them once before [`super::Hub::start`]: `instance` (known after the
/// listener binds) and `push_wake` (made with the push worker).
#[derive(Debug, Clone)]
pub struct HubSettings {
    /// What `hello` announces; its `edit_window_ms` is the one edit window
    /// (`EDIT_WINDOW_SECS`, in ms; 0 turns edits off).
    pub limits: protocol::Limits,
    pub heartbeat: Duration,
    pub idle_timeout: Duration,
    /// Frames a connection may have queued before it is cut off (4009).
    pub outbound_queue: usize,
    /// Rate-limited frames in a row before closing with 4008.
    pub abuse_strikes: u32,
    /// Most connections this instance accepts.
    pub max_connections: usize,
    /// Sockets one user may hold open on this instance at once.
    pub max_sockets_per_user: usize,
    /// Upper bound of the randomised reconnect delay announced at drain.
    pub drain_reconnect_max_ms: u64,
    /// Concurrent group-commit transactions (`COMMIT_CONCURRENCY` on
    /// PostgreSQL; 1 for SQLite: one writer).
    pub committers: usize,
    /// How often presence entries are re-asserted (a third of their TTL).
    pub presence_heartbeat: Duration,
    /// How often quiet rooms are compared with storage ([`tail`]); `None`
    /// turns the check off.
    pub tail_check: Option<Duration>,
    /// This instance's name (host:port), in admin views and logs; set by
    /// start-up once the listener is bound.
    pub instance: Arc<str>,
    /// Set when the offline-push webhook is configured: the committer then
    /// writes outbox rows with each batch and wakes the push worker
    /// through it. `None` costs the delivery path nothing. Set by start-up.
    pub push_wake: Option<Arc<tokio::sync::Notify>>,
    /// How often rooms that moved are announced as `room_seq` (per room,
    /// at most one frame per socket per interval from each instance).
    pub user_stream_interval: Duration,
}

impl HubSettings {
    /// Whether the offline-push webhook is on: `hello.features` then lists
    /// `"push"`.
    pub fn push_enabled(&self) -> bool {
        self.push_wake.is_some()
    }
}
