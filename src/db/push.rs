//! The offline-push outbox (migration 0005_push_outbox): one row per stored
//! message, written in the message's own transaction, so a committed message
//! always has its row and a rolled-back one never does. Each instance's push
//! worker (`push::PushWorker`, which imports this module, never the
//! reverse) claims due rows in leased batches.

use std::collections::HashMap;

use sqlx::Row;

use super::{Backend, DbError, Store, StoredMessage};

/// Rows per multi-row INSERT (6 parameters each).
const INSERT_CHUNK: usize = 500;
/// Ids or tuples per `IN (…)` list (at most 2 parameters each).
const IN_CHUNK: usize = 1000;

/// One claimed outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The event id receivers deduplicate by: the same on every retry.
    pub id: String,
    pub room: String,
    pub seq: i64,
    pub sender: String,
    pub sent_at: i64,
    /// Deliveries tried so far, this claim included.
    pub attempts: i64,
}

/// Inserts an outbox row per fresh message, inside the caller's
/// transaction (the group commit's).
pub(super) async fn insert_outbox(conn: &mut sqlx::AnyConnection, fresh: &[&StoredMessage]) -> Result<(), DbError> {
    for chunk in fresh.chunks(INSERT_CHUNK) {
        let rows =
            (0..chunk.len()).map(|k| format!("({})", super::placeholders(1 + 6 * k, 6))).collect::<Vec<_>>().join(", ");
        let sql =
            format!("INSERT INTO push_outbox (id, room_id, seq, sender_id, sent_at, next_attempt_at) VALUES {rows}");
        let mut q = sqlx::query(&sql);
        for m in chunk {
            // Due at once: the committer wakes its worker right after the commit.
            q = q.bind(super::new_id()).bind(&m.room).bind(m.seq).bind(&m.sender).bind(m.sent_at).bind(m.sent_at);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Claims up to `limit` rows due at `now` and leases them until
    /// `lease_until` (their `next_attempt_at` moves there, and `attempts`
    /// goes up by one). One statement, so one transaction: on PostgreSQL
    /// the rows are picked `FOR UPDATE SKIP LOCKED`, so instances claiming
    /// at the same moment take disjoint rows and never wait for each other;
    /// SQLite has one instance and one writer. A worker that dies holding
    /// a claim leaves the rows to come due again when the lease runs out.
    ///
    /// # Errors
    /// The database failed; nothing was claimed.
    pub async fn claim_outbox(&self, now: i64, lease_until: i64, limit: usize) -> Result<Vec<OutboxRow>, DbError> {
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE SKIP LOCKED" } else { "" };
        let sql = format!(
            "UPDATE push_outbox SET attempts = attempts + 1, next_attempt_at = $1 WHERE id IN \
             (SELECT id FROM push_outbox WHERE next_attempt_at <= $2 ORDER BY next_attempt_at LIMIT $3{lock}) \
             RETURNING id, room_id, seq, sender_id, sent_at, attempts"
        );
        let rows = sqlx::query(&sql).bind(lease_until).bind(now).bind(limit as i64).fetch_all(&self.write).await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(OutboxRow {
                    id: r.try_get("id")?,
                    room: r.try_get("room_id")?,
                    seq: r.try_get("seq")?,
                    sender: r.try_get("sender_id")?,
                    sent_at: r.try_get("sent_at")?,
                    attempts: r.try_get("attempts")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // RETURNING has no order: events go out in each room's seq order.
        out.sort_by(|a, b| (&a.room, a.seq).cmp(&(&b.room, b.seq)));
        Ok(out)
    }

    /// Deletes rows that are done with (delivered, nobody offline, given up).
    ///
    /// # Errors
    /// The database failed; the rows come due again after their lease.
    pub async fn outbox_done(&self, ids: &[&str]) -> Result<u64, DbError> {
        let mut n = 0;
        for chunk in ids.chunks(IN_CHUNK) {
            let sql = format!("DELETE FROM push_outbox WHERE id IN ({})", super::placeholders(1, chunk.len()));
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            n += q.execute(&self.write).await?.rows_affected();
        }
        Ok(n)
    }

    /// Reschedules rows: each `(id, due)` becomes due at `due` (Unix ms).
    ///
    /// # Errors
    /// The database failed; the rows come due again after their lease.
    pub async fn outbox_retry(&self, due: &[(&str, i64)]) -> Result<(), DbError> {
        let mut tx = self.write.begin().await?;
        for (id, at) in due {
            sqlx::query("UPDATE push_outbox SET next_attempt_at = $1 WHERE id = $2")
                .bind(*at)
                .bind(*id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Rows waiting in the outbox (claimed or not): for tests and checks.
    ///
    /// # Errors
    /// The database failed.
    pub async fn outbox_len(&self) -> Result<i64, DbError> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM push_outbox").fetch_one(&self.read).await?)
    }

    /// The current bodies of messages by `(room, seq)`; `None` for a deleted
    /// (or erased) message, absent for one that no longer exists.
    ///
    /// # Errors
    /// The database failed.
    pub async fn message_bodies(
        &self,
        keys: &[(&str, i64)],
    ) -> Result<HashMap<(String, i64), Option<String>>, DbError> {
        let mut out = HashMap::new();
        for chunk in keys.chunks(IN_CHUNK) {
            let tuples =
                (0..chunk.len()).map(|k| format!("(${}, ${})", 1 + 2 * k, 2 + 2 * k)).collect::<Vec<_>>().join(", ");
            let sql = format!(
                "SELECT m.room_id, m.seq, m.body, m.deleted_at FROM messages m JOIN (VALUES {tuples}) AS v \
                 ON m.room_id = v.column1 AND m.seq = v.column2"
            );
            let mut q = sqlx::query(&sql);
            for (room, seq) in chunk {
                q = q.bind(*room).bind(*seq);
            }
            for r in q.fetch_all(&self.read).await? {
                let deleted = r.try_get::<Option<i64>, _>("deleted_at")?.is_some();
                let body: String = r.try_get("body")?;
                out.insert((r.try_get("room_id")?, r.try_get("seq")?), (!deleted).then_some(body));
            }
        }
        Ok(out)
    }
}
