//! Message persistence: gap-free per-room sequence numbers, idempotent by
//! `(room, sender, client_msg_id)`, appended in batches.
//!
//! A room's stream holds messages and change events (`edit`, `delete`):
//! each change is a row with its own seq, appended through the same path,
//! so replay, gap fill and the bus carry it like a message; the message it
//! changes is updated to its current state in the same transaction.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::script::Script;
use super::{DbError, Store};

/// A message, or a change event, to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room_id: String,
    /// Who sends or makes the change ([`OPERATOR`] for an operator's delete).
    pub sender_id: String,
    pub client_msg_id: String,
    /// The new body of an edit; empty for a delete.
    pub body: String,
    pub sent_at: i64,
    pub kind: NewKind,
}

/// The sender id of deletes made by an operator (user ids are UUIDs, so it
/// cannot name a user).
pub const OPERATOR: &str = "operator";

/// What an appended entry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NewKind {
    /// A new message.
    #[default]
    Message,
    /// Replaces the body of the sender's own message `target_seq`, allowed
    /// while the edit's `sent_at` is at most `window_ms` after the
    /// message's (0: never). The window travels with the request so the
    /// store holds no policy.
    Edit { target_seq: i64, window_ms: i64 },
    /// Deletes message `target_seq` (empties its body).
    Delete { target_seq: i64, by: Deleter },
}

/// On whose authority a delete is made; the `reason` follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deleter {
    /// A member: the author (`author`) or the room's owner (`owner`).
    Member,
    /// An operator through the admin API (`operator`); no membership.
    Operator,
    /// The author's account erasure (`erased`); the author is no longer a
    /// member by then.
    Erasure,
}

/// What a row of a room's stream is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryType {
    Message,
    /// A change event: the new body of message `target_seq`.
    Edit,
    /// A change event: message `target_seq` was deleted.
    Delete,
}

impl EntryType {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::Message => "message",
            EntryType::Edit => "edit",
            EntryType::Delete => "delete",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "edit" => EntryType::Edit,
            "delete" => EntryType::Delete,
            _ => EntryType::Message,
        }
    }
}

/// Why a message was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeleteReason {
    Author,
    Owner,
    Operator,
    Erased,
}

impl DeleteReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DeleteReason::Author => "author",
            DeleteReason::Owner => "owner",
            DeleteReason::Operator => "operator",
            DeleteReason::Erased => "erased",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [DeleteReason::Author, DeleteReason::Owner, DeleteReason::Operator, DeleteReason::Erased]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// Where a page of a sender's messages ends: `sent_at:seq:room` on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageKey {
    pub sent_at: i64,
    pub seq: i64,
    pub room: String,
}

impl MessageKey {
    pub fn of(m: &StoredMessage) -> Self {
        MessageKey { sent_at: m.sent_at, seq: m.seq, room: m.room.clone() }
    }

    /// `None` for anything that is not a cursor this server wrote.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, ':');
        let sent_at = parts.next()?.parse().ok()?;
        let seq = parts.next()?.parse().ok()?;
        let room = parts.next().filter(|r| !r.is_empty() && r.len() <= 64)?.to_owned();
        Some(MessageKey { sent_at, seq, room })
    }
}

impl std::fmt::Display for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.sent_at, self.seq, self.room)
    }
}

