//! Presence, one truth for the cluster: a user is online in a room while
//! any instance has one of their sockets in it.
//!
//! Each instance records only whether it has the user's sockets (through
//! the bus: in memory, or in Redis with an expiry that a heartbeat keeps
//! pushing back). One task per instance applies the changes in order and
//! fires `online` when the cluster goes from no socket to one, `offline`
//! when the last one goes, wherever it was. An instance killed outright
//! stops heartbeating; its entries expire and the next sweep by any other
//! instance in the room fires the `offline` it could not.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::protocol::ServerFrame;

/// Presence changes waiting for the presence task. Beyond it a change is
/// dropped and the heartbeat repairs it within one TTL.
pub(super) const QUEUE: usize = 65_536;

/// A user's local part in a room may have changed.
pub(super) struct Changed {
    pub room: Arc<str>,
    pub user: Arc<str>,
}

impl Hub {
    /// Notes that `user`'s sockets in `room` here went from none to some or
    /// back; the presence task decides what the cluster sees.
    pub(super) fn presence_changed(&self, room: &Arc<str>, user: &Arc<str>) {
        let change = Changed { room: room.clone(), user: user.clone() };
        if self.inner.presence.try_send(change).is_err() {
            tracing::debug!("presence queue full; the heartbeat will repair it");
        }
    }

    /// Who is online in `room` across the cluster (the joining user
    /// included); falls back to this instance's view if the bus is down.
    pub async fn presence_snapshot(&self, room: &str, me: &str) -> Vec<String> {
        let mut users: BTreeSet<String> = match self.inner.bus.presence_of(room).await {
            Ok(u) => u.into_iter().collect(),
            Err(_) => self.inner.rooms.users_in(room).into_iter().map(|u| u.to_string()).collect(),
        };
        users.insert(me.to_owned());
        users.into_iter().collect()
    }

    /// [`Hub::presence_snapshot`] of many rooms at once (for `sync`), in
    /// their order.
    pub async fn presence_snapshots(&self, rooms: &[&str], me: &str) -> Vec<Vec<String>> {
        let cluster = self.inner.bus.presence_of_many(rooms).await;
        rooms
            .iter()
            .enumerate()
            .map(|(i, room)| {
                let mut users: BTreeSet<String> = match &cluster {
                    Ok(all) => all.get(i).into_iter().flatten().cloned().collect(),
                    Err(_) => self.inner.rooms.users_in(room).into_iter().map(|u| u.to_string()).collect(),
                };
                users.insert(me.to_owned());
                users.into_iter().collect()
            })
            .collect()
    }

    /// Sends a presence frame to the room here and everywhere, except to
    /// the user's own sockets.
    fn announce(&self, room: &str, user: &str, status: &str) {
        let frame = ServerFrame::Presence { room, user, status }.encode();
        self.inner.rooms.offer_event(room, &frame, &self.inner.metrics, |c| &*c.user == user);
        self.publish(|| crate::bus::BusEvent::Ephemeral { room: Arc::from(room), frame });
    }

    pub(super) async fn run_presence(
        self,
        mut changes: mpsc::Receiver<Changed>,
        heartbeat: Duration,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                c = changes.recv() => {
                    let Some(Changed { room, user }) = c else { return };
                    let here = !self.inner.rooms.conns_of(&room, &user).is_empty();
                    let (before, after) = match self.inner.bus.presence_set(&room, &user, here).await {
                        Ok(c) => (c.before, c.after),
                        // The bus is down: this instance's view is all there is.
                        Err(_) => (!here, here),
                    };
                    if !before && after {
                        self.announce(&room, &user, "online");
                    } else if before && !after {
                        self.announce(&room, &user, "offline");
                    }
                }
                _ = tick.tick() => {
                    for room in self.inner.rooms.names() {
                        let users = self.inner.rooms.users_in(&room).into_iter().map(|u| u.to_string()).collect();
                        if let Ok(gone) = self.inner.bus.presence_refresh(&room, users).await {
                            for user in gone {
                                self.announce(&room, &user, "offline");
                            }
                        }
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }
}
