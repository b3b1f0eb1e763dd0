//! Each component's settings, read from the environment: the hub's,
//! the demo's, the webhook's, Sentry's and the trusted proxies. The types
//! are the components' own; only reading and checking them lives here.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::{ConfigError, DemoConfig, Environment, MIN_SECRET_BYTES, NumFn, err};
use crate::hub::HubSettings;
use crate::net::{ForwardedHeader, TrustedProxies};
use crate::protocol;
use crate::push::WebhookSettings;
use crate::telemetry::SentrySettings;

/// The hub's settings (`WS_*`, `MAX_CONNECTIONS`, `COMMIT_CONCURRENCY`,
/// `EDIT_WINDOW_SECS`, …), and `WS_HANDSHAKES_PER_IP_PER_SEC`, a rate limit
/// read here to keep the order variables are checked in. The two fields
/// the running instance decides (`instance`, `push_wake`) start empty;
/// start-up sets them.
pub(super) fn hub_settings(
    num: &NumFn<'_>,
    tail_check: Option<Duration>,
    presence_ttl: Duration,
    sqlite: bool,
) -> Result<(HubSettings, u32), ConfigError> {
    let max_frame_bytes = num("WS_MAX_FRAME_BYTES", 64 * 1024, 1024, 16 << 20)? as usize;
    let max_body_bytes = num("WS_MAX_BODY_BYTES", 4096, 1, 16 << 20)? as usize;
    if max_body_bytes + 512 > max_frame_bytes {
        return Err(err("WS_MAX_BODY_BYTES", "must be at least 512 bytes below WS_MAX_FRAME_BYTES"));
    }
    let heartbeat = Duration::from_millis(num("WS_HEARTBEAT_MS", 25_000, 100, 600_000)?);
    let idle_timeout = Duration::from_millis(num("WS_IDLE_TIMEOUT_MS", 60_000, 200, 3_600_000)?);
    if idle_timeout <= heartbeat {
        return Err(err("WS_IDLE_TIMEOUT_MS", "must be longer than WS_HEARTBEAT_MS"));
    }
    let send_per_sec = num("WS_SEND_PER_SEC", 20, 1, 1_000_000)? as u32;
    let send_burst = num("WS_SEND_BURST", 40, 1, 1_000_000)? as u32;
    let events_per_sec = num("WS_EVENTS_PER_SEC", 50, 1, 1_000_000)? as u32;
    let events_burst = num("WS_EVENTS_BURST", 100, 1, 1_000_000)? as u32;
    let outbound_queue = num("WS_OUTBOUND_QUEUE", 1024, 8, 1_000_000)? as usize;
    let abuse_strikes = num("WS_ABUSE_STRIKES", 50, 1, 1_000_000)? as u32;
    let max_connections = num("MAX_CONNECTIONS", 200_000, 1, 10_000_000)? as usize;
    let handshakes_per_ip_per_sec = num("WS_HANDSHAKES_PER_IP_PER_SEC", 100, 1, 1_000_000)? as u32;
    let drain_reconnect_max_ms = num("DRAIN_RECONNECT_MAX_MS", 10_000, 1, 600_000)?;
    let commit_concurrency = num("COMMIT_CONCURRENCY", 2, 1, 64)? as usize;
    let max_rooms = num("WS_MAX_ROOMS_PER_SOCKET", 1_000, 1, 1_000_000)? as usize;
    let max_sockets_per_user = num("WS_MAX_SOCKETS_PER_USER", 32, 1, 1_000_000)? as usize;
    let user_stream_interval = Duration::from_millis(num("USER_STREAM_INTERVAL_MS", 1_000, 10, 600_000)?);
    let edit_window_ms = num("EDIT_WINDOW_SECS", 900, 0, 10 * 365 * 86_400)? * 1000;
    let max_sync_rooms = num("WS_MAX_SYNC_ROOMS", 1_000, 1, 100_000)? as usize;
    let settings = HubSettings {
        limits: protocol::Limits {
            max_frame_bytes,
            max_body_bytes,
            send_per_sec,
            send_burst,
            events_per_sec,
            events_burst,
            max_rooms,
            max_sync_rooms,
            edit_window_ms,
        },
        heartbeat,
        idle_timeout,
        outbound_queue,
        abuse_strikes,
        max_connections,
        max_sockets_per_user,
        drain_reconnect_max_ms,
        // SQLite has one writer: more committers would only queue for it.
        committers: if sqlite { 1 } else { commit_concurrency },
        presence_heartbeat: presence_ttl / 3,
        tail_check,
        instance: Arc::from(""),
        push_wake: None,
        user_stream_interval,
    };
    Ok((settings, handshakes_per_ip_per_sec))
}

/// `DEMO=1` serves the demo, `DEMO=0` does not, unset follows the
/// environment (on in development). `DEMO_DIR` only says where it comes from.
pub(super) fn demo_config<'a>(
    get: &dyn Fn(&str) -> Option<&'a str>,
    dev: bool,
) -> Result<Option<DemoConfig>, ConfigError> {
    let on = match get("DEMO") {
        None => dev,
        Some("0") | Some("false") | Some("off") => false,
        Some("1") | Some("true") | Some("on") => true,
        Some(_) => return Err(err("DEMO", "must be 0 or 1")),
    };
    Ok(match (on, get("DEMO_DIR")) {
        (false, _) => None,
        (true, None) => Some(DemoConfig::Embedded),
        (true, Some(dir)) => {
            let dir = std::path::PathBuf::from(dir);
            if !dir.join("index.html").is_file() {
                return Err(err("DEMO_DIR", "must be a directory holding index.html, app.js and app.css"));
            }
            Some(DemoConfig::Dir(dir))
        }
    })
}

