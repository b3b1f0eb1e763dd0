//! Wire frames of protocol v1 (see `protocol/README.md`): parsing client
//! frames in one pass, and building server frames.
//!
//! Parsing is one borrowed pass into a flat struct with every optional field,
//! then a per-type check of the required ones: cheaper than an untagged enum
//! and gives precise errors. Request ids are echoed verbatim as raw JSON.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::db::{EntryType, StoredMessage};

/// Stable error codes of `error` frames (shared with REST where they overlap).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    TokenExpired,
    Internal,
    Unavailable,
    /// A per-socket cap (rooms joined at once) is reached.
    LimitExceeded,
    /// `typing`/`read` for a room this socket has not joined: distinct from
    /// `forbidden`, which tells the client to drop the room altogether.
    NotJoined,
    /// A `client_msg_id` already stored with a different body: the retry is
    /// not the same message, and acking it would lose the new text.
    Conflict,
    /// An `edit` after `EDIT_WINDOW_SECS` from the message's `sent_at`.
    EditWindowClosed,
    /// An `edit` or `delete` of a message the caller may not change (not
    /// its author; for a delete, not the room's owner either): distinct
    /// from `forbidden`, which tells the client to drop the room (1.2).
    NotAuthor,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::TokenExpired,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::LimitExceeded,
        ErrorCode::NotJoined,
        ErrorCode::Conflict,
        ErrorCode::EditWindowClosed,
        ErrorCode::NotAuthor,
    ];

    /// The code as it appears on the wire (and as a metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::Conflict => "conflict",
            ErrorCode::EditWindowClosed => "edit_window_closed",
            ErrorCode::NotAuthor => "not_author",
        }
    }
}

/// WebSocket close codes of the protocol.
pub mod close {
    /// Disconnected by an operator (the default of the admin disconnect).
    pub const OPERATOR: u16 = 4000;
    /// Server draining (restart, deploy).
    pub const GOING_AWAY: u16 = 1001;
    /// A text frame that is not UTF-8 (RFC 6455 8.1).
    pub const INVALID_UTF8: u16 = 1007;
    /// A frame larger than the frame limit.
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL: u16 = 1011;
    /// Token expired and not renewed, session revoked, account erased.
    pub const AUTH: u16 = 4001;
    /// Nothing received for the idle timeout (1000 stays "normal closure").
    pub const IDLE: u16 = 4002;
    /// The user is banned.
    pub const FORBIDDEN: u16 = 4003;
    /// Kept sending while rate-limited.
    pub const RATE_LIMIT: u16 = 4008;
    /// Outbound queue overflowed: the client did not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4009;
}

/// A client request after the one-pass parse. Members it does not know are
/// skipped here and refused by [`stray_field`], which knows each type's
/// own fields (one rule and one message for both kinds of stray field).
#[derive(Debug, Deserialize)]
pub struct RawFrame<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub id: Option<&'a RawValue>,
    pub room: Option<String>,
    pub since_seq: Option<i64>,
    pub body: Option<String>,
    pub client_msg_id: Option<String>,
    pub seq: Option<i64>,
    pub token: Option<String>,
    pub target_seq: Option<i64>,
    pub epoch: Option<String>,
    pub rooms: Option<Vec<RawSyncEntry>>,
}

/// One entry of a `sync` frame's `rooms`, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyncEntry {
    pub room: String,
    pub since_seq: Option<i64>,
    pub epoch: Option<String>,
}

/// One room to resume: by `join`, or as an entry of `sync`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resume {
    pub room: String,
    /// Highest seq the client holds; `None`: no replay.
    pub since_seq: Option<i64>,
    /// The epoch the client's copy belongs to, when it has one.
    pub epoch: Option<String>,
}

/// The fields each client frame type may carry besides `type` and `id`:
/// the properties of `protocol/schemas/client.<type>.json` (a unit test
/// holds the two together). Types of protocol 1.1 are listed as the naming
/// contract has them; a type absent here is refused as unknown anyway.
const FIELDS: &[(&str, &[&str])] = &[
    ("join", &["room", "since_seq", "epoch"]),
    ("leave", &["room"]),
    ("send", &["room", "body", "client_msg_id"]),
    ("typing", &["room"]),
    ("read", &["room", "seq"]),
    ("ping", &[]),
    ("pong", &[]),
    ("auth", &["token"]),
    ("sync", &["rooms"]),
    ("edit", &["room", "target_seq", "body", "client_msg_id"]),
    ("delete", &["room", "target_seq", "client_msg_id"]),
];

