//! Stored rows as wire frames: the one adapter from storage's
//! [`StoredMessage`] to the protocol's [`StreamEntry`], so `protocol`
//! needs nothing of `db`.

use axum::extract::ws::Utf8Bytes;

use crate::db::{EntryType, StoredMessage};
use crate::protocol::{EntryKind, StreamEntry, stream_frame};

/// The protocol's name for what a stored row is.
fn entry_kind(t: EntryType) -> EntryKind {
    match t {
        EntryType::Message => EntryKind::Message,
        EntryType::Edit => EntryKind::Edit,
        EntryType::Delete => EntryKind::Delete,
    }
}

/// The stream frame of a stored entry (`message`, `edit` or `delete`):
/// what fan-out, replay and gap fill write to sockets.
pub fn message_frame(m: &StoredMessage) -> Utf8Bytes {
    stream_frame(&StreamEntry {
        kind: entry_kind(m.kind),
        room: &m.room,
        seq: m.seq,
        sender: &m.sender,
        body: &m.body,
        client_msg_id: &m.client_msg_id,
        sent_at: m.sent_at,
        target_seq: m.target_seq,
        reason: m.reason.map(|r| r.as_str()),
        edited_at: m.edited_at,
        deleted: m.deleted,
    })
}
