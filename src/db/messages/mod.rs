//! Message persistence: gap-free per-room sequence numbers, idempotent by
//! `(room, sender, client_msg_id)`, appended in batches.
//!
//! A room's stream holds messages and change events (`edit`, `delete`):
//! each change is a row with its own seq, appended through the same path,
//! so replay, gap fill and the bus carry it like a message; the message it
//! changes is updated to its current state in the same transaction.
//!
//! Dependencies run one way: [`entry`] (the data) ← [`plan`] (the chat's
//! batch rules, pure) ← [`append`] (the SQL that reads the facts and writes
//! the plan); [`read`] (history, export) needs only [`entry`].

mod append;
mod entry;
mod plan;
mod read;

pub use entry::{
    AppendOutcome, DeleteReason, Deleter, EntryType, HistoryPage, MessageKey, NewKind, NewMessage, OPERATOR,
    StoredMessage,
};

use sqlx::Row;
use sqlx::any::AnyRow;

const MSG_COLS: &str =
    "room_id, seq, sender_id, body, client_msg_id, sent_at, deleted_at, kind, target_seq, reason, edited_at";
const MSG_COLS_M: &str = "m.room_id, m.seq, m.sender_id, m.body, m.client_msg_id, m.sent_at, m.deleted_at, \
                          m.kind, m.target_seq, m.reason, m.edited_at";

/// Tuples per `IN (…)` list (at most 3 parameters each).
const IN_CHUNK: usize = 1000;

fn message_from(r: &AnyRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        kind: EntryType::parse(r.try_get("kind")?),
        room: r.try_get("room_id")?,
        seq: r.try_get("seq")?,
        sender: r.try_get("sender_id")?,
        body: r.try_get("body")?,
        client_msg_id: r.try_get("client_msg_id")?,
        sent_at: r.try_get("sent_at")?,
        target_seq: r.try_get("target_seq")?,
        reason: r.try_get::<Option<&str>, _>("reason")?.and_then(DeleteReason::parse),
        edited_at: r.try_get("edited_at")?,
        deleted: r.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
    })
}
