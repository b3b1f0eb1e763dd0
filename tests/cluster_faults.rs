//! Cluster mode for real: gateway processes (the built binary) on one
//! PostgreSQL database and a Redis (or Redis Cluster) that the test starts,
//! kills, pauses and restarts itself; clients spread over the instances
//! that reconnect and resume like a real app. Every test ends with every
//! receiver holding every acknowledged message exactly once, in order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::chaos::{Acked, Addrs, Flow, Tally, all_acked, assert_exactly_once, receiver, sender_on, senders_done};
use crate::helpers::{Session, TestApp, TestDb, eventually, eventually_what};
use crate::procs::{
    Gateway, Nginx, RedisCluster, RedisProc, cluster_db, cluster_env, free_port, redis_cmd, signal, test_prefix,
};
use crate::ws::client::WsClient;

const GUARD: Duration = Duration::from_secs(90);

/// Instances on one database and one Redis URL.
struct Cluster {
    db: TestDb,
    /// The Redis key and channel prefix of this test.
    prefix: String,
    gws: Vec<Gateway>,
    /// A REST view of instance 0.
    app: TestApp,
    addrs: Addrs,
}

impl Cluster {
    async fn start(n: usize, redis_url: &str, tweak: &[(&str, &str)]) -> Cluster {
        let db = cluster_db().await;
        let prefix = test_prefix();
        let mut env = cluster_env(&db.url, redis_url, &prefix);
        for (k, v) in tweak {
            env.retain(|(key, _)| key != k);
            env.push(((*k).to_owned(), (*v).to_owned()));
        }
        let mut gws = Vec::new();
        for _ in 0..n {
            gws.push(Gateway::start(&env).await);
        }
        let app = gws[0].app(&db.url).await;
        let addrs = Addrs::new(gws.iter().map(|g| g.addr).collect());
        Cluster { db, prefix, gws, app, addrs }
    }

    async fn ready(&self, i: usize) -> (StatusCode, String) {
        let r = self.app.http.get(format!("http://{}/readyz", self.gws[i].addr)).send().await;
        match r {
            Ok(r) => {
                let s = r.status();
                (s, r.text().await.unwrap_or_default())
            }
            Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
        }
    }

    async fn eventually_ready(&self, i: usize, want: StatusCode) -> String {
        eventually(GUARD, || async {
            let (s, body) = self.ready(i).await;
            (s == want).then_some(body)
        })
        .await
    }
}

/// Traffic in one room: senders (each on its instance) and receivers
/// (each starting on its instance), all surviving faults.
struct Traffic {
    room: String,
    acked: Acked,
    tallies: Vec<Arc<Mutex<Tally>>>,
    senders: Vec<tokio::task::JoinHandle<()>>,
    /// Sender `k`'s flow: how far it got, how far it may go.
    flows: Vec<Flow>,
    stop: CancellationToken,
    total: usize,
}

impl Traffic {
    async fn start(c: &Cluster, senders_on: &[usize], receivers_on: &[usize], per_sender: usize) -> Traffic {
        Traffic::start_held(c, senders_on, receivers_on, per_sender, usize::MAX).await
    }

