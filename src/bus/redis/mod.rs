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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, EventInterface, PubsubInterface, ReconnectPolicy, SetsInterface, Value,
};
use futures_util::future::join_all;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::wire::{self, Origin};
use super::{Bus, BusError, BusEvent, BusFuture, PresenceChange};
use crate::metrics::Metrics;

/// How the Redis bus is set up (from `REDIS_*`, see the README).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://…` (one server) or `redis-cluster://…?node=…` (sharded).
    pub url: String,
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

/// Shared by the presence scripts: whether a user's hash still has a live
/// entry, deleting the expired ones on the way.
const PRESENCE_LIB: &str = r"
local function online(key, now)
  local vals = redis.call('HGETALL', key)
  local any = false
  for i = 1, #vals, 2 do
    local e = tonumber(string.match(vals[i + 1], ' (%d+)$'))
    if e == nil or e < now then
      redis.call('HDEL', key, vals[i])
    else
      any = true
    end
  end
  return any
end
";

/// Presence keys, per room (the room in braces is the hash tag, so a room's
/// keys share one cluster slot):
/// - `{prefix}p:{room}:{user}`: hash, instance -> "1 <expiry ms>";
/// - `{prefix}ps:{room}`: set of the users online in the room.
///
/// Sets this instance's entry and returns {online before, online after};
/// expired entries of other instances are removed on the way.
const PRESENCE_SET: &str = r"
local now, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
local before = online(KEYS[1], now)
if ARGV[2] == '1' then
  redis.call('HSET', KEYS[1], ARGV[1], '1 ' .. (now + ttl))
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
end
local after = online(KEYS[1], now)
if after then
  redis.call('SADD', KEYS[2], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ttl)
else
  redis.call('SREM', KEYS[2], ARGV[5])
end
return {before and 1 or 0, after and 1 or 0}
";

/// Removes users of a room whose every entry expired; returns them.
/// ARGV: now, the prefix of the room's per-user keys.
const PRESENCE_SWEEP: &str = r"
local now = tonumber(ARGV[1])
local gone = {}
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not online(ARGV[2] .. user, now) then
    redis.call('SREM', KEYS[1], user)
    table.insert(gone, user)
  end
end
return gone
";

/// Events waiting for the hub; past this the hub is sent a Resync instead.
const INBOUND_QUEUE: usize = 65_536;
/// Events published in one pipelined round.
const PUBLISH_BATCH: usize = 256;

/// One instance's connection to the Redis bus.
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    origin: Origin,
    prefix: String,
    sharded: bool,
    timeout: Duration,
    linger: Duration,
    publisher: fred::clients::Client,
    subscriber: SubscriberClient,
    queue: mpsc::Sender<BusEvent>,
    inbound: mpsc::Sender<BusEvent>,
    inbound_rx: Mutex<Option<mpsc::Receiver<BusEvent>>>,
    /// An inbound event was dropped; a Resync is owed to the hub.
    inbound_lagged: AtomicBool,
    rooms: Mutex<HashMap<Arc<str>, RoomSub>>,
    /// Ordered (un)subscribe commands for the subscription task.
    subs: mpsc::UnboundedSender<SubCmd>,
    /// Rooms whose events this instance failed to publish, with the highest
    /// seq lost: announced as `Tail` once Redis answers again.
    lost: Mutex<HashMap<Arc<str>, i64>>,
    /// `None` when healthy, else why not.
    unhealthy: Mutex<Option<String>>,
    metrics: Metrics,
    presence_ttl: Duration,
    presence_set: fred::types::scripts::Script,
    presence_sweep: fred::types::scripts::Script,
    /// This instance's id in presence entries.
    instance: String,
    /// Cancelled by [`Bus::close`].
    stop: CancellationToken,
    tasks: TaskTracker,
}

struct RoomSub {
    /// Flips to true once Redis confirmed the subscription.
    confirmed: watch::Sender<bool>,
    /// When the last local socket left (`None` while watched).
    released: Option<Instant>,
}

