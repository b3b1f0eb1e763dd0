//! Login sessions, rotating refresh tokens and single-use WebSocket tickets.
//!
//! Tokens are stored as SHA-256 hashes only: a database leak does not leak
//! usable tokens. A session is the family of refresh tokens rotated from one
//! login; revoking it also invalidates the access tokens that name it.

use sqlx::Row;

use super::{DbError, Store, new_id};
use crate::clock::now_ms;

/// Who a valid credential belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionIdentity {
    pub user_id: String,
    pub session_id: String,
}

/// What the handshake needs to know about a credential's session.
#[derive(Debug, Clone, Copy)]
pub struct SessionStatus {
    pub revoked: bool,
    pub erased: bool,
    pub banned: bool,
}

/// The result of presenting a refresh token.
#[derive(Debug)]
pub enum RefreshOutcome {
    /// The token was valid; it is now spent and `new_hash` replaces it.
    Rotated(SessionIdentity),
    /// Unknown, expired or revoked token.
    Invalid,
    /// A spent token was presented again: the whole family is now revoked.
    Reused,
}

impl Store {
    /// Starts a session with its first refresh token.
    pub async fn create_session(&self, user_id: &str, token_hash: &str, expires_at: i64) -> Result<String, DbError> {
        let session = new_id();
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO sessions (id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(&session)
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (id, token_hash, family_id, parent_id, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, NULL, $4, $5, $6)",
        )
        .bind(new_id())
        .bind(token_hash)
        .bind(&session)
        .bind(user_id)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(session)
    }

    /// Spends `old_hash` and issues `new_hash` in the same family.
    ///
    /// Spending is a conditional update (`used_at IS NULL`), so two racing
    /// refreshes with one token cannot both win.
    ///
    /// A token spent less than `grace` ago may be presented once more (the
    /// client lost the answer to a network drop): the successor it was
    /// answered with is spent in its place, unseen, and `new_hash` becomes
    /// the successor instead. This holds only while that successor is
    /// unused; once the client has refreshed with it, presenting the parent
    /// again is reuse. Reuse (after the window, or of a successor replaced
    /// this way) revokes the whole family.
    pub async fn rotate_refresh_token(
        &self,
        old_hash: &str,
        new_hash: &str,
        expires_at: i64,
        grace: std::time::Duration,
    ) -> Result<RefreshOutcome, DbError> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let row = sqlx::query(
            "SELECT t.id, t.family_id, t.user_id, t.expires_at, t.used_at, t.revoked_at, \
                    s.revoked_at AS session_revoked, u.deleted_at, u.banned_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.family_id JOIN users u ON u.id = t.user_id \
             WHERE t.token_hash = $1",
        )
        .bind(old_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(RefreshOutcome::Invalid);
        };
        let id: String = row.try_get("id")?;
        let family: String = row.try_get("family_id")?;
        let user: String = row.try_get("user_id")?;
        let expires: i64 = row.try_get("expires_at")?;
        let used: Option<i64> = row.try_get("used_at")?;
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        let session_revoked: Option<i64> = row.try_get("session_revoked")?;
        let deleted: Option<i64> = row.try_get("deleted_at")?;
        let banned: Option<i64> = row.try_get("banned_at")?;

