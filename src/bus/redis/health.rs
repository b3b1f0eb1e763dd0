//! Connection health: every (re)connect of the subscriber resubscribes
//! everything, and a ping every second decides whether the bus is healthy.
//!
//! While Redis is unreachable the hub is asked to resync every second, so
//! live delivery degrades to storage polling instead of stopping.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::ClientLike;

use super::shared::{Inner, SubCmd};
use super::{publish, subscribe};
use crate::bus::BusEvent;

/// Every (re)connect of the subscriber resubscribes everything.
pub(super) async fn run_reconnects(
    inner: Arc<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<fred::types::config::Server>,
) {
    let mut first = true;
    loop {
        let r = tokio::select! {
            r = rx.recv() => r,
            () = inner.stop.cancelled() => return,
        };
        if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
            return;
        }
        if !first {
            inner.metrics.bus_reconnects.inc();
            tracing::info!("bus: reconnected to Redis; resubscribing");
        }
        first = false;
        let _ = inner.subs.send(SubCmd::ResubscribeAll);
    }
}

/// Pings Redis every second. Unhealthy: not ready, and the hub polls
/// storage. Healthy again: resync, and announce what was lost.
pub(super) async fn run_health(inner: Arc<Inner>) {
    let period = Duration::from_secs(1).min(inner.timeout);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stale_unconfirmed = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = inner.stop.cancelled() => return,
        }
        let ping = tokio::time::timeout(inner.timeout, inner.publisher.ping::<()>(None)).await;
        let problem = match ping {
            Ok(Ok(())) if inner.subscriber.is_connected() => None,
            Ok(Ok(())) => Some("Redis subscriber connection is down".to_owned()),
            Ok(Err(e)) => Some(format!("Redis unreachable: {}", e.kind().to_str())),
            Err(_) => Some(format!("Redis did not answer within {} ms", inner.timeout.as_millis())),
        };
        let was_healthy = {
            let mut u = inner.unhealthy.lock().unwrap_or_else(|p| p.into_inner());
            let was = u.is_none();
            *u = problem.clone();
            was
        };
        inner.metrics.bus_up.set(problem.is_none() as i64);
        match (was_healthy, problem) {
            (true, Some(p)) => tracing::warn!(problem = %p, "bus: Redis unhealthy; delivering from storage"),
            (false, None) => {
                tracing::info!("bus: Redis healthy");
                // Subscriptions asked for while it did not answer may
                // have failed without a reconnect to redo them (a paused
                // Redis keeps its connections): redo them all, then
                // resync and announce what was lost.
                let _ = inner.subs.send(SubCmd::ResubscribeAll);
            }
            (false, Some(_)) => inner.to_hub(BusEvent::Resync),
            (true, None) => {
                // A subscription that failed while Redis was healthy
                // (still unconfirmed a tick later) is retried.
                let unconfirmed = subscribe::has_unconfirmed(&inner);
                if unconfirmed && stale_unconfirmed {
                    let _ = inner.subs.send(SubCmd::ResubscribeAll);
                }
                stale_unconfirmed = unconfirmed;
                if !inner.lost.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                    publish::announce_lost(&inner).await;
                }
            }
        }
    }
}
