//! The chat's batch rules as a pure plan: what becomes of each request of
//! a batch, given what storage knows. No SQL and no I/O here; `append`
//! reads the [`Facts`] under the rooms' locks and writes the [`Plan`].
//!
//! The rules, applied to the requests in batch order:
//!
//! 1. **Room and membership.** A request for a room that does not exist is
//!    [`NoSuchRoom`](AppendOutcome::NoSuchRoom); a sender who is not a
//!    member is [`NotMember`](AppendOutcome::NotMember), except for the
//!    deletes of an operator or of an account erasure.
//! 2. **Retry dedup.** `(room, sender, client_msg_id)` names one request,
//!    across sends, edits and deletes (protocol §13.3). When it is already
//!    taken, by a stored row or by an earlier request of the same batch,
//!    the request is a [`Duplicate`](AppendOutcome::Duplicate) of it if it
//!    repeats it (same kind, target and body as sent, see [`repeats`]),
//!    else a [`Conflict`](AppendOutcome::Conflict); both return the
//!    stored entry and allocate nothing. An edited message keeps the
//!    digest of the body it was sent with for this comparison; a deleted
//!    one keeps no text, so anything repeats it.
//! 3. **Change permission** (see [`check_change`]). A change names a live
//!    message of the room (not a change event, not deleted), else
//!    [`TargetNotFound`](AppendOutcome::TargetNotFound). Only the author
//!    edits, while the edit's `sent_at` is at most the window after the
//!    message's (a window of 0 never), else
//!    [`NotAuthor`](AppendOutcome::NotAuthor) or
//!    [`EditWindowClosed`](AppendOutcome::EditWindowClosed). A member's
//!    delete is the author's or the room owner's; an operator deletes any
//!    message; an erasure deletes only the erased author's.
//! 4. **Seq allocation.** Each request that passes gets the room's next
//!    seq, in batch order: a room's seqs are gap-free from its `last_seq`
//!    + 1, and its new `last_seq` is the last one allocated.
//! 5. **Same-batch changes.** A change sees the state left by the requests
//!    before it in the batch: a message stored earlier in the batch can be
//!    edited or deleted, a message deleted earlier can no longer be.
//!
//! Like the hub's sequencer (`hub/sequencer.rs`), and unlike the usual
//! chat server, where these rules live inside the SQL that stores a
//! message, they are a pure function here, so property tests check them
//! over thousands of generated batches and histories without a database:
//! a batch is planned exactly as its requests would be one by one, seqs
//! are gap-free, a retry is a duplicate and reuses no seq, and only the
//! allowed senders change a message.

use std::collections::{BTreeMap, HashMap};

use super::{AppendOutcome, DeleteReason, Deleter, EntryType, NewKind, NewMessage, StoredMessage};

/// What storage knows about a batch, read under the locks of its rooms.
#[derive(Debug, Default)]
pub(super) struct Facts {
    /// The `last_seq` of each of the batch's rooms that exists.
    pub last_seq: HashMap<String, i64>,
    /// The batch's `(room, sender)` memberships; `true` for the room's owner.
    pub members: HashMap<(String, String), bool>,
    /// Rows already stored under a `(room, sender, client_msg_id)` of the
    /// batch, with the digest of the body they were sent with when they
    /// were edited since.
    pub known: HashMap<(String, String, String), (StoredMessage, Option<String>)>,
    /// The current state of the rows the batch's changes name.
    pub targets: HashMap<(String, i64), Target>,
}

/// The current state of a message a change in the batch applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub sender: String,
    pub sent_at: i64,
    /// A message (not a change event) that is not deleted.
    pub live: bool,
    pub body: String,
    pub edited_at: Option<i64>,
    /// When and by whom it was deleted.
    pub deleted: Option<(i64, String)>,
    /// The digest of the body as sent, kept from the first edit on (see
    /// [`repeats`]).
    pub sent_digest: Option<String>,
    /// Changed by this batch: written back after the inserts.
    pub dirty: bool,
}

