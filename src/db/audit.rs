//! The audit log: an append-only record of security events (sign-ins,
//! refresh-token reuse, logout, erasure, password changes, bans,
//! disconnects) for operators, and for users in their export.
//!
//! A record holds ids only (actor, target), the action, the time and the
//! client address: never an email, a token, a name or a message body, so it
//! can outlive an erasure without keeping anything erased. The database
//! itself refuses updates and early deletes (triggers in
//! `migrations/*/0002_audit_log.sql`); the retention purge is the only
//! delete.

use std::net::IpAddr;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{DbError, Store};
use crate::clock::now_ms;

/// What happened. The string forms are stored and are the API's `action`
/// filter: renaming one is a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// A login with the right password (actor = target = the user).
    LoginSucceeded,
    /// A refused login: wrong password, or a banned or erased account
    /// (target = that user), or an unknown email (target `null`).
    LoginFailed,
    /// A spent refresh token was presented again; its session is revoked
    /// (target = the session's user; the presenter is unknown).
    RefreshTokenReused,
    /// The user ended a session.
    Logout,
    /// The user erased their account.
    Erasure,
    /// The user changed their password.
    PasswordChanged,
    /// An operator banned the target.
    Ban,
    /// An operator lifted the target's ban.
    Unban,
    /// An operator closed the target's sockets.
    AdminDisconnect,
    /// An operator deleted a message of the target (its author).
    MessageDeleted,
}

impl AuditAction {
    pub const ALL: [AuditAction; 10] = [
        AuditAction::LoginSucceeded,
        AuditAction::LoginFailed,
        AuditAction::RefreshTokenReused,
        AuditAction::Logout,
        AuditAction::Erasure,
        AuditAction::PasswordChanged,
        AuditAction::Ban,
        AuditAction::Unban,
        AuditAction::AdminDisconnect,
        AuditAction::MessageDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::LoginSucceeded => "login_succeeded",
            AuditAction::LoginFailed => "login_failed",
            AuditAction::RefreshTokenReused => "refresh_token_reused",
            AuditAction::Logout => "logout",
            AuditAction::Erasure => "erasure",
            AuditAction::PasswordChanged => "password_changed",
            AuditAction::Ban => "ban",
            AuditAction::Unban => "unban",
            AuditAction::AdminDisconnect => "admin_disconnect",
            AuditAction::MessageDeleted => "message_deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// One event to record.
#[derive(Debug, Clone, Copy)]
pub struct AuditEvent<'a> {
    pub action: AuditAction,
    /// The user who acted; `None` for the operator, the system or an
    /// unauthenticated caller.
    pub actor_id: Option<&'a str>,
    /// The user concerned; `None` when unknown.
    pub target_id: Option<&'a str>,
    /// The client address (behind trusted proxies).
    pub client_addr: Option<IpAddr>,
}

impl<'a> AuditEvent<'a> {
    /// Something a user did to their own account.
    pub fn by_user(action: AuditAction, user_id: &'a str, client_addr: IpAddr) -> Self {
        AuditEvent { action, actor_id: Some(user_id), target_id: Some(user_id), client_addr: Some(client_addr) }
    }

    /// Something done to a user by the operator or the system, or by a
    /// caller who is not signed in.
    pub fn about(action: AuditAction, target_id: Option<&'a str>, client_addr: IpAddr) -> Self {
        AuditEvent { action, actor_id: None, target_id, client_addr: Some(client_addr) }
    }
}

/// A stored audit record, as the admin API and the export show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Increasing with every record: the `before` cursor.
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    /// Who acted; `null` for the operator, the system or an
    /// unauthenticated caller.
    pub actor_id: Option<String>,
    /// Whom it concerns; `null` when unknown.
    pub target_id: Option<String>,
    /// `login_succeeded`, `login_failed`, `refresh_token_reused`, `logout`,
    /// `erasure`, `password_changed`, `ban`, `unban`, `admin_disconnect`,
    /// `message_deleted`.
    pub action: String,
    /// The client's IP address (behind `TRUSTED_PROXIES`). In a user's
    /// export only on records of the user's own actions (`actor_id` is the
    /// user), `null` on the rest.
    pub client_addr: Option<String>,
}

