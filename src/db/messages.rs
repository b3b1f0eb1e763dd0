//! Message persistence: gap-free per-room sequence numbers, idempotent by
//! `(room, sender, client_msg_id)`, appended in batches.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{DbError, Store};

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub room_id: String,
    pub sender_id: String,
    pub client_msg_id: String,
    pub body: String,
    pub sent_at: i64,
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

/// A stored message, as history and the socket deliver it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StoredMessage {
    pub room: String,
    pub seq: i64,
    pub sender: String,
    /// Empty for a tombstone (the sender erased their account).
    pub body: String,
    pub client_msg_id: String,
    /// Unix milliseconds, assigned by the server.
    pub sent_at: i64,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// What became of one message of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Newly stored with a fresh seq.
    Stored(StoredMessage),
    /// Already stored earlier (a retry): the original message, same seq.
    Duplicate(StoredMessage),
    /// The room does not exist (deleted meanwhile).
    NoSuchRoom,
    /// The sender is not a member of the room (checked in the transaction,
    /// so a removed member can never store another message).
    NotMember,
}

/// A page of history.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryPage {
    /// Ascending by seq.
    pub messages: Vec<StoredMessage>,
    /// Whether more messages exist beyond this page in the paging direction.
    pub has_more: bool,
}

const MSG_COLS: &str = "room_id, seq, sender_id, body, client_msg_id, sent_at, deleted_at";
const MSG_COLS_M: &str = "m.room_id, m.seq, m.sender_id, m.body, m.client_msg_id, m.sent_at, m.deleted_at";