/// A stored entry of a room's stream (a message, in its current state, or
/// a change event), as history and the socket deliver it.
///
/// Serialised (REST history, export) with the fields of its socket frame:
/// a `delete` entry has no `body` (its frame has none), hence the
/// hand-written `Serialize` below.
#[derive(Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct StoredMessage {
    /// `message`, or a change event (`edit`, `delete`) of `target_seq`.
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub room: String,
    pub seq: i64,
    /// The author of a message; who made a change event.
    pub sender: String,
    /// Empty for a deleted message (a tombstone); an `edit` event's new
    /// body (emptied once its message is deleted). Absent from `delete`
    /// events.
    #[schema(required = false)]
    pub body: String,
    pub client_msg_id: String,
    /// Unix milliseconds, assigned by the server.
    pub sent_at: i64,
    /// The message's seq a change event applies to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<i64>,
    /// Why a `delete` event happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeleteReason>,
    /// A message's last edit (Unix ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl Serialize for StoredMessage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut m = s.serialize_struct("StoredMessage", 11)?;
        m.serialize_field("type", &self.kind)?;
        m.serialize_field("room", &self.room)?;
        m.serialize_field("seq", &self.seq)?;
        m.serialize_field("sender", &self.sender)?;
        if self.kind == EntryType::Delete {
            m.skip_field("body")?;
        } else {
            m.serialize_field("body", &self.body)?;
        }
        m.serialize_field("client_msg_id", &self.client_msg_id)?;
        m.serialize_field("sent_at", &self.sent_at)?;
        if let Some(t) = self.target_seq {
            m.serialize_field("target_seq", &t)?;
        }
        if let Some(r) = self.reason {
            m.serialize_field("reason", &r)?;
        }
        if let Some(e) = self.edited_at {
            m.serialize_field("edited_at", &e)?;
        }
        if self.deleted {
            m.serialize_field("deleted", &true)?;
        }
        m.end()
    }
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Newly stored with a fresh seq.
    Stored(StoredMessage),
    /// Already stored earlier (a retry): the original entry, same seq.
    Duplicate(StoredMessage),
    /// The `client_msg_id` is already stored for another request (another
    /// kind, body or target: [`repeats`]): not a retry of it. The stored
    /// entry, unchanged.
    Conflict(StoredMessage),
    /// The room does not exist (deleted meanwhile).
    NoSuchRoom,
    /// The sender is not a member of the room (checked in the transaction,
    /// so a removed member can never store another message).
    NotMember,
    /// A change names no live message of the room (missing, deleted, or a
    /// change event itself).
    TargetNotFound,
    /// The sender may not make this change (another's message; a delete by
    /// a member who is neither the author nor the room's owner).
    NotAuthor,
    /// An edit after the edit window.
    EditWindowClosed,
}

/// A page of history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// Ascending by seq.
    pub messages: Vec<StoredMessage>,
    /// Whether more messages exist beyond this page in the paging direction.
    pub has_more: bool,
}

const MSG_COLS: &str =
    "room_id, seq, sender_id, body, client_msg_id, sent_at, deleted_at, kind, target_seq, reason, edited_at";
const MSG_COLS_M: &str = "m.room_id, m.seq, m.sender_id, m.body, m.client_msg_id, m.sent_at, m.deleted_at, \
                          m.kind, m.target_seq, m.reason, m.edited_at";

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

/// The current state of a message a change in the batch applies to.
struct Target {
    sender: String,
    sent_at: i64,
    /// A message (not a change event) that is not deleted.
    live: bool,
    body: String,
    edited_at: Option<i64>,
    deleted: Option<(i64, String)>,
    /// The digest of the body as sent, kept from the first edit on (see
    /// [`repeats`]).
    sent_digest: Option<String>,
    /// Changed by this batch: written back after the inserts.
    dirty: bool,
}