enum SubCmd {
    Subscribe(Arc<str>),
    /// After a (re)connect: the control channel and every watched room.
    ResubscribeAll,
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
        let config = FredConfig::from_url(&settings.url).map_err(bad)?;
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
        let origin = *uuid::Uuid::new_v4().as_bytes();
        let inner = Arc::new(Inner {
            origin,
            instance: uuid::Uuid::from_bytes(origin).simple().to_string(),
            presence_ttl: settings.presence_ttl,
            presence_set: fred::types::scripts::Script::from_lua(format!("{PRESENCE_LIB}{PRESENCE_SET}")),
            presence_sweep: fred::types::scripts::Script::from_lua(format!("{PRESENCE_LIB}{PRESENCE_SWEEP}")),
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
        tasks.spawn(inner.clone().run_publisher(queue_rx));
        tasks.spawn(inner.clone().run_listener(messages));
        tasks.spawn(inner.clone().run_subscriptions(subs_rx));
        tasks.spawn(inner.clone().run_reconnects(reconnects));
        tasks.spawn(inner.clone().run_health());
        Ok(RedisBus { inner })
    }
}

impl Inner {
    fn room_channel(&self, room: &str) -> String {
        format!("{}r:{room}", self.prefix)
    }

    fn control_channel(&self) -> String {
        format!("{}ctl", self.prefix)
    }

    fn channel_of(&self, event: &BusEvent) -> String {
        match event.room() {
            Some(room) => self.room_channel(room),
            None => self.control_channel(),
        }
    }

    fn presence_keys(&self, room: &str, user: &str) -> (String, String) {
        (format!("{}p:{{{room}}}:{user}", self.prefix), format!("{}ps:{{{room}}}", self.prefix))
    }

    async fn set_presence(&self, room: &str, user: &str, here: bool) -> Result<PresenceChange, BusError> {
        let (p, s) = self.presence_keys(room, user);
        let args = vec![
            self.instance.clone(),
            if here { "1" } else { "0" }.to_owned(),
            crate::clock::now_ms().to_string(),
            self.presence_ttl.as_millis().to_string(),
            user.to_owned(),
        ];
        let r: Vec<i64> =
            self.presence_set.evalsha_with_reload(&self.publisher, vec![p, s], args).await.map_err(unavailable)?;
        Ok(PresenceChange { before: r.first() == Some(&1), after: r.get(1) == Some(&1) })
    }

    fn is_healthy(&self) -> bool {
        self.unhealthy.lock().unwrap_or_else(|p| p.into_inner()).is_none()
    }

    fn dropped(&self, reason: &str, n: u64) {
        self.metrics.bus_events_dropped.add(reason, n);
    }

    /// Remembers that peers may have missed `event` (a stored message or a
    /// tail): they are told to catch up once Redis answers.
    fn note_lost(&self, event: &BusEvent) {
        if let BusEvent::Message { room, seq, .. } | BusEvent::Tail { room, seq } = event {
            let mut lost = self.lost.lock().unwrap_or_else(|p| p.into_inner());
            let e = lost.entry(room.clone()).or_insert(*seq);
            *e = (*e).max(*seq);
        }
    }

    /// Hands an event to the hub; a full queue owes the hub a Resync.
    fn to_hub(&self, event: BusEvent) {
        if self.inbound_lagged.load(Ordering::Relaxed) {
            if self.inbound.try_send(BusEvent::Resync).is_err() {
                self.dropped("inbound_full", 1);
                return;
            }
            self.inbound_lagged.store(false, Ordering::Relaxed);
        }
        if self.inbound.try_send(event).is_err() {
            self.inbound_lagged.store(true, Ordering::Relaxed);
            self.dropped("inbound_full", 1);
        }
    }

