//! The operators' live view of the hub: this instance's numbers, and a
//! user's connections on every instance (asked over the bus's control
//! channel, answered by each instance for its own sockets).
//!
//! Nothing here is on the delivery path: it walks the maps when asked
//! (an admin request, a scrape), so the hot path keeps no extra counters.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;

use super::Hub;
use crate::bus::BusEvent;

/// How long a cluster-wide query waits for other instances' answers. An
/// instance that has not answered by then is left out (and the answer
/// lists who did).
pub const QUERY_WINDOW: Duration = Duration::from_millis(1000);

/// This instance's hub, counted when asked.
#[derive(Debug, Serialize, ToSchema)]
pub struct HubStats {
    /// Open sockets.
    pub connections: usize,
    /// `MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// Distinct users with a socket here.
    pub users: usize,
    /// Rooms with at least one local subscriber.
    pub rooms: usize,
    /// (room, user) pairs online through this instance.
    pub presence_entries: usize,
    /// Frames queued to sockets and not yet written, over all sockets.
    pub outbound_queued: usize,
    /// The deepest single socket queue.
    pub outbound_deepest: usize,
    /// Sends waiting for the committer.
    pub commit_queue: usize,
}

/// One live socket, as an operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConnectionInfo {
    /// The instance holding it.
    pub instance: String,
    /// Its id on that instance (the `conn_id` of its log lines).
    pub conn_id: u64,
    pub session_id: String,
    /// Unix milliseconds.
    pub connected_at: i64,
    /// Rooms it has joined.
    pub rooms: Vec<String>,
    /// Frames queued to it and not yet written.
    pub queued: usize,
}

/// A user's connections across the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserConnections {
    pub user_id: String,
    pub connections: Vec<ConnectionInfo>,
    /// The instances that answered (this one first).
    pub instances: Vec<String>,
}

impl Hub {
    /// This instance's name in logs, metrics answers and admin views.
    pub fn instance(&self) -> &str {
        &self.inner.settings.instance
    }

    /// Counts over every socket and room here: O(sockets + subscriptions).
    pub fn stats(&self) -> HubStats {
        let reg = &self.inner.registry;
        let (mut outbound_queued, mut outbound_deepest) = (0, 0);
        for c in reg.all() {
            let q = c.queued();
            outbound_queued += q;
            outbound_deepest = outbound_deepest.max(q);
        }
        HubStats {
            connections: reg.len(),
            max_connections: self.inner.settings.max_connections,
            users: reg.user_count(),
            rooms: self.inner.rooms.len(),
            presence_entries: self.inner.rooms.names().iter().map(|r| self.inner.rooms.users_in(r).len()).sum(),
            outbound_queued,
            outbound_deepest,
            commit_queue: super::commit::QUEUE - self.inner.committer.capacity(),
        }
    }

    /// The user's sockets on this instance.
    pub fn local_connections_of(&self, user: &str) -> Vec<ConnectionInfo> {
        let conns = self.inner.registry.conns_of(user);
        if conns.is_empty() {
            return Vec::new();
        }
        let mut rooms: HashMap<u64, Vec<String>> = HashMap::new();
        for room in self.inner.rooms.names() {
            for c in self.inner.rooms.conns_of(&room, user) {
                rooms.entry(c.id).or_default().push(room.to_string());
            }
        }
        conns
            .iter()
            .map(|c| {
                let mut joined = rooms.remove(&c.id).unwrap_or_default();
                joined.sort_unstable();
                ConnectionInfo {
                    instance: self.instance().to_owned(),
                    conn_id: c.id,
                    session_id: c.session().to_string(),
                    connected_at: c.connected_at,
                    rooms: joined,
                    queued: c.queued(),
                }
            })
            .collect()
    }

    /// The user's sockets on every instance that answers within
    /// [`QUERY_WINDOW`] (at once when there is no other instance).
    pub async fn connections_of(&self, user: &str) -> UserConnections {
        let mut connections = self.local_connections_of(user);
        let mut instances = vec![self.instance().to_owned()];
        if self.inner.bus.has_peers() {
            let id: u64 = rand::random();
            let (tx, mut rx) = mpsc::unbounded_channel();
            self.inner.queries.insert(id, tx);
            self.inner.bus.publish(BusEvent::ConnectionsQuery { id, user: user.to_owned() });
            let deadline = tokio::time::sleep(QUERY_WINDOW);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    reply = rx.recv() => match reply {
                        Some((instance, json)) => {
                            match serde_json::from_str::<Vec<ConnectionInfo>>(&json) {
                                Ok(c) => connections.extend(c),
                                Err(e) => tracing::warn!(error = %e, instance = %instance, "unreadable connections reply"),
                            }
                            instances.push(instance);
                        }
                        None => break,
                    },
                    () = &mut deadline => break,
                }
            }
            self.inner.queries.remove(&id);
        }
        UserConnections { user_id: user.to_owned(), connections, instances }
    }

    /// Answers another instance's query with this instance's sockets.
    pub(super) fn answer_connections_query(&self, id: u64, user: &str) {
        let conns = self.local_connections_of(user);
        let json = serde_json::to_string(&conns).unwrap_or_else(|_| "[]".into());
        let instance = self.instance().to_owned();
        self.inner.bus.publish(BusEvent::ConnectionsReply { id, instance, json: Utf8Bytes::from(json) });
    }

    /// Hands another instance's answer to the query waiting for it here, if
    /// any (every instance sees every answer on the control channel).
    pub(super) fn take_connections_reply(&self, id: u64, instance: String, json: Utf8Bytes) {
        if let Some(tx) = self.inner.queries.get(&id) {
            let _ = tx.send((instance, json));
        }
    }
}

/// Pending cluster-wide queries, by id.
pub(super) type Queries = Arc<dashmap::DashMap<u64, mpsc::UnboundedSender<(String, Utf8Bytes)>>>;
