//! Resume state of many rooms at once, retention and history epochs
//! (protocol §14, §17).
//!
//! Retention never deletes on the send path: the job first moves a room's
//! `first_seq` (one short statement; readers filter on it at once), then
//! deletes the rows below it in small batches, each its own short
//! transaction, so the SQLite writer is never held for long and sends queue
//! behind one small batch at most. Deletes are idempotent: instances of a
//! cluster that pick the same room at once delete the same rows, and
//! `first_seq` only moves forward.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{DbError, Store, placeholders};

/// Rooms per `IN (…)` list.
const IN_CHUNK: usize = 500;

/// A fresh epoch: 12 hex characters, opaque to clients.
pub fn new_epoch() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_owned()
}

/// What a resume needs to know about one room the user belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeState {
    pub last_seq: i64,
    /// Lowest seq still retained (`last_seq + 1` when nothing is).
    pub first_seq: i64,
    pub epoch: String,
    /// The user's read marker, 0 when none.
    pub read_seq: i64,
}

/// A room's retention override; `None` follows the global setting, 0
/// keeps forever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Messages older than this many seconds are deleted (0: none).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub max_age_secs: Option<i64>,
    /// Only the newest this many messages are kept (0: all).
    #[serde(default)]
    #[schema(minimum = 0)]
    pub max_messages: Option<i64>,
}

/// One room as the retention job sees it.
#[derive(Debug, Clone)]
pub struct RetentionRoom {
    pub id: String,
    pub last_seq: i64,
    pub first_seq: i64,
    pub retention: Retention,
}

