//! The entries of a room's stream as the store takes and returns them: the
//! requests to append ([`NewMessage`]), the stored rows ([`StoredMessage`])
//! and what became of each request ([`AppendOutcome`]). Plain data, no SQL.

use serde::Serialize;

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

    pub(super) fn parse(s: &str) -> Self {
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

    pub(super) fn parse(s: &str) -> Option<Self> {
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
    /// kind, body or target: `plan::repeats`): not a retry of it. The stored
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