/// The fields a frame type may carry, if the type is known.
pub fn fields_of(ty: &str) -> Option<&'static [&'static str]> {
    FIELDS.iter().find(|(t, _)| *t == ty).map(|(_, f)| *f)
}

/// The first member of the JSON object `text` that is neither `type`, `id`
/// nor one of `allowed`. A second, allocation-free pass over a frame that
/// already parsed (client frames are small and rate-limited; nothing here
/// is on the delivery path).
fn stray_field(text: &str, allowed: &[&str]) -> Option<String> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    /// A member name, borrowed unless it had escapes.
    struct Key<'de>(std::borrow::Cow<'de, str>);
    impl<'de> Deserialize<'de> for Key<'de> {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a member name")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
                }
            }
            d.deserialize_str(V)
        }
    }

    struct Check<'s>(&'s [&'s str]);
    impl<'de> DeserializeSeed<'de> for Check<'_> {
        type Value = Option<String>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Check<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut stray = None;
            while let Some(Key(k)) = map.next_key::<Key>()? {
                map.next_value::<IgnoredAny>()?;
                if stray.is_none() && k != "type" && k != "id" && !self.0.contains(&k.as_ref()) {
                    stray = Some(k.into_owned());
                }
            }
            Ok(stray)
        }
    }

    let mut de = serde_json::Deserializer::from_str(text);
    Check(allowed).deserialize(&mut de).ok().flatten()
}

/// Only the id, for echoing it in the error about an otherwise bad frame.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// A validated client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientFrame {
    Join(Resume),
    /// Bulk resume: many rooms in one frame (§14).
    Sync {
        rooms: Vec<Resume>,
    },
    Leave {
        room: String,
    },
    Send {
        room: String,
        body: String,
        client_msg_id: String,
    },
    Edit {
        room: String,
        target_seq: i64,
        body: String,
        client_msg_id: String,
    },
    Delete {
        room: String,
        target_seq: i64,
        client_msg_id: String,
    },
    Typing {
        room: String,
    },
    Read {
        room: String,
        seq: i64,
    },
    Ping,
    /// The answer to a server `ping` (app heartbeats).
    Pong,
    Auth {
        token: String,
    },
}

impl ClientFrame {
    /// The frame's `type`, as counted in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Join(_) => "join",
            ClientFrame::Sync { .. } => "sync",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Edit { .. } => "edit",
            ClientFrame::Delete { .. } => "delete",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Ping => "ping",
            ClientFrame::Pong => "pong",
            ClientFrame::Auth { .. } => "auth",
        }
    }
}

