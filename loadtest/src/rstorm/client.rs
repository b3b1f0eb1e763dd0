//! One client of the reconnect storm, through the run's phases: connect
//! and sync from 0, live until the storm, close at the signal, resume
//! every room with one `sync`, and hold its socket until every client is
//! done. Each step is a function below, called in order by [`client_task`].

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use super::connect::{connect, next_json, sync_frame};
use super::shared::{Held, Outcome, Phase, Shared};
use crate::client::{self, Ws};

/// Who this client is: what every step needs and none changes.
struct Me {
    sh: Arc<Shared>,
    token: String,
    src: Option<IpAddr>,
    /// Room index of the run → position in this client's rooms.
    slot: HashMap<usize, usize>,
}

impl Me {
    /// Position in this client's rooms of the room a frame names.
    fn slot_of(&self, v: &Value) -> Option<usize> {
        v["room"].as_str().and_then(|r| self.sh.room_index.get(r)).and_then(|r| self.slot.get(r)).copied()
    }
}

/// Runs client `i` (in `rooms`) through every phase the run signals on
/// `phase`, and says what it did.
pub(super) async fn client_task(
    sh: Arc<Shared>,
    i: usize,
    token: String,
    rooms: Vec<usize>,
    mut phase: watch::Receiver<Phase>,
) -> Outcome {
    let mut o = Outcome::default();
    let src = sh.source(i);
    let mut held: Vec<Held> = rooms.iter().map(|&room| Held { room, ..Default::default() }).collect();
    let slot: HashMap<usize, usize> = rooms.iter().enumerate().map(|(k, &r)| (r, k)).collect();
    let me = Me { sh, token, src, slot };
    let sh = &me.sh;

    // 1. Connect and sync from 0.
    let first = first_sync(&me, &mut held, &mut o).await;
    o.attempts = 0;
    o.pre_refusals = std::mem::take(&mut o.refusals);
    sh.connected.fetch_add(1, Ordering::Relaxed);
    let mut ws = match first {
        Ok(ws) => ws,
        Err(e) => {
            o.connect_error = Some(format!("{e:#}").chars().take(60).collect());
            return o;
        }
    };

    // 2. Live until the storm; note when every pre-storm message is here.
    live_until_storm(&me, &mut held, &mut o, &mut phase, &mut ws).await;

    // 3. Close at the signal and store what it holds.
    close(sh, ws).await;
    sh.closed.fetch_add(1, Ordering::Relaxed);
    let stored: Vec<i64> = held.iter().map(|h| h.last).collect();
    let mut received: Vec<Vec<i64>> = vec![Vec::new(); held.len()];
    let mut joined = vec![false; held.len()];
    if phase.wait_for(|p| matches!(p, Phase::Reconnect | Phase::Done)).await.is_err() {
        return o;
    }

    // 4. Reconnect and resume, until every room has answered `joined`.
    let permit = sh.permits.acquire().await;
    o.started = Some(Instant::now());
    let (result, ws_held) = match resume(&me, &mut held, &mut joined, &mut received, &mut o).await {
        Ok(ws) => (Ok(()), Some(ws)),
        Err(e) => (Err(e), None),
    };
    o.synced = result.is_ok().then(Instant::now);
    drop(permit);
    sh.resumed.fetch_add(1, Ordering::Relaxed);
    match result {
        Ok(()) if joined.iter().all(|j| *j) => o.resumed = true,
        Ok(()) => o.resume_error = Some("rooms refused".into()),
        Err(e) => o.resume_error = Some(format!("{e:#}").chars().take(60).collect()),
    }
    o.rooms = held
        .iter()
        .enumerate()
        .map(|(k, h)| (h.room, stored[k], std::mem::take(&mut received[k]), joined[k]))
        .collect();

    // Hold the socket (answering pings) until every client is done.
    if let Some(ws) = ws_held {
        hold_until_done(&me, &mut o, &mut phase, ws).await;
    }
    o
}