impl Target {
    /// A row as stored: `kind` and `deleted_at` as the columns hold them.
    pub fn stored(
        sender: String,
        sent_at: i64,
        kind: &str,
        deleted_at: Option<i64>,
        body: String,
        edited_at: Option<i64>,
        sent_digest: Option<String>,
    ) -> Self {
        Target {
            sender,
            sent_at,
            live: kind == "message" && deleted_at.is_none(),
            body,
            edited_at,
            deleted: None,
            sent_digest,
            dirty: false,
        }
    }
}

/// What to write for a batch, and what to answer.
#[derive(Debug)]
pub(super) struct Plan<'a> {
    /// One per request, in the order of the batch.
    pub outcomes: Vec<AppendOutcome>,
    /// The rows to insert, in batch order (so in seq order per room).
    pub fresh: Vec<StoredMessage>,
    /// Each room's new `last_seq`, in room id order (rooms with nothing
    /// stored are absent).
    pub moved: Vec<(&'a str, i64)>,
    /// The messages whose state the batch's changes rewrote, by `(room,
    /// seq)`, in that order.
    pub changed: Vec<((String, i64), Target)>,
    /// Whether the batch holds any change (edit, delete).
    pub has_changes: bool,
}

/// Applies the rules of the module doc to `batch`, given `facts`.
pub(super) fn plan<'a>(batch: &'a [NewMessage], facts: Facts) -> Plan<'a> {
    let Facts { mut last_seq, members, mut known, mut targets } = facts;
    let has_changes = batch.iter().any(|m| m.kind != NewKind::Message);
    let mut out: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
    let mut fresh: Vec<StoredMessage> = Vec::new();
    let mut moved: BTreeMap<&str, i64> = BTreeMap::new();
    for (i, m) in batch.iter().enumerate() {
        // Rule 1: no such room, or not a member.
        if !last_seq.contains_key(&m.room_id) {
            out[i] = Some(AppendOutcome::NoSuchRoom);
            continue;
        }
        if m.kind.needs_membership() && !members.contains_key(&(m.room_id.clone(), m.sender_id.clone())) {
            out[i] = Some(AppendOutcome::NotMember);
            continue;
        }
        // Rule 2: the id is taken.
        let key = (m.room_id.clone(), m.sender_id.clone(), m.client_msg_id.clone());
        if let Some((orig, digest)) = known.get(&key) {
            out[i] = Some(if repeats(m, orig, digest.as_deref()) {
                AppendOutcome::Duplicate(orig.clone())
            } else {
                AppendOutcome::Conflict(orig.clone())
            });
            continue;
        }
        // Rule 3: the change is allowed on its target's current state.
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
        // Rule 4: the room's next seq (the room exists: rule 1).
        let seq = last_seq.get_mut(&m.room_id).map(|l| {
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
        // Rule 5: the state the next requests of the batch see.
        match (m.kind, target.and_then(|t| targets.get_mut(&(m.room_id.clone(), t)))) {
            (NewKind::Edit { .. }, Some(t)) => {
                // The first edit overwrites the body as sent: keep what a
                // retried send is compared with.
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
                let t = Target::stored(m.sender_id.clone(), m.sent_at, "message", None, m.body.clone(), None, None);
                targets.insert((m.room_id.clone(), seq), t);
            }
            _ => {}
        }
        known.insert(key, (stored.clone(), None));
        out[i] = Some(AppendOutcome::Stored(stored.clone()));
        fresh.push(stored);
    }
    let mut changed: Vec<((String, i64), Target)> = targets.into_iter().filter(|(_, t)| t.dirty).collect();
    changed.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Plan {
        // Every index was filled: each request is refused, a repeat, or
        // stored above.
        outcomes: out.into_iter().map(|o| o.unwrap_or(AppendOutcome::NoSuchRoom)).collect(),
        fresh,
        moved: moved.into_iter().collect(),
        changed,
        has_changes,
    }
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
    pub(super) fn target(self) -> Option<i64> {
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

#[cfg(test)]
mod tests;
