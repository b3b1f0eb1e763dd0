//! Client frames and their one-pass parser (protocol/README.md §3-§5).
//!
//! Parsing is one borrowed pass into a flat struct with every optional field,
//! then a per-type check of the required ones: cheaper than an untagged enum
//! and gives precise errors. Request ids are echoed verbatim as raw JSON.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::codes::ErrorCode;
use super::fields::{fields_of, stray_field};
use super::ids::{is_client_msg_id, is_epoch, is_id};

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
fn valid_request_id(raw: &RawValue) -> bool {
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

/// The error about text that is not a frame: malformed JSON, or JSON of
/// the wrong shape, with the request id when one can still be read.
fn unparsed(text: &str, e: &serde_json::Error) -> FrameError {
    let id = serde_json::from_str::<IdOnly>(text)
        .ok()
        .and_then(|i| i.id)
        .filter(|r| valid_request_id(r))
        .map(ToOwned::to_owned);
    let message = if e.is_data() { format!("invalid frame: {e}") } else { "malformed JSON".to_owned() };
    FrameError { id, code: ErrorCode::BadRequest, message, room: None }
}

/// The rooms of a `sync` frame, each valid and listed once.
///
/// # Errors
/// The `bad_request` message about the first entry that is not.
fn sync_rooms(entries: &[RawSyncEntry]) -> Result<Vec<Resume>, &'static str> {
    let mut seen = std::collections::HashSet::with_capacity(entries.len());
    let mut rooms = Vec::with_capacity(entries.len());
    for e in entries {
        if !is_id(&e.room) {
            return Err("rooms[].room: not a valid room id");
        }
        if e.since_seq.is_some_and(|s| s < 0) {
            return Err("rooms[].since_seq: must be >= 0");
        }
        if e.epoch.as_deref().is_some_and(|e| !is_epoch(e)) {
            return Err("rooms[].epoch: not a valid epoch");
        }
        if !seen.insert(e.room.as_str()) {
            return Err("rooms: a room is listed twice");
        }
        rooms.push(Resume { room: e.room.clone(), since_seq: e.since_seq, epoch: e.epoch.clone() });
    }
    Ok(rooms)
}

/// Parses and validates one text frame.
///
/// # Errors
/// A [`FrameError`] naming the problem; `too_large` for a body over
/// `max_body_bytes`.
pub fn parse(text: &str, max_body_bytes: usize) -> Result<(Option<Box<RawValue>>, ClientFrame), FrameError> {
    let raw: RawFrame = serde_json::from_str(text).map_err(|e| unparsed(text, &e))?;
    let id = match raw.id {
        Some(r) if !valid_request_id(r) => {
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
            Some(r) if is_id(r) => Ok(r.clone()),
            Some(_) => Err(bad("room: not a valid room id")),
            None => Err(bad("room: required")),
        }
    };
    let client_msg_id = || -> Result<String, FrameError> {
        match &raw.client_msg_id {
            Some(c) if is_client_msg_id(c) => Ok(c.clone()),
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
            if raw.epoch.as_deref().is_some_and(|e| !is_epoch(e)) {
                return Err(bad("epoch: not a valid epoch"));
            }
            ClientFrame::Join(Resume { room: room()?, since_seq: raw.since_seq, epoch: raw.epoch.clone() })
        }
        "sync" => {
            let Some(entries) = &raw.rooms else { return Err(bad("rooms: required")) };
            ClientFrame::Sync { rooms: sync_rooms(entries).map_err(bad)? }
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
}

#[cfg(test)]
mod props;
