//! Group commit: concurrent sends are stored in batches, one transaction per
//! batch, so throughput does not collapse to one transaction per message.
//!
//! One committer per instance takes whatever queued up while the previous
//! batch was being written (up to [`BATCH_MAX`]), stores it, hands the stored
//! messages to delivery ([`Hub::stored`]) and then answers each sender. Under light load
//! a batch is a single message and nothing waits; under heavy load batches
//! grow by themselves.

use std::sync::Arc;

use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::db::{AppendOutcome, DbError, NewMessage};

/// Queue of sends waiting for the committer.
pub const QUEUE: usize = 16_384;
/// Most messages in one transaction.
pub const BATCH_MAX: usize = 512;

/// One send waiting to be stored.
pub struct Job {
    pub msg: NewMessage,
    pub reply: oneshot::Sender<Result<AppendOutcome, DbError>>,
}

/// The committer loop. At `stop` (after the sockets were drained) the queue
/// is closed, what is already queued is still stored, and the loop ends.
///
/// Several committers may share one queue (PostgreSQL): while one waits for
/// its commit, the next batch is already being written. Batches touching the
/// same room serialise on its row lock, so seqs stay gap-free; their
/// deliveries may reach the room out of order, which the room's sequencer
/// puts back in order (see `Hub::fan_out` in [`super::delivery`]).
pub async fn run(hub: Hub, jobs: Arc<Mutex<mpsc::Receiver<Job>>>, stop: CancellationToken) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH_MAX);
    loop {
        // Only one committer takes from the queue at a time.
        let n = {
            let mut rx = jobs.lock().await;
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH_MAX) => n,
                () = stop.cancelled() => {
                    rx.close();
                    rx.recv_many(&mut batch, BATCH_MAX).await
                }
            }
        };
        if n == 0 {
            return;
        }
        let msgs: Vec<NewMessage> = batch.iter().map(|j| j.msg.clone()).collect();
        hub.metrics().commit_batch_size.observe(msgs.len() as f64);
        let push = hub.settings().push_wake.as_ref();
        match hub.store().append_messages_with(&msgs, push.is_some()).await {
            Ok(outcomes) => {
                hub.stored(&outcomes);
                // Once per batch, after the fan-out: the push worker looks at
                // the outbox rows this commit wrote.
                if let Some(wake) = push
                    && outcomes.iter().any(|o| matches!(o, AppendOutcome::Stored(_)))
                {
                    wake.notify_one();
                }
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    // The sender may have disconnected: nothing to tell then.
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = batch.len(), "storing a batch failed");
                hub.metrics().commit_failures.inc_by(batch.len() as u64);
                hub.metrics().db_errors.inc("commit");
                for job in batch.drain(..) {
                    // Same: a gone sender needs no answer.
                    let _ = job.reply.send(Err(match &e {
                        DbError::Conflict(c) => DbError::Conflict(c),
                        _ => DbError::Unavailable(crate::db::Unavailable::CommitFailed),
                    }));
                }
            }
        }
    }
}
