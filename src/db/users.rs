//! Users, credentials, erasure and export.

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{AuditRecord, DbError, MessageKey, ResultExt, RoomForUser, Store, StoredMessage, new_id};
use crate::clock::now_ms;

/// A user as the API shows it to its owner.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    /// `null` once the account is erased.
    pub email: Option<String>,
    pub display_name: String,
    /// Unix milliseconds.
    pub created_at: i64,
    /// Set when the account has been erased (anonymised).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<i64>,
    #[serde(skip)]
    pub banned_at: Option<i64>,
}

impl User {
    pub fn is_active(&self) -> bool {
        self.deleted_at.is_none() && self.banned_at.is_none()
    }
}

/// All the data the gateway holds about one user (`GET /me/export`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Export {
    pub profile: User,
    pub rooms: Vec<RoomForUser>,
    /// The caller's messages, oldest first, at most
    /// [`EXPORT_MESSAGES_PAGE`] of them.
    pub messages: Vec<StoredMessage>,
    /// Set when more messages follow: ask again with
    /// `?messages_after=<this>` for the next page.
    pub messages_next: Option<String>,
    /// Unix milliseconds of each login session still known.
    pub sessions: Vec<ExportSession>,
    /// Audit records where the user is the actor or the target, oldest
    /// first (kept for `AUDIT_RETENTION_DAYS`).
    pub audit: Vec<AuditRecord>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExportSession {
    pub id: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Messages per export page.
pub const EXPORT_MESSAGES_PAGE: usize = 10_000;

/// Shown instead of an erased user's name.
pub const ERASED_NAME: &str = "Deleted user";

const USER_COLS: &str = "id, email, display_name, created_at, deleted_at, banned_at";

fn user_from(row: &AnyRow) -> Result<User, sqlx::Error> {
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        display_name: row.try_get("display_name")?,
        created_at: row.try_get("created_at")?,
        deleted_at: row.try_get("deleted_at")?,
        banned_at: row.try_get("banned_at")?,
    })
}

/// A password change: the new hash, and the caller's session, the one
/// that stays signed in.
#[derive(Debug, Clone, Copy)]
pub struct NewPassword<'a> {
    pub hash: &'a str,
    pub keep_session: &'a str,
}

impl Store {
    /// Creates a user with its password hash in one transaction.
    ///
    /// # Errors
    /// [`DbError::Conflict`] when the email (case-insensitively) is taken.
    pub async fn create_user(&self, email: &str, display_name: &str, password_hash: &str) -> Result<User, DbError> {
        let id = new_id();
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO users (id, email, email_lower, display_name, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(&id)
        .bind(email)
        .bind(email.to_lowercase())
        .bind(display_name)
        .bind(now)
        .execute(&mut *tx)
        .await
        .on_unique("email already registered")?;
        sqlx::query("INSERT INTO credentials (user_id, password_hash, updated_at) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(password_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(User {
            id,
            email: Some(email.to_owned()),
            display_name: display_name.to_owned(),
            created_at: now,
            deleted_at: None,
            banned_at: None,
        })
    }