/// `WEBHOOK_URL` turns the offline-push webhook on; the tuning knobs are
/// checked even without it, so a typo fails now.
pub(super) fn webhook_config<'a>(
    get: &dyn Fn(&str) -> Option<&'a str>,
    num: &NumFn<'_>,
    dev: bool,
) -> Result<Option<WebhookSettings>, ConfigError> {
    let include_body = match get("WEBHOOK_INCLUDE_BODY") {
        None | Some("0") | Some("false") => false,
        Some("1") | Some("true") => true,
        Some(_) => return Err(err("WEBHOOK_INCLUDE_BODY", "must be 0 or 1")),
    };
    let timeout = Duration::from_millis(num("WEBHOOK_TIMEOUT_MS", 5_000, 100, 120_000)?);
    let max_attempts = num("WEBHOOK_MAX_ATTEMPTS", 12, 1, 1_000)? as u32;
    let batch_size = num("WEBHOOK_BATCH_SIZE", 100, 1, 1_000)? as usize;
    let poll_interval = Duration::from_millis(num("WEBHOOK_POLL_INTERVAL_MS", 1_000, 10, 600_000)?);
    let backoff_base = Duration::from_millis(num("WEBHOOK_BACKOFF_BASE_MS", 1_000, 1, 3_600_000)?);
    let backoff_max = Duration::from_millis(num("WEBHOOK_BACKOFF_MAX_MS", 300_000, 1, 86_400_000)?);
    if backoff_max < backoff_base {
        return Err(err("WEBHOOK_BACKOFF_MAX_MS", "must be at least WEBHOOK_BACKOFF_BASE_MS"));
    }
    let lease = Duration::from_millis(num("WEBHOOK_LEASE_MS", 60_000, 200, 3_600_000)?);
    if lease < 2 * timeout {
        return Err(err("WEBHOOK_LEASE_MS", "must be at least twice WEBHOOK_TIMEOUT_MS"));
    }
    let Some(url) = get("WEBHOOK_URL") else { return Ok(None) };
    let url = match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => u,
        _ => return Err(err("WEBHOOK_URL", "must be an http:// or https:// URL")),
    };
    let secret = match get("WEBHOOK_SECRET") {
        None => return Err(err("WEBHOOK_SECRET", "is required when WEBHOOK_URL is set")),
        Some(s) if !dev && s.len() < MIN_SECRET_BYTES => {
            return Err(err("WEBHOOK_SECRET", format!("is shorter than {MIN_SECRET_BYTES} bytes")));
        }
        Some(s) => SecretString::from(s.to_owned()),
    };
    Ok(Some(WebhookSettings {
        url,
        secret,
        include_body,
        timeout,
        max_attempts,
        batch_size,
        poll_interval,
        backoff_base,
        backoff_max,
        lease,
    }))
}

/// `SENTRY_DSN` turns error tracking on; the other two are checked even
/// without it, so a typo fails now rather than when the DSN is added.
pub(super) fn sentry_config<'a>(
    get: &dyn Fn(&str) -> Option<&'a str>,
    environment: Environment,
) -> Result<Option<SentrySettings>, ConfigError> {
    let env_name = match get("SENTRY_ENVIRONMENT") {
        None => match environment {
            Environment::Development => "development",
            Environment::Production => "production",
        },
        // Sentry's own rules for environment names.
        Some(v) if v.len() <= 64 && v != "None" && !v.contains('/') && !v.contains(char::is_control) => v,
        Some(_) => {
            return Err(err("SENTRY_ENVIRONMENT", "must be at most 64 bytes, without `/` or control characters"));
        }
    };
    let sample_rate = match get("SENTRY_SAMPLE_RATE") {
        None => 1.0,
        Some(v) => match v.parse::<f32>() {
            Ok(r) if (0.0..=1.0).contains(&r) => r,
            _ => return Err(err("SENTRY_SAMPLE_RATE", "must be a number between 0.0 and 1.0")),
        },
    };
    let Some(dsn) = get("SENTRY_DSN") else { return Ok(None) };
    if dsn.parse::<sentry::types::Dsn>().is_err() {
        return Err(err("SENTRY_DSN", "must be a Sentry DSN: https://<public key>@<host>/<project id>"));
    }
    Ok(Some(SentrySettings { dsn: SecretString::from(dsn.to_owned()), environment: env_name.to_owned(), sample_rate }))
}

/// `TRUSTED_PROXIES` (CIDRs) and the header those proxies write.
pub(super) fn trusted_proxies<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Result<TrustedProxies, ConfigError> {
    let header = match get("TRUSTED_PROXY_HEADER").map(str::to_ascii_lowercase).as_deref() {
        None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
        Some("forwarded") => ForwardedHeader::Forwarded,
        Some(_) => return Err(err("TRUSTED_PROXY_HEADER", "must be `x-forwarded-for` or `forwarded`")),
    };
    let nets = TrustedProxies::parse_list(get("TRUSTED_PROXIES").unwrap_or(""))
        .map_err(|reason| err("TRUSTED_PROXIES", format!("comma-separated CIDRs: {reason}")))?;
    Ok(TrustedProxies::new(nets, header))
}
