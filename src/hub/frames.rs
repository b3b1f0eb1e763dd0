//! Wire frames of protocol v1 (see `protocol/README.md`): parsing client
//! frames in one pass, and building server frames.
//!
//! Parsing is one borrowed pass into a flat struct with every optional field,
//! then a per-type check of the required ones: cheaper than an untagged enum
//! and gives precise errors. Request ids are echoed verbatim as raw JSON.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::db::StoredMessage;

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
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 9] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::TokenExpired,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
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
    /// The user is banned.
    pub const FORBIDDEN: u16 = 4003;
    /// Kept sending while rate-limited.
    pub const RATE_LIMIT: u16 = 4008;
    /// Outbound queue overflowed: the client did not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4009;
}

/// A client request after the one-pass parse; fields not used by its type
/// are ignored.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

/// Only the id, for echoing it in the error about an otherwise bad frame.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
}

/// A validated client request.
#[derive(Debug)]
pub enum ClientFrame {
    Join { room: String, since_seq: Option<i64> },
    Leave { room: String },
    Send { room: String, body: String, client_msg_id: String },
    Typing { room: String },
    Read { room: String, seq: i64 },
    Ping,
    Auth { token: String },
}

impl ClientFrame {
    /// The frame's `type`, as counted in metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Ping => "ping",
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
}

/// A request id: a JSON string of at most 64 characters or an integer.
fn valid_id(raw: &RawValue) -> bool {
    let s = raw.get();
    if s.starts_with('"') {
        s.len() <= 64 * 6 + 2 && serde_json::from_str::<String>(s).is_ok_and(|v| v.chars().count() <= 64)
    } else {
        serde_json::from_str::<i64>(s).is_ok()
    }
}

fn valid_room(r: &str) -> bool {
    !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
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
            return Err(FrameError { id, code: ErrorCode::BadRequest, message });
        }
    };
    let id = match raw.id {
        Some(r) if !valid_id(r) => {
            return Err(FrameError {
                id: None,
                code: ErrorCode::BadRequest,
                message: "id: a string of at most 64 characters or an integer".into(),
            });
        }
        other => other.map(ToOwned::to_owned),
    };
    let bad = |message: &str| FrameError { id: id.clone(), code: ErrorCode::BadRequest, message: message.to_owned() };
    let room = || -> Result<String, FrameError> {
        match &raw.room {
            Some(r) if valid_room(r) => Ok(r.clone()),
            Some(_) => Err(bad("room: not a valid room id")),
            None => Err(bad("room: required")),
        }
    };
    let frame = match raw.ty.as_ref() {
        "join" => {
            if raw.since_seq.is_some_and(|s| s < 0) {
                return Err(bad("since_seq: must be >= 0"));
            }
            ClientFrame::Join { room: room()?, since_seq: raw.since_seq }
        }
        "leave" => ClientFrame::Leave { room: room()? },
        "send" => {
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
                });
            }
            let client_msg_id = match &raw.client_msg_id {
                Some(c) if valid_client_msg_id(c) => c.clone(),
                Some(_) => return Err(bad("client_msg_id: 1-64 characters of [A-Za-z0-9_.:-]")),
                None => return Err(bad("client_msg_id: required")),
            };
            ClientFrame::Send { room, body, client_msg_id }
        }
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
        "auth" => match &raw.token {
            Some(t) if !t.is_empty() && t.len() <= 4096 => ClientFrame::Auth { token: t.clone() },
            _ => return Err(bad("token: required")),
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(bad(&format!("unknown frame type {shown:?}")));
        }
    };
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
    },
    Joined {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a RawValue>,
        room: &'a str,
        last_seq: i64,
        replayed: u64,
        /// Users online in the room now, across the cluster.
        online: &'a [String],
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
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        deleted: bool,
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
}

impl ServerFrame<'_> {
    /// Serialises the frame into shareable text.
    pub fn encode(&self) -> Utf8Bytes {
        // Serialising these plain structs into a String cannot fail.
        Utf8Bytes::from(serde_json::to_string(self).unwrap_or_default())
    }
}

/// The `message` frame of a stored message.
pub fn message_frame(m: &StoredMessage) -> Utf8Bytes {
    ServerFrame::Message {
        room: &m.room,
        seq: m.seq,
        sender: &m.sender,
        body: &m.body,
        client_msg_id: &m.client_msg_id,
        sent_at: m.sent_at,
        deleted: m.deleted,
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
        assert!(matches!(f, ClientFrame::Join { since_seq: Some(3), .. }));
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
            r#"{"room":"r"}"#,
            r#"{"type":"ping","id":{"x":1}}"#,
            r#"[1,2]"#,
        ] {
            assert_eq!(parse(bad, 100).unwrap_err().code, ErrorCode::BadRequest, "{bad}");
        }
    }
}
