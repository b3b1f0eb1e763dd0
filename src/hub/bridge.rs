//! What crosses instances: the hub's side of the bus.
//!
//! Outbound, every cluster-wide event (a member removed, a session revoked,
//! a user's sockets closed, a room added or renamed) is published for the
//! other instances and applied here; publishing is built only when some
//! other instance may listen. Inbound, the listener applies what other
//! instances published: messages enter the delivery path at
//! [`Hub::fan_out`] (see [`super::delivery`]), control events go to the
//! subsystem they concern (the registry's sockets, the per-user stream),
//! and a `Resync` or `Tail` catches rooms up from storage.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Hub;
use super::registry::Outbound;
use super::user_stream::RoomAdded;
use crate::bus::BusEvent;
use crate::protocol::close;

impl Hub {
    /// A user lost a room: their sockets leave it and hear `room_removed`,
    /// here and everywhere. `reason`: `removed`, `left` or `room_deleted`.
    pub fn member_removed(&self, room: &str, user: &str, reason: &'static str) {
        self.publish(|| BusEvent::MemberRemoved {
            room: Arc::from(room),
            user: user.to_owned(),
            reason: reason.to_owned(),
        });
        self.apply_member_removed(room, user, reason);
    }

    fn apply_member_removed(&self, room: &str, user: &str, reason: &'static str) {
        let room_arc: Arc<str> = Arc::from(room);
        // The `left` frame keeps its 1.0 reasons: leaving over REST is
        // `removed` there; `room_removed` tells `left` apart.
        let left_reason = if reason == "left" { "removed" } else { reason };
        let inner = &self.inner;
        for c in inner.rooms.conns_of(room, user) {
            // Unsubscribe first: no message of the room reaches it after this.
            self.unsubscribe(&c, room);
            c.offer(Outbound::Left(Arc::new((room_arc.clone(), left_reason))), &inner.metrics);
        }
        inner.user_stream.room_removed(&room_arc, user, reason, &inner.registry, &inner.metrics);
    }

    /// Closes the sockets of one session (logout) with 4001, everywhere.
    pub fn session_revoked(&self, user: &str, session: &str) {
        self.publish(|| BusEvent::SessionRevoked { user: user.to_owned(), session: session.to_owned() });
        self.inner.registry.close_session(user, session, close::AUTH, "session revoked");
    }

    /// Closes every socket of a user (ban: 4003, erasure: 4001, an
    /// operator's disconnect), everywhere; returns how many were here.
    pub fn close_user(&self, user: &str, code: u16, reason: &str) -> usize {
        self.publish(|| BusEvent::UserClosed { user: user.to_owned(), code, reason: reason.to_owned() });
        self.inner.registry.close_user(user, code, reason)
    }

    /// A user gained a room: every socket of theirs hears `room_added`, here
    /// and on every instance.
    pub fn room_added(&self, room: &str, user: &str, name: &str, role: &str, last_seq: i64) {
        self.publish(|| BusEvent::RoomAdded {
            room: Arc::from(room),
            user: user.to_owned(),
            name: name.to_owned(),
            role: role.to_owned(),
            last_seq,
        });
        let inner = &self.inner;
        let ev = RoomAdded { room, user, name, role, last_seq };
        inner.user_stream.room_added(ev, &inner.registry, &inner.metrics);
    }

    /// A room was renamed: its members' sockets hear `room_updated`, here and
    /// on every instance.
    pub fn room_renamed(&self, room: &str, name: &str) {
        self.publish(|| BusEvent::RoomUpdated { room: Arc::from(room), name: name.to_owned() });
        self.inner.user_stream.room_updated(room, name, &self.inner.registry, &self.inner.metrics);
    }

    /// Rooms moved (here or on another instance): members connected here
    /// hear `room_seq` on the sockets that have not joined the room.
    pub(super) fn apply_room_seqs(&self, seqs: &[(Arc<str>, i64)]) {
        let inner = &self.inner;
        inner.user_stream.room_seqs(seqs, &inner.registry, &inner.rooms, &inner.metrics);
    }

    /// Publishes to other instances; the event is only built when some
    /// other instance may listen.
    pub(super) fn publish(&self, event: impl FnOnce() -> BusEvent) {
        if self.inner.bus.has_peers() {
            self.inner.bus.publish(event());
        }
    }

    pub(super) async fn run_bus_listener(self, mut events: mpsc::Receiver<BusEvent>, stop: CancellationToken) {
        loop {
            let event = tokio::select! {
                e = events.recv() => match e { Some(e) => e, None => return },
                () = stop.cancelled() => return,
            };
            let inner = &self.inner;
            match event {
                BusEvent::Message { room, seq, frame } => {
                    self.fan_out(&room, seq, frame);
                }
                BusEvent::Ephemeral { room, frame } => {
                    inner.rooms.offer_event(&room, &frame, &inner.metrics, |_| false)
                }
                BusEvent::Tail { room, seq } => {
                    let hub = self.clone();
                    self.spawn_task(async move {
                        hub.catch_up(&room, Some(seq)).await;
                    });
                }
                BusEvent::MemberRemoved { room, user, reason } => {
                    let reason = match reason.as_str() {
                        "room_deleted" => "room_deleted",
                        "left" => "left",
                        _ => "removed",
                    };
                    self.apply_member_removed(&room, &user, reason);
                }
                BusEvent::SessionRevoked { user, session } => {
                    inner.registry.close_session(&user, &session, close::AUTH, "session revoked");
                }
                BusEvent::UserClosed { user, code, reason } => {
                    inner.registry.close_user(&user, code, &reason);
                }
                BusEvent::RoomAdded { room, user, name, role, last_seq } => {
                    let ev = RoomAdded { room: &room, user: &user, name: &name, role: &role, last_seq };
                    inner.user_stream.room_added(ev, &inner.registry, &inner.metrics);
                }
                BusEvent::RoomUpdated { room, name } => {
                    inner.user_stream.room_updated(&room, &name, &inner.registry, &inner.metrics);
                }
                BusEvent::RoomSeqs { seqs } => self.apply_room_seqs(&seqs),
                BusEvent::ConnectionsQuery { id, user } => self.answer_connections_query(id, &user),
                BusEvent::ConnectionsReply { id, instance, json } => self.take_connections_reply(id, instance, json),
                BusEvent::Resync => self.resync().await,
            }
        }
    }

    /// After the bus lost events: deliver whatever storage has beyond each
    /// room's last delivered seq.
    async fn resync(&self) {
        self.inner.metrics.hub_resyncs.inc();
        for room in self.inner.rooms.names() {
            if self.inner.stop.is_cancelled() {
                return;
            }
            self.catch_up(&room, None).await;
        }
    }
}
