//! The limits a connection works under, announced in `hello` so a client
//! can stay within them instead of discovering them by refusal.

use serde::Serialize;

/// Limits announced in `hello`.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    pub max_frame_bytes: usize,
    pub max_body_bytes: usize,
    pub send_per_sec: u32,
    pub send_burst: u32,
    pub events_per_sec: u32,
    pub events_burst: u32,
    /// Rooms one socket may have joined at once.
    pub max_rooms: usize,
    /// Rooms one `sync` frame may list.
    pub max_sync_rooms: usize,
    /// How long after its `sent_at` a message may be edited (0: edits are
    /// off), so a client can tell before offering the edit (1.2).
    pub edit_window_ms: u64,
}