/// Step 1: connects (one of `--concurrency` handshakes in flight) and syncs
/// every room from 0, reading until `synced`.
async fn first_sync(me: &Me, held: &mut [Held], o: &mut Outcome) -> anyhow::Result<Ws> {
    let _permit = me.sh.permits.acquire().await?;
    let mut ws = connect(&me.sh, &me.token, me.src, o).await?;
    client::send(&mut ws, &sync_frame(&me.sh, 1, held)).await?;
    loop {
        let v = next_json(&mut ws, me.sh.frame_timeout).await?;
        match v["type"].as_str() {
            Some("message") => live_message(me, held, &v, o),
            Some("joined") => live_joined(me, held, &v, o),
            Some("synced") if v["failed"] == 0 => break,
            Some("synced") => bail!("sync: {} rooms refused", v["failed"]),
            Some("error") => bail!("sync error {}", v["code"]),
            _ => {}
        }
    }
    Ok(ws)
}

/// Step 2: reads live frames until the storm's signal; counts the client
/// `settled` once it holds every message sent before the storm.
async fn live_until_storm(
    me: &Me,
    held: &mut [Held],
    o: &mut Outcome,
    phase: &mut watch::Receiver<Phase>,
    ws: &mut Ws,
) {
    let mut targets: Option<Arc<Vec<i64>>> = None;
    loop {
        if let Some(t) = &targets
            && !o.caught_up
            && held.iter().all(|h| h.last >= t[h.room])
        {
            o.caught_up = true;
            me.sh.settled.fetch_add(1, Ordering::Relaxed);
        }
        tokio::select! {
            changed = phase.changed() => {
                if changed.is_err() { break; }
                let p = phase.borrow_and_update().clone();
                match p {
                    Phase::Settle(t) => targets = Some(t),
                    Phase::Connect => {}
                    _ => break,
                }
            }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    let Ok(v) = serde_json::from_str::<Value>(&t) else { continue };
                    match v["type"].as_str() {
                        Some("message") => live_message(me, held, &v, o),
                        Some("joined") => live_joined(me, held, &v, o),
                        _ => {}
                    }
                }
                Some(Ok(_)) => {}
                other => {
                    // Lost before the storm: resume anyway with what it holds.
                    let what = match other { Some(Err(e)) => format!("pre-storm: {e}"), _ => "pre-storm: ended".into() };
                    *o.drops.entry(what).or_default() += 1;
                    let _ = phase.wait_for(|p| !matches!(p, Phase::Connect | Phase::Settle(_))).await;
                    break;
                }
            }
        }
    }
}

/// Step 3: closes the socket, with a close handshake or (`--abrupt`) a bare
/// TCP close.
async fn close(sh: &Shared, mut ws: Ws) {
    if sh.abrupt {
        drop(ws);
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = ws.close(None).await;
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        drop(ws);
    }
}

