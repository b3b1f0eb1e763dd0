//! What crosses instances: the hub's side of the bus.
//!
//! Outbound, every event is applied here first and then published for the
//! other instances (built only when some other instance may listen: this is
//! on the delivery path of every message). Inbound, the listener applies
//! what other instances published: messages go through the room's
//! sequencer, control events close or unsubscribe local sockets, and a
//! `Resync` or `Tail` catches rooms up from storage.

use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Hub, Outbound};
use crate::bus::BusEvent;
use crate::protocol::close;

impl Hub {
    /// Fans a stored message out here and publishes it to other instances.
    pub fn deliver_local_commit(&self, room: &str, seq: i64, frame: Utf8Bytes) {
        self.note_seq(room, seq);
        self.publish(|| BusEvent::Message { room: Arc::from(room), seq, frame: frame.clone() });
        self.deliver(room, seq, frame);
    }

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
        for c in self.room_conns_of(room, user) {
            // Unsubscribe first: no message of the room reaches it after this.
            self.unsubscribe(&c, room);
            c.offer(Outbound::Left(Arc::new((room_arc.clone(), left_reason))), &self.inner.metrics);
        }
        self.apply_room_removed(&room_arc, user, reason);
    }

    /// Closes the sockets of one session (logout) with 4001, everywhere.
    pub fn session_revoked(&self, user: &str, session: &str) {
        self.publish(|| BusEvent::SessionRevoked { user: user.to_owned(), session: session.to_owned() });
        self.apply_session_revoked(user, session);
    }

    fn apply_session_revoked(&self, user: &str, session: &str) {
        for c in self.user_conns(user) {
            if &*c.session() == session {
                c.close(close::AUTH, "session revoked");
            }
        }
    }

    /// Closes every socket of a user (ban: 4003, erasure: 4001, an
    /// operator's disconnect), everywhere; returns how many were here.
    pub fn close_user(&self, user: &str, code: u16, reason: &str) -> usize {
        self.publish(|| BusEvent::UserClosed { user: user.to_owned(), code, reason: reason.to_owned() });
        let conns = self.user_conns(user);
        for c in &conns {
            c.close(code, reason);
        }
        conns.len()
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
            match event {
                BusEvent::Message { room, seq, frame } => self.deliver(&room, seq, frame),
                BusEvent::Ephemeral { room, frame } => self.fan_out_event(&room, &frame, None),
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
                BusEvent::SessionRevoked { user, session } => self.apply_session_revoked(&user, &session),
                BusEvent::UserClosed { user, code, reason } => {
                    for c in self.user_conns(&user) {
                        c.close(code, &reason);
                    }
                }
                BusEvent::RoomAdded { room, user, name, role, last_seq } => {
                    self.apply_room_added(&room, &user, &name, &role, last_seq);
                }
                BusEvent::RoomUpdated { room, name } => self.apply_room_updated(&room, &name),
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
        for room in self.local_rooms() {
            if self.inner.stop.is_cancelled() {
                return;
            }
            self.catch_up(&room, None).await;
        }
    }
}