        if revoked.is_some() || session_revoked.is_some() || deleted.is_some() || banned.is_some() || expires <= now {
            return Ok(RefreshOutcome::Invalid);
        }
        let spent_now = used.is_none()
            && sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL")
                .bind(&id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
        // A racing refresh that spent it a moment ago counts as just spent.
        let spent_at = used.unwrap_or(now);
        let retry = !spent_now
            && now - spent_at < grace.as_millis() as i64
            && spend_unused_successor(&mut tx, &family, &id, now).await?;
        if !spent_now && !retry {
            // Reuse of a spent token means it leaked: revoke the family.
            revoke_family(&mut tx, &family, now).await?;
            tx.commit().await?;
            return Ok(RefreshOutcome::Reused);
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (id, token_hash, family_id, parent_id, user_id, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new_id())
        .bind(new_hash)
        .bind(&family)
        .bind(&id)
        .bind(&user)
        .bind(now)
        .bind(expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(RefreshOutcome::Rotated(SessionIdentity { user_id: user, session_id: family }))
    }

    /// Revokes one session of a user (logout).
    pub async fn revoke_session(&self, user_id: &str, session_id: &str) -> Result<(), DbError> {
        let mut tx = self.write.begin().await?;
        let owner: Option<String> = sqlx::query_scalar("SELECT user_id FROM sessions WHERE id = $1")
            .bind(session_id)
            .fetch_optional(&mut *tx)
            .await?;
        if owner.as_deref() != Some(user_id) {
            return Err(DbError::NotFound);
        }
        revoke_family(&mut tx, session_id, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session a refresh token belongs to, if it is the caller's.
    pub async fn session_of_refresh_token(&self, token_hash: &str) -> Result<Option<SessionIdentity>, DbError> {
        let row = sqlx::query("SELECT family_id, user_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(SessionIdentity { session_id: r.try_get("family_id")?, user_id: r.try_get("user_id")? }))
            .transpose()
    }

    /// Whether an access token's session is live and its user may act.
    /// One indexed query per authenticated request: the price of logout and
    /// bans taking effect before access tokens expire.
    pub async fn session_active(&self, user_id: &str, session_id: &str) -> Result<bool, DbError> {
        let row = sqlx::query(
            "SELECT s.revoked_at, u.deleted_at, u.banned_at FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.user_id = $2",
        )
        .bind(session_id)
        .bind(user_id)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let a: Option<i64> = row.try_get("revoked_at")?;
        let b: Option<i64> = row.try_get("deleted_at")?;
        let c: Option<i64> = row.try_get("banned_at")?;
        Ok(a.is_none() && b.is_none() && c.is_none())
    }

    /// The state of a user's session in one query (for the handshake, which
    /// must tell banned and erased users apart from revoked sessions).
    pub async fn session_status(&self, user_id: &str, session_id: &str) -> Result<Option<SessionStatus>, DbError> {
        let row = sqlx::query(
            "SELECT s.id AS sid, s.revoked_at, u.deleted_at, u.banned_at FROM users u LEFT JOIN sessions s \
             ON s.id = $2 AND s.user_id = u.id WHERE u.id = $1",
        )
        .bind(user_id)
        .bind(session_id)
        .fetch_optional(&self.read)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let revoked: Option<i64> = row.try_get("revoked_at")?;
        let erased: Option<i64> = row.try_get("deleted_at")?;
        let banned: Option<i64> = row.try_get("banned_at")?;
        // A missing session (deleted at erasure) reads as revoked.
        let session_missing = row.try_get::<Option<String>, _>("sid")?.is_none();
        Ok(Some(SessionStatus {
            revoked: revoked.is_some() || session_missing,
            erased: erased.is_some(),
            banned: banned.is_some(),
        }))
    }

    /// Stores a WebSocket ticket (hashed).
    pub async fn create_ws_ticket(
        &self,
        who: &SessionIdentity,
        ticket_hash: &str,
        expires_at: i64,
    ) -> Result<(), DbError> {
        sqlx::query("INSERT INTO ws_tickets (ticket_hash, user_id, session_id, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(ticket_hash)
            .bind(&who.user_id)
            .bind(&who.session_id)
            .bind(expires_at)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// Spends a ticket: one atomic conditional update, so it works once even
    /// when two handshakes race with it.
    pub async fn consume_ws_ticket(&self, ticket_hash: &str) -> Result<Option<SessionIdentity>, DbError> {
        let now = now_ms();
        let row = sqlx::query(
            "UPDATE ws_tickets SET used_at = $2 WHERE ticket_hash = $1 AND used_at IS NULL AND expires_at > $2 \
             RETURNING user_id, session_id",
        )
        .bind(ticket_hash)
        .bind(now)
        .fetch_optional(&self.write)
        .await?;
        row.map(|r| Ok(SessionIdentity { user_id: r.try_get("user_id")?, session_id: r.try_get("session_id")? }))
            .transpose()
    }

    /// Deletes expired tickets and refresh tokens; run periodically.
    pub async fn purge_expired(&self) -> Result<u64, DbError> {
        let now = now_ms();
        let a = sqlx::query("DELETE FROM ws_tickets WHERE expires_at < $1")
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected();
        let b = sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
            .bind(now)
            .execute(&self.write)
            .await?
            .rows_affected();
        Ok(a + b)
    }
}

async fn revoke_family(tx: &mut sqlx::Transaction<'_, sqlx::Any>, family: &str, now: i64) -> Result<(), DbError> {
    sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
        .bind(family)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    sqlx::query("UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL")
        .bind(family)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    // An unused ticket would open a socket for a session that has ended
    // (the handshake checks the session too; this leaves nothing to check).
    sqlx::query("DELETE FROM ws_tickets WHERE session_id = $1 AND used_at IS NULL")
        .bind(family)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Ends every session of a user but `keep` (a password change), in the
/// caller's transaction: their refresh tokens, the access tokens that name
/// them, and their unused tickets. Returns the ids of the sessions it ended,
/// whose sockets the caller then closes.
pub(super) async fn revoke_other_sessions(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    user_id: &str,
    keep: &str,
    now: i64,
) -> Result<Vec<String>, DbError> {
    let ended: Vec<String> =
        sqlx::query_scalar("SELECT id FROM sessions WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL")
            .bind(user_id)
            .bind(keep)
            .fetch_all(&mut **tx)
            .await?;
    for session in &ended {
        revoke_family(tx, session, now).await?;
    }
    Ok(ended)
}

/// Spends the unused successor of `parent` (the token a lost refresh answer
/// carried), so that a retry of `parent` may take its place. False when
/// there is none: the client has already refreshed with it, or it was
/// replaced by an earlier retry, and the retry is then reuse.
async fn spend_unused_successor(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    family: &str,
    parent: &str,
    now: i64,
) -> Result<bool, DbError> {
    let spent = sqlx::query(
        "UPDATE refresh_tokens SET used_at = $3 \
         WHERE family_id = $1 AND parent_id = $2 AND used_at IS NULL AND revoked_at IS NULL",
    )
    .bind(family)
    .bind(parent)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(spent > 0)
}
