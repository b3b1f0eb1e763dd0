//! The per-user stream: what every socket of a user hears without joining
//! anything (`room_added`, `room_removed`, `room_updated`, and `room_seq`
//! for rooms the socket has not joined), cluster-wide.
//!
//! Membership changes happen over REST on one instance; that instance
//! publishes a user-addressed control event (every instance hears the
//! control channel) and applies it to its own sockets of the user.
//!
//! `room_seq` must cost nothing per delivered message. An instance only
//! hears the messages of rooms it watches, so the *committing* instance is
//! the one that knows every room's last seq: per stored message it does one
//! map insert (room -> newest seq), and once per interval it swaps the map
//! out and publishes a single [`BusEvent::RoomSeqs`] for every room that
//! moved. Each instance keeps, for the users connected to it, which rooms
//! they belong to (loaded with one query when the user's first socket
//! connects, kept current by the membership events) and passes each moved
//! room on to those members' sockets; a socket that joined the room drops
//! it (it has the messages themselves). A busy room thus costs each socket
//! at most one frame per interval per committing instance.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Hub;
pub use super::registry::RoomSeq;
use super::registry::{Outbound, Registry};
use super::room::Rooms;
use crate::bus::BusEvent;
use crate::db::Store;
use crate::metrics::Metrics;
use crate::protocol::ServerFrame;

/// Rooms per [`BusEvent::RoomSeqs`]: keeps one envelope well below what a
/// bus publish should carry, however many rooms moved in an interval.
const SEQS_PER_EVENT: usize = 1000;

/// The instance's side of the per-user stream.
#[derive(Default)]
pub(super) struct UserStream {
    /// Rooms whose last seq moved through this instance's commits since the
    /// last tick, with the newest seq.
    moved: Mutex<HashMap<Arc<str>, i64>>,
    index: Mutex<Index>,
}

/// Memberships of the users connected here, both ways.
#[derive(Default)]
struct Index {
    users: HashMap<Arc<str>, UserRooms>,
    rooms: HashMap<Arc<str>, RoomMembers>,
}

struct UserRooms {
    /// The user's sockets here; the entry goes with the last.
    sockets: usize,
    rooms: HashSet<Arc<str>>,
    /// `Some` until the user's rooms are loaded: membership changes heard
    /// meanwhile (`true` = added), replayed over what the query returned so
    /// a change racing the query is not lost.
    pending: Option<Vec<(Arc<str>, bool)>>,
    /// A socket's task is running the load query.
    loading: bool,
}

#[derive(Default)]
struct RoomMembers {
    /// Users connected here who are members.
    users: HashSet<Arc<str>>,
    /// The last seq passed on for the room: with several committing
    /// instances, batches may arrive out of order; a lower seq is dropped.
    last_sent: i64,
}

impl Index {
    fn link(&mut self, user: &Arc<str>, room: &Arc<str>) {
        self.rooms.entry(room.clone()).or_default().users.insert(user.clone());
    }

