//! Offline push: a signed webhook for members who missed a message.
//!
//! - The outbox: when `WEBHOOK_URL` is set, the group commit writes one
//!   `push_outbox` row per stored message in the message's own transaction
//!   ([`crate::db::Store::append_messages_with`]), so nothing committed is
//!   lost and nothing rolled back is announced.
//! - The worker ([`PushWorker::run`], one per instance): woken in-process
//!   after each commit that stored something, and every
//!   `WEBHOOK_POLL_INTERVAL_MS` for other instances' rows and retries, it
//!   claims due rows in leased batches, works out who is offline for each
//!   message and POSTs the batch ([`webhook`]).
//!
//! "Offline" is judged when the worker handles the row, normally within
//! milliseconds of the commit: the room's members (who were members when
//! the message was sent), minus the sender, minus everyone with a socket
//! joined to the room on any instance (the cluster-wide presence of the
//! bus). A row nobody is offline for is done without a request.
//!
//! Delivery is at least once: a 2xx deletes the rows; anything else
//! reschedules them with backoff until `WEBHOOK_MAX_ATTEMPTS`; an instance
//! that dies holding a claim leaves it to expire after `WEBHOOK_LEASE_MS`,
//! and another instance delivers it again with the same event ids.

pub mod webhook;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::SharedBus;
use crate::clock::now_ms;
use crate::db::{DbError, OutboxRow, Store};
use crate::metrics::Metrics;
pub use webhook::WebhookSettings;
use webhook::{Event, PostResult, Sender};

/// One instance's push worker: the outbox, presence, the webhook.
pub struct PushWorker {
    store: Store,
    bus: SharedBus,
    metrics: Metrics,
    sender: Sender,
    /// Notified by the committer after a commit that wrote outbox rows.
    wake: Arc<Notify>,
}

/// Who is offline for the messages of one room, as far as this round knows.
struct RoomView {
    /// `(user, joined_at)`: a member who joined after a message is not
    /// told about it.
    members: Vec<(String, i64)>,
    /// `None` when the bus could not say (Redis down): the room's rows
    /// are retried rather than guessed.
    online: Option<HashSet<String>>,
}

impl PushWorker {
    /// # Errors
    /// The HTTP client could not be built (TLS initialisation).
    pub fn new(
        config: WebhookSettings,
        store: Store,
        bus: SharedBus,
        metrics: Metrics,
        wake: Arc<Notify>,
    ) -> Result<Self, reqwest::Error> {
        let sender = Sender::new(config, metrics.clone())?;
        Ok(PushWorker { store, bus, metrics, sender, wake })
    }

