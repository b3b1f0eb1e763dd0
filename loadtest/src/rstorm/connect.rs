//! Connecting as a client would: retrying refusals with the server's
//! Retry-After or a jittered backoff, reading frames, building `sync`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};

use super::shared::{Held, Outcome, Shared};
use crate::client::{self, Ws};

/// Why a handshake failed, and how long to wait before the next attempt
/// (`None`: do not retry).
fn refusal(e: &anyhow::Error, attempt: u32) -> (String, Option<Duration>) {
    let backoff = || {
        // Full jitter: random(0, min(5 s, 50 ms × 2^attempt)).
        let cap = (0.05 * 2f64.powi(attempt.min(10) as i32)).min(5.0);
        Some(Duration::from_secs_f64(rand::random::<f64>() * cap))
    };
    if let Some(tungstenite::Error::Http(resp)) = e.downcast_ref::<tungstenite::Error>() {
        let status = resp.status().as_u16();
        let body: Value = resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let code = body["error"]["code"].as_str().unwrap_or("?");
        let reason = format!("HTTP {status} {code}");
        return match status {
            429 => {
                // At least Retry-After (seconds), or retry_after_ms if longer; plus jitter.
                let header = resp
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                let body_ms = body["error"]["retry_after_ms"].as_f64().unwrap_or(0.0) / 1000.0;
                let wait = header.max(body_ms).max(0.05);
                (reason, Some(Duration::from_secs_f64(wait * (1.0 + 0.2 * rand::random::<f64>()))))
            }
            500..=599 => (reason, backoff()),
            _ => (reason, None),
        };
    }
    (client::failure_reason(e), backoff())
}

/// Connects (retrying refusals as a client would) and reads `hello`.
pub(super) async fn connect(sh: &Shared, token: &str, src: Option<IpAddr>, o: &mut Outcome) -> anyhow::Result<Ws> {
    let deadline = Instant::now() + Duration::from_secs_f64(sh.deadline_secs);
    let mut attempt = 0u32;
    loop {
        o.attempts += 1;
        let r = tokio::time::timeout(Duration::from_secs(30), client::connect(&sh.target, Some(token), src))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("handshake timed out")));
        let e = match r {
            Ok(mut ws) => match next_json(&mut ws, sh.frame_timeout).await {
                Ok(v) if v["type"] == "hello" => return Ok(ws),
                Ok(v) => anyhow::anyhow!("expected hello, got {}", v["type"]),
                Err(e) => e,
            },
            Err(e) => e,
        };
        let (reason, wait) = refusal(&e, attempt);
        *o.refusals.entry(reason.clone()).or_default() += 1;
        attempt += 1;
        match wait {
            Some(w) if Instant::now() + w < deadline => tokio::time::sleep(w).await,
            _ => bail!("{reason}"),
        }
    }
}

/// The next text frame as JSON.
pub(super) async fn next_json(ws: &mut Ws, limit: Duration) -> anyhow::Result<Value> {
    loop {
        let msg = tokio::time::timeout(limit, ws.next()).await.context("no frame in time")?;
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
            Some(Ok(Message::Close(f))) => bail!("closed {}", f.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// A `sync` frame resuming `held`, each room from its last seq (and epoch).
pub(super) fn sync_frame(sh: &Shared, id: u64, held: &[Held]) -> Value {
    let rooms: Vec<Value> = held
        .iter()
        .map(|h| {
            let mut e = json!({"room": sh.room_ids[h.room], "since_seq": h.last});
            if let Some(ep) = &h.epoch {
                e["epoch"] = json!(ep);
            }
            e
        })
        .collect();
    json!({"type": "sync", "id": id, "rooms": rooms})
}
