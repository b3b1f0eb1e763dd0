//! The writers: each room's first member sends into it on a fresh socket
//! and waits for the acks, before the storm and while every client is down.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::json;

use super::connect::{connect, next_json};
use super::shared::{Outcome, Shared};
use crate::client;

/// Per room the highest acked seq, and errors by reason.
pub(super) type Writes = (Vec<(usize, i64)>, BTreeMap<String, u64>);

/// Adds one round of writes to the acked seqs and the errors.
pub(super) fn merge_writes(acked: &mut [i64], errors: &mut BTreeMap<String, u64>, (seqs, errs): Writes) {
    for (room, seq) in seqs {
        acked[room] = acked[room].max(seq);
    }
    for (k, v) in errs {
        *errors.entry(k).or_default() += v;
    }
}

/// Every writer user sends `k` messages into each of its rooms on a fresh
/// socket and waits for the acks.
pub(super) async fn write_all(
    sh: &Arc<Shared>,
    writers: &BTreeMap<usize, Vec<usize>>,
    tokens: &[String],
    k: usize,
    in_flight: usize,
    nonce: u32,
    tag: &str,
) -> Writes {
    if k == 0 {
        return Default::default();
    }
    let results: Vec<Writes> = futures_util::stream::iter(writers.iter())
        .map(|(&user, rooms)| {
            let sh = sh.clone();
            let token = tokens[user].clone();
            let rooms = rooms.clone();
            let tag = format!("rs{nonce:x}-{tag}");
            async move {
                let mut errs = BTreeMap::new();
                match write_one(&sh, user, &token, &rooms, k, &tag, &mut errs).await {
                    Ok(seqs) => (seqs, errs),
                    Err(e) => {
                        *errs.entry(format!("{e:#}").chars().take(60).collect()).or_default() += 1;
                        (Vec::new(), errs)
                    }
                }
            }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let mut out: Writes = Default::default();
    for (s, e) in results {
        out.0.extend(s);
        for (k, v) in e {
            *out.1.entry(k).or_default() += v;
        }
    }
    out
}

/// One writer user: sends `k` messages into each of its rooms on a fresh
/// socket and waits for every ack, resending what is refused retryably.
async fn write_one(
    sh: &Shared,
    user: usize,
    token: &str,
    rooms: &[usize],
    k: usize,
    tag: &str,
    errs: &mut BTreeMap<String, u64>,
) -> anyhow::Result<Vec<(usize, i64)>> {
    let mut o = Outcome::default();
    let mut ws = connect(sh, token, sh.source(user), &mut o).await?;
    for (r, n) in o.refusals {
        *errs.entry(format!("handshake: {r}")).or_default() += n;
    }
    // id → (room, client_msg_id): sent in order, acked in any order; a retry
    // repeats the same client_msg_id and body.
    let mut outbox: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    let mut id = 0u64;
    for &room in rooms {
        for j in 0..k {
            id += 1;
            outbox.insert(id, (room, format!("{tag}-{user}-{room}-{j}")));
        }
    }
    let send = |id: u64, room: usize, cmid: &str| json!({"type": "send", "id": id, "room": sh.room_ids[room], "client_msg_id": cmid, "body": cmid});
    for (&id, (room, cmid)) in &outbox {
        client::send(&mut ws, &send(id, *room, cmid)).await?;
    }
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !outbox.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = next_json(&mut ws, left).await.context("waiting for acks")?;
        let Some(id) = v["id"].as_u64() else { continue };
        match v["type"].as_str() {
            Some("ack") => {
                if let Some((room, _)) = outbox.remove(&id) {
                    seqs.push((room, v["seq"].as_i64().unwrap_or(0)));
                }
            }
            Some("error") => {
                let code = v["code"].as_str().unwrap_or("?");
                *errs.entry(format!("send: {code}")).or_default() += 1;
                // Retryable: the same client_msg_id is safe to send again.
                if !matches!(code, "rate_limited" | "unavailable" | "internal") {
                    bail!("send refused: {code}");
                }
                let ms = v["retry_after_ms"].as_u64().unwrap_or(200);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                if let Some((room, cmid)) = outbox.get(&id) {
                    client::send(&mut ws, &send(id, *room, cmid)).await?;
                }
            }
            _ => {}
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    Ok(seqs)
}