    /// Runs until `stop`; a round in progress is finished first (its POST
    /// is bounded by `WEBHOOK_TIMEOUT_MS`), so rows are either delivered or
    /// rescheduled, never left claimed by a clean shutdown.
    pub async fn run(self, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.sender.config().poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.wake.notified() => {}
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            // Full batches mean more may be due: keep going until one is not.
            loop {
                match self.round().await {
                    Ok(n) if n == self.sender.config().batch_size && !stop.is_cancelled() => continue,
                    Ok(_) => break,
                    Err(e) => {
                        self.metrics.db_errors.inc("background");
                        tracing::warn!(error = %e, "offline push: outbox round failed");
                        break;
                    }
                }
            }
        }
    }

    /// Claims one batch and settles it; returns how many rows were claimed.
    async fn round(&self) -> Result<usize, DbError> {
        let config = self.sender.config();
        let now = now_ms();
        let rows = self.store.claim_outbox(now, now + config.lease.as_millis() as i64, config.batch_size).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let max = i64::from(config.max_attempts);
        let (rows, worn): (Vec<OutboxRow>, Vec<OutboxRow>) = rows.into_iter().partition(|r| r.attempts <= max);
        // Rows past the limit at claim: their earlier claims died (crashes)
        // before settling them.
        self.give_up(&worn, "claims expired").await?;

        let mut rooms: HashMap<&str, RoomView> = HashMap::new();
        for r in &rows {
            if !rooms.contains_key(r.room.as_str()) {
                let members =
                    self.store.members(&r.room).await?.into_iter().map(|m| (m.user_id, m.joined_at)).collect();
                let online = self.bus.presence_of(&r.room).await.ok().map(|u| u.into_iter().collect());
                rooms.insert(&r.room, RoomView { members, online });
            }
        }
        let bodies = if config.include_body {
            let keys: Vec<(&str, i64)> = rows.iter().map(|r| (r.room.as_str(), r.seq)).collect();
            Some(self.store.message_bodies(&keys).await?)
        } else {
            None
        };

        let mut skipped: Vec<&str> = Vec::new();
        let mut unknown: Vec<&OutboxRow> = Vec::new();
        let mut events: Vec<Event<'_>> = Vec::new();
        let mut sent: Vec<&OutboxRow> = Vec::new();
        for r in &rows {
            // Every row's room was looked up in the loop above.
            let view = &rooms[r.room.as_str()];
            let Some(online) = &view.online else {
                unknown.push(r);
                continue;
            };
            let body = match &bodies {
                None => None,
                Some(b) => match b.get(&(r.room.clone(), r.seq)) {
                    Some(Some(body)) => Some(body.as_str()),
                    // Deleted or gone since: nothing to announce.
                    _ => {
                        skipped.push(&r.id);
                        continue;
                    }
                },
            };
            let offline: Vec<String> = view
                .members
                .iter()
                .filter(|(u, joined_at)| *joined_at <= r.sent_at && *u != r.sender && !online.contains(u))
                .map(|(u, _)| u.clone())
                .collect();
            if offline.is_empty() {
                skipped.push(&r.id);
                continue;
            }
            events.push(Event {
                id: &r.id,
                room: &r.room,
                seq: r.seq,
                sender: &r.sender,
                sent_at: r.sent_at,
                offline_user_ids: offline,
                body,
            });
            sent.push(r);
        }
        if !skipped.is_empty() {
            self.store.outbox_done(&skipped).await?;
            self.metrics.webhook_events.add("skipped", skipped.len() as u64);
        }
        if !unknown.is_empty() {
            tracing::warn!(events = unknown.len(), "offline push: presence unavailable, retrying later");
            self.retry(&unknown).await?;
        }
        if !events.is_empty() {
            match self.sender.post(&events).await {
                PostResult::Ok => {
                    let ids: Vec<&str> = sent.iter().map(|r| r.id.as_str()).collect();
                    self.store.outbox_done(&ids).await?;
                    self.metrics.webhook_events.add("delivered", ids.len() as u64);
                }
                failed => {
                    tracing::info!(result = ?failed, events = sent.len(), "offline push: webhook failed, will retry");
                    self.retry(&sent).await?;
                }
            }
        }
        Ok(rows.len() + worn.len())
    }

    /// Reschedules rows with backoff, or gives up those that used their
    /// last attempt.
    async fn retry(&self, rows: &[&OutboxRow]) -> Result<(), DbError> {
        let max = i64::from(self.sender.config().max_attempts);
        let (last, again): (Vec<&OutboxRow>, Vec<&OutboxRow>) = rows.iter().partition(|r| r.attempts >= max);
        let now = now_ms();
        let due: Vec<(&str, i64)> =
            again.iter().map(|r| (r.id.as_str(), now + self.sender.backoff(r.attempts).as_millis() as i64)).collect();
        if !due.is_empty() {
            self.store.outbox_retry(&due).await?;
            self.metrics.webhook_events.add("retried", due.len() as u64);
        }
        let last: Vec<OutboxRow> = last.into_iter().cloned().collect();
        self.give_up(&last, "attempts exhausted").await
    }

    /// Drops rows for good: counted and logged, one line per event, so an
    /// operator can tell which pushes never went out.
    async fn give_up(&self, rows: &[OutboxRow], why: &'static str) -> Result<(), DbError> {
        if rows.is_empty() {
            return Ok(());
        }
        for r in rows {
            tracing::warn!(event = %r.id, room = %r.room, seq = r.seq, attempts = r.attempts, why, "offline push given up");
        }
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        self.store.outbox_done(&ids).await?;
        self.metrics.webhook_events.add("given_up", ids.len() as u64);
        Ok(())
    }
}
