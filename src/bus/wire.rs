//! The bus's wire format: a small binary envelope around the frame the hub
//! already serialised, so a message crosses Redis as one publish of about
//! one frame's bytes, with no JSON-in-JSON escaping.
//!
//! ```text
//! u8 version (2) | u8 kind | 16 bytes origin instance id
//!   | u64 published at (Unix microseconds) | fields…
//! ```
//! Version 1 (no publish time) is still read, so a rolling upgrade from it
//! loses nothing on the upgraded instances.
//! Strings are a big-endian `u16` length then UTF-8 bytes; integers are
//! big-endian; a frame is the rest of the envelope (no length needed).

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::BusEvent;

const VERSION: u8 = 2;
/// Bytes before the fields: version, kind, origin, publish time.
pub const HEADER: usize = 2 + 16 + 8;
/// The header of version 1, which had no publish time.
const HEADER_V1: usize = 2 + 16;

/// An instance id as it travels on the bus.
pub type Origin = [u8; 16];

/// Why an envelope could not be read (a peer of another version, or not
/// ours): the event is skipped and counted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("envelope truncated")]
    Truncated,
    #[error("unknown envelope version {0}")]
    Version(u8),
    #[error("unknown event kind {0}")]
    Kind(u8),
    #[error("invalid UTF-8 in envelope")]
    Utf8,
    #[error("event is local only")]
    LocalOnly,
}

mod kind {
    pub const MESSAGE: u8 = 1;
    pub const EPHEMERAL: u8 = 2;
    pub const TAIL: u8 = 3;
    pub const MEMBER_REMOVED: u8 = 4;
    pub const SESSION_REVOKED: u8 = 5;
    pub const USER_CLOSED: u8 = 6;
    pub const CONNECTIONS_QUERY: u8 = 7;
    pub const CONNECTIONS_REPLY: u8 = 8;
    pub const ROOM_ADDED: u8 = 9;
    pub const ROOM_UPDATED: u8 = 10;
    pub const ROOM_SEQS: u8 = 11;
}

fn put_str(buf: &mut BytesMut, s: &str) {
    // Ids, reasons and room names are far below 64 KiB; longer ones are cut
    // at a character boundary rather than corrupting the envelope.
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    buf.put_u16(end as u16);
    buf.put_slice(&s.as_bytes()[..end]);
}

/// Serialises an event published by `origin`.
///
/// # Errors
/// [`WireError::LocalOnly`] for [`BusEvent::Resync`], which never travels.
pub fn encode(origin: &Origin, event: &BusEvent) -> Result<Bytes, WireError> {
    let extra = match event {
        BusEvent::Message { room, frame, .. } | BusEvent::Ephemeral { room, frame } => room.len() + frame.len() + 10,
        BusEvent::RoomSeqs { seqs } => 4 + seqs.iter().map(|(r, _)| r.len() + 10).sum::<usize>(),
        _ => 64,
    };
    let mut buf = BytesMut::with_capacity(HEADER + extra);
    buf.put_u8(VERSION);
    let kind_at = buf.len();
    buf.put_u8(0);
    buf.put_slice(origin);
    buf.put_u64(now_us());
    let k = match event {
        BusEvent::Message { room, seq, frame } => {
            buf.put_i64(*seq);
            put_str(&mut buf, room);
            buf.put_slice(frame.as_bytes());
            kind::MESSAGE
        }
        BusEvent::Ephemeral { room, frame } => {
            put_str(&mut buf, room);
            buf.put_slice(frame.as_bytes());
            kind::EPHEMERAL
        }
        BusEvent::Tail { room, seq } => {
            buf.put_i64(*seq);
            put_str(&mut buf, room);
            kind::TAIL
        }
        BusEvent::MemberRemoved { room, user, reason } => {
            put_str(&mut buf, room);
            put_str(&mut buf, user);
            put_str(&mut buf, reason);
            kind::MEMBER_REMOVED
        }
        BusEvent::SessionRevoked { user, session } => {
            put_str(&mut buf, user);
            put_str(&mut buf, session);
            kind::SESSION_REVOKED
        }
        BusEvent::UserClosed { user, code, reason } => {
            buf.put_u16(*code);
            put_str(&mut buf, user);
            put_str(&mut buf, reason);
            kind::USER_CLOSED
        }
        BusEvent::ConnectionsQuery { id, user } => {
            buf.put_u64(*id);
            put_str(&mut buf, user);
            kind::CONNECTIONS_QUERY
        }
        BusEvent::ConnectionsReply { id, instance, json } => {
            buf.put_u64(*id);
            put_str(&mut buf, instance);
            buf.put_slice(json.as_bytes());
            kind::CONNECTIONS_REPLY
        }
        BusEvent::RoomAdded { room, user, name, role, last_seq } => {
            buf.put_i64(*last_seq);
            put_str(&mut buf, room);
            put_str(&mut buf, user);
            put_str(&mut buf, name);
            put_str(&mut buf, role);
            kind::ROOM_ADDED
        }
        BusEvent::RoomUpdated { room, name } => {
            put_str(&mut buf, room);
            put_str(&mut buf, name);
            kind::ROOM_UPDATED
        }
        BusEvent::RoomSeqs { seqs } => {
            // A count, then (seq, room) pairs; the hub keeps a batch far
            // below u32::MAX entries.
            buf.put_u32(seqs.len().min(u32::MAX as usize) as u32);
            for (room, seq) in seqs.iter().take(u32::MAX as usize) {
                buf.put_i64(*seq);
                put_str(&mut buf, room);
            }
            kind::ROOM_SEQS
        }
        BusEvent::Resync => return Err(WireError::LocalOnly),
    };
    buf[kind_at] = k;
    Ok(buf.freeze())
}