    /// Like [`Traffic::start`], each sender issuing only its first
    /// `hold_at` sends until [`Traffic::release`] (or a pause lets a few
    /// more go): the traffic is still open when the test's faults come,
    /// however fast the machine.
    async fn start_held(
        c: &Cluster,
        senders_on: &[usize],
        receivers_on: &[usize],
        per_sender: usize,
        hold_at: usize,
    ) -> Traffic {
        let owner = c.app.register(&format!("owner{}", uuid::Uuid::new_v4().simple())).await;
        let mut users: Vec<Session> = Vec::new();
        for i in 0..senders_on.len() + receivers_on.len() {
            users.push(c.app.register(&format!("u{i}-{}", uuid::Uuid::new_v4().simple())).await);
        }
        let members: Vec<&Session> = users.iter().collect();
        let room = c.app.create_room(&owner, "chaos", &members).await;
        let stop = CancellationToken::new();
        let mut tallies = Vec::new();
        for (k, &on) in receivers_on.iter().enumerate() {
            let t = Arc::new(Mutex::new(Tally::default()));
            tallies.push(t.clone());
            let user = &users[senders_on.len() + k];
            tokio::spawn(receiver(c.addrs.clone(), on, user.access.clone(), vec![room.clone()], t, stop.clone()));
        }
        // Receivers are in the room before the first send (they would
        // catch up by replay anyway).
        for t in &tallies {
            let t = t.clone();
            eventually(GUARD, || {
                let t = t.clone();
                async move { (t.lock().unwrap().connects > 0).then_some(()) }
            })
            .await;
        }
        let acked: Acked = Arc::default();
        let mut handles = Vec::new();
        let mut flows = Vec::new();
        for (k, &on) in senders_on.iter().enumerate() {
            let ids: Vec<String> = (0..per_sender).map(|i| format!("s{k}-m{i}")).collect();
            let flow = Flow::held_at(hold_at);
            flows.push(flow.clone());
            handles.push(tokio::spawn(sender_on(
                c.addrs.clone(),
                on,
                users[k].access.clone(),
                room.clone(),
                ids,
                Duration::from_millis(10),
                acked.clone(),
                flow,
            )));
        }
        Traffic { room, acked, tallies, senders: handles, flows, stop, total: senders_on.len() * per_sender }
    }

    async fn acked_at_least(&self, n: usize) {
        all_acked(&self.acked, n, GUARD).await;
    }

    /// Lets every sender issue all its sends.
    fn release(&self) {
        for f in &self.flows {
            f.release();
        }
    }

    /// Sender `k`'s sends issued and not acknowledged.
    fn unacked(&self, k: usize) -> usize {
        let prefix = format!("s{k}-");
        let acked = self.acked.lock().unwrap().keys().filter(|id| id.starts_with(&prefix)).count();
        self.flows[k].issued() - acked
    }

    /// Pauses instance `i` (SIGSTOP) and lets sender `k`, which is
    /// connected to it, issue a few more sends, which the paused instance
    /// cannot acknowledge: on return sends are in flight to `i`, whatever
    /// the machine's speed. Returns how many of `k`'s sends are
    /// unacknowledged. The caller signals the paused process (a pending
    /// SIGTERM, or SIGKILL) and resumes it.
    async fn pause_with_sends_in_flight(&self, c: &Cluster, i: usize, k: usize) -> usize {
        signal(c.gws[i].pid(), "STOP");
        let issued = self.flows[k].issued();
        self.flows[k].raise(5);
        let what = format!("sender {k} issuing a send to the paused instance {i}");
        eventually_what(GUARD, &what, || async { (self.flows[k].issued() > issued).then_some(()) }).await;
        self.unacked(k)
    }