    /// The active user with this email (any case) and their password hash.
    pub async fn find_login(&self, email: &str) -> Result<Option<(User, String)>, DbError> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLS}, c.password_hash FROM users u JOIN credentials c ON c.user_id = u.id \
             WHERE u.email_lower = $1"
        ))
        .bind(email.to_lowercase())
        .fetch_optional(&self.read)
        .await?;
        match row {
            None => Ok(None),
            Some(r) => Ok(Some((user_from(&r)?, r.try_get("password_hash")?))),
        }
    }

    /// The password hash of a user, for password changes.
    pub async fn password_hash(&self, user_id: &str) -> Result<String, DbError> {
        Ok(sqlx::query_scalar("SELECT password_hash FROM credentials WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&self.read)
            .await?)
    }

    /// # Errors
    /// [`DbError::NotFound`] for an unknown id (erased users are still found).
    pub async fn get_user(&self, id: &str) -> Result<User, DbError> {
        let row =
            sqlx::query(&format!("SELECT {USER_COLS} FROM users WHERE id = $1")).bind(id).fetch_one(&self.read).await?;
        Ok(user_from(&row)?)
    }

    /// Which of these ids name accounts that are not erased.
    ///
    /// A banned account counts: whether someone is banned is between them
    /// and the operator, and `GET /users/{id}` shows them as anyone else, so
    /// adding them to a room must not tell it either (SECURITY.md).
    pub async fn addable_user_ids(&self, ids: &[String]) -> Result<Vec<String>, DbError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql =
            format!("SELECT id FROM users WHERE deleted_at IS NULL AND id IN ({})", super::placeholders(1, ids.len()));
        let mut q = sqlx::query_scalar(&sql);
        for id in ids {
            q = q.bind(id);
        }
        Ok(q.fetch_all(&self.read).await?)
    }

    /// The ids of the accounts (not erased; banned ones too, as in
    /// [`Store::addable_user_ids`]) with these emails (any case), as
    /// `(lowercased email, id)`; unknown ones are left out.
    pub async fn addable_user_ids_by_email(&self, emails: &[String]) -> Result<Vec<(String, String)>, DbError> {
        if emails.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT email_lower, id FROM users WHERE deleted_at IS NULL AND email_lower IN ({})",
            super::placeholders(1, emails.len())
        );
        let mut q = sqlx::query_as(&sql);
        for e in emails {
            q = q.bind(e.to_lowercase());
        }
        Ok(q.fetch_all(&self.read).await?)
    }

    /// Updates the profile fields that are given. A new password ends every
    /// other session of the user in the same transaction (whoever else held
    /// the old password is signed out); the ids of the sessions it ended
    /// come back with the user, for closing their sockets.
    pub async fn update_user(
        &self,
        id: &str,
        display_name: Option<&str>,
        password: Option<NewPassword<'_>>,
    ) -> Result<(User, Vec<String>), DbError> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        if let Some(name) = display_name {
            sqlx::query("UPDATE users SET display_name = $2, updated_at = $3 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(name)
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let mut ended = Vec::new();
        if let Some(p) = password {
            sqlx::query("UPDATE credentials SET password_hash = $2, updated_at = $3 WHERE user_id = $1")
                .bind(id)
                .bind(p.hash)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            ended = super::sessions::revoke_other_sessions(&mut tx, id, p.keep_session, now).await?;
        }
        tx.commit().await?;
        Ok((self.get_user(id).await?, ended))
    }

    /// Bans (or unbans) a user; a banned user can neither log in nor use
    /// existing tokens.
    pub async fn set_banned(&self, id: &str, banned: bool) -> Result<(), DbError> {
        let r = sqlx::query("UPDATE users SET banned_at = $2 WHERE id = $1")
            .bind(id)
            .bind(banned.then(now_ms))
            .execute(&self.write)
            .await?;
        if r.rows_affected() == 0 {
            return Err(DbError::NotFound);
        }
        Ok(())
    }

    /// Erases an account (GDPR art. 17) in one transaction.
    ///
    /// Credentials, sessions, tokens, tickets, read markers and memberships
    /// are deleted; the profile row stays, anonymised, so other people's
    /// history still resolves the sender id. The user's messages become
    /// tombstones: body emptied here, their `seq` kept; the caller then
    /// appends a `delete` event (reason `erased`) per message, which sets
    /// `deleted_at` (`Hub::finish_erasure`), so clients that have a message
    /// learn of it on resume.
    /// Rooms the user owned pass to their longest-standing member, or are
    /// deleted when nobody else is in them.
    pub async fn erase_user(&self, id: &str) -> Result<(), DbError> {
        let now = now_ms();
        let mut tx = self.write.begin().await?;
        let owned: Vec<String> =
            sqlx::query_scalar("SELECT room_id FROM memberships WHERE user_id = $1 AND role = 'owner'")
                .bind(id)
                .fetch_all(&mut *tx)
                .await?;
        for room in &owned {
            let heir: Option<String> = sqlx::query_scalar(
                "SELECT user_id FROM memberships WHERE room_id = $1 AND user_id <> $2 \
                 ORDER BY joined_at, user_id LIMIT 1",
            )
            .bind(room)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            match heir {
                Some(heir) => {
                    sqlx::query("UPDATE memberships SET role = 'owner' WHERE room_id = $1 AND user_id = $2")
                        .bind(room)
                        .bind(&heir)
                        .execute(&mut *tx)
                        .await?;
                    sqlx::query("UPDATE rooms SET owner_id = $2 WHERE id = $1")
                        .bind(room)
                        .bind(&heir)
                        .execute(&mut *tx)
                        .await?;
                }
                None => {
                    sqlx::query("DELETE FROM rooms WHERE id = $1").bind(room).execute(&mut *tx).await?;
                }
            }
        }
        for sql in [
            "DELETE FROM credentials WHERE user_id = $1",
            "DELETE FROM ws_tickets WHERE user_id = $1",
            "DELETE FROM refresh_tokens WHERE user_id = $1",
            "DELETE FROM sessions WHERE user_id = $1",
            "DELETE FROM read_markers WHERE user_id = $1",
            "DELETE FROM memberships WHERE user_id = $1",
            "DELETE FROM idempotency_keys WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        // Bodies go now, in this transaction (edits included); each message
        // then gets its `delete` event in bounded batches afterwards
        // (`Hub::finish_erasure`), which marks it deleted.
        sqlx::query("UPDATE messages SET body = '', sent_digest = NULL WHERE sender_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE users SET email = NULL, email_lower = NULL, display_name = $2, \
             deleted_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(ERASED_NAME)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Everything stored about a user.
    /// Everything held about the user, with one page of their messages
    /// (after `messages_after`): an export costs the same for a user with a
    /// million messages as for one with ten.
    pub async fn export_user(&self, id: &str, messages_after: Option<&MessageKey>) -> Result<Export, DbError> {
        let profile = self.get_user(id).await?;
        let rooms = self.rooms_for_user(id).await?;
        let mut messages = self.messages_by_sender(id, messages_after, EXPORT_MESSAGES_PAGE as i64 + 1).await?;
        let messages_next = (messages.len() > EXPORT_MESSAGES_PAGE).then(|| {
            messages.truncate(EXPORT_MESSAGES_PAGE);
            messages.last().map(|m| MessageKey::of(m).to_string()).unwrap_or_default()
        });
        let sessions =
            sqlx::query("SELECT id, created_at, revoked_at FROM sessions WHERE user_id = $1 ORDER BY created_at")
                .bind(id)
                .fetch_all(&self.read)
                .await?
                .iter()
                .map(|r| {
                    Ok(ExportSession {
                        id: r.try_get("id")?,
                        created_at: r.try_get("created_at")?,
                        revoked_at: r.try_get("revoked_at")?,
                    })
                })
                .collect::<Result<_, sqlx::Error>>()?;
        let audit = self.audit_of_user(id).await?;
        Ok(Export { profile, rooms, messages, messages_next, sessions, audit })
    }
}