/// Which records to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Records where this user is the actor or the target.
    pub user_id: Option<String>,
    pub action: Option<AuditAction>,
    /// Only records with a smaller id (the previous page's `next_before`).
    pub before: Option<i64>,
    pub limit: i64,
}

/// Records deleted per statement by the retention purge: small enough that
/// the SQLite writer is never held for long.
pub const PURGE_BATCH: i64 = 1_000;

const COLS: &str = "id, at, actor_id, target_id, action, client_addr";

fn record_from(r: &AnyRow) -> Result<AuditRecord, sqlx::Error> {
    Ok(AuditRecord {
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor_id: r.try_get("actor_id")?,
        target_id: r.try_get("target_id")?,
        action: r.try_get("action")?,
        client_addr: r.try_get("client_addr")?,
    })
}

impl Store {
    /// Appends one record.
    ///
    /// # Errors
    /// The database failed; see `crate::audit::record` for what callers do
    /// about it.
    pub async fn append_audit(&self, e: &AuditEvent<'_>) -> Result<(), DbError> {
        sqlx::query("INSERT INTO audit_log (at, actor_id, target_id, action, client_addr) VALUES ($1, $2, $3, $4, $5)")
            .bind(now_ms())
            .bind(e.actor_id)
            .bind(e.target_id)
            .bind(e.action.as_str())
            .bind(e.client_addr.map(|a| a.to_string()))
            .execute(&self.write)
            .await?;
        Ok(())
    }

    /// A page of records, newest first.
    pub async fn audit_page(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, DbError> {
        let mut conds = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.user_id.is_some() {
            let p = next();
            conds.push(format!("(actor_id = {p} OR target_id = {p})"));
        }
        if q.action.is_some() {
            conds.push(format!("action = {}", next()));
        }
        if q.before.is_some() {
            conds.push(format!("id < {}", next()));
        }
        let limit = next();
        let filter = if conds.is_empty() { String::new() } else { format!("WHERE {}", conds.join(" AND ")) };
        let sql = format!("SELECT {COLS} FROM audit_log {filter} ORDER BY id DESC LIMIT {limit}");
        let mut query = sqlx::query(&sql);
        if let Some(u) = &q.user_id {
            query = query.bind(u);
        }
        if let Some(a) = q.action {
            query = query.bind(a.as_str());
        }
        if let Some(b) = q.before {
            query = query.bind(b);
        }
        let rows = query.bind(q.limit).fetch_all(&self.read).await?;
        Ok(rows.iter().map(record_from).collect::<Result<_, _>>()?)
    }

    /// Every record where the user is the actor or the target, oldest first
    /// (for the export; bounded by `AUDIT_RETENTION_DAYS`).
    ///
    /// The client address is kept only where the user acted: on a ban, a
    /// disconnect or a moderation delete it is the operator's, and on a
    /// failed login or a refresh-token reuse it is whoever presented the
    /// credential, maybe an attacker. Neither is the user's data to receive.
    pub async fn audit_of_user(&self, user_id: &str) -> Result<Vec<AuditRecord>, DbError> {
        let rows = sqlx::query(
            "SELECT id, at, actor_id, target_id, action, \
                    CASE WHEN actor_id = $1 THEN client_addr END AS client_addr \
             FROM audit_log WHERE actor_id = $1 OR target_id = $1 ORDER BY id",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        Ok(rows.iter().map(record_from).collect::<Result<_, _>>()?)
    }

    /// Deletes up to `batch` records older than `cutoff_ms` (Unix ms) and
    /// returns how many went; call again until it returns less than `batch`.
    pub async fn purge_audit_batch(&self, cutoff_ms: i64, batch: i64) -> Result<u64, DbError> {
        Ok(sqlx::query(
            "DELETE FROM audit_log WHERE id IN (SELECT id FROM audit_log WHERE at < $1 ORDER BY id LIMIT $2)",
        )
        .bind(cutoff_ms)
        .bind(batch)
        .execute(&self.write)
        .await?
        .rows_affected())
    }
}
