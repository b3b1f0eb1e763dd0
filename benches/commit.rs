//! Group-commit throughput: how many messages per second the hub persists
//! from many concurrent senders, without sockets in the way (the load client
//! would be the bottleneck first on a 2-core machine).
//!
//! cargo bench --bench commit -- [DATABASE_URL] [SENDERS] [ROOMS] [SECONDS]
//!
//! Each sender submits one message at a time and waits for its outcome
//! (like a client waiting for `ack`), to a random room it belongs to.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chatgw::bus::local::LocalBus;
use chatgw::db::{AppendOutcome, NewKind, NewMessage, Store};
use chatgw::hub::{Hub, HubSettings};
use chatgw::metrics::Metrics;
use chatgw::protocol;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let url = args.first().cloned().unwrap_or_else(|| "sqlite:///tmp/chatgw-commit-bench.db".into());
    let senders: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let rooms: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(100);
    let secs: u64 = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(10);
    if url.starts_with("sqlite://") {
        let path = url.trim_start_matches("sqlite://");
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
    }
    let store = Store::connect(&url, 16).await?;
    store.migrate().await?;
    let hash = "x";
    let users = store.seed_users(&uuid::Uuid::new_v4().simple().to_string()[..8], senders, hash).await?;
    let per_room = senders.div_ceil(rooms);
    let members: Vec<Vec<String>> =
        (0..rooms).map(|r| (0..per_room).map(|k| users[(r * per_room + k) % senders].id.clone()).collect()).collect();
    let room_ids = store.seed_rooms("bench", &members).await?;
    let settings = HubSettings {
        instance: "bench:0".into(),
        limits: protocol::Limits {
            max_frame_bytes: 65536,
            max_body_bytes: 4096,
            send_per_sec: 1,
            send_burst: 1,
            events_per_sec: 1,
            events_burst: 1,
            max_rooms: 1000,
            max_sync_rooms: 1000,
            edit_window_ms: 900_000,
        },
        heartbeat: Duration::from_secs(25),
        idle_timeout: Duration::from_secs(60),
        outbound_queue: 1024,
        abuse_strikes: 50,
        max_connections: 1,
        max_sockets_per_user: 32,
        drain_reconnect_max_ms: 1,
        presence_heartbeat: Duration::from_secs(10),
        tail_check: None,
        user_stream_interval: Duration::from_secs(1),
        committers: std::env::var("COMMITTERS")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(if url.starts_with("postgres") { 2 } else { 1 }),
        push_wake: None,
    };
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let hub = Hub::start(store.clone(), Arc::new(LocalBus::new()), settings, Metrics::new(), stop.clone(), &tasks);
    let stored = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let start = Instant::now();
    let mut handles = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (hub, stored, running) = (hub.clone(), stored.clone(), running.clone());
        let room = room_ids[(i / per_room) % rooms].clone();
        let user = u.id.clone();
        handles.push(tokio::spawn(async move {
            let mut n = 0u64;
            while running.load(Ordering::Relaxed) {
                let msg = NewMessage {
                    room_id: room.clone(),
                    sender_id: user.clone(),
                    client_msg_id: format!("m{n}"),
                    body: "benchmark message body of a typical chat length".into(),
                    sent_at: 0,
                    kind: NewKind::Message,
                };
                n += 1;
                match hub.submit(msg).await.await {
                    Ok(Ok(AppendOutcome::Stored(_))) => {
                        stored.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected outcome {other:?}"),
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(secs)).await;
    running.store(false, Ordering::Relaxed);
    for h in handles {
        h.await?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let n = stored.load(Ordering::Relaxed);
    let mut total = 0;
    for r in &room_ids {
        total += store.last_seq(r).await?.unwrap_or(0);
    }
    assert_eq!(total as u64, n, "every acknowledged message is stored, once");
    println!(
        "{} senders={senders} rooms={rooms}: {n} messages stored in {elapsed:.1} s = {:.0} msg/s",
        if url.starts_with("postgres") { "postgres" } else { "sqlite" },
        n as f64 / elapsed
    );
    stop.cancel();
    Ok(())
}