fn message_from(r: &AnyRow) -> Result<StoredMessage, sqlx::Error> {
    Ok(StoredMessage {
        room: r.try_get("room_id")?,
        seq: r.try_get("seq")?,
        sender: r.try_get("sender_id")?,
        body: r.try_get("body")?,
        client_msg_id: r.try_get("client_msg_id")?,
        sent_at: r.try_get("sent_at")?,
        deleted: r.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
    })
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
    /// 4. insert the rest with consecutive seqs after `last_seq`;
    /// 5. move each room's `last_seq`.
    ///
    /// A rollback releases the seqs unused, so they stay gap-free. Outcomes
    /// are in the order of `batch`.
    pub async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<AppendOutcome>, DbError> {
        let mut out: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
        let mut rooms: Vec<&str> = batch.iter().map(|m| m.room_id.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut tx = self.write.begin().await?;

        // 1. Lock and read.
        let mut last: HashMap<String, i64> = HashMap::new();
        for chunk in rooms.chunks(IN_CHUNK) {
            let lock = if self.backend == super::Backend::Postgres { " FOR UPDATE" } else { "" };
            let sql = format!(
                "SELECT id, last_seq FROM rooms WHERE id IN ({}) ORDER BY id{lock}",
                super::placeholders(1, chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for r in chunk {
                q = q.bind(*r);
            }
            for row in q.fetch_all(&mut *tx).await? {
                last.insert(row.try_get("id")?, row.try_get("last_seq")?);
            }
        }

        // 2. Membership of (room, sender) pairs.
        let mut pairs: Vec<(&str, &str)> = batch.iter().map(|m| (m.room_id.as_str(), m.sender_id.as_str())).collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut members: HashSet<(String, String)> = HashSet::new();
        for chunk in pairs.chunks(IN_CHUNK) {
            let tuples =
                (0..chunk.len()).map(|k| format!("(${}, ${})", 1 + 2 * k, 2 + 2 * k)).collect::<Vec<_>>().join(", ");
            // A join on VALUES plans as index look-ups on both backends.
            let sql = format!(
                "SELECT m.room_id, m.user_id FROM memberships m JOIN (VALUES {tuples}) AS v \
                 ON m.room_id = v.column1 AND m.user_id = v.column2"
            );
            let mut q = sqlx::query(&sql);
            for (r, u) in chunk {
                q = q.bind(*r).bind(*u);
            }
            for row in q.fetch_all(&mut *tx).await? {
                members.insert((row.try_get("room_id")?, row.try_get("user_id")?));
            }
        }

        // 3. Already stored.
        let candidates: Vec<usize> = (0..batch.len())
            .filter(|&i| {
                let m = &batch[i];
                let ok = last.contains_key(&m.room_id) && members.contains(&(m.room_id.clone(), m.sender_id.clone()));
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
        let mut known: HashMap<(String, String, String), StoredMessage> = HashMap::new();
        for chunk in candidates.chunks(IN_CHUNK) {
            let tuples = (0..chunk.len())
                .map(|k| format!("({})", super::placeholders(1 + 3 * k, 3)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {MSG_COLS_M} FROM messages m JOIN (VALUES {tuples}) AS v \
                 ON m.room_id = v.column1 AND m.sender_id = v.column2 AND m.client_msg_id = v.column3"
            );
            let mut q = sqlx::query(&sql);
            for &i in chunk {
                q = q.bind(&batch[i].room_id).bind(&batch[i].sender_id).bind(&batch[i].client_msg_id);
            }
            for r in q.fetch_all(&mut *tx).await? {
                let m = message_from(&r)?;
                known.insert((m.room.clone(), m.sender.clone(), m.client_msg_id.clone()), m);
            }
        }

        // 4. Allocate seqs in batch order and insert.
        let mut fresh: Vec<StoredMessage> = Vec::new();
        let mut moved: BTreeMap<&str, i64> = BTreeMap::new();
        for &i in &candidates {
            let m = &batch[i];
            let key = (m.room_id.clone(), m.sender_id.clone(), m.client_msg_id.clone());
            if let Some(orig) = known.get(&key) {
                out[i] = Some(AppendOutcome::Duplicate(orig.clone()));
                continue;
            }
            // `candidates` only holds rooms found in step 1.
            let seq = last.get_mut(&m.room_id).map(|l| {
                *l += 1;
                *l
            });
            let Some(seq) = seq else { continue };
            moved.insert(&m.room_id, seq);
            let stored = StoredMessage {
                room: m.room_id.clone(),
                seq,
                sender: m.sender_id.clone(),
                body: m.body.clone(),
                client_msg_id: m.client_msg_id.clone(),
                sent_at: m.sent_at,
                deleted: false,
            };
            known.insert(key, stored.clone());
            out[i] = Some(AppendOutcome::Stored(stored.clone()));
            fresh.push(stored);
        }
        for chunk in fresh.chunks(INSERT_CHUNK) {
            let rows = (0..chunk.len())
                .map(|k| format!("({})", super::placeholders(1 + 6 * k, 6)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql =
                format!("INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id, sent_at) VALUES {rows}");
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q.bind(&m.room).bind(m.seq).bind(&m.sender).bind(&m.body).bind(&m.client_msg_id).bind(m.sent_at);
            }
            q.execute(&mut *tx).await?;
        }

        // 5. Move last_seq (one CASE statement per chunk of rooms).
        let moved: Vec<(&str, i64)> = moved.into_iter().collect();
        for chunk in moved.chunks(IN_CHUNK) {
            let cases = (0..chunk.len())
                .map(|k| format!("WHEN ${} THEN ${}", 1 + 2 * k, 2 + 2 * k))
                .collect::<Vec<_>>()
                .join(" ");
            let ids = super::placeholders(1 + 2 * chunk.len(), chunk.len());
            let sql = format!("UPDATE rooms SET last_seq = CASE id {cases} END WHERE id IN ({ids})");
            let mut q = sqlx::query(&sql);
            for (room, seq) in chunk {
                q = q.bind(*room).bind(*seq);
            }
            for (room, _) in chunk {
                q = q.bind(*room);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        // Every index was filled: each message is either refused in step 3,
        // a duplicate, or stored in step 4.
        Ok(out.into_iter().map(|o| o.unwrap_or(AppendOutcome::NoSuchRoom)).collect())
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

    /// The highest seq of a room, `None` for an unknown room.
    pub async fn last_seq(&self, room: &str) -> Result<Option<i64>, DbError> {
        Ok(sqlx::query_scalar("SELECT last_seq FROM rooms WHERE id = $1").bind(room).fetch_optional(&self.read).await?)
    }
}
