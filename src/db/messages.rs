//! Message persistence: gap-free per-room sequence numbers, idempotent by
//! `(room, sender, client_msg_id)`, appended in batches.

use std::collections::{BTreeMap, HashMap};

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

/// Rows per multi-row INSERT: 6 parameters each stays far below both
/// backends' parameter limits.
const INSERT_CHUNK: usize = 500;

impl Store {
    /// Appends a batch of messages, possibly for many rooms, in ONE
    /// transaction (the hub's group commit).
    ///
    /// Per room: the room row is locked first (`UPDATE … RETURNING`, a row
    /// lock on PostgreSQL, the write lock on SQLite), so concurrent writers on
    /// any instance serialise on that room and seqs are allocated without
    /// gaps or duplicates; a rollback releases them unused. Rooms are locked
    /// in sorted order so two batches can never deadlock. Messages whose
    /// `(room, sender, client_msg_id)` already exists, in the table or earlier
    /// in the batch, come back as [`AppendOutcome::Duplicate`] with the
    /// original seq. Outcomes are in the order of `batch`.
    pub async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<AppendOutcome>, DbError> {
        let mut by_room: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, m) in batch.iter().enumerate() {
            by_room.entry(&m.room_id).or_default().push(i);
        }
        let mut out: Vec<Option<AppendOutcome>> = vec![None; batch.len()];
        let mut tx = self.write.begin().await?;
        for (room, idxs) in by_room {
            let last: Option<i64> =
                sqlx::query_scalar("UPDATE rooms SET last_seq = last_seq WHERE id = $1 RETURNING last_seq")
                    .bind(room)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(mut last) = last else {
                for i in idxs {
                    out[i] = Some(AppendOutcome::NoSuchRoom);
                }
                continue;
            };

            // Only members may store messages: checked under the room lock.
            let mut senders: Vec<&str> = idxs.iter().map(|&i| batch[i].sender_id.as_str()).collect();
            senders.sort_unstable();
            senders.dedup();
            let sql = format!(
                "SELECT user_id FROM memberships WHERE room_id = $1 AND user_id IN ({})",
                super::placeholders(2, senders.len())
            );
            let mut q = sqlx::query_scalar::<_, String>(&sql).bind(room);
            for s in &senders {
                q = q.bind(*s);
            }
            let members: std::collections::HashSet<String> = q.fetch_all(&mut *tx).await?.into_iter().collect();
            let (idxs, outsiders): (Vec<usize>, Vec<usize>) =
                idxs.into_iter().partition(|&i| members.contains(&batch[i].sender_id));
            for i in outsiders {
                out[i] = Some(AppendOutcome::NotMember);
            }
            if idxs.is_empty() {
                continue;
            }

            // Existing messages with the same idempotency keys.
            let mut known: HashMap<(String, String), StoredMessage> = HashMap::new();
            for chunk in idxs.chunks(INSERT_CHUNK) {
                let pairs = (0..chunk.len())
                    .map(|k| format!("(${}, ${})", 2 + 2 * k, 3 + 2 * k))
                    .collect::<Vec<_>>()
                    .join(", ");
                let sql = format!(
                    "SELECT {MSG_COLS} FROM messages WHERE room_id = $1 AND (sender_id, client_msg_id) IN ({pairs})"
                );
                let mut q = sqlx::query(&sql).bind(room);
                for &i in chunk {
                    q = q.bind(&batch[i].sender_id).bind(&batch[i].client_msg_id);
                }
                for r in q.fetch_all(&mut *tx).await? {
                    let m = message_from(&r)?;
                    known.insert((m.sender.clone(), m.client_msg_id.clone()), m);
                }
            }

            let mut fresh: Vec<StoredMessage> = Vec::new();
            for &i in &idxs {
                let m = &batch[i];
                let key = (m.sender_id.clone(), m.client_msg_id.clone());
                if let Some(orig) = known.get(&key) {
                    out[i] = Some(AppendOutcome::Duplicate(orig.clone()));
                    continue;
                }
                last += 1;
                let stored = StoredMessage {
                    room: m.room_id.clone(),
                    seq: last,
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
                let sql = format!(
                    "INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id, sent_at) VALUES {rows}"
                );
                let mut q = sqlx::query(&sql);
                for m in chunk {
                    q = q
                        .bind(&m.room)
                        .bind(m.seq)
                        .bind(&m.sender)
                        .bind(&m.body)
                        .bind(&m.client_msg_id)
                        .bind(m.sent_at);
                }
                q.execute(&mut *tx).await?;
            }
            if !fresh.is_empty() {
                sqlx::query("UPDATE rooms SET last_seq = $2 WHERE id = $1")
                    .bind(room)
                    .bind(last)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        // Every index was filled: each belongs to exactly one room group and
        // each group assigns an outcome to all of its indices.
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
                "SELECT {MSG_COLS} FROM messages WHERE room_id = $1 AND seq > $2 AND seq < $3 ORDER BY seq ASC LIMIT $4"
            );
            sqlx::query(&sql).bind(room).bind(after).bind(upper).bind(fetch).fetch_all(&self.read).await?
        } else {
            let upper = before_seq.unwrap_or(i64::MAX);
            let sql =
                format!("SELECT {MSG_COLS} FROM messages WHERE room_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3");
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
    pub async fn messages_by_sender(&self, sender: &str) -> Result<Vec<StoredMessage>, DbError> {
        let sql = format!("SELECT {MSG_COLS} FROM messages WHERE sender_id = $1 ORDER BY sent_at, room_id, seq");
        let rows = sqlx::query(&sql).bind(sender).fetch_all(&self.read).await?;
        Ok(rows.iter().map(message_from).collect::<Result<_, _>>()?)
    }

    /// The highest seq of a room, `None` for an unknown room.
    pub async fn last_seq(&self, room: &str) -> Result<Option<i64>, DbError> {
        Ok(sqlx::query_scalar("SELECT last_seq FROM rooms WHERE id = $1").bind(room).fetch_optional(&self.read).await?)
    }
}
