//! Frames the server sends, each encoded once into shareable text.
//!
//! The stream frames (`message`, `edit`, `delete`) are built from a
//! [`StreamEntry`], the protocol's own borrowed view of a stored entry, so
//! this module needs nothing of storage: the hub adapts its rows
//! (`hub::wire`).

use axum::extract::ws::Utf8Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use super::codes::ErrorCode;
use super::limits::Limits;

/// Frames the server sends. Serialised once per event; message frames are
/// shared by every recipient.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Hello {
        protocol: u32,
        session_id: &'a str,
        user_id: &'a str,
        heartbeat_ms: u64,
        idle_timeout_ms: u64,
        token_expires_at: i64,
        limits: &'a Limits,
        /// `"1.2"`: the minor version of the additions served (§19).
        protocol_version: &'a str,
        /// The 1.x features this instance serves.
        features: &'a [&'a str],
        /// `"ws"` or `"app"`: how this connection's liveness is checked.
        heartbeat: &'a str,
        /// The server's clock when `hello` was written, Unix ms: clients
        /// with a wrong clock compute expiries from the relative fields.
        server_time: i64,
        /// `token_expires_at - server_time`.
        token_expires_in_ms: i64,
    },
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        room: &'a str,
        last_seq: i64,
        replayed: u64,
        /// Users online in the room now, across the cluster.
        online: &'a [String],
        /// The room's history epoch.
        epoch: &'a str,
        /// The user's stored read marker (0 when none).
        read_seq: i64,
    },
    /// End of a `sync`: how many rooms were listed, joined and refused.
    Synced {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        rooms: u64,
        joined: u64,
        failed: u64,
    },
    /// Retention removed messages the client has not seen: the replay that
    /// follows starts at `oldest_seq`.
    HistoryGone {
        room: &'a str,
        since_seq: i64,
        oldest_seq: i64,
    },
    /// The client's copy of the room cannot be right (another epoch, or a
    /// since_seq above last_seq): it drops it; nothing is replayed.
    Reset {
        room: &'a str,
        reason: &'a str,
        epoch: &'a str,
        last_seq: i64,
    },
    Left {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        room: &'a str,
        reason: &'a str,
    },
    Ack {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        room: &'a str,
        client_msg_id: &'a str,
        seq: i64,
        sent_at: i64,
        duplicate: bool,
    },
    Message {
        room: &'a str,
        seq: i64,
        sender: &'a str,
        body: &'a str,
        client_msg_id: &'a str,
        sent_at: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        edited_at: Option<i64>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
    },
    /// A change event: message `target_seq` now has `body`.
    Edit {
        room: &'a str,
        seq: i64,
        target_seq: i64,
        sender: &'a str,
        body: &'a str,
        client_msg_id: &'a str,
        sent_at: i64,
    },
    /// A change event: message `target_seq` was deleted.
    Delete {
        room: &'a str,
        seq: i64,
        target_seq: i64,
        sender: &'a str,
        reason: &'a str,
        client_msg_id: &'a str,
        sent_at: i64,
    },
    Typing {
        room: &'a str,
        user: &'a str,
    },
    Read {
        room: &'a str,
        user: &'a str,
        seq: i64,
    },
    Presence {
        room: &'a str,
        user: &'a str,
        status: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
    },
    AuthOk {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        expires_at: i64,
        /// `expires_at` relative to the server's clock now.
        expires_in_ms: i64,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Per-user stream: the user gained a room (no `join` needed to hear it).
    RoomAdded {
        room: &'a str,
        name: &'a str,
        role: &'a str,
        last_seq: i64,
    },
    /// Per-user stream: the user lost a room (`removed`, `left`, `room_deleted`).
    RoomRemoved {
        room: &'a str,
        reason: &'a str,
    },
    /// Per-user stream: one of the user's rooms was renamed.
    RoomUpdated {
        room: &'a str,
        name: &'a str,
    },
    /// Per-user stream: a room this socket has not joined moved to `last_seq`.
    RoomSeq {
        room: &'a str,
        last_seq: i64,
    },
}

impl ServerFrame<'_> {
    /// Serialises the frame into shareable text.
    pub fn encode(&self) -> Utf8Bytes {
        // Serialising these plain structs into a String cannot fail.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// The server's app-heartbeat `ping` (connections opened with
/// `heartbeat=app`): static text, no allocation per beat.
pub const APP_PING: &str = r#"{"type":"ping"}"#;

/// The `type` of a frame this server encoded (`{"type":"…",…}`: serde
/// writes the tag first), for counting frames that travel pre-encoded.
pub fn kind_of(frame: &str) -> &str {
    frame.strip_prefix(r#"{"type":""#).and_then(|r| r.split('"').next()).unwrap_or("unknown")
}

/// What an entry of a room's stream is: a message, or a change event of
/// message `target_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Message,
    Edit,
    Delete,
}

/// One entry of a room's stream, borrowed, with the fields its frame
/// carries: what [`stream_frame`] encodes.
#[derive(Debug, Clone, Copy)]
pub struct StreamEntry<'a> {
    pub kind: EntryKind,
    pub room: &'a str,
    pub seq: i64,
    pub sender: &'a str,
    /// A message's body (empty once deleted), an `edit`'s new body; unused
    /// by a `delete`.
    pub body: &'a str,
    pub client_msg_id: &'a str,
    pub sent_at: i64,
    /// The message a change event applies to.
    pub target_seq: Option<i64>,
    /// Why a `delete` happened (`author` when not recorded).
    pub reason: Option<&'a str>,
    /// A message's last edit.
    pub edited_at: Option<i64>,
    /// A message that was deleted (a tombstone).
    pub deleted: bool,
}

/// The stream frame of an entry: `message` (in its current state), or
/// `edit`/`delete` for a change event. Everything that carries a room's
/// stream (fan-out, replay, gap fill) goes through here, so change events
/// travel exactly like messages.
pub fn stream_frame(e: &StreamEntry) -> Utf8Bytes {
    let StreamEntry { room, seq, sender, body, client_msg_id, sent_at, .. } = *e;
    // A change event always has its target (written in the same row).
    let target_seq = e.target_seq.unwrap_or_default();
    match e.kind {
        EntryKind::Message => ServerFrame::Message {
            room,
            seq,
            sender,
            body,
            client_msg_id,
            sent_at,
            edited_at: e.edited_at,
            deleted: e.deleted,
        },
        EntryKind::Edit => ServerFrame::Edit { room, seq, target_seq, sender, body, client_msg_id, sent_at },
        EntryKind::Delete => ServerFrame::Delete {
            room,
            seq,
            target_seq,
            sender,
            reason: e.reason.unwrap_or("author"),
            client_msg_id,
            sent_at,
        },
    }
    .encode()
}

/// An `error` frame.
pub fn error_frame(
    id: Option<&RawValue>,
    code: ErrorCode,
    message: &str,
    room: Option<&str>,
    retry_after_ms: Option<u64>,
) -> Utf8Bytes {
    ServerFrame::Error { id, code, message, room, retry_after_ms }.encode()
}
