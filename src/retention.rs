//! The retention job: enforces `RETENTION_MAX_AGE_SECS` /
//! `RETENTION_MAX_MESSAGES` and rooms' own overrides (protocol §17).
//!
//! Bounded by construction: rooms are visited a page at a time, a room's
//! new `first_seq` is set with one short statement, and its old rows go in
//! batches of `RETENTION_BATCH`, each a short transaction of its own with a
//! yield between them, so sends (which queue for the same SQLite writer)
//! wait for one small batch at most. Every instance runs it; the work is
//! idempotent (`first_seq` only moves forward, deleting deleted rows is a
//! no-op), so two instances on one room cost a little duplicate effort and
//! nothing else.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::db::{DbError, RetentionRoom, Store};
use crate::metrics::Metrics;

/// Message retention: the global limits (a room's owner may override them)
/// and the pace of the background job that enforces them.
#[derive(Debug, Clone)]
pub struct RetentionSettings {
    /// `RETENTION_MAX_AGE_SECS`; `None` (0) keeps messages of any age.
    pub max_age: Option<Duration>,
    /// `RETENTION_MAX_MESSAGES`; `None` (0) keeps any number per room.
    pub max_messages: Option<i64>,
    /// `RETENTION_INTERVAL_SECS`: time between passes of the job.
    pub interval: Duration,
    /// `RETENTION_BATCH`: rows per delete statement (each its own short
    /// transaction).
    pub batch: i64,
}

/// Rooms read per page.
const ROOM_PAGE: i64 = 500;

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassStats {
    /// Rooms whose retained range moved.
    pub rooms: u64,
    /// Rows deleted.
    pub deleted: u64,
}

/// Runs a pass every `RETENTION_INTERVAL_SECS` until `stop`. It gets the
/// store and its own settings, not the application state: a job sits below
/// the HTTP edge and the composition root.
pub async fn run(store: Store, cfg: RetentionSettings, metrics: Metrics, stop: CancellationToken) {
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                match pass(&store, &cfg, &stop).await {
                    Ok(s) if s.deleted > 0 || s.rooms > 0 => {
                        tracing::info!(rooms = s.rooms, deleted = s.deleted, "retention pass");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        metrics.db_errors.inc("background");
                        tracing::warn!(error = %e, "retention pass failed");
                    }
                }
            }
            () = stop.cancelled() => return,
        }
    }
}

/// One pass over every room retention applies to.
///
/// # Errors
/// The database failed; what was done before stays done.
pub async fn pass(store: &Store, cfg: &RetentionSettings, stop: &CancellationToken) -> Result<PassStats, DbError> {
    let global_on = cfg.max_age.is_some() || cfg.max_messages.is_some();
    let mut stats = PassStats::default();
    let mut after = String::new();
    loop {
        let page = store.retention_rooms(&after, ROOM_PAGE, global_on).await?;
        for room in &page {
            if stop.is_cancelled() {
                return Ok(stats);
            }
            let mut first = room.first_seq;
            if let Some(target) = target_first_seq(store, cfg, room).await? {
                store.advance_first_seq(&room.id, target).await?;
                stats.rooms += 1;
                first = target;
            }
            // Rows below the retained range (this pass's, or a pass that
            // stopped midway): only then is the writer taken.
            if store.lowest_stored_seq(&room.id).await?.is_some_and(|l| l < first) {
                stats.deleted += delete_unretained(store, &room.id, cfg.batch).await?;
            }
        }
        match page.last() {
            Some(last) if page.len() as i64 == ROOM_PAGE => after = last.id.clone(),
            _ => return Ok(stats),
        }
    }
}

/// Deletes a room's rows below its `first_seq`, batch by batch, yielding
/// between batches; returns how many went.
///
/// # Errors
/// The database failed.
pub async fn delete_unretained(store: &Store, room: &str, batch: i64) -> Result<u64, DbError> {
    let mut total = 0;
    loop {
        let n = store.delete_unretained(room, batch).await?;
        total += n;
        if n < batch as u64 {
            return Ok(total);
        }
        // Let queued writers (sends) have the connection between batches.
        tokio::task::yield_now().await;
    }
}

/// The room's new lowest retained seq, when its limits call for one above
/// the current one. A room's own setting wins over the global one; 0
/// means no limit.
async fn target_first_seq(
    store: &Store,
    cfg: &RetentionSettings,
    room: &RetentionRoom,
) -> Result<Option<i64>, DbError> {
    let max_messages = match room.retention.max_messages {
        Some(n) => Some(n).filter(|n| *n > 0),
        None => cfg.max_messages,
    };
    let max_age_ms = match room.retention.max_age_secs {
        Some(s) => Some(s.saturating_mul(1000)).filter(|s| *s > 0),
        None => cfg.max_age.map(|d| d.as_millis() as i64),
    };
    let mut target = room.first_seq;
    if let Some(n) = max_messages {
        target = target.max(room.last_seq - n + 1);
    }
    if let Some(age) = max_age_ms.filter(|_| room.first_seq <= room.last_seq) {
        let young = store.first_seq_since(&room.id, room.first_seq, now_ms() - age).await?;
        target = target.max(young.unwrap_or(room.last_seq + 1));
    }
    Ok(Some(target).filter(|t| *t > room.first_seq))
}
