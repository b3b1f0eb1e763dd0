//! Stored responses for `Idempotency-Key` retries.

use sqlx::Row;

use super::{DbError, Store};
use crate::clock::now_ms;

/// The state of a key already seen.
#[derive(Debug, Clone)]
pub enum IdempotencyRecord {
    /// The first request with this key is still running.
    InFlight { fingerprint: String },
    /// The first request finished with this response.
    Done { fingerprint: String, status: u16, body: String },
}

/// Keys older than this are forgotten (a day covers any client retry).
pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

impl Store {
    /// Claims `key` for a request; `Ok(None)` when the claim succeeded (first
    /// use), otherwise what the earlier request left.
    pub async fn claim_idempotency_key(
        &self,
        user: &str,
        key: &str,
        fingerprint: &str,
    ) -> Result<Option<IdempotencyRecord>, DbError> {
        let now = now_ms();
        // Forget stale keys for this user first, so a day-old key is reusable.
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND created_at < $2")
            .bind(user)
            .bind(now - IDEMPOTENCY_TTL_MS)
            .execute(&self.write)
            .await?;
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, idem_key, fingerprint, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, idem_key) DO NOTHING",
        )
        .bind(user)
        .bind(key)
        .bind(fingerprint)
        .bind(now)
        .execute(&self.write)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            return Ok(None);
        }
        let row =
            sqlx::query("SELECT fingerprint, status, body FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2")
                .bind(user)
                .bind(key)
                .fetch_one(&self.read)
                .await?;
        let fingerprint: String = row.try_get("fingerprint")?;
        let status: Option<i32> = row.try_get("status")?;
        let body: Option<String> = row.try_get("body")?;
        Ok(Some(match (status, body) {
            (Some(s), Some(b)) => IdempotencyRecord::Done { fingerprint, status: s as u16, body: b },
            _ => IdempotencyRecord::InFlight { fingerprint },
        }))
    }

    /// Records the response of the request that claimed `key`.
    pub async fn complete_idempotency_key(
        &self,
        user: &str,
        key: &str,
        status: u16,
        body: &str,
    ) -> Result<(), DbError> {
        sqlx::query("UPDATE idempotency_keys SET status = $3, body = $4 WHERE user_id = $1 AND idem_key = $2")
            .bind(user)
            .bind(key)
            .bind(status as i32)
            .bind(body)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Releases a claim whose request failed, so a retry runs it again.
    pub async fn release_idempotency_key(&self, user: &str, key: &str) -> Result<(), DbError> {
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND idem_key = $2")
            .bind(user)
            .bind(key)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
