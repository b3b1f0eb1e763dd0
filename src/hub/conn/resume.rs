//! Join and sync: the rooms a socket has joined, and how it catches up on
//! them (membership, subscription, replay from storage, `joined`).
//!
//! Below the dispatch, above the socket: it feeds frames and never decides
//! when the connection ends.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::acks::{error, note_db_error};
use super::socket::{Socket, SocketError};
use crate::hub::wire::message_frame;
use crate::hub::{ConnShared, Hub};
use crate::protocol::{ErrorCode, Resume, ServerFrame};

/// Messages written per replay page.
const REPLAY_PAGE: i64 = 500;

/// The rooms joined on this socket and the last seq written to it for
/// each (`i64::MAX` while the room's replay is still being written: nothing
/// live for it passes until then).
#[derive(Default)]
pub(super) struct Joined(HashMap<Arc<str>, i64>);

impl Joined {
    /// The last seq written of `room`, if it is joined. (Inlined, like
    /// [`Joined::advance`]: both run once per delivery.)
    #[inline]
    pub(super) fn last_seq(&self, room: &str) -> Option<i64> {
        self.0.get(room).copied()
    }

    /// Moves `room`'s cursor (when it is joined).
    #[inline]
    pub(super) fn advance(&mut self, room: &str, seq: i64) {
        if let Some(last) = self.0.get_mut(room) {
            *last = seq;
        }
    }

    #[inline]
    pub(super) fn contains(&self, room: &str) -> bool {
        self.0.contains_key(room)
    }

    /// Forgets `room`; whether it was joined.
    pub(super) fn remove(&mut self, room: &str) -> bool {
        self.0.remove(room).is_some()
    }

    /// The joined rooms (at the end, to unsubscribe them).
    pub(super) fn rooms(&self) -> Vec<Arc<str>> {
        self.0.keys().cloned().collect()
    }

