//! Reading a room's stream: history pages, a sender's messages (export),
//! erasure progress, and the rooms' last seqs.

use sqlx::Row;

use super::{HistoryPage, IN_CHUNK, MSG_COLS, MessageKey, StoredMessage, message_from};
use crate::db::{DbError, Store};

/// Only the retained range: rows below `rooms.first_seq` may still exist
/// while the retention job deletes them in batches, but no reader sees them
/// (one primary-key look-up per page).
const RETAINED: &str = "seq >= (SELECT first_seq FROM rooms WHERE id = $1)";

impl Store {
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
            let sql =
                format!("SELECT id, last_seq FROM rooms WHERE id IN ({})", crate::db::placeholders(1, chunk.len()));
            let mut q = sqlx::query_as::<_, (String, i64)>(&sql);
            for r in chunk {
                q = q.bind(*r);
            }
            out.extend(q.fetch_all(&self.read).await?);
        }
        Ok(out)
    }
}