/// The `type` of a frame this server encoded (`{"type":"…",…}`: serde
/// writes the tag first), for counting frames that travel pre-encoded.
pub fn kind_of(frame: &str) -> &str {
    frame.strip_prefix(r#"{"type":""#).and_then(|r| r.split('"').next()).unwrap_or("unknown")
}

/// Why a frame was refused, with the id to echo when one could be read.
#[derive(Debug)]
pub struct FrameError {
    pub id: Option<Box<RawValue>>,
    pub code: ErrorCode,
    pub message: String,
    /// The room a `too_large` send was for (protocol: "with `id` and
    /// `room`").
    pub room: Option<String>,
}

/// A request id: a JSON string of at most 64 characters or an integer.
fn valid_id(raw: &RawValue) -> bool {
    let s = raw.get();
    if s.starts_with('"') {
        // A cheap bound first: a character is at most 12 bytes of JSON
        // (`\uD83D\uDE80`, the escaped surrogate pair that Python's
        // `json.dumps` writes for an emoji).
        s.len() <= 64 * 12 + 2 && serde_json::from_str::<String>(s).is_ok_and(|v| v.chars().count() <= 64)
    } else {
        serde_json::from_str::<i64>(s).is_ok()
    }
}

fn valid_room(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Epochs are opaque to clients; the server's are 12 hex characters.
fn valid_epoch(e: &str) -> bool {
    valid_room(e)
}

fn valid_client_msg_id(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 64
        && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Parses and validates one text frame.
///
/// # Errors
/// A [`FrameError`] naming the problem; `too_large` for a body over
/// `max_body_bytes`.
pub fn parse(text: &str, max_body_bytes: usize) -> Result<(Option<Box<RawValue>>, ClientFrame), FrameError> {
    let raw: RawFrame = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let id = serde_json::from_str::<IdOnly>(text)
                .ok()
                .and_then(|i| i.id)
                .filter(|r| valid_id(r))
                .map(ToOwned::to_owned);
            let message = if e.is_data() { format!("invalid frame: {e}") } else { "malformed JSON".to_owned() };
            return Err(FrameError { id, code: ErrorCode::BadRequest, message, room: None });
        }
    };
    let id = match raw.id {
        Some(r) if !valid_id(r) => {
            return Err(FrameError {
                id: None,
                code: ErrorCode::BadRequest,
                message: "id: a string of at most 64 characters or an integer".into(),
                room: None,
            });
        }
        other => other.map(ToOwned::to_owned),
    };
    let bad = |message: &str| FrameError {
        id: id.clone(),
        code: ErrorCode::BadRequest,
        message: message.to_owned(),
        room: None,
    };
    let room = || -> Result<String, FrameError> {
        match &raw.room {
            Some(r) if valid_room(r) => Ok(r.clone()),
            Some(_) => Err(bad("room: not a valid room id")),
            None => Err(bad("room: required")),
        }
    };
    let client_msg_id = || -> Result<String, FrameError> {
        match &raw.client_msg_id {
            Some(c) if valid_client_msg_id(c) => Ok(c.clone()),
            Some(_) => Err(bad("client_msg_id: 1-64 characters of [A-Za-z0-9_.:-]")),
            None => Err(bad("client_msg_id: required")),
        }
    };
    let target_seq = || -> Result<i64, FrameError> {
        match raw.target_seq {
            Some(s) if s >= 1 => Ok(s),
            Some(_) => Err(bad("target_seq: must be >= 1")),
            None => Err(bad("target_seq: required")),
        }
    };
    let frame = match raw.ty.as_ref() {
        "join" => {
            if raw.since_seq.is_some_and(|s| s < 0) {
                return Err(bad("since_seq: must be >= 0"));
            }
            if raw.epoch.as_deref().is_some_and(|e| !valid_epoch(e)) {
                return Err(bad("epoch: not a valid epoch"));
            }
            ClientFrame::Join(Resume { room: room()?, since_seq: raw.since_seq, epoch: raw.epoch.clone() })
        }
        "sync" => {
            let Some(entries) = &raw.rooms else { return Err(bad("rooms: required")) };
            let mut seen = std::collections::HashSet::with_capacity(entries.len());
            let mut rooms = Vec::with_capacity(entries.len());
            for e in entries {
                if !valid_room(&e.room) {
                    return Err(bad("rooms[].room: not a valid room id"));
                }
                if e.since_seq.is_some_and(|s| s < 0) {
                    return Err(bad("rooms[].since_seq: must be >= 0"));
                }
                if e.epoch.as_deref().is_some_and(|e| !valid_epoch(e)) {
                    return Err(bad("rooms[].epoch: not a valid epoch"));
                }
                if !seen.insert(e.room.as_str()) {
                    return Err(bad("rooms: a room is listed twice"));
                }
                rooms.push(Resume { room: e.room.clone(), since_seq: e.since_seq, epoch: e.epoch.clone() });
            }
            ClientFrame::Sync { rooms }
        }
        "leave" => ClientFrame::Leave { room: room()? },
        "send" | "edit" => {
            let room = room()?;
            let body = raw.body.clone().ok_or_else(|| bad("body: required"))?;
            if body.is_empty() {
                return Err(bad("body: must not be empty"));
            }
            if body.len() > max_body_bytes {
                return Err(FrameError {
                    id,
                    code: ErrorCode::TooLarge,
                    message: format!("body: at most {max_body_bytes} bytes"),
                    room: Some(room),
                });
            }
            let client_msg_id = client_msg_id()?;
            if raw.ty == "send" {
                ClientFrame::Send { room, body, client_msg_id }
            } else {
                ClientFrame::Edit { room, target_seq: target_seq()?, body, client_msg_id }
            }
        }
        "delete" => ClientFrame::Delete { room: room()?, target_seq: target_seq()?, client_msg_id: client_msg_id()? },
        "typing" => ClientFrame::Typing { room: room()? },
        "read" => {
            let room = room()?;
            match raw.seq {
                Some(seq) if seq >= 0 => ClientFrame::Read { room, seq },
                Some(_) => return Err(bad("seq: must be >= 0")),
                None => return Err(bad("seq: required")),
            }
        }
        "ping" => ClientFrame::Ping,
        "pong" => ClientFrame::Pong,
        "auth" => match &raw.token {
            Some(t) if !t.is_empty() && t.len() <= 4096 => ClientFrame::Auth { token: t.clone() },
            _ => return Err(bad("token: required")),
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(&format!("unknown frame type {shown:?}")));
        }
    };
    // Exactly the fields of the type (§3): a field of another type is a
    // client bug as much as an unknown name (`since_sq` would silently
    // skip a resume), so both are refused, as the schemas refuse them. A
    // type missing from `FIELDS` may carry no field at all (and the schema
    // test names it).
    let kind = frame.kind();
    if let Some(stray) = stray_field(text, fields_of(kind).unwrap_or_default()) {
        let shown: String = stray.chars().take(32).collect();
        return Err(bad(&format!("{shown:?} is not a field of a {kind} frame")));
    }
    Ok((id, frame))
}

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

