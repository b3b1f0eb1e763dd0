//! Subscriptions: which rooms this instance listens to, confirmed by Redis.
//!
//! All (un)subscribe commands go through one task, in order, so a room that
//! is released and watched again can never end up unsubscribed. A room
//! nobody here watches lingers a while before it is unsubscribed, so a
//! socket that leaves and comes back costs no subscribe/unsubscribe pair.

use std::sync::Arc;
use std::time::Duration;

use fred::prelude::PubsubInterface;
use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::publish;
use super::shared::{Inner, RoomSub, SubCmd};
use crate::bus::{BusError, BusEvent, BusFuture};

/// [`crate::bus::Bus::watch_room`]: asks for the room's subscription (once)
/// and resolves when Redis confirmed it.
pub(super) fn watch_room(inner: &Inner, room: &str) -> BusFuture {
    let mut confirmed = {
        let mut map = inner.rooms.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(room) {
            Some(s) => {
                s.released = None;
                s.confirmed.subscribe()
            }
            None => {
                let (tx, rx) = watch::channel(false);
                let room: Arc<str> = Arc::from(room);
                map.insert(room.clone(), RoomSub { confirmed: tx, released: None });
                let _ = inner.subs.send(SubCmd::Subscribe(room));
                rx
            }
        }
    };
    if *confirmed.borrow() {
        return Box::pin(async { Ok(()) });
    }
    // Do not make joins wait on a Redis known to be down: the hub
    // resyncs from storage, and the room is subscribed on reconnect.
    if let Some(down) = inner.fail_fast() {
        return down;
    }
    let timeout = inner.timeout;
    Box::pin(async move {
        match tokio::time::timeout(timeout, confirmed.wait_for(|c| *c)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(BusError::Unavailable("Redis did not confirm the subscription".into())),
        }
    })
}

/// [`crate::bus::Bus::unwatch_room`]: the room starts lingering.
pub(super) fn unwatch_room(inner: &Inner, room: &str) {
    if let Some(s) = inner.rooms.lock().unwrap_or_else(|p| p.into_inner()).get_mut(room) {
        s.released = Some(Instant::now());
    }
}

/// The only issuer of (un)subscribe commands, so they reach Redis in
/// the order they were decided. Also releases lingering rooms.
pub(super) async fn run_subscriptions(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<SubCmd>) {
    let mut tick = tokio::time::interval((inner.linger / 2).max(Duration::from_millis(100)));
    let mut cmds = Vec::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut cmds, 1024) => if n == 0 { return },
            _ = tick.tick() => { release_lingering(&inner).await; continue; }
            () = inner.stop.cancelled() => return,
        }
        let mut rooms: Vec<Arc<str>> = Vec::new();
        let mut all = false;
        for c in cmds.drain(..) {
            match c {
                SubCmd::Subscribe(r) => rooms.push(r),
                SubCmd::ResubscribeAll => all = true,
            }
        }
        if all {
            let wanted: Vec<Arc<str>> = inner.rooms.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
            let mut channels = vec![inner.control_channel()];
            channels.extend(wanted.iter().map(|r| inner.room_channel(r)));
            match subscribe(&inner, channels).await {
                Ok(()) => {
                    confirm(&inner, &wanted);
                    // Events may have been missed while disconnected.
                    inner.to_hub(BusEvent::Resync);
                    publish::announce_lost(&inner).await;
                }
                Err(e) => tracing::warn!(error = %e, "bus: resubscribing failed; retrying on reconnect"),
            }
        } else if !rooms.is_empty() {
            let channels = rooms.iter().map(|r| inner.room_channel(r)).collect();
            match subscribe(&inner, channels).await {
                Ok(()) => confirm(&inner, &rooms),
                Err(e) => tracing::debug!(error = %e, "bus: subscribe failed; retried on reconnect"),
            }
        }
    }
}

/// Subscribes `channels`: one SUBSCRIBE, or one SSUBSCRIBE each on a
/// cluster.
async fn subscribe(inner: &Inner, channels: Vec<String>) -> Result<(), fred::error::Error> {
    if inner.sharded {
        // One SSUBSCRIBE per channel: channels of one command must share
        // a hash slot.
        let results = join_all(channels.into_iter().map(|c| inner.subscriber.ssubscribe(c))).await;
        results.into_iter().collect()
    } else {
        inner.subscriber.subscribe(channels).await
    }
}

/// Whether a watched room still waits for its confirmation.
pub(super) fn has_unconfirmed(inner: &Inner) -> bool {
    inner.rooms.lock().unwrap_or_else(|p| p.into_inner()).values().any(|s| !*s.confirmed.borrow())
}

/// Marks `rooms` confirmed, waking the joins that wait on them.
fn confirm(inner: &Inner, rooms: &[Arc<str>]) {
    let map = inner.rooms.lock().unwrap_or_else(|p| p.into_inner());
    for r in rooms {
        if let Some(s) = map.get(r) {
            s.confirmed.send_replace(true);
        }
    }
    inner.metrics.bus_rooms.set(map.len() as i64);
}

/// Unsubscribes the rooms that lingered unwatched past `linger`.
async fn release_lingering(inner: &Inner) {
    let now = Instant::now();
    let expired: Vec<Arc<str>> = {
        let mut map = inner.rooms.lock().unwrap_or_else(|p| p.into_inner());
        let expired: Vec<Arc<str>> = map
            .iter()
            .filter(|(_, s)| s.released.is_some_and(|t| now.duration_since(t) >= inner.linger))
            .map(|(r, _)| r.clone())
            .collect();
        for r in &expired {
            map.remove(r);
        }
        inner.metrics.bus_rooms.set(map.len() as i64);
        expired
    };
    if expired.is_empty() {
        return;
    }
    let channels: Vec<String> = expired.iter().map(|r| inner.room_channel(r)).collect();
    let res = if inner.sharded {
        join_all(channels.into_iter().map(|c| inner.subscriber.sunsubscribe(c))).await.into_iter().collect()
    } else {
        inner.subscriber.unsubscribe(channels).await
    };
    if let Err(e) = res {
        // Harmless: events of an unwatched room are ignored by the hub.
        tracing::debug!(error = %e, "bus: unsubscribe failed");
    }
}