    /// Resumes rooms: one for `join`, many for `sync` (§14). The same path
    /// for both, in a constant number of storage round trips whatever the
    /// number of rooms:
    ///
    /// 1. membership of every listed room, in bulk;
    /// 2. subscribe (here and, confirmed, on the bus) to the rooms kept,
    ///    within `max_rooms`; until a room's replay is written nothing live
    ///    for it passes (its entry is `i64::MAX`);
    /// 3. seq range, epoch and read marker of those rooms, in bulk, read
    ///    after the subscriptions so nothing falls between replay and live;
    /// 4. the cluster's presence snapshot of those rooms, in bulk;
    /// 5. per room, in the listed order: `reset` or `history_gone` when
    ///    due, the replay, `joined`; or an `error` for that room alone.
    ///
    /// Frames are fed and flushed per replay page; the caller flushes the
    /// rest. `id` goes on the per-room answers of a `join`; a `sync` passes
    /// none (its `synced` carries it). Returns (joined, failed). Over 120
    /// lines: the five steps share the `failed` list and read best in one
    /// place, in order.
    ///
    /// # Errors
    /// A write failed or a replay could not read storage: the socket is
    /// left mid-answer and must end.
    pub(super) async fn resume(
        &mut self,
        hub: &Hub,
        shared: &Arc<ConnShared>,
        socket: &mut Socket,
        id: Option<&RawValue>,
        entries: &[Resume],
    ) -> Result<(u64, u64), SocketError> {
        let user = shared.user.clone();
        let store = hub.store().clone();
        let metrics = hub.metrics();
        let names: Vec<&str> = entries.iter().map(|e| e.room.as_str()).collect();
        let mut failed: Vec<Option<(ErrorCode, String)>> = vec![None; entries.len()];
        let unavailable = || (ErrorCode::Unavailable, "storage temporarily unavailable; retry".to_owned());

        // 1. Membership, and the per-socket room cap in the listed order.
        match store.member_rooms(&user, &names).await {
            Ok(members) => {
                let max_rooms = hub.settings().limits.max_rooms;
                let mut count = self.0.len();
                for (i, e) in entries.iter().enumerate() {
                    if !members.contains(&e.room) {
                        failed[i] = Some((ErrorCode::Forbidden, "not a member of this room".into()));
                    } else if !self.0.contains_key(e.room.as_str()) {
                        if count >= max_rooms {
                            let msg =
                                format!("this socket has joined {max_rooms} rooms (limits.max_rooms); leave one first");
                            failed[i] = Some((ErrorCode::LimitExceeded, msg));
                        } else {
                            count += 1;
                        }
                    }
                }
            }
            Err(e) => {
                note_db_error(metrics, &e);
                failed.iter_mut().for_each(|f| *f = Some(unavailable()));
            }
        }

        // 2. Subscribe to what is left.
        let kept: Vec<usize> = (0..entries.len()).filter(|&i| failed[i].is_none()).collect();
        let mut watches = Vec::with_capacity(kept.len());
        for &i in &kept {
            let room: Arc<str> = Arc::from(names[i]);
            watches.push(hub.subscribe(shared, &room));
            self.0.insert(room, i64::MAX);
        }
        for res in futures_util::future::join_all(watches).await {
            if let Err(e) = res {
                // The bus is down: storage is read anyway, and the hub
                // catches the room up once the bus is back (resync).
                tracing::debug!(error = %e, "joining without a confirmed bus subscription");
            }
        }

        // 3. Where each room stands, after the subscriptions.
        let kept_names: Vec<&str> = kept.iter().map(|&i| names[i]).collect();
        let states = match store.resume_states(&user, &kept_names).await {
            Ok(s) => s,
            Err(e) => {
                note_db_error(metrics, &e);
                for &i in &kept {
                    failed[i] = Some(unavailable());
                }
                HashMap::new()
            }
        };
        let mut ok: Vec<usize> = Vec::with_capacity(kept.len());
        for &i in &kept {
            match states.get(names[i]) {
                Some(st) => {
                    hub.seed_room(names[i], st.last_seq);
                    ok.push(i);
                }
                None => {
                    self.0.remove(names[i]);
                    hub.unsubscribe(shared, names[i]);
                    // Deleted since the membership check: as for any room
                    // the user cannot see (§6).
                    if failed[i].is_none() {
                        failed[i] = Some((ErrorCode::Forbidden, "not a member of this room".into()));
                    }
                }
            }
        }

        // 4. Presence, one bulk look-up.
        let ok_names: Vec<&str> = ok.iter().map(|&i| names[i]).collect();
        let mut online = hub.presence_snapshots(&ok_names, &user).await.into_iter();

        // 5. The answers, in the listed order.
        let (mut joined, mut refused) = (0, 0);
        for (i, e) in entries.iter().enumerate() {
            if let Some((code, msg)) = &failed[i] {
                refused += 1;
                let f = error(metrics, id, *code, msg, Some(&e.room), None);
                socket.feed(f).await?;
                continue;
            }
            let Some(st) = states.get(&e.room) else { continue };
            let room: Arc<str> = Arc::from(e.room.as_str());
            let mut replayed = 0;
            let reset = if e.epoch.as_deref().is_some_and(|ep| ep != st.epoch) {
                Some("epoch")
            } else if e.since_seq.is_some_and(|s| s > st.last_seq) {
                Some("ahead")
            } else {
                None
            };
            if let Some(reason) = reset {
                let f = ServerFrame::Reset { room: &room, reason, epoch: &st.epoch, last_seq: st.last_seq }.encode();
                socket.feed(f).await?;
            } else if let Some(since) = e.since_seq.filter(|s| *s < st.last_seq) {
                if since + 1 < st.first_seq {
                    let f =
                        ServerFrame::HistoryGone { room: &room, since_seq: since, oldest_seq: st.first_seq }.encode();
                    socket.feed(f).await?;
                }
                replayed = replay(hub, socket, &room, since, Some(st.last_seq + 1)).await?;
            }
            self.0.insert(room, st.last_seq);
            let online = online.next().unwrap_or_default();
            let f = ServerFrame::Joined {
                id,
                room: &e.room,
                last_seq: st.last_seq,
                replayed,
                online: &online,
                epoch: &st.epoch,
                read_seq: st.read_seq,
            }
            .encode();
            socket.feed(f).await?;
            joined += 1;
        }
        Ok((joined, refused))
    }
}

/// Feeds stored messages with `after < seq < until` to the socket, in
/// pages (each page but the last flushed). Returns how many were written.
///
/// # Errors
/// The socket's, or [`SocketError::Storage`] when a page cannot be read
/// (logged here).
pub(super) async fn replay(
    hub: &Hub,
    socket: &mut Socket,
    room: &str,
    after: i64,
    until: Option<i64>,
) -> Result<u64, SocketError> {
    let mut after = after;
    let mut n = 0;
    loop {
        let page = match hub.store().history(room, Some(after), until, REPLAY_PAGE).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "replay failed");
                return Err(SocketError::Storage(e));
            }
        };
        for m in &page.messages {
            socket.feed_uncounted(message_frame(m)).await?;
            after = m.seq;
            n += 1;
        }
        socket.tally("message", page.messages.len() as u64);
        if !page.has_more || page.messages.is_empty() {
            return Ok(n);
        }
        socket.flush().await?;
    }
}