/// Step 4: reconnects and resumes every room not yet joined with one
/// `sync`, each room from what it now holds, until every room has answered
/// `joined` (reconnecting after a dropped socket, retrying rooms that were
/// unavailable). Returns the socket to hold.
async fn resume(
    me: &Me,
    held: &mut [Held],
    joined: &mut [bool],
    received: &mut [Vec<i64>],
    o: &mut Outcome,
) -> anyhow::Result<Ws> {
    let sh = &me.sh;
    let mut sync_id = 1u64;
    let mut room_retries = 0;
    'connection: loop {
        let mut ws = connect(sh, &me.token, me.src, o).await?;
        // Resume what is not yet joined, each room from what it now holds.
        let mut pending: Vec<Held> =
            held.iter().enumerate().filter(|(k, _)| !joined[*k]).map(|(_, h)| h.clone()).collect();
        loop {
            sync_id += 1;
            o.syncs += 1;
            client::send(&mut ws, &sync_frame(sh, sync_id, &pending)).await?;
            let mut retry_rooms = Vec::new();
            loop {
                let v = match next_json(&mut ws, sh.frame_timeout).await {
                    Ok(v) => v,
                    Err(e) => {
                        let what: String = format!("{e:#}").chars().take(40).collect();
                        *o.drops.entry(what).or_default() += 1;
                        if o.drops.values().sum::<u64>() > 5 {
                            return Err(e);
                        }
                        continue 'connection;
                    }
                };
                match (v["type"].as_str(), me.slot_of(&v)) {
                    (Some("message"), Some(k)) => {
                        let seq = v["seq"].as_i64().unwrap_or(0);
                        received[k].push(seq);
                        // As a client does: it holds up to the highest seq in order.
                        if seq == held[k].last + 1 {
                            held[k].last = seq;
                        }
                    }
                    (Some("joined"), Some(k)) => {
                        joined[k] = true;
                        if let Some(ep) = v["epoch"].as_str() {
                            held[k].epoch = Some(ep.to_owned());
                        }
                    }
                    (Some("reset"), _) => o.resets += 1,
                    (Some("history_gone"), _) => o.history_gone += 1,
                    (Some("error"), Some(k)) => {
                        let code = v["code"].as_str().unwrap_or("?").to_owned();
                        if matches!(code.as_str(), "unavailable" | "internal") {
                            retry_rooms.push(held[k].clone());
                        }
                        *o.room_errors.entry(code).or_default() += 1;
                    }
                    (Some("error"), None) => {
                        let code = v["code"].as_str().unwrap_or("?").to_owned();
                        *o.errors.entry(code.clone()).or_default() += 1;
                        if code == "rate_limited" && v["id"] == json!(sync_id) {
                            let ms = v["retry_after_ms"].as_u64().unwrap_or(100);
                            tokio::time::sleep(Duration::from_millis(ms)).await;
                            break;
                        }
                        if v["id"] == json!(sync_id) {
                            bail!("sync refused: {code}");
                        }
                    }
                    (Some("synced"), _) if v["id"] == json!(sync_id) => {
                        if retry_rooms.is_empty() {
                            return Ok(ws);
                        }
                        room_retries += 1;
                        if room_retries > 5 {
                            bail!("rooms still unavailable after 5 retries");
                        }
                        tokio::time::sleep(Duration::from_millis(200 * room_retries)).await;
                        break;
                    }
                    _ => {}
                }
            }
            pending = held.iter().enumerate().filter(|(k, _)| !joined[*k]).map(|(_, h)| h.clone()).collect();
        }
    }
}

/// After the resume: holds the socket (answering pings) until every client
/// is done; a message arriving now is a late copy, added to its room.
async fn hold_until_done(me: &Me, o: &mut Outcome, phase: &mut watch::Receiver<Phase>, mut ws: Ws) {
    loop {
        tokio::select! {
            r = phase.wait_for(|p| matches!(p, Phase::Done)) => { let _ = r; break; }
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.contains("\"message\"") {
                        // Nothing is sent after the storm: a late copy is a duplicate.
                        if let Ok(v) = serde_json::from_str::<Value>(&t)
                            && v["type"] == "message"
                            && let Some(k) = me.slot_of(&v)
                        {
                            o.rooms[k].2.push(v["seq"].as_i64().unwrap_or(0));
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
}

/// A live `message` before the storm: counts a gap or a duplicate.
fn live_message(me: &Me, held: &mut [Held], v: &Value, o: &mut Outcome) {
    let Some(k) = me.slot_of(v) else { return };
    let seq = v["seq"].as_i64().unwrap_or(0);
    let h = &mut held[k];
    if seq <= h.last {
        o.pre_dups += 1;
    } else {
        o.pre_gaps += (seq - h.last - 1) as u64;
        h.last = seq;
    }
}

/// A `joined` before the storm: what the room has beyond what the client
/// holds counts as a gap; the epoch is kept for the resume.
fn live_joined(me: &Me, held: &mut [Held], v: &Value, o: &mut Outcome) {
    let Some(k) = me.slot_of(v) else { return };
    let h = &mut held[k];
    let last = v["last_seq"].as_i64().unwrap_or(0);
    if last > h.last {
        o.pre_gaps += (last - h.last) as u64;
        h.last = last;
    }
    h.epoch = v["epoch"].as_str().map(str::to_owned);
}