impl Store {
    /// Of `rooms`, those `user` is a member of: one statement per
    /// [`IN_CHUNK`] rooms, whatever their number.
    pub async fn member_rooms(&self, user: &str, rooms: &[&str]) -> Result<HashSet<String>, DbError> {
        let mut out = HashSet::new();
        for chunk in rooms.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT room_id FROM memberships WHERE user_id = $1 AND room_id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(user);
            for r in chunk {
                q = q.bind(*r);
            }
            for row in q.fetch_all(&self.read).await? {
                out.insert(row.try_get("room_id")?);
            }
        }
        Ok(out)
    }

    /// Seq range, epoch and `user`'s read marker of each room of `rooms`
    /// the user belongs to, in bulk; rooms missing from the answer are
    /// gone or no longer the user's.
    pub async fn resume_states(&self, user: &str, rooms: &[&str]) -> Result<HashMap<String, ResumeState>, DbError> {
        let mut out = HashMap::new();
        for chunk in rooms.chunks(IN_CHUNK) {
            let sql = format!(
                "SELECT r.id, r.last_seq, r.first_seq, r.epoch, COALESCE(rm.seq, 0) AS read_seq \
                 FROM rooms r JOIN memberships m ON m.room_id = r.id AND m.user_id = $1 \
                 LEFT JOIN read_markers rm ON rm.room_id = r.id AND rm.user_id = $1 \
                 WHERE r.id IN ({})",
                placeholders(2, chunk.len())
            );
            let mut q = sqlx::query(&sql).bind(user);
            for r in chunk {
                q = q.bind(*r);
            }
            for row in q.fetch_all(&self.read).await? {
                out.insert(
                    row.try_get("id")?,
                    ResumeState {
                        last_seq: row.try_get("last_seq")?,
                        first_seq: row.try_get("first_seq")?,
                        epoch: row.try_get("epoch")?,
                        read_seq: row.try_get("read_seq")?,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Sets a room's retention override.
    pub async fn set_retention(&self, room: &str, r: Retention) -> Result<(), DbError> {
        sqlx::query("UPDATE rooms SET retention_max_age_secs = $2, retention_max_messages = $3 WHERE id = $1")
            .bind(room)
            .bind(r.max_age_secs)
            .bind(r.max_messages)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A page of rooms (by id, after `after`) that retention may apply
    /// to: every room when a global limit is on, otherwise only rooms with
    /// an override of their own.
    pub async fn retention_rooms(
        &self,
        after: &str,
        limit: i64,
        global_on: bool,
    ) -> Result<Vec<RetentionRoom>, DbError> {
        let filter = if global_on { "" } else { " AND (retention_max_age_secs > 0 OR retention_max_messages > 0)" };
        let sql = format!(
            "SELECT id, last_seq, first_seq, retention_max_age_secs, retention_max_messages FROM rooms \
             WHERE id > $1{filter} ORDER BY id LIMIT $2"
        );
        let rows = sqlx::query(&sql).bind(after).bind(limit).fetch_all(&self.read).await?;
        rows.iter()
            .map(|r| {
                Ok(RetentionRoom {
                    id: r.try_get("id")?,
                    last_seq: r.try_get("last_seq")?,
                    first_seq: r.try_get("first_seq")?,
                    retention: Retention {
                        max_age_secs: r.try_get("retention_max_age_secs")?,
                        max_messages: r.try_get("retention_max_messages")?,
                    },
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }

    /// The lowest retained seq at or above `from` of a message sent at or
    /// after `cutoff_ms`; `None` when every message from `from` on is
    /// older. Walks the primary key from the bottom and stops at the
    /// first young message.
    pub async fn first_seq_since(&self, room: &str, from: i64, cutoff_ms: i64) -> Result<Option<i64>, DbError> {
        Ok(sqlx::query_scalar(
            "SELECT seq FROM messages WHERE room_id = $1 AND seq >= $2 AND sent_at >= $3 ORDER BY seq LIMIT 1",
        )
        .bind(room)
        .bind(from)
        .bind(cutoff_ms)
        .fetch_optional(&self.read)
        .await?)
    }

    /// Moves `first_seq` up to `target` (never down, never past
    /// `last_seq + 1`); readers stop seeing the rows below at once.
    pub async fn advance_first_seq(&self, room: &str, target: i64) -> Result<(), DbError> {
        sqlx::query(
            "UPDATE rooms SET first_seq = CASE WHEN $2 > last_seq + 1 THEN last_seq + 1 ELSE $2 END \
             WHERE id = $1 AND first_seq < $2",
        )
        .bind(room)
        .bind(target)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    /// The room's lowest stored seq (a primary-key look-up on the read
    /// pool), so the job takes the writer only when there is something to
    /// delete.
    pub async fn lowest_stored_seq(&self, room: &str) -> Result<Option<i64>, DbError> {
        Ok(sqlx::query_scalar("SELECT MIN(seq) FROM messages WHERE room_id = $1")
            .bind(room)
            .fetch_one(&self.read)
            .await?)
    }

    /// Deletes up to `batch` of the room's rows below its `first_seq`;
    /// returns how many went (fewer than `batch`: none are left).
    pub async fn delete_unretained(&self, room: &str, batch: i64) -> Result<u64, DbError> {
        let r = sqlx::query(
            "DELETE FROM messages WHERE room_id = $1 AND seq IN (SELECT seq FROM messages WHERE room_id = $1 \
             AND seq < (SELECT first_seq FROM rooms WHERE id = $1) ORDER BY seq LIMIT $2)",
        )
        .bind(room)
        .bind(batch)
        .execute(&self.write)
        .await?;
        Ok(r.rows_affected())
    }

    /// An operator's history reset: nothing is retained any more
    /// (`first_seq = last_seq + 1`, seqs keep counting) and the room gets a
    /// new epoch. Returns the new epoch and `last_seq`; the rows are deleted
    /// afterwards with [`Store::delete_unretained`].
    pub async fn reset_history(&self, room: &str) -> Result<(String, i64), DbError> {
        let epoch = new_epoch();
        let last: Option<i64> = sqlx::query_scalar(
            "UPDATE rooms SET first_seq = last_seq + 1, epoch = $2 WHERE id = $1 RETURNING last_seq",
        )
        .bind(room)
        .bind(&epoch)
        .fetch_optional(&self.write)
        .await?;
        last.map(|l| (epoch, l)).ok_or(DbError::NotFound)
    }

    /// Gives every room a new epoch (after a database restore: clients
    /// holding seqs of the lost timeline then drop them). Returns how many
    /// rooms changed.
    pub async fn bump_epochs(&self) -> Result<u64, DbError> {
        // One epoch per room, drawn here: the SQL of both backends has no
        // common random-string function.
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM rooms").fetch_all(&self.read).await?;
        let mut n = 0;
        for chunk in ids.chunks(IN_CHUNK) {
            let cases = (0..chunk.len())
                .map(|k| format!("WHEN ${} THEN ${}", 1 + 2 * k, 2 + 2 * k))
                .collect::<Vec<_>>()
                .join(" ");
            let sql = format!(
                "UPDATE rooms SET epoch = CASE id {cases} END WHERE id IN ({})",
                placeholders(1 + 2 * chunk.len(), chunk.len())
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id).bind(new_epoch());
            }
            for id in chunk {
                q = q.bind(id);
            }
            n += q.execute(&self.write).await?.rows_affected();
        }
        Ok(n)
    }
}
