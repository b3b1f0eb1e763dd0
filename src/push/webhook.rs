//! The webhook request: payload, signature, one POST per batch.
//!
//! Signed like Stripe's: `X-Chatgw-Signature: v1=<hex HMAC-SHA256(secret,
//! "<timestamp>.<body>")>` with `X-Chatgw-Timestamp: <unix seconds>`, so a
//! receiver rejects both forgeries and replays of old requests.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;

/// Header carrying the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "X-Chatgw-Timestamp";
/// Header carrying `v1=<hex signature>`.
pub const SIGNATURE_HEADER: &str = "X-Chatgw-Signature";

/// One event of a POST body.
#[derive(Debug, Serialize)]
pub struct Event<'a> {
    /// Stable per outbox row: the receiver's deduplication key.
    pub id: &'a str,
    pub room: &'a str,
    pub seq: i64,
    pub sender: &'a str,
    pub sent_at: i64,
    /// Members with no socket joined to the room anywhere in the cluster
    /// when the event was handled, sender excluded; never empty.
    pub offline_user_ids: Vec<String>,
    /// Only with `WEBHOOK_INCLUDE_BODY=1`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
}

#[derive(Serialize)]
struct Payload<'a> {
    events: &'a [Event<'a>],
}

/// How a POST ended; the label of `chatgw_webhook_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostResult {
    /// A 2xx answer: delivered.
    Ok,
    /// Any other status.
    HttpError(u16),
    /// No complete answer within `WEBHOOK_TIMEOUT_MS`.
    Timeout,
    /// Connection refused, TLS, reset, …
    Error,
}

impl PostResult {
    fn label(self) -> &'static str {
        match self {
            PostResult::Ok => "ok",
            PostResult::HttpError(_) => "http_error",
            PostResult::Timeout => "timeout",
            PostResult::Error => "error",
        }
    }
}

/// `v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // HMAC accepts keys of any length: `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The batch's `Idempotency-Key`: a digest of its event ids, so the same
/// batch retried carries the same key (a re-formed batch gets another; the
/// event ids are what receivers should dedupe by).
pub fn batch_key(events: &[Event<'_>]) -> String {
    let mut h = Sha256::new();
    for e in events {
        h.update(e.id.as_bytes());
        h.update(b",");
    }
    hex::encode(&h.finalize()[..16])
}

/// Where and how offline-push events are delivered (README, "Offline push
/// webhook").
#[derive(Clone)]
pub struct WebhookSettings {
    /// `http://` or `https://` (rustls, Mozilla's roots).
    pub url: reqwest::Url,
    /// Key of the HMAC-SHA256 signature receivers verify.
    pub secret: SecretString,
    /// Whether events carry the message body (`WEBHOOK_INCLUDE_BODY=1`);
    /// off by default, so message text does not leave the gateway.
    pub include_body: bool,
    /// Bound of one POST, connect to last byte.
    pub timeout: Duration,
    /// Deliveries tried per event before it is given up (counted, logged).
    pub max_attempts: u32,
    /// Most events per POST.
    pub batch_size: usize,
    /// How often the worker looks for due rows besides being woken by its
    /// own commits: rows of other instances, retries coming due.
    pub poll_interval: Duration,
    /// First retry delay; doubles per attempt up to `backoff_max`, with
    /// jitter.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// How long a claimed batch is reserved for its instance; after it,
    /// another instance may deliver the batch again. Longer than `timeout`
    /// with room to spare.
    pub lease: Duration,
}

/// The HTTP side of the push worker.
pub struct Sender {
    client: reqwest::Client,
    config: WebhookSettings,
    metrics: Metrics,
}

impl Sender {
    /// # Errors
    /// The TLS backend could not be initialised.
    pub fn new(config: WebhookSettings, metrics: Metrics) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .user_agent(concat!("chatgw/", env!("CARGO_PKG_VERSION")))
            // A webhook that redirects is misconfigured: the signature
            // should not travel to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Sender { client, config, metrics })
    }

    pub fn config(&self) -> &WebhookSettings {
        &self.config
    }

    /// POSTs one batch, signed, and says how it went (counted and timed).
    pub async fn post(&self, events: &[Event<'_>]) -> PostResult {
        // Serialising plain strings and integers cannot fail.
        let body = serde_json::to_vec(&Payload { events }).unwrap_or_default();
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let sig = signature(self.config.secret.expose_secret().as_bytes(), ts, &body);
        let started = Instant::now();
        let sent = self
            .client
            .post(self.config.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, ts.to_string())
            .header(SIGNATURE_HEADER, sig)
            .header("Idempotency-Key", batch_key(events))
            .body(body)
            .send()
            .await;
        let result = match sent {
            // The answer's body is not read: the status is the whole answer.
            Ok(r) if r.status().is_success() => PostResult::Ok,
            Ok(r) => PostResult::HttpError(r.status().as_u16()),
            Err(e) if e.is_timeout() => PostResult::Timeout,
            Err(_) => PostResult::Error,
        };
        self.metrics.webhook_request_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.webhook_requests.inc(result.label());
        result
    }

    /// The delay before attempt `attempts + 1`: `WEBHOOK_BACKOFF_BASE_MS`
    /// doubled per attempt made, capped at `WEBHOOK_BACKOFF_MAX_MS`, of which
    /// a random half is taken off ("equal jitter"), so instances that
    /// failed together do not retry together.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let doublings = (attempts - 1).clamp(0, 30) as u32;
        let full = self.config.backoff_base.saturating_mul(1 << doublings).min(self.config.backoff_max);
        let half = full / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Computed independently:
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac key
        let s = signature(b"key", 1_700_000_000, b"{}");
        assert_eq!(s, "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae");
        assert_ne!(s, signature(b"key", 1_700_000_001, b"{}"));
        assert_ne!(s, signature(b"other", 1_700_000_000, b"{}"));
    }
}