/// The SHA-256 of a body, hex: what an edited message keeps of the body it
/// was sent with, to tell a retried send from a reuse of its id.
fn body_digest(body: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored entry type a request makes.
fn entry_type(kind: NewKind) -> EntryType {
    match kind {
        NewKind::Message => EntryType::Message,
        NewKind::Edit { .. } => EntryType::Edit,
        NewKind::Delete { .. } => EntryType::Delete,
    }
}

/// Whether `m` repeats the request that stored `orig` under the same
/// `(room, sender, client_msg_id)`: one namespace of ids across sends,
/// edits and deletes (protocol §13.3). A repeat is acked as a duplicate; a
/// reuse of the id for another kind, target or body is a conflict, so new
/// text is never dropped as a "duplicate" and a change is never acked
/// without being applied.
///
/// The body compared is the one sent, which storage may no longer hold: an
/// edited message keeps its digest (`sent_digest`, none for rows edited
/// before it existed); a deleted message, and an edit event of it, keep no
/// text at all, so any body repeats them (nothing can tell a retry apart).
fn repeats(m: &NewMessage, orig: &StoredMessage, sent_digest: Option<&str>) -> bool {
    if entry_type(m.kind) != orig.kind || m.kind.target() != orig.target_seq {
        return false;
    }
    match orig.kind {
        EntryType::Message if orig.deleted => true,
        EntryType::Message if orig.edited_at.is_some() => sent_digest.is_none_or(|d| d == body_digest(&m.body)),
        // An edit's body is never empty: empty is an edit of a message
        // deleted since.
        EntryType::Message | EntryType::Edit => orig.body == m.body || orig.body.is_empty(),
        EntryType::Delete => true,
    }
}

/// Whether `m` may make its change to `t`: the reason of a delete, or the
/// refusal.
fn check_change(m: &NewMessage, t: &Target, owner: bool) -> Result<Option<DeleteReason>, Refused> {
    if !t.live {
        return Err(Refused::TargetNotFound);
    }
    match m.kind {
        NewKind::Message => Ok(None),
        NewKind::Edit { window_ms, .. } => {
            if t.sender != m.sender_id {
                Err(Refused::NotAuthor)
            } else if window_ms <= 0 || m.sent_at - t.sent_at > window_ms {
                Err(Refused::EditWindowClosed)
            } else {
                Ok(None)
            }
        }
        NewKind::Delete { by, .. } => match by {
            Deleter::Member if t.sender == m.sender_id => Ok(Some(DeleteReason::Author)),
            Deleter::Member if owner => Ok(Some(DeleteReason::Owner)),
            Deleter::Member => Err(Refused::NotAuthor),
            Deleter::Operator => Ok(Some(DeleteReason::Operator)),
            Deleter::Erasure if t.sender == m.sender_id => Ok(Some(DeleteReason::Erased)),
            Deleter::Erasure => Err(Refused::NotAuthor),
        },
    }
}

/// Why a change is refused (the matching [`AppendOutcome`] is large).
#[derive(Debug, Clone, Copy)]
enum Refused {
    TargetNotFound,
    NotAuthor,
    EditWindowClosed,
}

impl From<Refused> for AppendOutcome {
    fn from(r: Refused) -> Self {
        match r {
            Refused::TargetNotFound => AppendOutcome::TargetNotFound,
            Refused::NotAuthor => AppendOutcome::NotAuthor,
            Refused::EditWindowClosed => AppendOutcome::EditWindowClosed,
        }
    }
}

impl NewKind {
    /// The message a change applies to.
    fn target(self) -> Option<i64> {
        match self {
            NewKind::Message => None,
            NewKind::Edit { target_seq, .. } | NewKind::Delete { target_seq, .. } => Some(target_seq),
        }
    }

    /// Operators and erasures act without being members.
    fn needs_membership(self) -> bool {
        !matches!(self, NewKind::Delete { by: Deleter::Operator | Deleter::Erasure, .. })
    }
}

/// Only the retained range: rows below `rooms.first_seq` may still exist
/// while the retention job deletes them in batches, but no reader sees them
/// (one primary-key look-up per page).
const RETAINED: &str = "seq >= (SELECT first_seq FROM rooms WHERE id = $1)";

/// Rows per multi-row INSERT: 6 parameters each stays far below both
/// backends' parameter limits.
const INSERT_CHUNK: usize = 500;
/// Tuples per `IN (…)` list (at most 3 parameters each).
const IN_CHUNK: usize = 1000;

impl Store {
    /// Appends a batch of messages, possibly for many rooms, in ONE
    /// transaction (the hub's group commit) of a constant number of
    /// statements, whatever the number of rooms:
    ///
    /// 1. lock the batch's rooms and read their `last_seq`: `FOR UPDATE` in
    ///    id order on PostgreSQL, so concurrent writers on any instance
    ///    serialise per room and can never deadlock; SQLite has one writer
    ///    connection, which already serialises;
    /// 2. keep only senders who are members (checked under the lock, so a
    ///    removed member can never store another message);
    /// 3. find messages already stored with the same
    ///    `(room, sender, client_msg_id)`, and repeats within the batch: they
    ///    come back as [`AppendOutcome::Duplicate`] with the original seq;
    /// 4. check each change (edit, delete) against the current state of
    ///    its target, read under the same lock, and insert the rest with
    ///    consecutive seqs after `last_seq`; a change's target row is
    ///    rewritten to its new state;
    /// 5. move each room's `last_seq`.
    ///
    /// A rollback releases the seqs unused, so they stay gap-free. Outcomes
    /// are in the order of `batch`.
    pub async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<AppendOutcome>, DbError> {
        self.append_messages_with(batch, false).await
    }

    /// [`Store::append_messages`], and with `push_outbox` (the offline-push
    /// webhook is configured) one `push_outbox` row per newly stored
    /// message in the same transaction, so the webhook can neither miss a
    /// committed message nor announce one that was rolled back. Without it
    /// nothing more is written.
    pub async fn append_messages_with(
        &self,
        batch: &[NewMessage],
        push_outbox: bool,
    ) -> Result<Vec<AppendOutcome>, DbError> {
        let mut out: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
        let mut rooms: Vec<&str> = batch.iter().map(|m| m.room_id.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let has_changes = batch.iter().any(|m| m.kind != NewKind::Message);
        let mut tx = self.begin_write().await?;

        // Steps 1-3b are one script (one query on SQLite); each row says
        // which step it answers in its first column.
        let mut reads = Script::new(&tx);
        // 1. Lock and read.
        let lock = if self.backend == super::Backend::Postgres { " FOR UPDATE" } else { "" };
        for chunk in rooms.chunks(IN_CHUNK) {
            let ids = chunk.iter().map(|r| reads.arg(*r)).collect::<Vec<_>>().join(", ");
            reads.push(format!("SELECT 'r' AS k, id, last_seq FROM rooms WHERE id IN ({ids}) ORDER BY id{lock}"));
        }
        // 2. Membership of (room, sender) pairs, and whether the sender owns
        // the room (for owners' deletes).
        let mut pairs: Vec<(&str, &str)> = batch.iter().map(|m| (m.room_id.as_str(), m.sender_id.as_str())).collect();
        pairs.sort_unstable();
        pairs.dedup();
        for chunk in pairs.chunks(IN_CHUNK) {
            let tuples = chunk
                .iter()
                .map(|(r, u)| format!("({}, {})", reads.arg(*r), reads.arg(*u)))
                .collect::<Vec<_>>()
                .join(", ");
            // A join on VALUES plans as index look-ups on both backends.
            reads.push(format!(
                "SELECT 'm' AS k, m.room_id, m.user_id, m.role FROM memberships m JOIN (VALUES {tuples}) AS v \
                 ON m.room_id = v.column1 AND m.user_id = v.column2"
            ));
        }
        // 3. Already stored.
        for chunk in batch.chunks(IN_CHUNK) {
            let tuples = chunk
                .iter()
                .map(|m| {
                    format!("({}, {}, {})", reads.arg(&m.room_id), reads.arg(&m.sender_id), reads.arg(&m.client_msg_id))
                })
                .collect::<Vec<_>>()
                .join(", ");
            reads.push(format!(
                "SELECT 'd' AS k, {MSG_COLS_M}, m.sent_digest FROM messages m JOIN (VALUES {tuples}) AS v \
                 ON m.room_id = v.column1 AND m.sender_id = v.column2 AND m.client_msg_id = v.column3"
            ));
        }
        // 3b. The current state of the messages that changes apply to (none
        // for a batch of plain messages).
        let wanted: Vec<(&str, i64)> =
            batch.iter().filter_map(|m| m.kind.target().map(|t| (m.room_id.as_str(), t))).collect();
        for chunk in wanted.chunks(IN_CHUNK) {
            let tuples = chunk
                .iter()
                .map(|(r, t)| format!("({}, {})", reads.arg(*r), reads.arg(*t)))
                .collect::<Vec<_>>()
                .join(", ");
            reads.push(format!(
                "SELECT 't' AS k, m.room_id, m.seq, m.sender_id, m.sent_at, m.kind, m.deleted_at, m.body, m.edited_at, \
                 m.sent_digest \
                 FROM messages m JOIN (VALUES {tuples}) AS v ON m.room_id = v.column1 AND m.seq = v.column2"
            ));
        }
        let mut last: HashMap<String, i64> = HashMap::new();
        let mut members: HashMap<(String, String), bool> = HashMap::new();
        // Already stored under the same (room, sender, client_msg_id), with
        // the digest of the body it was sent with when it was edited since.
        let mut known: HashMap<(String, String, String), (StoredMessage, Option<String>)> = HashMap::new();
        let mut targets: HashMap<(String, i64), Target> = HashMap::new();
        for row in tx.fetch(reads).await? {
            match row.try_get::<&str, _>("k")? {
                "r" => {
                    last.insert(row.try_get("id")?, row.try_get("last_seq")?);
                }
                "m" => {
                    let owner = row.try_get::<&str, _>("role")? == "owner";
                    members.insert((row.try_get("room_id")?, row.try_get("user_id")?), owner);
                }
                "d" => {
                    let m = message_from(&row)?;
                    let digest = row.try_get("sent_digest")?;
                    known.insert((m.room.clone(), m.sender.clone(), m.client_msg_id.clone()), (m, digest));
                }
                _ => {
                    let kind: String = row.try_get("kind")?;
                    let deleted_at: Option<i64> = row.try_get("deleted_at")?;
                    targets.insert(
                        (row.try_get("room_id")?, row.try_get("seq")?),
                        Target {
                            sender: row.try_get("sender_id")?,
                            sent_at: row.try_get("sent_at")?,
                            live: kind == "message" && deleted_at.is_none(),
                            body: row.try_get("body")?,
                            edited_at: row.try_get("edited_at")?,
                            deleted: None,
                            sent_digest: row.try_get("sent_digest")?,
                            dirty: false,
                        },
                    );
                }
            }
        }
        // Refused: no such room, or not a member.
        let candidates: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                let m = &batch[i];
                let ok = last.contains_key(&m.room_id)
                    && (!m.kind.needs_membership() || members.contains_key(&(m.room_id.clone(), m.sender_id.clone())));
                if !ok {
                    out[i] = Some(if last.contains_key(&m.room_id) {
                        AppendOutcome::NotMember
                    } else {
                        AppendOutcome::NoSuchRoom
                    });
                }
                ok
            })
            .collect();

        // 4. Allocate seqs in batch order and insert. Changes are checked
        // against the state left by the entries before them in the batch.
        let mut fresh: Vec<StoredMessage> = Vec::new();
        let mut moved: BTreeMap<&str, i64> = BTreeMap::new();
        for &i in &candidates {
            let m = &batch[i];
            let key = (m.room_id.clone(), m.sender_id.clone(), m.client_msg_id.clone());
            if let Some((orig, digest)) = known.get(&key) {
                out[i] = Some(if repeats(m, orig, digest.as_deref()) {
                    AppendOutcome::Duplicate(orig.clone())
                } else {
                    AppendOutcome::Conflict(orig.clone())
                });
                continue;
            }
            let target = m.kind.target();
            let mut reason = None;
            if let Some(t) = target {
                let owner = members.get(&(m.room_id.clone(), m.sender_id.clone())).copied().unwrap_or(false);
                let checked = match targets.get(&(m.room_id.clone(), t)) {
                    Some(state) => check_change(m, state, owner),
                    None => Err(Refused::TargetNotFound),
                };
                match checked {
                    Ok(r) => reason = r,
                    Err(refused) => {
                        out[i] = Some(refused.into());
                        continue;
                    }
                }
            }
            // `candidates` only holds rooms found in step 1.
            let seq = last.get_mut(&m.room_id).map(|l| {
                *l += 1;
                *l
            });
            let Some(seq) = seq else { continue };
            moved.insert(&m.room_id, seq);
            let stored = StoredMessage {
                kind: entry_type(m.kind),
                room: m.room_id.clone(),
                seq,
                sender: m.sender_id.clone(),
                body: m.body.clone(),
                client_msg_id: m.client_msg_id.clone(),
                sent_at: m.sent_at,
                target_seq: target,
                reason,
                edited_at: None,
                deleted: false,
            };
            match (m.kind, target.and_then(|t| targets.get_mut(&(m.room_id.clone(), t)))) {
                (NewKind::Edit { .. }, Some(t)) => {
                    // The first edit overwrites the body as sent: keep
                    // what a retried send is compared with.
                    if t.edited_at.is_none() {
                        t.sent_digest = Some(body_digest(&t.body));
                    }
                    t.body = m.body.clone();
                    t.edited_at = Some(m.sent_at);
                    t.dirty = true;
                }
                (NewKind::Delete { .. }, Some(t)) => {
                    t.body.clear();
                    t.sent_digest = None;
                    t.live = false;
                    t.deleted = Some((m.sent_at, m.sender_id.clone()));
                    t.dirty = true;
                }
                // A message a later change in this batch may apply to.
                (NewKind::Message, _) if has_changes => {
                    targets.insert(
                        (m.room_id.clone(), seq),
                        Target {
                            sender: m.sender_id.clone(),
                            sent_at: m.sent_at,
                            live: true,
                            body: m.body.clone(),
                            edited_at: None,
                            deleted: None,
                            sent_digest: None,
                            dirty: false,
                        },
                    );
                }
                _ => {}
            }
            known.insert(key, (stored.clone(), None));
            out[i] = Some(AppendOutcome::Stored(stored.clone()));
            fresh.push(stored);
        }
        let (plain, changes): (Vec<&StoredMessage>, Vec<&StoredMessage>) =
            fresh.iter().partition(|m| m.kind == EntryType::Message);
        // The inserts, then (rare) outbox rows and changes, then 5. the
        // moved `last_seq`s (one CASE statement per chunk of rooms) and the
        // commit. With nothing rare: the inserts and the update in one
        // query (one round trip), and on SQLite the commit in it too.
        let mut writes = Script::new(&tx);
        let mut parts = Vec::new();
        for chunk in plain.chunks(INSERT_CHUNK) {
            let rows = chunk
                .iter()
                .map(|m| {
                    let v = [
                        writes.arg(&m.room),
                        writes.arg(m.seq),
                        writes.arg(&m.sender),
                        writes.arg(&m.body),
                        writes.arg(&m.client_msg_id),
                        writes.arg(m.sent_at),
                    ];
                    format!("({})", v.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            parts.push(format!(
                "INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id, sent_at) VALUES {rows}"
            ));
        }
        // Push notifications are for messages, not for edits and deletes.
        let outbox = push_outbox && !plain.is_empty();
        if outbox || has_changes {
            // These need the new rows in place: the inserts go first.
            writes.push_together(std::mem::take(&mut parts));
            tx.fetch(writes).await?;
            writes = Script::new(&tx);
        }
        if outbox {
            super::push::insert_outbox(tx.conn().await?, &plain).await?;
        }
        if has_changes {
            self.store_changes(tx.conn().await?, &changes, &targets).await?;
        }
        let moved: Vec<(&str, i64)> = moved.into_iter().collect();
        for chunk in moved.chunks(IN_CHUNK) {
            let cases = chunk
                .iter()
                .map(|(room, seq)| format!("WHEN {} THEN {}", writes.arg(*room), writes.arg(*seq)))
                .collect::<Vec<_>>()
                .join(" ");
            let ids = chunk.iter().map(|(room, _)| writes.arg(*room)).collect::<Vec<_>>().join(", ");
            parts.push(format!("UPDATE rooms SET last_seq = CASE id {cases} END WHERE id IN ({ids})"));
        }
        writes.push_together(parts);
        tx.commit(writes).await?;
        // Every index was filled: each message is either refused in step 3,
        // a duplicate, or stored in step 4.
        Ok(out.into_iter().map(|o| o.unwrap_or(AppendOutcome::NoSuchRoom)).collect())
    }

    /// Inserts change events and writes their targets' new state (step 4
    /// of [`Store::append_messages`], only for batches holding changes).
    async fn store_changes(
        &self,
        tx: &mut sqlx::AnyConnection,
        changes: &[&StoredMessage],
        targets: &HashMap<(String, i64), Target>,
    ) -> Result<(), DbError> {
        for chunk in changes.chunks(INSERT_CHUNK) {
            let rows = (0..chunk.len())
                .map(|k| format!("({})", super::placeholders(1 + 9 * k, 9)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id, sent_at, kind, target_seq, reason) \
                 VALUES {rows}"
            );
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q
                    .bind(&m.room)
                    .bind(m.seq)
                    .bind(&m.sender)
                    .bind(&m.body)
                    .bind(&m.client_msg_id)
                    .bind(m.sent_at)
                    .bind(m.kind.as_str())
                    .bind(m.target_seq)
                    .bind(m.reason.map(DeleteReason::as_str));
            }
            q.execute(&mut *tx).await?;
        }
        // One statement per changed message: changes are rare next to
        // messages, and an erasure batch is bounded.
        for ((room, seq), t) in targets.iter().filter(|(_, t)| t.dirty) {
            let (deleted_at, deleted_by) = match &t.deleted {
                Some((at, by)) => (Some(*at), Some(by.as_str())),
                None => (None, None),
            };
            sqlx::query(
                "UPDATE messages SET body = $3, edited_at = $4, deleted_at = $5, deleted_by = $6, sent_digest = $7 \
                 WHERE room_id = $1 AND seq = $2",
            )
            .bind(room)
            .bind(*seq)
            .bind(&t.body)
            .bind(t.edited_at)
            .bind(deleted_at)
            .bind(deleted_by)
            .bind(t.sent_digest.as_deref())
            .execute(&mut *tx)
            .await?;
            if t.deleted.is_some() {
                // A deleted message keeps no earlier version either.
                sqlx::query("UPDATE messages SET body = '' WHERE room_id = $1 AND target_seq = $2 AND kind = 'edit'")
                    .bind(room)
                    .bind(*seq)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }

    /// One page of a room's history, ascending by seq.
    ///
    /// With `after_seq`, the `limit` messages following it; otherwise the
    /// `limit` messages before `before_seq` (or the newest ones).
    pub async fn history(
        &self,
        room: &str,
        after_seq: Option<i64>,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<HistoryPage, DbError> {
        let fetch = limit + 1;
        let mut messages = if let Some(after) = after_seq {
            let upper = before_seq.unwrap_or(i64::MAX);
            let sql = format!(
                "SELECT {MSG_COLS} FROM messages WHERE room_id = $1 AND seq > $2 AND seq < $3 AND {RETAINED} \
                 ORDER BY seq ASC LIMIT $4"
            );
            sqlx::query(&sql).bind(room).bind(after).bind(upper).bind(fetch).fetch_all(&self.read).await?
        } else {
            let upper = before_seq.unwrap_or(i64::MAX);
            let sql =
                format!("SELECT {MSG_COLS} FROM messages WHERE room_id = $1 AND seq < $2 AND {RETAINED} ORDER BY seq DESC LIMIT $3");
            sqlx::query(&sql).bind(room).bind(upper).bind(fetch).fetch_all(&self.read).await?
        }
        .iter()
        .map(message_from)
        .collect::<Result<Vec<_>, _>>()?;
        let has_more = messages.len() as i64 > limit;
        messages.truncate(limit as usize);
        if after_seq.is_none() {
            messages.reverse();
        }
        Ok(HistoryPage { messages, has_more })
    }

    /// Every message a user sent (for export).
    /// Up to `limit` of the sender's messages in (sent_at, room, seq) order,
    /// after `after` (a keyset cursor, so a page costs the same however deep).
    pub async fn messages_by_sender(
        &self,
        sender: &str,
        after: Option<&MessageKey>,
        limit: i64,
    ) -> Result<Vec<StoredMessage>, DbError> {
        let sql = format!(
            "SELECT {MSG_COLS} FROM messages WHERE sender_id = $1 AND \
             (sent_at > $2 OR (sent_at = $2 AND (room_id > $3 OR (room_id = $3 AND seq > $4)))) \
             ORDER BY sent_at, room_id, seq LIMIT $5"
        );
        let (sent_at, room, seq) = after.map_or((i64::MIN, "", i64::MIN), |k| (k.sent_at, k.room.as_str(), k.seq));
        let rows =
            sqlx::query(&sql).bind(sender).bind(sent_at).bind(room).bind(seq).bind(limit).fetch_all(&self.read).await?;
        Ok(rows.iter().map(message_from).collect::<Result<_, _>>()?)
    }

    /// Up to `limit` messages of an erased sender still waiting for their
    /// `delete` event, in (room, seq) order after `after`.
    pub async fn erasure_pending(
        &self,
        sender: &str,
        after: Option<(&str, i64)>,
        limit: i64,
    ) -> Result<Vec<(String, i64)>, DbError> {
        let (room, seq) = after.unwrap_or(("", i64::MIN));
        let rows = sqlx::query(
            "SELECT room_id, seq FROM messages WHERE sender_id = $1 AND kind = 'message' AND deleted_at IS NULL \
             AND (room_id > $2 OR (room_id = $2 AND seq > $3)) ORDER BY room_id, seq LIMIT $4",
        )
        .bind(sender)
        .bind(room)
        .bind(seq)
        .bind(limit)
        .fetch_all(&self.write)
        .await?;
        Ok(rows.iter().map(|r| Ok((r.try_get("room_id")?, r.try_get("seq")?))).collect::<Result<_, sqlx::Error>>()?)
    }

    /// Erased accounts whose messages still wait for `delete` events (an
    /// instance stopped in the middle of an erasure).
    pub async fn erasures_unfinished(&self) -> Result<Vec<String>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT u.id FROM users u WHERE u.deleted_at IS NOT NULL AND EXISTS (SELECT 1 FROM messages m \
             WHERE m.sender_id = u.id AND m.kind = 'message' AND m.deleted_at IS NULL)",
        )
        .fetch_all(&self.read)
        .await?)
    }

    /// The highest seq of a room, `None` for an unknown room.
    pub async fn last_seq(&self, room: &str) -> Result<Option<i64>, DbError> {
        Ok(sqlx::query_scalar("SELECT last_seq FROM rooms WHERE id = $1").bind(room).fetch_optional(&self.read).await?)
    }

    /// The highest seq of each of `rooms` that exists: one query per 1,000
    /// rooms (the hub's tail check compares many quiet rooms at once).
    pub async fn last_seqs(&self, rooms: &[&str]) -> Result<Vec<(String, i64)>, DbError> {
        let mut out = Vec::with_capacity(rooms.len());
        for chunk in rooms.chunks(IN_CHUNK) {
            let sql = format!("SELECT id, last_seq FROM rooms WHERE id IN ({})", super::placeholders(1, chunk.len()));
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
            for r in chunk {
                q = q.bind(*r);
            }
            out.extend(q.fetch_all(&self.read).await?);
        }
        Ok(out)
    }
}
