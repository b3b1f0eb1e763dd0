//! The one list of error codes (socket `error` frames and REST error
//! bodies) and the WebSocket close codes of the protocol.
//!
//! A code's wire string is written once, in [`ErrorCode::as_str`]; serde,
//! the metrics labels and `ApiError` all read it from there, so the socket
//! and REST cannot drift apart on a spelling.

use serde::{Serialize, Serializer};

/// Stable error codes: the `code` of a socket `error` frame
/// (`server.error.json`) and the `error.code` of a REST error body.
///
/// Most codes are shared. Only the socket sends `token_expired`,
/// `not_joined`, `edit_window_closed` and `not_author`; only REST sends
/// `unsupported_media_type` and `timeout` (see [`ErrorCode::SOCKET`] and
/// [`ErrorCode::REST`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    RateLimited,
    TooLarge,
    /// Socket only: the access token expired and was not renewed by `auth`.
    TokenExpired,
    Internal,
    Unavailable,
    /// A per-socket cap (rooms joined at once), or on REST a per-user cap
    /// (sockets open at once), is reached.
    LimitExceeded,
    /// Socket only: `typing`/`read` for a room this socket has not joined:
    /// distinct from `forbidden`, which tells the client to drop the room
    /// altogether.
    NotJoined,
    /// A `client_msg_id` already stored with a different body: the retry is
    /// not the same message, and acking it would lose the new text. On REST:
    /// the request conflicts with existing state.
    Conflict,
    /// Socket only: an `edit` after `EDIT_WINDOW_SECS` from the message's
    /// `sent_at`.
    EditWindowClosed,
    /// Socket only: an `edit` or `delete` of a message the caller may not
    /// change (not its author; for a delete, not the room's owner either):
    /// distinct from `forbidden`, which tells the client to drop the room
    /// (1.2).
    NotAuthor,
    /// REST only: the body is not `application/json`.
    UnsupportedMediaType,
    /// REST only: the request did not finish within the request timeout.
    Timeout,
}

impl ErrorCode {
    /// The codes a socket `error` frame may carry, in the order of
    /// `server.error.json` (a unit test holds the two together). The
    /// metrics pre-register one `chatgw_ws_errors_total` series per entry.
    pub const SOCKET: [ErrorCode; 14] = [
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

    /// The codes a REST error body may carry (`ErrorDetail.code`).
    pub const REST: [ErrorCode; 12] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::TooLarge,
        ErrorCode::UnsupportedMediaType,
        ErrorCode::RateLimited,
        ErrorCode::LimitExceeded,
        ErrorCode::Timeout,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
    ];

    /// The code as it appears on the wire (and as a metric label): the only
    /// place its spelling is written.
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
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::Timeout => "timeout",
        }
    }
}

/// Written as [`ErrorCode::as_str`], so serde does not keep a second
/// spelling of every code.
impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket's codes are exactly the `code` enum of the tight
    /// `server.error.json`, in its order.
    #[test]
    fn socket_codes_are_the_schemas() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/protocol/schemas/server.error.json");
        let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let in_schema: Vec<&str> =
            schema["properties"]["code"]["enum"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        let ours: Vec<&str> = ErrorCode::SOCKET.iter().map(|c| c.as_str()).collect();
        assert_eq!(ours, in_schema);
    }

    /// serde writes the same string as `as_str`, and no two codes share one.
    #[test]
    fn one_spelling_per_code() {
        let mut all: Vec<ErrorCode> = ErrorCode::SOCKET.into_iter().chain(ErrorCode::REST).collect();
        all.sort_by_key(|c| c.as_str());
        all.dedup();
        assert_eq!(all.len(), 16, "every code is a socket code, a REST code or both");
        for c in &all {
            assert_eq!(serde_json::to_value(c).unwrap(), c.as_str());
        }
        let mut strings: Vec<&str> = all.iter().map(|c| c.as_str()).collect();
        strings.dedup();
        assert_eq!(strings.len(), all.len());
    }
}