/// The stream frame of a stored entry: `message` (in its current state),
/// or `edit`/`delete` for a change event. Everything that carries a room's
/// stream (fan-out, replay, gap fill) goes through here, so change events
/// travel exactly like messages.
pub fn message_frame(m: &StoredMessage) -> Utf8Bytes {
    let (room, seq, sender, client_msg_id, sent_at) = (&*m.room, m.seq, &*m.sender, &*m.client_msg_id, m.sent_at);
    // A change event always has its target (written in the same row).
    let target_seq = m.target_seq.unwrap_or_default();
    match m.kind {
        EntryType::Message => ServerFrame::Message {
            room,
            seq,
            sender,
            body: &m.body,
            client_msg_id,
            sent_at,
            edited_at: m.edited_at,
            deleted: m.deleted,
        },
        EntryType::Edit => ServerFrame::Edit { room, seq, target_seq, sender, body: &m.body, client_msg_id, sent_at },
        EntryType::Delete => ServerFrame::Delete {
            room,
            seq,
            target_seq,
            sender,
            reason: m.reason.map_or("author", |r| r.as_str()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_type_and_echoes_ids() {
        let (id, f) = parse(r#"{"type":"send","id":7,"room":"r1","body":"hi","client_msg_id":"c-1"}"#, 100).unwrap();
        assert_eq!(id.unwrap().get(), "7");
        assert!(matches!(f, ClientFrame::Send { .. }));
        let (id, f) = parse(r#"{"type":"join","id":"a","room":"r1","since_seq":3}"#, 100).unwrap();
        assert_eq!(id.unwrap().get(), r#""a""#);
        assert!(matches!(f, ClientFrame::Join(Resume { since_seq: Some(3), .. })));
        let (_, f) =
            parse(r#"{"type":"sync","id":1,"rooms":[{"room":"a","since_seq":2,"epoch":"e1"},{"room":"b"}]}"#, 100)
                .unwrap();
        let ClientFrame::Sync { rooms } = f else { panic!("not a sync") };
        assert_eq!(rooms.len(), 2);
        assert_eq!(rooms[0].epoch.as_deref(), Some("e1"));
        assert!(matches!(parse(r#"{"type":"ping"}"#, 100).unwrap().1, ClientFrame::Ping));
    }

    #[test]
    fn refuses_bad_frames_with_codes() {
        let e = parse("{nope", 100).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        let e = parse(r#"{"type":"warp","id":5}"#, 100).unwrap_err();
        assert_eq!(e.id.unwrap().get(), "5");
        let e = parse(r#"{"type":"send","room":"r","body":"xxxxx","client_msg_id":"c"}"#, 4).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        for bad in [
            r#"{"type":"send","room":"r","client_msg_id":"c"}"#,
            r#"{"type":"send","room":"r/x","body":"b","client_msg_id":"c"}"#,
            r#"{"type":"send","room":"r","body":"b","client_msg_id":"has space"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":"r","since_seq":-1}"#,
            r#"{"type":"read","room":"r"}"#,
            r#"{"type":"ping","extra":1}"#,
            // Fields of another frame type, whatever their value (§3).
            r#"{"type":"ping","room":"r"}"#,
            r#"{"type":"pong","room":null}"#,
            r#"{"type":"typing","room":"r","seq":1}"#,
            r#"{"type":"leave","room":"r","since_seq":1}"#,
            r#"{"type":"join","room":"r","b\u006fdy":"x"}"#,
            r#"{"room":"r"}"#,
            r#"{"type":"ping","id":{"x":1}}"#,
            r#"[1,2]"#,
            r#"{"type":"sync"}"#,
            r#"{"type":"sync","rooms":[{"room":"a"},{"room":"a"}]}"#,
            r#"{"type":"sync","rooms":[{"room":"a","since_seq":-1}]}"#,
            r#"{"type":"sync","rooms":[{"room":"a","x":1}]}"#,
            r#"{"type":"join","room":"a","epoch":""}"#,
        ] {
            assert_eq!(parse(bad, 100).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
        let e = parse(r#"{"type":"ping","id":3,"room":"r"}"#, 100).unwrap_err();
        assert_eq!((e.id.unwrap().get(), e.message.as_str()), ("3", r#""room" is not a field of a ping frame"#));
        assert_eq!(parse(r#"{"type":"pong","id":"x"}"#, 100).unwrap().1, ClientFrame::Pong);
    }

    /// Field names of another helper's schema not in this tree yet; drop
    /// an entry once `client.<type>.json` lists the field.
    const PENDING: &[(&str, &str)] = &[("join", "epoch")];

    /// The server accepts exactly the fields the tight client schemas
    /// allow: every `client.<type>.json` has a `FIELDS` entry with the same
    /// properties (besides `type` and `id`), so the two cannot drift apart.
    #[test]
    fn fields_match_the_client_schemas() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/schemas");
        let mut seen = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(ty) = name.strip_prefix("client.").and_then(|n| n.strip_suffix(".json")) else { continue };
            if ty.contains('.') {
                continue;
            }
            let schema: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(format!("{dir}/{name}")).unwrap()).unwrap();
            assert_eq!(schema["additionalProperties"], false, "{name} is tight");
            let mut in_schema: Vec<&str> = schema["properties"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .filter(|k| *k != "type" && *k != "id")
                .collect();
            let allowed = fields_of(ty).unwrap_or_else(|| panic!("{name}: no FIELDS entry for {ty:?}"));
            let mut allowed: Vec<&str> =
                allowed.iter().copied().filter(|f| in_schema.contains(f) || !PENDING.contains(&(ty, *f))).collect();
            in_schema.sort_unstable();
            allowed.sort_unstable();
            assert_eq!(allowed, in_schema, "FIELDS[{ty:?}] vs {name}");
            seen += 1;
        }
        assert!(seen >= 8, "client schemas found: {seen}");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;
    use serde_json::{Map, Value, json};

    use super::*;

    const MAX_BODY: usize = 200;

    /// JSON text of a string with every non-ASCII character escaped
    /// (`\uXXXX`, surrogate pairs above the BMP), as `ensure_ascii`
    /// encoders (Python's default) write it.
    fn ascii_json(s: &str) -> String {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
                c => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04X}"));
                    }
                }
            }
        }
        out.push('"');
        out
    }

    /// A request id as the client writes it: an integer, or a string of at
    /// most 64 characters, plainly or ASCII-escaped.
    fn request_id() -> impl Strategy<Value = Option<String>> {
        prop::option::of(prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            "\\PC{0,64}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            "\\PC{0,64}".prop_map(|s| ascii_json(&s)),
            // Every character astral: the longest escaped form.
            prop::collection::vec(proptest::char::range('\u{1F600}', '\u{1F64F}'), 0..=64)
                .prop_map(|cs| ascii_json(&cs.into_iter().collect::<String>())),
        ])
    }

    fn room() -> impl Strategy<Value = String> {
        "[A-Za-z0-9_-]{1,64}"
    }

    /// Every valid client frame, as the value `parse` must return.
    fn client_frame() -> impl Strategy<Value = ClientFrame> {
        prop_oneof![
            (room(), prop::option::of(0..=i64::MAX), prop::option::of("[a-f0-9]{12}"))
                .prop_map(|(room, since_seq, epoch)| ClientFrame::Join(Resume { room, since_seq, epoch })),
            prop::collection::vec((room(), prop::option::of(0..=i64::MAX), prop::option::of("[a-f0-9]{12}")), 0..5)
                .prop_map(|entries| {
                    let mut seen = std::collections::HashSet::new();
                    let rooms = entries
                        .into_iter()
                        .filter(|(r, _, _)| seen.insert(r.clone()))
                        .map(|(room, since_seq, epoch)| Resume { room, since_seq, epoch })
                        .collect();
                    ClientFrame::Sync { rooms }
                }),
            room().prop_map(|room| ClientFrame::Leave { room }),
            // At most 50 characters: at most 200 bytes, within MAX_BODY.
            (room(), "\\PC{1,50}", "[A-Za-z0-9_.:-]{1,64}").prop_map(|(room, body, client_msg_id)| ClientFrame::Send {
                room,
                body,
                client_msg_id
            }),
            room().prop_map(|room| ClientFrame::Typing { room }),
            (room(), 0..=i64::MAX).prop_map(|(room, seq)| ClientFrame::Read { room, seq }),
            Just(ClientFrame::Ping),
            Just(ClientFrame::Pong),
            "\\PC{1,200}".prop_map(|token| ClientFrame::Auth { token }),
            (room(), 1..=i64::MAX, "\\PC{1,50}", "[A-Za-z0-9_.:-]{1,64}").prop_map(
                |(room, target_seq, body, client_msg_id)| ClientFrame::Edit { room, target_seq, body, client_msg_id }
            ),
            (room(), 1..=i64::MAX, "[A-Za-z0-9_.:-]{1,64}")
                .prop_map(|(room, target_seq, client_msg_id)| ClientFrame::Delete { room, target_seq, client_msg_id }),
        ]
    }

    /// The frame as a client encodes it, its id's JSON text spliced in.
    fn encode(frame: &ClientFrame, id: Option<&str>) -> String {
        let mut v = match frame {
            ClientFrame::Join(r) => {
                let mut v = json!({"type": "join", "room": r.room});
                if let Some(s) = r.since_seq {
                    v["since_seq"] = json!(s);
                }
                if let Some(e) = &r.epoch {
                    v["epoch"] = json!(e);
                }
                v
            }
            ClientFrame::Sync { rooms } => {
                let rooms: Vec<Value> = rooms
                    .iter()
                    .map(|r| {
                        let mut v = json!({"room": r.room});
                        if let Some(s) = r.since_seq {
                            v["since_seq"] = json!(s);
                        }
                        if let Some(e) = &r.epoch {
                            v["epoch"] = json!(e);
                        }
                        v
                    })
                    .collect();
                json!({"type": "sync", "rooms": rooms})
            }
            ClientFrame::Leave { room } => json!({"type": "leave", "room": room}),
            ClientFrame::Send { room, body, client_msg_id } => {
                json!({"type": "send", "room": room, "body": body, "client_msg_id": client_msg_id})
            }
            ClientFrame::Typing { room } => json!({"type": "typing", "room": room}),
            ClientFrame::Read { room, seq } => json!({"type": "read", "room": room, "seq": seq}),
            ClientFrame::Ping => json!({"type": "ping"}),
            ClientFrame::Pong => json!({"type": "pong"}),
            ClientFrame::Auth { token } => json!({"type": "auth", "token": token}),
            ClientFrame::Edit { room, target_seq, body, client_msg_id } => json!({
                "type": "edit", "room": room, "target_seq": target_seq, "body": body, "client_msg_id": client_msg_id
            }),
            ClientFrame::Delete { room, target_seq, client_msg_id } => {
                json!({"type": "delete", "room": room, "target_seq": target_seq, "client_msg_id": client_msg_id})
            }
        }
        .to_string();
        if let Some(id) = id {
            v.insert_str(1, &format!("\"id\":{id},"));
        }
        v
    }

    /// Any JSON value, a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
            room().prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
            ]
        })
    }

    /// Objects made of the protocol's field names (and a stranger), with
    /// values of any type: the shapes a confused or hostile client sends.
    fn frame_like() -> impl Strategy<Value = Map<String, Value>> {
        let key = prop_oneof![
            Just("type"),
            Just("id"),
            Just("room"),
            Just("since_seq"),
            Just("body"),
            Just("client_msg_id"),
            Just("seq"),
            Just("token"),
            Just("target_seq"),
            Just("extra"),
        ];
        let ty = prop_oneof![
            Just("join"),
            Just("leave"),
            Just("send"),
            Just("typing"),
            Just("read"),
            Just("ping"),
            Just("pong"),
            Just("auth"),
            Just("edit"),
            Just("delete"),
            Just("warp"),
        ]
        .prop_map(Value::from);
        (prop::option::of(ty), prop::collection::btree_map(key, json_value(), 0..6)).prop_map(|(ty, fields)| {
            let mut m: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Some(ty) = ty {
                m.insert("type".into(), ty);
            }
            m
        })
    }

    fn is_valid_id(v: &Value) -> bool {
        match v {
            Value::String(s) => s.chars().count() <= 64,
            Value::Number(n) => n.is_i64(),
            _ => false,
        }
    }

    proptest! {
        /// Every valid frame decodes to what was encoded, its id echoed
        /// byte for byte.
        #[test]
        fn valid_frames_round_trip(frame in client_frame(), id in request_id()) {
            let text = encode(&frame, id.as_deref());
            let (got_id, got) = parse(&text, MAX_BODY).map_err(|e| TestCaseError::fail(format!("{text}: {e:?}")))?;
            prop_assert_eq!(got, frame);
            prop_assert_eq!(got_id.as_deref().map(RawValue::get), id.as_deref());
        }

        /// Arbitrary text never panics, and is refused only with a code the
        /// protocol documents for a bad frame.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            if let Err(e) = parse(&text, MAX_BODY) {
                prop_assert!(matches!(e.code, ErrorCode::BadRequest | ErrorCode::TooLarge));
            }
        }

        /// Arbitrary bytes (as the lossy text a broken client's frame would
        /// become) never panic either.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&String::from_utf8_lossy(&bytes), MAX_BODY);
        }

        /// Frame-shaped objects of any field types: a frame is accepted only
        /// when its fields are the protocol's; an error is `bad_request`
        /// (or `too_large` for an over-long body, with its room), and echoes
        /// the request id whenever that id is valid.
        #[test]
        fn frame_shaped_objects_get_documented_answers(m in frame_like()) {
            let text = Value::Object(m.clone()).to_string();
            match parse(&text, MAX_BODY) {
                Ok((id, frame)) => {
                    let ty = m["type"].as_str().unwrap_or_default();
                    prop_assert_eq!(frame.kind(), ty);
                    prop_assert!(!m.contains_key("extra"));
                    // `"id": null` is no id.
                    let sent = m.get("id").filter(|v| !v.is_null()).map(Value::to_string);
                    prop_assert_eq!(id.map(|r| r.get().to_owned()), sent);
                    // Only the type's own fields (§3), whatever their values.
                    let allowed = fields_of(ty).unwrap_or_default();
                    for k in m.keys() {
                        prop_assert!(k == "type" || k == "id" || allowed.contains(&k.as_str()), "{k} on {ty}");
                    }
                    if let Some(r) = m.get("room") {
                        prop_assert!(r.as_str().is_some_and(valid_room));
                    }
                }
                Err(e) => {
                    match e.code {
                        ErrorCode::BadRequest => prop_assert!(e.room.is_none()),
                        ErrorCode::TooLarge => {
                            prop_assert!(matches!(m["type"].as_str(), Some("send" | "edit")));
                            prop_assert!(m["body"].as_str().is_some_and(|b| b.len() > MAX_BODY));
                            prop_assert_eq!(e.room.as_deref(), m["room"].as_str());
                        }
                        other => return Err(TestCaseError::fail(format!("undocumented code {other:?}"))),
                    }
                    match m.get("id") {
                        Some(id) if is_valid_id(id) => {
                            prop_assert_eq!(e.id.map(|r| r.get().to_owned()), Some(id.to_string()));
                        }
                        _ => prop_assert!(e.id.is_none()),
                    }
                }
            }
        }

        /// Sends whose body is over the limit are `too_large`, with the id
        /// and room to match them to the request.
        #[test]
        fn over_long_bodies_are_too_large(room in room(), extra in 1usize..50, id in request_id()) {
            let frame = ClientFrame::Send { room: room.clone(), body: "x".repeat(MAX_BODY + extra), client_msg_id: "c".into() };
            let e = parse(&encode(&frame, id.as_deref()), MAX_BODY).unwrap_err();
            prop_assert_eq!(e.code, ErrorCode::TooLarge);
            prop_assert_eq!(e.room.as_deref(), Some(room.as_str()));
            prop_assert_eq!(e.id.as_deref().map(RawValue::get), id.as_deref());
        }
    }
}
