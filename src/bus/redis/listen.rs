//! The receiving side: Redis messages become hub events. Our own echoes are
//! dropped, a lagging message stream owes the hub a Resync.

use std::sync::Arc;

use bytes::Bytes;
use fred::prelude::Value;

use super::shared::Inner;
use crate::bus::BusEvent;
use crate::bus::wire;

/// Redis messages to hub events, dropping our own echoes.
pub(super) async fn run_listener(
    inner: Arc<Inner>,
    mut messages: tokio::sync::broadcast::Receiver<fred::types::Message>,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let msg = tokio::select! {
            m = messages.recv() => m,
            () = inner.stop.cancelled() => return,
        };
        let payload = match msg {
            Ok(m) => match m.value {
                Value::Bytes(b) => b,
                Value::String(s) => s.into_inner(),
                _ => continue,
            },
            Err(RecvError::Lagged(n)) => {
                inner.dropped("inbound_lagged", n);
                inner.to_hub(BusEvent::Resync);
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if wire::origin_of(&payload) == Some(&inner.origin[..]) {
            continue;
        }
        match wire::decode(Bytes::clone(&payload)) {
            Ok((_, event)) => {
                if let (BusEvent::Message { .. }, Some(at)) = (&event, wire::published_at_us(&payload)) {
                    // Wall clocks of two hosts: skewed clocks skew this
                    // (NTP keeps it well under the buckets that matter).
                    let secs = wire::now_us().saturating_sub(at) as f64 / 1e6;
                    inner.metrics.bus_transit_seconds.observe(secs);
                }
                inner.to_hub(event)
            }
            Err(e) => {
                inner.dropped("undecodable", 1);
                tracing::debug!(error = %e, "bus: skipped an envelope");
            }
        }
    }
}