    fn unlink(&mut self, user: &str, room: &str) {
        if let Some(m) = self.rooms.get_mut(room) {
            m.users.remove(user);
            if m.users.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// Records a membership change of a user connected here.
    fn change(&mut self, user: &str, room: &Arc<str>, added: bool) {
        let Some(key) = self.users.get_key_value(user).map(|(k, _)| k.clone()) else { return };
        let Some(u) = self.users.get_mut(user) else { return };
        let user = key;
        if let Some(p) = &mut u.pending {
            p.push((room.clone(), added));
            return;
        }
        if added {
            u.rooms.insert(room.clone());
            self.link(&user, room);
        } else {
            u.rooms.remove(room);
            self.unlink(&user, room);
        }
    }
}

impl UserStream {
    fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A socket of `user` registered here.
    pub(super) fn attach(&self, user: &Arc<str>) {
        let mut ix = self.index();
        let u = ix.users.entry(user.clone()).or_insert_with(|| UserRooms {
            sockets: 0,
            rooms: HashSet::new(),
            pending: Some(Vec::new()),
            loading: false,
        });
        u.sockets += 1;
    }

    /// A socket of `user` is gone; the user's memberships are forgotten
    /// with their last socket here.
    pub(super) fn detach(&self, user: &str) {
        let mut ix = self.index();
        let Some(u) = ix.users.get_mut(user) else { return };
        u.sockets = u.sockets.saturating_sub(1);
        if u.sockets > 0 {
            return;
        }
        let Some(u) = ix.users.remove(user) else { return };
        for room in &u.rooms {
            ix.unlink(user, room);
        }
    }

    /// Whether the caller should load the user's rooms (nobody has yet).
    fn start_load(&self, user: &str) -> bool {
        let mut ix = self.index();
        match ix.users.get_mut(user) {
            Some(u) if u.pending.is_some() && !u.loading => {
                u.loading = true;
                true
            }
            _ => false,
        }
    }

    /// The user's rooms as storage had them, then the changes heard since.
    fn loaded(&self, user: &str, rooms: Vec<String>) {
        let mut ix = self.index();
        let Some(key) = ix.users.get_key_value(user).map(|(k, _)| k.clone()) else { return };
        let Some(u) = ix.users.get_mut(user) else { return };
        let pending = u.pending.take().unwrap_or_default();
        u.loading = false;
        // Room ids are shared with the reverse index where it has them: a
        // room's members connected here hold one copy of its id, not one each.
        let mut set: HashSet<Arc<str>> = rooms
            .into_iter()
            .map(|r| ix.rooms.get_key_value(r.as_str()).map_or_else(|| Arc::from(r), |(k, _)| k.clone()))
            .collect();
        for (room, added) in pending {
            if added {
                set.insert(room);
            } else {
                set.remove(&room);
            }
        }
        for room in &set {
            ix.link(&key, room);
        }
        if let Some(u) = ix.users.get_mut(user) {
            u.rooms = set;
        }
    }

    /// The users here to tell that `room` moved to `seq` (none when an
    /// equal or newer seq was already passed on).
    fn seq_targets(&self, room: &str, seq: i64) -> Vec<Arc<str>> {
        let mut ix = self.index();
        match ix.rooms.get_mut(room) {
            Some(m) if seq > m.last_sent => {
                m.last_sent = seq;
                m.users.iter().cloned().collect()
            }
            _ => Vec::new(),
        }
    }

    fn members_here(&self, room: &str) -> Vec<Arc<str>> {
        self.index().rooms.get(room).map(|m| m.users.iter().cloned().collect()).unwrap_or_default()
    }

    /// Per stored message: remember the room's newest seq for the next
    /// tick. One map insert; nothing per recipient.
    pub(super) fn note_seq(&self, room: &str, seq: i64) {
        let mut moved = self.moved.lock().unwrap_or_else(|p| p.into_inner());
        match moved.get_mut(room) {
            Some(s) => *s = (*s).max(seq),
            None => {
                moved.insert(Arc::from(room), seq);
            }
        }
    }

    /// The rooms that moved since the last tick, with their newest seq;
    /// the map starts over empty.
    fn take_moved(&self) -> HashMap<Arc<str>, i64> {
        std::mem::take(&mut *self.moved.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Loads the rooms of a user whose socket just connected (one query,
    /// only for the user's first socket here).
    pub(super) async fn load_rooms(&self, user: &str, store: &Store) {
        if !self.start_load(user) {
            return;
        }
        let rooms = match store.member_room_ids(user).await {
            Ok(r) => r,
            Err(e) => {
                // The stream still carries membership events; only the
                // `room_seq` of rooms joined before this socket is missing.
                tracing::warn!(error = %e, "loading the user's rooms for room_seq failed");
                Vec::new()
            }
        };
        self.loaded(user, rooms);
    }

    /// A user gained a room: their sockets here hear `room_added`.
    pub(super) fn room_added(&self, ev: RoomAdded<'_>, registry: &Registry, metrics: &Metrics) {
        let RoomAdded { room, user, name, role, last_seq } = ev;
        let room_arc: Arc<str> = Arc::from(room);
        self.index().change(user, &room_arc, true);
        let frame = ServerFrame::RoomAdded { room, name, role, last_seq }.encode();
        registry.offer_to_user(user, &frame, metrics);
    }

    /// A user lost a room: their sockets here hear `room_removed` (with the
    /// member-removed event, which also makes joined sockets leave).
    pub(super) fn room_removed(
        &self,
        room: &Arc<str>,
        user: &str,
        reason: &str,
        registry: &Registry,
        metrics: &Metrics,
    ) {
        self.index().change(user, room, false);
        let frame = ServerFrame::RoomRemoved { room, reason }.encode();
        registry.offer_to_user(user, &frame, metrics);
    }

    /// A room was renamed: its members' sockets here hear `room_updated`.
    pub(super) fn room_updated(&self, room: &str, name: &str, registry: &Registry, metrics: &Metrics) {
        let users = self.members_here(room);
        if users.is_empty() {
            return;
        }
        let frame = ServerFrame::RoomUpdated { room, name }.encode();
        for user in users {
            registry.offer_to_user(&user, &frame, metrics);
        }
    }

    /// Rooms moved (here or on another instance): members connected here
    /// hear `room_seq` on the sockets that have not joined the room.
    pub(super) fn room_seqs(&self, seqs: &[(Arc<str>, i64)], registry: &Registry, rooms: &Rooms, metrics: &Metrics) {
        for (room, seq) in seqs {
            let users = self.seq_targets(room, *seq);
            if users.is_empty() {
                continue;
            }
            // Sockets subscribed to the room here have joined it (or are
            // joining: their `joined` carries the seq): skipping them here
            // spares a busy room's members a queue push and a wake-up per
            // interval each. The socket's own filter still catches a join
            // that races this.
            let joined = rooms.subscriber_ids(room);
            let item =
                Arc::new(RoomSeq { room: room.clone(), frame: ServerFrame::RoomSeq { room, last_seq: *seq }.encode() });
            for user in users {
                for c in registry.conns_of(&user) {
                    if joined.binary_search(&c.id).is_err() {
                        c.offer(Outbound::RoomSeq(item.clone()), metrics);
                    }
                }
            }
        }
    }
}

/// A `room_added` event's fields (the bus's `RoomAdded`, borrowed).
pub(super) struct RoomAdded<'a> {
    pub room: &'a str,
    pub user: &'a str,
    pub name: &'a str,
    pub role: &'a str,
    pub last_seq: i64,
}

impl Hub {
    /// Every interval: publish the rooms that moved here, in batches, and
    /// pass them to this instance's sockets.
    pub(super) async fn run_user_stream(self, interval: Duration, stop: CancellationToken) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let moved = self.inner.user_stream.take_moved();
            if moved.is_empty() {
                continue;
            }
            let seqs: Vec<(Arc<str>, i64)> = moved.into_iter().collect();
            for chunk in seqs.chunks(SEQS_PER_EVENT) {
                self.publish(|| BusEvent::RoomSeqs { seqs: chunk.to_vec() });
            }
            self.apply_room_seqs(&seqs);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rooms_of(us: &UserStream, user: &str) -> Vec<String> {
        let mut v: Vec<String> = us.index().users[user].rooms.iter().map(|r| r.to_string()).collect();
        v.sort();
        v
    }

    #[test]
    fn changes_heard_while_loading_are_replayed_over_the_loaded_rooms() {
        let us = UserStream::default();
        let u: Arc<str> = Arc::from("u");
        us.attach(&u);
        us.attach(&u);
        assert!(us.start_load("u"), "the first socket loads");
        assert!(!us.start_load("u"), "only once");
        // Heard while the query runs: r1 removed, r2 added.
        us.index().change("u", &Arc::from("r1"), false);
        us.index().change("u", &Arc::from("r2"), true);
        assert_eq!(us.seq_targets("r2", 1), Vec::<Arc<str>>::new(), "not linked before the load");
        us.loaded("u", vec!["r1".into(), "r3".into()]);
        assert_eq!(rooms_of(&us, "u"), ["r2", "r3"]);
        assert_eq!(us.seq_targets("r2", 5), vec![u.clone()]);
        assert_eq!(us.seq_targets("r1", 5), Vec::<Arc<str>>::new());
        // A seq at or below the last one passed on is dropped.
        assert_eq!(us.seq_targets("r2", 4), Vec::<Arc<str>>::new());
        assert_eq!(us.seq_targets("r2", 5), Vec::<Arc<str>>::new());
        assert_eq!(us.seq_targets("r2", 6), vec![u.clone()]);
        // After the load, changes apply at once.
        us.index().change("u", &Arc::from("r3"), false);
        assert_eq!(rooms_of(&us, "u"), ["r2"]);
        assert_eq!(us.members_here("r3"), Vec::<Arc<str>>::new());
        // Forgotten with the last socket, rooms included.
        us.detach("u");
        assert_eq!(us.members_here("r2"), vec![u.clone()]);
        us.detach("u");
        assert!(us.index().users.is_empty() && us.index().rooms.is_empty());
        // Changes for users not connected here are ignored.
        us.index().change("v", &Arc::from("r9"), true);
        assert!(us.index().rooms.is_empty());
    }
}