/// The publisher of an envelope, read without decoding the rest (the
/// listener drops its own echoes first).
pub fn origin_of(env: &[u8]) -> Option<&[u8]> {
    env.get(2..HEADER_V1)
}

/// When the envelope was published (Unix microseconds by the publisher's
/// clock), if its version says.
pub fn published_at_us(env: &[u8]) -> Option<u64> {
    if env.first() != Some(&VERSION) {
        return None;
    }
    let b: [u8; 8] = env.get(HEADER_V1..HEADER)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

/// Unix microseconds now.
pub fn now_us() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

struct Reader(Bytes);

impl Reader {
    fn need(&self, n: usize) -> Result<(), WireError> {
        if self.0.remaining() < n { Err(WireError::Truncated) } else { Ok(()) }
    }
    fn i64(&mut self) -> Result<i64, WireError> {
        self.need(8)?;
        Ok(self.0.get_i64())
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn string(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        self.need(n)?;
        let b = self.0.split_to(n);
        String::from_utf8(b.to_vec()).map_err(|_| WireError::Utf8)
    }
    fn room(&mut self) -> Result<Arc<str>, WireError> {
        self.string().map(Arc::from)
    }
    /// The rest, as a frame: no copy, only a UTF-8 check.
    fn frame(self) -> Result<Utf8Bytes, WireError> {
        Utf8Bytes::try_from(self.0).map_err(|_| WireError::Utf8)
    }
}

/// Reads an envelope into its origin and event.
///
/// # Errors
/// A truncated envelope, another version, an unknown kind, bad UTF-8.
pub fn decode(env: Bytes) -> Result<(Origin, BusEvent), WireError> {
    let header = match env.first() {
        Some(&VERSION) => HEADER,
        Some(1) => HEADER_V1,
        Some(v) => return Err(WireError::Version(*v)),
        None => return Err(WireError::Truncated),
    };
    if env.len() < header {
        return Err(WireError::Truncated);
    }
    let k = env[1];
    let mut origin = [0u8; 16];
    origin.copy_from_slice(&env[2..HEADER_V1]);
    let mut r = Reader(env.slice(header..));
    let event = match k {
        kind::MESSAGE => {
            let seq = r.i64()?;
            let room = r.room()?;
            BusEvent::Message { room, seq, frame: r.frame()? }
        }
        kind::EPHEMERAL => {
            let room = r.room()?;
            BusEvent::Ephemeral { room, frame: r.frame()? }
        }
        kind::TAIL => {
            let seq = r.i64()?;
            BusEvent::Tail { room: r.room()?, seq }
        }
        kind::MEMBER_REMOVED => BusEvent::MemberRemoved { room: r.room()?, user: r.string()?, reason: r.string()? },
        kind::SESSION_REVOKED => BusEvent::SessionRevoked { user: r.string()?, session: r.string()? },
        kind::USER_CLOSED => {
            let code = r.u16()?;
            BusEvent::UserClosed { code, user: r.string()?, reason: r.string()? }
        }
        kind::CONNECTIONS_QUERY => {
            let id = r.u64()?;
            BusEvent::ConnectionsQuery { id, user: r.string()? }
        }
        kind::CONNECTIONS_REPLY => {
            let id = r.u64()?;
            let instance = r.string()?;
            BusEvent::ConnectionsReply { id, instance, json: r.frame()? }
        }
        kind::ROOM_ADDED => {
            let last_seq = r.i64()?;
            BusEvent::RoomAdded { last_seq, room: r.room()?, user: r.string()?, name: r.string()?, role: r.string()? }
        }
        kind::ROOM_UPDATED => BusEvent::RoomUpdated { room: r.room()?, name: r.string()? },
        kind::ROOM_SEQS => {
            let n = r.u32()? as usize;
            // Each entry takes at least 10 bytes: a count the envelope cannot
            // hold is refused before anything is allocated for it.
            r.need(n.saturating_mul(10))?;
            let mut seqs = Vec::with_capacity(n);
            for _ in 0..n {
                let seq = r.i64()?;
                seqs.push((r.room()?, seq));
            }
            BusEvent::RoomSeqs { seqs }
        }
        other => return Err(WireError::Kind(other)),
    };
    Ok((origin, event))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<BusEvent> {
        let frame = Utf8Bytes::from(r#"{"type":"message","room":"r","seq":7,"body":"he said \"hi\" ✓"}"#);
        vec![
            BusEvent::Message { room: Arc::from("room-1"), seq: 7, frame: frame.clone() },
            BusEvent::Ephemeral { room: Arc::from("room-1"), frame },
            BusEvent::Tail { room: Arc::from("room-2"), seq: i64::MAX },
            BusEvent::MemberRemoved { room: Arc::from("r"), user: "u".into(), reason: "room_deleted".into() },
            BusEvent::SessionRevoked { user: "u".into(), session: "s".into() },
            BusEvent::UserClosed { user: "u".into(), code: 4003, reason: "banned".into() },
            BusEvent::ConnectionsQuery { id: u64::MAX, user: "u".into() },
            BusEvent::ConnectionsReply { id: 7, instance: "host:8080".into(), json: Utf8Bytes::from("[]") },
            BusEvent::RoomAdded {
                room: Arc::from("r"),
                user: "u".into(),
                name: "Café ✓".into(),
                role: "member".into(),
                last_seq: 42,
            },
            BusEvent::RoomUpdated { room: Arc::from("r"), name: "renamed".into() },
            BusEvent::RoomSeqs { seqs: vec![(Arc::from("r1"), 7), (Arc::from("r2"), i64::MAX)] },
            BusEvent::RoomSeqs { seqs: Vec::new() },
        ]
    }

    #[test]
    fn every_event_round_trips() {
        let origin = *b"0123456789abcdef";
        for ev in samples() {
            let bytes = encode(&origin, &ev).unwrap();
            assert_eq!(origin_of(&bytes), Some(&origin[..]));
            let published = published_at_us(&bytes).unwrap();
            assert!(published.abs_diff(now_us()) < 60_000_000, "a publish time of now");
            assert_eq!(decode(bytes).unwrap(), (origin, ev));
        }
        assert_eq!(encode(&origin, &BusEvent::Resync), Err(WireError::LocalOnly));
    }

    #[test]
    fn a_message_costs_its_frame_plus_a_small_header() {
        let frame = Utf8Bytes::from(r#"{"type":"message","body":"quotes \" and \\ stay as they are"}"#);
        let ev = BusEvent::Message { room: Arc::from("0193a1b2-room"), seq: 1, frame: frame.clone() };
        let bytes = encode(&[0; 16], &ev).unwrap();
        assert_eq!(bytes.len(), HEADER + 8 + 2 + "0193a1b2-room".len() + frame.len());
        assert!(bytes.windows(frame.len()).any(|w| w == frame.as_bytes()), "the frame travels verbatim");
    }

    #[test]
    fn damaged_envelopes_are_refused_not_misread() {
        let origin = [1; 16];
        for ev in samples() {
            let bytes = encode(&origin, &ev).unwrap();
            // Every strict prefix that cuts into a length-prefixed field or
            // the header fails; none panics.
            for n in 0..bytes.len() {
                let _ = decode(bytes.slice(..n));
            }
            assert_eq!(decode(bytes.slice(..HEADER - 1)), Err(WireError::Truncated));
        }
        let mut v = encode(&origin, &samples()[0]).unwrap().to_vec();
        v[0] = 9;
        assert_eq!(decode(Bytes::from(v.clone())), Err(WireError::Version(9)));
        v[0] = VERSION;
        v[1] = 200;
        assert_eq!(decode(Bytes::from(v)), Err(WireError::Kind(200)));
        let mut bad = encode(&origin, &samples()[1]).unwrap().to_vec();
        let last = bad.len() - 1;
        bad[last] = 0xff;
        assert_eq!(decode(Bytes::from(bad)), Err(WireError::Utf8));
    }

    #[test]
    fn a_room_seqs_count_beyond_the_envelope_is_refused_without_allocating() {
        let ev = BusEvent::RoomSeqs { seqs: vec![(Arc::from("r"), 1)] };
        let mut v = encode(&[0; 16], &ev).unwrap().to_vec();
        v[HEADER..HEADER + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(decode(Bytes::from(v)), Err(WireError::Truncated));
    }

    #[test]
    fn version_1_envelopes_are_still_read() {
        let origin = [3; 16];
        for ev in samples() {
            let v2 = encode(&origin, &ev).unwrap();
            let mut v1 = v2[..HEADER_V1].to_vec();
            v1[0] = 1;
            v1.extend_from_slice(&v2[HEADER..]);
            assert_eq!(published_at_us(&v1), None);
            assert_eq!(decode(Bytes::from(v1)).unwrap(), (origin, ev));
        }
    }
}
