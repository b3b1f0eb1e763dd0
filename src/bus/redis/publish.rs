//! Publishing: the hub's events leave through a bounded queue that one task
//! drains, a pipelined batch at a time, so nothing on the delivery path
//! waits on Redis. What fails is counted and its room noted, to be
//! announced as a `Tail` once Redis answers again.

use std::sync::Arc;

use fred::prelude::PubsubInterface;
use futures_util::future::join_all;
use tokio::sync::mpsc;

use super::shared::Inner;
use crate::bus::BusEvent;
use crate::bus::wire;

/// Events published in one pipelined round.
const PUBLISH_BATCH: usize = 256;

/// Publishes one event on its channel (sharded on a cluster).
pub(super) async fn publish_one(inner: &Inner, event: &BusEvent) -> Result<(), fred::error::Error> {
    let Ok(payload) = wire::encode(&inner.origin, event) else { return Ok(()) };
    let channel = inner.channel_of(event);
    if inner.sharded {
        inner.publisher.spublish::<(), _, _>(channel, payload).await
    } else {
        inner.publisher.publish::<(), _, _>(channel, payload).await
    }
}

/// Drains the publish queue, a pipelined batch at a time.
pub(super) async fn run_publisher(inner: Arc<Inner>, mut rx: mpsc::Receiver<BusEvent>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
            () = inner.stop.cancelled() => {
                // Closing: publish what is queued, then end.
                rx.close();
                rx.recv_many(&mut batch, PUBLISH_BATCH).await
            }
        };
        if n == 0 {
            return;
        }
        inner.metrics.bus_publish_queue.set(rx.len() as i64);
        let results = join_all(batch.iter().map(|e| publish_one(&inner, e))).await;
        let mut failed = 0;
        for (event, r) in batch.iter().zip(results) {
            if r.is_err() {
                failed += 1;
                inner.note_lost(event);
            }
        }
        if failed > 0 {
            inner.dropped("publish_failed", failed);
            tracing::warn!(failed, "bus: publishing to Redis failed; peers will catch up from storage");
        }
        batch.clear();
    }
}

/// Announces rooms whose events were lost, once Redis answers.
pub(super) async fn announce_lost(inner: &Inner) {
    let lost: Vec<(Arc<str>, i64)> = inner.lost.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
    for (room, seq) in lost {
        let tail = BusEvent::Tail { room, seq };
        if publish_one(inner, &tail).await.is_err() {
            inner.note_lost(&tail);
        }
    }
}