    /// Everything acknowledged, every receiver holds everything exactly
    /// once, and storage holds each message once.
    async fn finish(self, c: &Cluster) -> Vec<Arc<Mutex<Tally>>> {
        self.release();
        all_acked(&self.acked, self.total, GUARD).await;
        senders_done(self.senders, GUARD).await;
        assert_exactly_once(&self.tallies, &self.room, self.total, GUARD).await;
        self.stop.cancel();
        let seqs: Vec<i64> = {
            let mut v: Vec<i64> = self.acked.lock().unwrap().values().copied().collect();
            v.sort_unstable();
            v
        };
        assert_eq!(seqs, (1..=self.total as i64).collect::<Vec<_>>(), "each send acknowledged with its own seq");
        let page = c.app.store.history(&self.room, Some(0), None, 10_000).await.unwrap();
        assert_eq!(page.messages.len(), self.total, "each message stored once");
        self.tallies
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_traffic_loses_and_duplicates_nothing() {
    let mut redis = RedisProc::start().await;
    let c = Cluster::start(2, &redis.url(), &[]).await;
    // Senders on both instances; receivers on both, most on the other one.
    let t = Traffic::start(&c, &[0, 1], &[1, 1, 0], 150).await;
    t.acked_at_least(60).await;
    redis.kill().await;
    // Sends go on while Redis is gone: stored and acknowledged.
    let before = t.acked.lock().unwrap().len();
    t.acked_at_least(before + 30).await;
    redis.restart().await;
    t.finish(&c).await;
    c.eventually_ready(0, StatusCode::OK).await;
    c.eventually_ready(1, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_is_detected_not_ready_then_recovered() {
    let redis = RedisProc::start().await;
    let c = Cluster::start(2, &redis.url(), &[("REDIS_TIMEOUT_MS", "300")]).await;
    c.eventually_ready(0, StatusCode::OK).await;
    let t = Traffic::start(&c, &[0], &[1, 1], 200).await;
    t.acked_at_least(40).await;
    redis.pause();
    // Longer than the health timeout: both instances notice and say why.
    for i in 0..2 {
        let body = c.eventually_ready(i, StatusCode::SERVICE_UNAVAILABLE).await;
        assert!(body.contains("bus"), "not ready because of the bus: {body}");
    }
    let before = t.acked.lock().unwrap().len();
    t.acked_at_least(before + 20).await;
    redis.resume();
    c.eventually_ready(0, StatusCode::OK).await;
    c.eventually_ready(1, StatusCode::OK).await;
    t.finish(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_killed_mid_traffic_clients_resume_elsewhere() {
    let redis = RedisProc::start().await;
    let mut c = Cluster::start(2, &redis.url(), &[]).await;
    // The sender and half the receivers are on the instance that dies;
    // the sender is held back so it is still sending when the kill comes.
    let t = Traffic::start_held(&c, &[1], &[1, 1, 0, 0], 200, 100).await;
    t.acked_at_least(60).await;
    let in_flight = t.pause_with_sends_in_flight(&c, 1, 0).await;
    assert!(in_flight > 0, "sends in flight at the kill");
    c.gws[1].kill().await;
    let tallies = t.finish(&c).await;
    assert!(tallies[0].lock().unwrap().connects >= 2, "the killed instance's clients reconnected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_under_traffic_loses_nothing_and_spreads_reconnects() {
    let redis = RedisProc::start().await;
    let mut c = Cluster::start(2, &redis.url(), &[]).await;
    // The senders are held back at half their sends until both restarts
    // are done: the traffic outlasts the faults however slow the restarts.
    const HOLD: usize = 200;
    let t = Traffic::start_held(&c, &[0, 1], &[0, 0, 1, 1, 0, 1], 400, HOLD).await;
    for i in 0..2 {
        // Each restart waits for some progress since the last one.
        let before = t.acked.lock().unwrap().len();
        t.acked_at_least((before + 30).min(2 * HOLD)).await;
        // Sender i is on instance i (sender 0 moves to instance 1 at the
        // first drain; sender 1 stays there until the second).
        let in_flight = t.pause_with_sends_in_flight(&c, i, i).await;
        assert!(in_flight > 0, "sends in flight at SIGTERM {i}");
        let pid = c.gws[i].pid();
        signal(pid, "TERM");
        signal(pid, "CONT");
        assert!(c.gws[i].terminate().await, "instance {i} exits cleanly on SIGTERM");
        c.gws[i].restart().await;
        c.addrs.set(i, c.gws[i].addr);
        c.eventually_ready(i, StatusCode::OK).await;
    }
    let tallies = t.finish(&c).await;
    let mut delays: Vec<u64> = tallies.iter().flat_map(|t| t.lock().unwrap().drain_delays.clone()).collect();
    assert!(delays.len() >= tallies.len(), "every receiver was drained at least once: {delays:?}");
    delays.sort_unstable();
    delays.dedup();
    assert!(delays.len() > 1, "drain spreads reconnects over random delays: {delays:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_logout_ban_and_erasure_through_one_instance_reach_the_others() {
    let redis = RedisProc::start().await;
    let c = Cluster::start(3, &redis.url(), &[]).await;
    let views = [c.gws[1].app(&c.db.url).await, c.gws[2].app(&c.db.url).await];
    let a = &c.app;
    let ann = a.register("ann").await;
    let bob = a.register("bob").await;
    let cat = a.register("cat").await;
    let dan = a.register("dan").await;
    let room = a.create_room(&ann, "ctl", &[&bob, &cat, &dan]).await;
    let sockets = |who: &Session| {
        let token = who.access.clone();
        let room = room.clone();
        let views = &views;
        async move {
            let mut v = Vec::new();
            for app in views {
                let mut s = WsClient::connect(app, &token).await;
                s.join(&room, None).await;
                v.push(s);
            }
            v
        }
    };
    let mut bobs = sockets(&bob).await;
    let mut cats = sockets(&cat).await;
    let mut dans = sockets(&dan).await;

    // Removal through A: Bob's sockets on B and C leave the room.
    let r = a.delete(&ann.access, &format!("/api/v1/rooms/{room}/members/{}", bob.user_id)).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for s in &mut bobs {
        assert_eq!(s.next_of("left").await["reason"], "removed");
    }
    // Logout through A closes Bob's sockets on B and C with 4001.
    let out = a.post(Some(&bob.access), "/api/v1/auth/logout", json!({})).await;
    assert_eq!(out.status, StatusCode::NO_CONTENT);
    for s in &mut bobs {
        assert_eq!(s.until_close().await.0, 4001);
    }
    // A ban through A closes Cat's sockets with 4003.
    let ban = a
        .send(
            a.http
                .post(a.url(&format!("/api/v1/admin/users/{}/ban", cat.user_id)))
                .bearer_auth("admin-token-0123456789-abcdefghijklmnop"),
        )
        .await;
    assert_eq!(ban.status, StatusCode::NO_CONTENT, "{}", ban.body);
    for s in &mut cats {
        assert_eq!(s.until_close().await.0, 4003);
    }
    // Erasure through A closes Dan's sockets with 4001.
    let gone = a.delete(&dan.access, "/api/v1/me").await;
    assert!(gone.status.is_success(), "{}", gone.status);
    for s in &mut dans {
        assert_eq!(s.until_close().await.0, 4001);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_means_not_ready_until_it_comes() {
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let c = Cluster::start(2, &url, &[]).await;
    let body = c.eventually_ready(0, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(body.contains("bus"), "{body}");
    let _redis = RedisProc::start_on(port).await;
    c.eventually_ready(0, StatusCode::OK).await;
    c.eventually_ready(1, StatusCode::OK).await;
    let t = Traffic::start(&c, &[0], &[1], 30).await;
    t.finish(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_uses_sharded_pubsub_per_room() {
    let cluster = RedisCluster::start(3).await;
    let prefix = test_prefix();
    let db = cluster_db().await;
    let env = cluster_env(&db.url, &cluster.url(), &prefix);
    let gws = [Gateway::start(&env).await, Gateway::start(&env).await];
    let app = gws[0].app(&db.url).await;
    let c = Cluster {
        app,
        addrs: Addrs::new(gws.iter().map(|g| g.addr).collect()),
        gws: gws.into(),
        db,
        prefix: prefix.clone(),
    };
    c.eventually_ready(0, StatusCode::OK).await;
    c.eventually_ready(1, StatusCode::OK).await;

    // Rooms until two of them live on different shards.
    let mut traffic = Vec::new();
    let mut owners = Vec::new();
    for _ in 0..30 {
        let t = Traffic::start(&c, &[0], &[1, 1], 40).await;
        let owner = cluster.owner_of(&format!("{prefix}r:{}", t.room)).await;
        if owners.contains(&owner) {
            t.stop.cancel();
            for h in &t.senders {
                h.abort();
            }
            continue;
        }
        owners.push(owner);
        traffic.push(t);
        if owners.len() == 2 {
            break;
        }
    }
    assert_eq!(owners.len(), 2, "rooms on two shards");
    for t in &traffic {
        // The receivers' instance is subscribed on the owning shard; the
        // other shards do not carry the room (they redirect or count 0).
        let channel = format!("{prefix}r:{}", t.room);
        let owner = cluster.owner_of(&channel).await;
        eventually(GUARD, || async {
            let r = redis_cmd(owner, &["PUBSUB", "SHARDNUMSUB", &channel]).await.unwrap_or_default();
            r.trim_end().ends_with(":1").then_some(())
        })
        .await;
        for n in cluster.nodes.iter().filter(|n| n.port != owner) {
            let r = redis_cmd(n.port, &["PUBSUB", "SHARDNUMSUB", &channel]).await.unwrap_or_default();
            assert!(r.starts_with("-MOVED") || r.trim_end().ends_with(":0"), "node {}: {r:?}", n.port);
        }
    }
    for t in traffic {
        t.finish(&c).await;
    }
}

/// Presence frames about `user` until (and including) one with `status`.
async fn presence_until(c: &mut WsClient, user: &str, status: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let f = c.next().await;
        if f["type"] == "presence" && f["user"] == user {
            let s = f["status"].as_str().unwrap().to_owned();
            seen.push(s.clone());
            if s == status {
                return seen;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_counts_sockets_on_every_instance() {
    let redis = RedisProc::start().await;
    let c = Cluster::start(3, &redis.url(), &[]).await;
    let views = [c.gws[1].app(&c.db.url).await, c.gws[2].app(&c.db.url).await];
    let a = &c.app;
    let (wes, xia, zed) = (a.register("wes").await, a.register("xia").await, a.register("zed").await);
    let room = a.create_room(&wes, "presence", &[&xia, &zed]).await;
    let mut w = WsClient::connect(a, &wes.access).await;
    let (_, joined) = w.join(&room, None).await;
    assert_eq!(joined["online"], json!([wes.user_id]), "alone in the room");

    // Xia's phone on B, then her laptop on C; then the phone goes, then the
    // laptop: Wes on A sees one `online` and one `offline`, nothing between.
    let mut phone = WsClient::connect(&views[0], &xia.access).await;
    phone.join(&room, None).await;
    assert_eq!(presence_until(&mut w, &xia.user_id, "online").await, ["online"]);
    let mut laptop = WsClient::connect(&views[1], &xia.access).await;
    let (_, joined) = laptop.join(&room, None).await;
    let mut online: Vec<&str> = joined["online"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    online.sort_unstable();
    let mut want = vec![wes.user_id.as_str(), xia.user_id.as_str()];
    want.sort_unstable();
    assert_eq!(online, want, "the snapshot spans instances");
    phone.close().await;
    // Zed joins on A after the phone left: Xia is still online (laptop).
    let mut z = WsClient::connect(a, &zed.access).await;
    let (_, joined) = z.join(&room, None).await;
    assert!(joined["online"].as_array().unwrap().contains(&json!(xia.user_id)), "{joined}");
    laptop.close().await;
    assert_eq!(
        presence_until(&mut w, &xia.user_id, "offline").await,
        ["offline"],
        "no offline while a socket remained"
    );
    let (_, joined) = z.join(&room, None).await;
    assert!(!joined["online"].as_array().unwrap().contains(&json!(xia.user_id)), "{joined}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instance_leaves_no_presence_ghost_beyond_the_ttl() {
    let redis = RedisProc::start().await;
    let mut c = Cluster::start(2, &redis.url(), &[("PRESENCE_TTL_SECS", "3")]).await;
    let b = c.gws[1].app(&c.db.url).await;
    let a = &c.app;
    let (wes, xia) = (a.register("wes").await, a.register("xia").await);
    let room = a.create_room(&wes, "ghosts", &[&xia]).await;
    let mut w = WsClient::connect(a, &wes.access).await;
    w.join(&room, None).await;
    let mut x = WsClient::connect(&b, &xia.access).await;
    x.join(&room, None).await;
    assert_eq!(presence_until(&mut w, &xia.user_id, "online").await, ["online"]);
    // SIGKILL: B never says goodbye. A's sweep expires B's entries.
    c.gws[1].kill().await;
    drop(x);
    assert_eq!(presence_until(&mut w, &xia.user_id, "offline").await, ["offline"]);
    let (_, joined) = w.join(&room, None).await;
    assert_eq!(joined["online"], json!([wes.user_id]), "no ghost in the snapshot");
}

/// SIGTERM on an idle gateway ends it at once: every background task
/// (committers, bus, presence, housekeeping) stops on the shutdown signal,
/// so nothing waits out `SHUTDOWN_TIMEOUT_SECS` (set far beyond the guard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_an_idle_gateway_exits_without_waiting_out_a_timeout() {
    let redis = RedisProc::start().await;
    let db = cluster_db().await;
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/idle.db", dir.path().display());
    for (db_url, redis_url) in [(sqlite.as_str(), None), (db.url.as_str(), Some(redis.url()))] {
        let mut env = cluster_env(db_url, "", &test_prefix());
        env.retain(|(k, _)| k != "REDIS_URL" && k != "SHUTDOWN_TIMEOUT_SECS");
        env.push(("SHUTDOWN_TIMEOUT_SECS".into(), "600".into()));
        if let Some(r) = &redis_url {
            env.push(("REDIS_URL".into(), r.clone()));
        }
        let mut g = Gateway::start(&env).await;
        let app = g.app(db_url).await;
        eventually(GUARD, || async {
            let r = app.http.get(app.url("/readyz")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(())
        })
        .await;
        let clean = tokio::time::timeout(Duration::from_secs(60), g.terminate()).await;
        assert_eq!(clean, Ok(true), "clean exit on SIGTERM, promptly ({redis_url:?})");
    }
}

/// The shipped nginx configuration in front of two instances: REST and the
/// WebSocket upgrade pass through it, sockets land on both instances, and
/// a message sent through nginx reaches sockets wherever they are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_in_front_of_two_instances() {
    let redis = RedisProc::start().await;
    let c = Cluster::start(2, &redis.url(), &[]).await;
    let nginx = Nginx::start(&[c.gws[0].addr, c.gws[1].addr]).await;
    let front = TestApp::remote(nginx.addr(), &c.db.url, crate::helpers::Db::Postgres).await;
    let ready = front.http.get(front.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let ann = front.register("ann").await;
    let mut others = Vec::new();
    for i in 0..4 {
        others.push(front.register(&format!("u{i}")).await);
    }
    let members: Vec<&Session> = others.iter().collect();
    let room = front.create_room(&ann, "proxied", &members).await;

    let mut sender = WsClient::connect(&front, &ann.access).await;
    sender.join(&room, None).await;
    let mut receivers = Vec::new();
    for u in &others {
        let mut r = WsClient::connect(&front, &u.access).await;
        r.join(&room, None).await;
        receivers.push(r);
    }
    // least_conn spread the sockets over both instances: both subscribed
    // to the room's channel.
    let channel = format!("{}r:{room}", c.prefix);
    eventually(GUARD, || async {
        let r = redis_cmd(redis.port, &["PUBSUB", "NUMSUB", &channel]).await.unwrap_or_default();
        r.trim_end().ends_with(":2").then_some(())
    })
    .await;
    for i in 0..10 {
        sender.send_msg(&room, &format!("m{i}"), "through nginx").await;
    }
    for r in &mut receivers {
        let mut seqs = Vec::new();
        while seqs.len() < 10 {
            let f = r.next_of("message").await;
            seqs.push(f["seq"].as_i64().unwrap());
        }
        // The barrier: a re-delivery queued before the pong is seen.
        let late: Vec<i64> = r
            .drain_until_pong()
            .await
            .iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
        assert_eq!(late, Vec::<i64>::new(), "nothing after the last new seq");
    }
}
