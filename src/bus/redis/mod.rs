//! The Redis bus (fred): pub/sub on one Redis, sharded pub/sub
//! (SSUBSCRIBE/SPUBLISH, Redis 7) on a Redis Cluster, so a room's traffic
//! goes to the shard that owns its channel only.
//!
//! Channels: `{prefix}r:{room}` per room, `{prefix}ctl` for control events.
//! Payloads are [`super::wire`] envelopes: the pre-serialised frame plus a
//! small header, published once per message.
//!
//! Nothing on the delivery path waits on Redis: [`Bus::publish`] puts the
//! event on a bounded queue that one task drains (pipelined). What cannot
//! be queued or published is dropped and counted, and the room is noted:
//! once Redis answers again a [`BusEvent::Tail`] tells peers to fill the
//! room from storage. On the receiving side, every reconnect resubscribes
//! all watched rooms and the control channel and then asks the hub to
//! resync; while Redis is unreachable the hub is asked to resync every
//! second, so live delivery degrades to storage polling instead of
//! stopping.
//!
//! All (un)subscribe commands go through one task, in order, so a room
//! that is released and watched again can never end up unsubscribed.
//!
//! The files, lowest first (each uses only those above it):
//! - `shared.rs`: the state the tasks share ([`shared::Inner`]) and the
//!   steps they all take (channel names, handing events to the hub);
//! - `presence.rs`: the presence Lua scripts and the calls that run them;
//! - `publish.rs`: the publish queue's task, and announcing lost rooms;
//! - `listen.rs`: Redis messages to hub events;
//! - `subscribe.rs`: the ordered (un)subscribe task, watching and lingering;
//! - `health.rs`: reconnects and the health ping;
//! - this file: [`RedisBus`], its start and its [`Bus`] impl.

mod health;
mod listen;
mod presence;
mod publish;
mod shared;
mod subscribe;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config as FredConfig, EventInterface, ReconnectPolicy};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Bus, BusError, BusEvent, BusFuture, PresenceChange};
use crate::metrics::Metrics;
use shared::Inner;

/// How the Redis bus is set up (from `REDIS_*`, see the README).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://…` (one server) or `redis-cluster://…?node=…` (sharded).
    pub url: SecretString,
    /// Prefix of every channel and key, so deployments (and tests) sharing
    /// a Redis never see each other.
    pub prefix: String,
    /// Events queued for publishing before new ones are dropped.
    pub publish_queue: usize,
    /// Health check and command timeout.
    pub timeout: Duration,
    /// How long a room nobody here watches stays subscribed.
    pub linger: Duration,
    /// How long an instance's presence entries outlive its last heartbeat
    /// (an instance killed outright leaves no ghost beyond this).
    pub presence_ttl: Duration,
}

/// Events waiting for the hub; past this the hub is sent a Resync instead.
const INBOUND_QUEUE: usize = 65_536;

/// One instance's connection to the Redis bus.
pub struct RedisBus {
    inner: Arc<Inner>,
}