    async fn publish_one(&self, event: &BusEvent) -> Result<(), fred::error::Error> {
        let Ok(payload) = wire::encode(&self.origin, event) else { return Ok(()) };
        let channel = self.channel_of(event);
        if self.sharded {
            self.publisher.spublish::<(), _, _>(channel, payload).await
        } else {
            self.publisher.publish::<(), _, _>(channel, payload).await
        }
    }

    /// Drains the publish queue, a pipelined batch at a time.
    async fn run_publisher(self: Arc<Self>, mut rx: mpsc::Receiver<BusEvent>) {
        let mut batch = Vec::with_capacity(PUBLISH_BATCH);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
                () = self.stop.cancelled() => {
                    // Closing: publish what is queued, then end.
                    rx.close();
                    rx.recv_many(&mut batch, PUBLISH_BATCH).await
                }
            };
            if n == 0 {
                return;
            }
            self.metrics.bus_publish_queue.set(rx.len() as i64);
            let results = join_all(batch.iter().map(|e| self.publish_one(e))).await;
            let mut failed = 0;
            for (event, r) in batch.iter().zip(results) {
                if r.is_err() {
                    failed += 1;
                    self.note_lost(event);
                }
            }
            if failed > 0 {
                self.dropped("publish_failed", failed);
                tracing::warn!(failed, "bus: publishing to Redis failed; peers will catch up from storage");
            }
            batch.clear();
        }
    }

    /// Announces rooms whose events were lost, once Redis answers.
    async fn announce_lost(&self) {
        let lost: Vec<(Arc<str>, i64)> = self.lost.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (room, seq) in lost {
            let tail = BusEvent::Tail { room, seq };
            if self.publish_one(&tail).await.is_err() {
                self.note_lost(&tail);
            }
        }
    }

    /// Redis messages to hub events, dropping our own echoes.
    async fn run_listener(self: Arc<Self>, mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>) {
        use tokio::sync::broadcast::error::RecvError;
        loop {
            let msg = tokio::select! {
                m = messages.recv() => m,
                () = self.stop.cancelled() => return,
            };
            let payload = match msg {
                Ok(m) => match m.value {
                    Value::Bytes(b) => b,
                    Value::String(s) => s.into_inner(),
                    _ => continue,
                },
                Err(RecvError::Lagged(n)) => {
                    self.dropped("inbound_lagged", n);
                    self.to_hub(BusEvent::Resync);
                    continue;
                }
                Err(RecvError::Closed) => return,
            };
            if wire::origin_of(&payload) == Some(&self.origin[..]) {
                continue;
            }
            match wire::decode(Bytes::clone(&payload)) {
                Ok((_, event)) => {
                    if let (BusEvent::Message { .. }, Some(at)) = (&event, wire::published_at_us(&payload)) {
                        // Wall clocks of two hosts: skewed clocks skew this
                        // (NTP keeps it well under the buckets that matter).
                        let secs = wire::now_us().saturating_sub(at) as f64 / 1e6;
                        self.metrics.bus_transit_seconds.observe(secs);
                    }
                    self.to_hub(event)
                }
                Err(e) => {
                    self.dropped("undecodable", 1);
                    tracing::debug!(error = %e, "bus: skipped an envelope");
                }
            }
        }
    }

    /// The only issuer of (un)subscribe commands, so they reach Redis in
    /// the order they were decided. Also releases lingering rooms.
    async fn run_subscriptions(self: Arc<Self>, mut rx: mpsc::UnboundedReceiver<SubCmd>) {
        let mut tick = tokio::time::interval((self.linger / 2).max(Duration::from_millis(100)));
        let mut cmds = Vec::new();
        loop {
            tokio::select! {
                n = rx.recv_many(&mut cmds, 1024) => if n == 0 { return },
                _ = tick.tick() => { self.release_lingering().await; continue; }
                () = self.stop.cancelled() => return,
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
                let wanted: Vec<Arc<str>> =
                    self.rooms.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
                let mut channels = vec![self.control_channel()];
                channels.extend(wanted.iter().map(|r| self.room_channel(r)));
                match self.subscribe(channels).await {
                    Ok(()) => {
                        self.confirm(&wanted);
                        // Events may have been missed while disconnected.
                        self.to_hub(BusEvent::Resync);
                        self.announce_lost().await;
                    }
                    Err(e) => tracing::warn!(error = %e, "bus: resubscribing failed; retrying on reconnect"),
                }
            } else if !rooms.is_empty() {
                let channels = rooms.iter().map(|r| self.room_channel(r)).collect();
                match self.subscribe(channels).await {
                    Ok(()) => self.confirm(&rooms),
                    Err(e) => tracing::debug!(error = %e, "bus: subscribe failed; retried on reconnect"),
                }
            }
        }
    }

    async fn subscribe(&self, channels: Vec<String>) -> Result<(), fred::error::Error> {
        if self.sharded {
            // One SSUBSCRIBE per channel: channels of one command must share
            // a hash slot.
            let results = join_all(channels.into_iter().map(|c| self.subscriber.ssubscribe(c))).await;
            results.into_iter().collect()
        } else {
            self.subscriber.subscribe(channels).await
        }
    }

    /// An immediate error while Redis is known to be down.
    fn fail_fast<T>(&self) -> Option<BusFuture<T>> {
        (!self.is_healthy())
            .then(|| -> BusFuture<T> { Box::pin(async { Err(BusError::Unavailable("Redis is unavailable".into())) }) })
    }

    fn has_unconfirmed(&self) -> bool {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).values().any(|s| !*s.confirmed.borrow())
    }

    fn confirm(&self, rooms: &[Arc<str>]) {
        let map = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        for r in rooms {
            if let Some(s) = map.get(r) {
                s.confirmed.send_replace(true);
            }
        }
        self.metrics.bus_rooms.set(map.len() as i64);
    }

    async fn release_lingering(&self) {
        let now = Instant::now();
        let expired: Vec<Arc<str>> = {
            let mut map = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            let expired: Vec<Arc<str>> = map
                .iter()
                .filter(|(_, s)| s.released.is_some_and(|t| now.duration_since(t) >= self.linger))
                .map(|(r, _)| r.clone())
                .collect();
            for r in &expired {
                map.remove(r);
            }
            self.metrics.bus_rooms.set(map.len() as i64);
            expired
        };
        if expired.is_empty() {
            return;
        }
        let channels: Vec<String> = expired.iter().map(|r| self.room_channel(r)).collect();
        let res = if self.sharded {
            join_all(channels.into_iter().map(|c| self.subscriber.sunsubscribe(c))).await.into_iter().collect()
        } else {
            self.subscriber.unsubscribe(channels).await
        };
        if let Err(e) = res {
            // Harmless: events of an unwatched room are ignored by the hub.
            tracing::debug!(error = %e, "bus: unsubscribe failed");
        }
    }

    /// Every (re)connect of the subscriber resubscribes everything.
    async fn run_reconnects(self: Arc<Self>, mut rx: tokio::sync::broadcast::Receiver<fred::types::config::Server>) {
        let mut first = true;
        loop {
            let r = tokio::select! {
                r = rx.recv() => r,
                () = self.stop.cancelled() => return,
            };
            if matches!(r, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                return;
            }
            if !first {
                self.metrics.bus_reconnects.inc();
                tracing::info!("bus: reconnected to Redis; resubscribing");
            }
            first = false;
            let _ = self.subs.send(SubCmd::ResubscribeAll);
        }
    }

    /// Pings Redis every second. Unhealthy: not ready, and the hub polls
    /// storage. Healthy again: resync, and announce what was lost.
    async fn run_health(self: Arc<Self>) {
        let period = Duration::from_secs(1).min(self.timeout);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut stale_unconfirmed = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.stop.cancelled() => return,
            }
            let ping = tokio::time::timeout(self.timeout, self.publisher.ping::<()>(None)).await;
            let problem = match ping {
                Ok(Ok(())) if self.subscriber.is_connected() => None,
                Ok(Ok(())) => Some("Redis subscriber connection is down".to_owned()),
                Ok(Err(e)) => Some(format!("Redis unreachable: {}", e.kind().to_str())),
                Err(_) => Some(format!("Redis did not answer within {} ms", self.timeout.as_millis())),
            };
            let was_healthy = {
                let mut u = self.unhealthy.lock().unwrap_or_else(|p| p.into_inner());
                let was = u.is_none();
                *u = problem.clone();
                was
            };
            self.metrics.bus_up.set(problem.is_none() as i64);
            match (was_healthy, problem) {
                (true, Some(p)) => tracing::warn!(problem = %p, "bus: Redis unhealthy; delivering from storage"),
                (false, None) => {
                    tracing::info!("bus: Redis healthy");
                    // Subscriptions asked for while it did not answer may
                    // have failed without a reconnect to redo them (a paused
                    // Redis keeps its connections): redo them all, then
                    // resync and announce what was lost.
                    let _ = self.subs.send(SubCmd::ResubscribeAll);
                }
                (false, Some(_)) => self.to_hub(BusEvent::Resync),
                (true, None) => {
                    // A subscription that failed while Redis was healthy
                    // (still unconfirmed a tick later) is retried.
                    let unconfirmed = self.has_unconfirmed();
                    if unconfirmed && stale_unconfirmed {
                        let _ = self.subs.send(SubCmd::ResubscribeAll);
                    }
                    stale_unconfirmed = unconfirmed;
                    if !self.lost.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
                        self.announce_lost().await;
                    }
                }
            }
        }
    }
}

