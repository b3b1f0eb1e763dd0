//! Erasure's `delete` events: after an account is erased (bodies emptied in
//! one transaction, see `Store::erase_user`), each of its messages gets a
//! `delete` event (reason `erased`) in its room's stream, so a client that
//! already holds the message learns of it, live or on resume.
//!
//! The events go through the same append path as sends (`append_messages`,
//! gap-free seqs, fanned out here and over the bus), in batches of
//! [`BATCH`] so a user with a million messages never holds a room's lock
//! (or SQLite's one writer) for long. Progress lives in the rows themselves
//! (`deleted_at` is set by each event), so an instance that stops midway
//! leaves nothing lost: the next start finishes it.

use std::time::Duration;

use super::Hub;
use crate::clock::now_ms;
use crate::db::{Deleter, NewKind, NewMessage};

/// Messages per erasure transaction.
pub const BATCH: i64 = 500;

impl Hub {
    /// Appends the `delete` events of an erased user's messages in the
    /// background (tracked: shutdown waits for the running batch).
    pub fn finish_erasure(&self, user: &str) {
        let (hub, user) = (self.clone(), user.to_owned());
        self.spawn_task(async move { hub.run_erasure(&user).await });
    }

    /// At start-up: finishes erasures an earlier instance left midway.
    pub(super) async fn resume_erasures(self) {
        match self.store().erasures_unfinished().await {
            Ok(users) => {
                for u in users {
                    self.run_erasure(&u).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "looking for unfinished erasures failed"),
        }
    }

    /// Batches until no message of `user` is left without its event. A
    /// failing batch is retried a few times, then left for the next start.
    async fn run_erasure(&self, user: &str) {
        let stop = self.inner.stop.clone();
        let mut after: Option<(String, i64)> = None;
        let mut failures = 0u64;
        while !stop.is_cancelled() {
            let pending =
                match self.store().erasure_pending(user, after.as_ref().map(|(r, s)| (r.as_str(), *s)), BATCH).await {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(error = %e, user_id = %user, "reading an erasure batch failed");
                        failures += 1;
                        if !retry_later(&stop, failures).await {
                            return;
                        }
                        continue;
                    }
                };
            let Some(last) = pending.last().cloned() else { return };
            let now = now_ms();
            let batch: Vec<NewMessage> = pending
                .into_iter()
                .map(|(room, seq)| NewMessage {
                    room_id: room,
                    sender_id: user.to_owned(),
                    // Deterministic: a batch retried after an unknown outcome
                    // finds its events already stored (duplicates).
                    client_msg_id: format!("erased:{seq}"),
                    body: String::new(),
                    sent_at: now,
                    kind: NewKind::Delete { target_seq: seq, by: Deleter::Erasure },
                })
                .collect();
            match self.store().append_messages(&batch).await {
                Ok(outcomes) => {
                    failures = 0;
                    self.stored(&outcomes);
                    after = Some(last);
                }
                Err(e) => {
                    tracing::warn!(error = %e, user_id = %user, "an erasure batch failed");
                    self.metrics().db_errors.inc("commit");
                    failures += 1;
                    if !retry_later(&stop, failures).await {
                        return;
                    }
                }
            }
        }
    }
}

/// Waits before the next attempt after `failures` failures in a row:
/// `false` when it is time to give up (five failures; the next start
/// resumes the erasure) or the hub is stopping, which does not wait out
/// the backoff.
async fn retry_later(stop: &tokio_util::sync::CancellationToken, failures: u64) -> bool {
    if failures >= 5 {
        return false;
    }
    tokio::select! {
        () = tokio::time::sleep(Duration::from_millis(200 * failures)) => true,
        () = stop.cancelled() => false,
    }
}