impl RedisBus {
    /// Creates the clients and starts connecting in the background: a Redis
    /// that is down at start-up makes the bus unhealthy, not the start fail.
    /// The bus's tasks run until [`Bus::close`], which publishes what is
    /// still queued first: the hub's last commits at shutdown still reach
    /// the other instances.
    ///
    /// # Errors
    /// The URL cannot be parsed.
    pub fn start(settings: RedisSettings, metrics: Metrics) -> Result<RedisBus, BusError> {
        let bad = |e: fred::error::Error| BusError::Unavailable(format!("REDIS_URL: {e}"));
        let config = FredConfig::from_url(settings.url.expose_secret()).map_err(bad)?;
        let sharded = config.server.is_clustered();
        let mut builder = Builder::from_config(FredConfig { fail_fast: false, ..config });
        builder
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 5_000, 2))
            .with_performance_config(|p| {
                p.default_command_timeout = settings.timeout;
                // fred's message stream is a broadcast channel: lagging
                // behind it loses events (handled: Resync), so make it deep.
                p.broadcast_channel_capacity = 16_384;
            })
            .with_connection_config(|c| {
                c.connection_timeout = settings.timeout;
                c.internal_command_timeout = settings.timeout;
                c.tcp.nodelay = Some(true);
            });
        let publisher = builder.build().map_err(bad)?;
        let subscriber = builder.build_subscriber_client().map_err(bad)?;
        let (queue, queue_rx) = mpsc::channel(settings.publish_queue.max(1));
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (subs, subs_rx) = mpsc::unbounded_channel();
        let (presence_set, presence_sweep) = presence::scripts();
        let origin = *uuid::Uuid::new_v4().as_bytes();
        let inner = Arc::new(Inner {
            origin,
            instance: uuid::Uuid::from_bytes(origin).simple().to_string(),
            presence_ttl: settings.presence_ttl,
            presence_set,
            presence_sweep,
            prefix: settings.prefix,
            sharded,
            timeout: settings.timeout,
            linger: settings.linger,
            publisher,
            subscriber,
            queue,
            inbound,
            inbound_rx: Mutex::new(Some(inbound_rx)),
            inbound_lagged: AtomicBool::new(false),
            rooms: Mutex::new(HashMap::new()),
            subs,
            lost: Mutex::new(HashMap::new()),
            unhealthy: Mutex::new(Some("connecting to Redis".into())),
            metrics,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        });
        inner.metrics.bus_up.set(0);
        // Registered before connecting, so the first connect is seen too.
        let reconnects = inner.subscriber.reconnect_rx();
        let messages = inner.subscriber.message_rx();
        // The connection tasks run until QUIT (unlimited reconnects, see
        // `close`); their handles are not needed.
        drop(inner.publisher.connect());
        drop(inner.subscriber.connect());
        let tasks = &inner.tasks;
        tasks.spawn(publish::run_publisher(inner.clone(), queue_rx));
        tasks.spawn(listen::run_listener(inner.clone(), messages));
        tasks.spawn(subscribe::run_subscriptions(inner.clone(), subs_rx));
        tasks.spawn(health::run_reconnects(inner.clone(), reconnects));
        tasks.spawn(health::run_health(inner.clone()));
        Ok(RedisBus { inner })
    }
}

impl Bus for RedisBus {
    fn presence_set(&self, room: &str, user: &str, here: bool) -> BusFuture<PresenceChange> {
        if let Some(down) = self.inner.fail_fast() {
            return down;
        }
        let (inner, room, user) = (self.inner.clone(), room.to_owned(), user.to_owned());
        Box::pin(async move { presence::set_presence(&inner, &room, &user, here).await })
    }

    fn presence_of(&self, room: &str) -> BusFuture<Vec<String>> {
        // On the join path: a Redis known to be down must not delay joins
        // by a command timeout.
        if let Some(down) = self.inner.fail_fast() {
            return down;
        }
        Box::pin(presence::members(self.inner.clone(), room.to_owned()))
    }

    fn presence_refresh(&self, room: &str, users: Vec<String>) -> BusFuture<Vec<String>> {
        if let Some(down) = self.inner.fail_fast() {
            return down;
        }
        Box::pin(presence::refresh(self.inner.clone(), room.to_owned(), users))
    }

    fn publish(&self, event: BusEvent) {
        match self.inner.queue.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(event) | mpsc::error::TrySendError::Closed(event)) => {
                self.inner.note_lost(&event);
                self.inner.dropped("publish_queue_full", 1);
            }
        }
    }

    fn events(&self) -> mpsc::Receiver<BusEvent> {
        self.inner.inbound_rx.lock().unwrap_or_else(|p| p.into_inner()).take().unwrap_or_else(|| mpsc::channel(1).1)
    }

    fn watch_room(&self, room: &str) -> BusFuture {
        subscribe::watch_room(&self.inner, room)
    }

    fn unwatch_room(&self, room: &str) {
        subscribe::unwatch_room(&self.inner, room);
    }

    fn health(&self) -> Result<(), String> {
        match &*self.inner.unhealthy.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Ok(()),
            Some(p) => Err(p.clone()),
        }
    }

    fn name(&self) -> &'static str {
        if self.inner.sharded { "redis-cluster" } else { "redis" }
    }

    fn close(&self) -> BusFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner.stop.cancel();
            inner.tasks.close();
            // The publisher flushes the queue first; commands time out on
            // their own when Redis is gone.
            inner.tasks.wait().await;
            // Best effort: a Redis that does not answer QUIT is left behind.
            let _ = tokio::time::timeout(inner.timeout, inner.publisher.quit()).await;
            let _ = tokio::time::timeout(inner.timeout, inner.subscriber.quit()).await;
            Ok(())
        })
    }
}