fn unavailable(e: fred::error::Error) -> BusError {
    BusError::Unavailable(e.to_string())
}

impl Bus for RedisBus {
    fn presence_set(&self, room: &str, user: &str, here: bool) -> BusFuture<PresenceChange> {
        if let Some(down) = self.inner.fail_fast() {
            return down;
        }
        let (inner, room, user) = (self.inner.clone(), room.to_owned(), user.to_owned());
        Box::pin(async move { inner.set_presence(&room, &user, here).await })
    }

    fn presence_of(&self, room: &str) -> BusFuture<Vec<String>> {
        // On the join path: a Redis known to be down must not delay joins
        // by a command timeout.
        if let Some(down) = self.inner.fail_fast() {
            return down;
        }
        let inner = self.inner.clone();
        let (_, key) = inner.presence_keys(room, "");
        Box::pin(async move { inner.publisher.smembers::<Vec<String>, _>(key).await.map_err(unavailable) })
    }

    fn presence_refresh(&self, room: &str, users: Vec<String>) -> BusFuture<Vec<String>> {
        if let Some(down) = self.inner.fail_fast() {
            return down;
        }
        let (inner, room) = (self.inner.clone(), room.to_owned());
        Box::pin(async move {
            let refreshed = join_all(users.iter().map(|u| inner.set_presence(&room, u, true))).await;
            if let Some(Err(e)) = refreshed.into_iter().find(Result::is_err) {
                return Err(e);
            }
            let (_, set) = inner.presence_keys(&room, "");
            let user_prefix = format!("{}p:{{{room}}}:", inner.prefix);
            inner
                .presence_sweep
                .evalsha_with_reload(&inner.publisher, vec![set], vec![crate::clock::now_ms().to_string(), user_prefix])
                .await
                .map_err(unavailable)
        })
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
        let inner = &self.inner;
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

    fn unwatch_room(&self, room: &str) {
        if let Some(s) = self.inner.rooms.lock().unwrap_or_else(|p| p.into_inner()).get_mut(room) {
            s.released = Some(Instant::now());
        }
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
