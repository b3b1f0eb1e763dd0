//! Typed configuration, read once from the environment at start-up.
//!
//! Every name here is part of the public contract (see README.md). Values are
//! validated before anything binds: a bad value stops the process with one
//! line naming the variable. Handlers never read the environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::{JwtKeyConfig, JwtSettings, PreviousKey};
use crate::hub::HubSettings;
use crate::limits::LimitSettings;
use crate::net::{ForwardedHeader, TrustedProxies};
use crate::protocol;
use crate::push::WebhookSettings;
use crate::retention::RetentionSettings;
use crate::telemetry::SentrySettings;

/// A configuration value that cannot be used; `Display` is the one line the
/// process prints before exiting.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {var}: {reason}")]
pub struct ConfigError {
    /// The environment variable at fault.
    pub var: &'static str,
    /// What is wrong with it, never its (possibly secret) value.
    pub reason: String,
}

fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError { var, reason: reason.into() }
}

/// Whether the process runs for a developer (lenient, generates a secret) or
/// in production (refuses weak secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// Everything the gateway needs to start. Built by [`Config::from_env`].
#[derive(Clone)]
pub struct Config {
    pub environment: Environment,
    /// Where the API and WebSocket listener binds; port 0 picks a free port.
    pub listen_addr: SocketAddr,
    /// A separate listener for `/metrics`, so it is never exposed by accident
    /// on the public port. `None` disables it.
    pub metrics_addr: Option<SocketAddr>,
    /// `sqlite://…` (embedded) or `postgres://…` (cluster).
    pub database_url: SecretString,
    pub db_max_connections: u32,
    /// `SQLITE_SYNCHRONOUS`: what an SQLite commit waits for (see
    /// [`crate::db::SqliteSync`]).
    pub sqlite_synchronous: crate::db::SqliteSync,
    /// `None` means the in-process bus.
    pub redis_url: Option<SecretString>,
    /// Prefix of Redis channels and keys (`REDIS_PREFIX`).
    pub redis_prefix: String,
    /// Bus events queued for publishing before new ones are dropped.
    pub redis_publish_queue: usize,
    /// Redis health-check and command timeout.
    pub redis_timeout: Duration,
    /// How long an unwatched room stays subscribed.
    pub redis_linger: Duration,
    /// How long presence entries outlive their instance's last heartbeat.
    pub presence_ttl: Duration,
    /// Access tokens: signing key, `kid`, the previous key, lifetime
    /// (`JWT_*`, `ACCESS_TOKEN_TTL_SECS`).
    pub jwt: JwtSettings,
    /// Browser origins allowed for CORS and the WebSocket handshake. Empty
    /// means no browser origin is allowed (native clients send none).
    pub allowed_origins: Vec<String>,
    pub refresh_token_ttl: Duration,
    /// How long after a refresh token is spent a retry of it is still
    /// answered (the client lost the answer); 0 turns retries off.
    pub refresh_grace: Duration,
    pub ws_ticket_ttl: Duration,
    pub request_timeout: Duration,
    /// Largest accepted REST request body.
    pub max_body_bytes: usize,
    /// Rate limits of logins, handshakes and look-ups by email.
    pub limits: LimitSettings,
    /// How long shutdown waits for in-flight work before giving up.
    pub shutdown_timeout: Duration,
    /// How long a client may take to send a request's headers (slowloris
    /// bound; it covers the WebSocket upgrade request too).
    pub header_timeout: Duration,
    /// Threads hashing passwords (argon2id, 19 MiB each while running).
    pub password_hash_threads: usize,
    /// Sign-ins and registrations waiting for a hashing thread; beyond it they
    /// are answered 503 at once.
    pub password_hash_queue: usize,
    /// The hub's settings (`WS_*`, `MAX_CONNECTIONS`, `BUS_TAIL_CHECK_MS`
    /// as `tail_check`, …); `instance` and `push_wake` are set by start-up.
    pub ws: HubSettings,
    /// Bearer token for the operator endpoints under `/api/v1/admin`;
    /// `None` disables them.
    pub admin_token: Option<SecretString>,
    /// Error tracking (`SENTRY_*`); `None` when `SENTRY_DSN` is unset.
    pub sentry: Option<SentrySettings>,
    /// Reverse proxies whose forwarding header is believed
    /// (`TRUSTED_PROXIES`, `TRUSTED_PROXY_HEADER`); empty trusts nobody.
    pub trusted_proxies: TrustedProxies,
    /// How long audit records are kept (`AUDIT_RETENTION_DAYS`); `None`
    /// keeps them forever.
    pub audit_retention: Option<Duration>,
    /// The offline-push webhook (`WEBHOOK_*`); `None` when `WEBHOOK_URL`
    /// is unset, and then no outbox row is ever written.
    pub webhook: Option<WebhookSettings>,
    /// Message retention (`RETENTION_*`).
    pub retention: RetentionSettings,
    /// The browser chat demo at `/demo/` (`DEMO`, `DEMO_DIR`); `None` when
    /// it is off. On by default in development only: a production gateway
    /// serves no page nobody asked for.
    pub demo: Option<DemoConfig>,
}

/// Where the demo page's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoConfig {
    /// The copy built into the binary from `clients/typescript/demo/dist`.
    Embedded,
    /// A directory holding `index.html`, `app.js` and `app.css`
    /// (`DEMO_DIR`): for working on the demo without rebuilding the gateway.
    Dir(std::path::PathBuf),
}

/// Secrets that appear in tutorials and sample configs; refusing them catches
/// copy-pasted deployments.
const WELL_KNOWN_SECRETS: &[&str] = &[
    "secret",
    "changeme",
    "change-me",
    "password",
    "jwt_secret",
    "your-256-bit-secret",
    "your_jwt_secret",
    "supersecret",
    "development-secret-do-not-use-in-production",
];

/// Minimum length of an HS256 secret outside development.
pub const MIN_SECRET_BYTES: usize = 32;

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// The first variable that is missing or invalid.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&std::env::vars().collect())
    }

    /// Builds the configuration from a map of variables; the seam tests use.
    ///
    /// # Errors
    /// The first variable that is missing or invalid.
    pub fn from_vars(vars: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());

        let environment = match get("APP_ENV") {
            None | Some("development") | Some("dev") => Environment::Development,
            Some("production") | Some("prod") => Environment::Production,
            Some(_) => return Err(err("APP_ENV", "must be `development` or `production`")),
        };
        let dev = environment == Environment::Development;

        let listen_addr = parse_addr(get("LISTEN_ADDR").unwrap_or("127.0.0.1:8080"), "LISTEN_ADDR")?;
        let metrics_addr = match get("METRICS_ADDR") {
            None => None,
            Some("off") => None,
            Some(v) => Some(parse_addr(v, "METRICS_ADDR")?),
        };

        let database_url = get("DATABASE_URL").unwrap_or("sqlite://./data/chatgw.db").to_owned();
        let sqlite = database_url.starts_with("sqlite:");
        // SQLite readers by default: the cores this process may run on (its
        // CPU affinity), at least 2.
        let sqlite_readers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2) as u64);
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(err("DATABASE_URL", "must start with sqlite:, postgres:// or postgresql://"));
        }
        let redis_url = match get("REDIS_URL") {
            None => None,
            Some(v) if v.starts_with("redis://") || v.starts_with("redis-cluster://") => {
                Some(SecretString::from(v.to_owned()))
            }
            Some(v) if v.starts_with("rediss://") || v.starts_with("rediss-cluster://") => {
                return Err(err(
                    "REDIS_URL",
                    "TLS to Redis is not built in; reach Redis over a private network or a TLS tunnel (README)",
                ));
            }
            Some(_) => {
                return Err(err("REDIS_URL", "must start with redis:// or redis-cluster://"));
            }
        };
        let redis_prefix = get("REDIS_PREFIX").unwrap_or("chatgw:").to_owned();
        if redis_prefix.len() > 64 || redis_prefix.contains(['{', '}']) || redis_prefix.contains(char::is_whitespace) {
            // Braces would make a hash tag and put every room on one
            // cluster shard.
            return Err(err("REDIS_PREFIX", "must be at most 64 bytes, without braces or spaces"));
        }

        let (jwt_key, default_kid) = jwt_key_from(vars, "", dev)?;
        let jwt_kid = get("JWT_KID").map(str::to_owned).unwrap_or(default_kid);
        let jwt_previous = match get("JWT_PREVIOUS_KID") {
            None => None,
            Some(kid) => {
                let (key, _) = jwt_key_from(vars, "PREVIOUS_", false)?;
                if kid == jwt_kid {
                    return Err(err("JWT_PREVIOUS_KID", "must differ from JWT_KID"));
                }
                Some(PreviousKey { kid: kid.to_owned(), key })
            }
        };

        let allowed_origins = match get("ALLOWED_ORIGINS") {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(|o| validate_origin(o).map(|o| o.trim_end_matches('/').to_owned()))
                .collect::<Result<_, _>>()?,
        };

        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let num = |k: &'static str, default: u64, min: u64, max: u64| -> Result<u64, ConfigError> {
            let n = parse_num(get(k), k, default)?;
            if n < min || n > max {
                return Err(err(k, format!("must be between {min} and {max}")));
            }
            Ok(n)
        };
        let secs = |k: &'static str, default: u64, min: u64, max: u64| -> Result<Duration, ConfigError> {
            let n = parse_num(get(k), k, default)?;
            if n < min || n > max {
                return Err(err(k, format!("must be between {min} and {max}")));
            }
            Ok(Duration::from_secs(n))
        };

        // In the order the variables were always checked: with several
        // mistakes, the first one named stays the same.
        // SQLite readers beyond the cores add page caches, not speed.
        let db_max_connections =
            parse_num(get("DB_MAX_CONNECTIONS"), "DB_MAX_CONNECTIONS", if sqlite { sqlite_readers } else { 16 })?
                .clamp(1, 1000) as u32;
        let sqlite_synchronous = match get("SQLITE_SYNCHRONOUS").map(str::to_ascii_lowercase).as_deref() {
            None | Some("normal") => crate::db::SqliteSync::Normal,
            Some("full") => crate::db::SqliteSync::Full,
            Some(_) => return Err(err("SQLITE_SYNCHRONOUS", "must be normal or full")),
        };
        let redis_publish_queue = num("REDIS_PUBLISH_QUEUE", 65_536, 16, 10_000_000)? as usize;
        let redis_timeout = Duration::from_millis(num("REDIS_TIMEOUT_MS", 2_000, 100, 60_000)?);
        let redis_linger = secs("REDIS_ROOM_LINGER_SECS", 30, 0, 3_600)?;
        let presence_ttl = secs("PRESENCE_TTL_SECS", 30, 3, 3_600)?;
        let tail_check = match parse_num(get("BUS_TAIL_CHECK_MS"), "BUS_TAIL_CHECK_MS", 2_000)? {
            0 => None,
            n if (50..=600_000).contains(&n) => Some(Duration::from_millis(n)),
            _ => return Err(err("BUS_TAIL_CHECK_MS", "must be 0 (off) or between 50 and 600000")),
        };
        let jwt = JwtSettings {
            key: jwt_key,
            kid: jwt_kid,
            previous: jwt_previous,
            access_token_ttl: secs("ACCESS_TOKEN_TTL_SECS", 900, 2, 86_400)?,
        };
        let refresh_token_ttl = secs("REFRESH_TOKEN_TTL_SECS", 30 * 86_400, 60, 365 * 86_400)?;
        let refresh_grace = secs("REFRESH_GRACE_SECS", 30, 0, 300)?;
        let ws_ticket_ttl = secs("WS_TICKET_TTL_SECS", 30, 1, 600)?;
        let request_timeout = secs("REQUEST_TIMEOUT_SECS", 15, 1, 600)?;
        let max_body_bytes =
            parse_num(get("MAX_BODY_BYTES"), "MAX_BODY_BYTES", 64 * 1024)?.clamp(1024, 16 << 20) as usize;
        let login_attempts_per_minute =
            parse_num(get("LOGIN_ATTEMPTS_PER_MINUTE"), "LOGIN_ATTEMPTS_PER_MINUTE", 10)?.clamp(1, 100_000) as u32;
        let email_lookups_per_minute = num(
            "EMAIL_LOOKUPS_PER_MINUTE",
            crate::limits::MAX_MEMBER_EMAILS as u64,
            crate::limits::MAX_MEMBER_EMAILS as u64,
            100_000,
        )? as u32;
        let shutdown_timeout = secs("SHUTDOWN_TIMEOUT_SECS", 20, 1, 600)?;
        let header_timeout = secs("HTTP_HEADER_TIMEOUT_SECS", 10, 1, 600)?;
        let password_hash_threads = num("PASSWORD_HASH_THREADS", cores as u64, 1, 256)? as usize;
        let password_hash_queue = num("PASSWORD_HASH_QUEUE", 4 * cores as u64, 0, 100_000)? as usize;
        let (ws, handshakes_per_ip_per_sec) = hub_settings(&num, tail_check, presence_ttl, sqlite)?;

        Ok(Config {
            environment,
            listen_addr,
            metrics_addr,
            database_url: SecretString::from(database_url),
            db_max_connections,
            sqlite_synchronous,
            redis_url,
            redis_prefix,
            redis_publish_queue,
            redis_timeout,
            redis_linger,
            presence_ttl,
            jwt,
            allowed_origins,
            refresh_token_ttl,
            refresh_grace,
            ws_ticket_ttl,
            request_timeout,
            max_body_bytes,
            limits: LimitSettings { login_attempts_per_minute, handshakes_per_ip_per_sec, email_lookups_per_minute },
            shutdown_timeout,
            header_timeout,
            password_hash_threads,
            password_hash_queue,
            ws,
            admin_token: match get("ADMIN_TOKEN") {
                None => None,
                Some(t) if t.len() >= MIN_SECRET_BYTES => Some(SecretString::from(t.to_owned())),
                Some(_) => return Err(err("ADMIN_TOKEN", format!("is shorter than {MIN_SECRET_BYTES} bytes"))),
            },
            sentry: sentry_config(&get, environment)?,
            trusted_proxies: trusted_proxies(&get)?,
            audit_retention: match num("AUDIT_RETENTION_DAYS", 365, 0, 36_500)? {
                0 => None,
                days => Some(Duration::from_secs(days * 86_400)),
            },
            webhook: webhook_config(&get, &num, dev)?,
            retention: RetentionSettings {
                max_age: match num("RETENTION_MAX_AGE_SECS", 0, 0, 100 * 365 * 86_400)? {
                    0 => None,
                    s => Some(Duration::from_secs(s)),
                },
                max_messages: match num("RETENTION_MAX_MESSAGES", 0, 0, 1 << 40)? {
                    0 => None,
                    n => Some(n as i64),
                },
                interval: secs("RETENTION_INTERVAL_SECS", 60, 1, 86_400)?,
                batch: num("RETENTION_BATCH", 500, 1, 100_000)? as i64,
            },
            demo: demo_config(&get, dev)?,
        })
    }

    /// True when the database is the embedded SQLite file.
    pub fn is_sqlite(&self) -> bool {
        self.database_url.expose_secret().starts_with("sqlite:")
    }
}

type NumFn<'a> = dyn Fn(&'static str, u64, u64, u64) -> Result<u64, ConfigError> + 'a;

/// The hub's settings (`WS_*`, `MAX_CONNECTIONS`, `COMMIT_CONCURRENCY`,
/// `EDIT_WINDOW_SECS`, …), and `WS_HANDSHAKES_PER_IP_PER_SEC`, a rate limit
/// read here to keep the order variables are checked in. The two fields
/// the running instance decides (`instance`, `push_wake`) start empty;
/// start-up sets them.
fn hub_settings(
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
fn demo_config<'a>(get: &dyn Fn(&str) -> Option<&'a str>, dev: bool) -> Result<Option<DemoConfig>, ConfigError> {
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
fn webhook_config<'a>(
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
fn sentry_config<'a>(
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
fn trusted_proxies<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Result<TrustedProxies, ConfigError> {
    let header = match get("TRUSTED_PROXY_HEADER").map(str::to_ascii_lowercase).as_deref() {
        None | Some("x-forwarded-for") => ForwardedHeader::XForwardedFor,
        Some("forwarded") => ForwardedHeader::Forwarded,
        Some(_) => return Err(err("TRUSTED_PROXY_HEADER", "must be `x-forwarded-for` or `forwarded`")),
    };
    let nets = TrustedProxies::parse_list(get("TRUSTED_PROXIES").unwrap_or(""))
        .map_err(|reason| err("TRUSTED_PROXIES", format!("comma-separated CIDRs: {reason}")))?;
    Ok(TrustedProxies::new(nets, header))
}

fn parse_addr(v: &str, var: &'static str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| err(var, "must be an IP:port socket address, e.g. 127.0.0.1:8080"))
}

fn parse_num(v: Option<&str>, var: &'static str, default: u64) -> Result<u64, ConfigError> {
    match v {
        None => Ok(default),
        Some(v) => v.parse().map_err(|_| err(var, "must be a non-negative integer")),
    }
}

fn validate_origin(o: &str) -> Result<&str, ConfigError> {
    let ok = o == "*"
        || ((o.starts_with("http://") || o.starts_with("https://"))
            && !o["https://".len().min(o.len())..].contains('/')
            && o.is_ascii());
    if ok {
        Ok(o)
    } else {
        Err(err("ALLOWED_ORIGINS", "each origin must be `*` or scheme://host[:port], comma-separated"))
    }
}

/// Reads `JWT_{prefix}SECRET` or `JWT_{prefix}ALGORITHM` + key files, and
/// returns the key with a default `kid` derived from the public material.
fn jwt_key_from(
    vars: &HashMap<String, String>,
    prefix: &str,
    dev: bool,
) -> Result<(JwtKeyConfig, String), ConfigError> {
    use jsonwebtoken::Algorithm;
    let get = |k: &str| vars.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    // Variable names must be 'static for the error; the two prefixes are known.
    let (v_secret, v_alg, v_priv, v_pub) = if prefix.is_empty() {
        ("JWT_SECRET", "JWT_ALGORITHM", "JWT_PRIVATE_KEY_FILE", "JWT_PUBLIC_KEY_FILE")
    } else {
        (
            "JWT_PREVIOUS_SECRET",
            "JWT_PREVIOUS_ALGORITHM",
            "JWT_PREVIOUS_PRIVATE_KEY_FILE",
            "JWT_PREVIOUS_PUBLIC_KEY_FILE",
        )
    };

    let algorithm = match get(v_alg).unwrap_or("HS256") {
        "HS256" => Algorithm::HS256,
        "RS256" => Algorithm::RS256,
        "ES256" => Algorithm::ES256,
        "EdDSA" => Algorithm::EdDSA,
        _ => return Err(err(v_alg, "must be one of HS256, RS256, ES256, EdDSA")),
    };

    if algorithm == Algorithm::HS256 {
        let secret = match get(v_secret) {
            Some(s) => s.to_owned(),
            None if dev => {
                // A fresh random secret per start: tokens do not survive a
                // restart in development, which is the safe surprise.
                use rand::RngCore;
                let mut b = [0u8; 48];
                rand::thread_rng().fill_bytes(&mut b);
                hex::encode(b)
            }
            None => {
                return Err(err(v_secret, "is required outside development (at least 32 bytes, random)"));
            }
        };
        if !dev {
            if secret.len() < MIN_SECRET_BYTES {
                return Err(err(v_secret, format!("is shorter than {MIN_SECRET_BYTES} bytes")));
            }
            let lower = secret.to_ascii_lowercase();
            let one_char = secret.chars().all(|c| secret.starts_with(c));
            if WELL_KNOWN_SECRETS.iter().any(|w| lower.contains(w)) || one_char {
                return Err(err(v_secret, "is a well-known or trivially guessable value"));
            }
        }
        let kid = short_fingerprint(secret.as_bytes());
        return Ok((JwtKeyConfig::Hmac { secret: SecretString::from(secret) }, kid));
    }

    let read = |var: &'static str| -> Result<String, ConfigError> {
        let path = get(var).ok_or_else(|| err(var, format!("is required when {v_alg} is not HS256")))?;
        std::fs::read_to_string(PathBuf::from(path)).map_err(|e| err(var, format!("cannot be read: {}", e.kind())))
    };
    let public_pem = read(v_pub)?;
    // A previous key only verifies; its private half is not needed.
    let private_pem = if prefix.is_empty() { read(v_priv)? } else { String::new() };
    let kid = short_fingerprint(public_pem.as_bytes());
    let cfg = JwtKeyConfig::Asymmetric { algorithm, private_pem: SecretString::from(private_pem), public_pem };
    // Parse now so a bad PEM fails at start-up, not on the first login.
    crate::auth::JwtKeys::validate(&cfg)
        .map_err(|reason| err(if prefix.is_empty() { v_priv } else { v_pub }, reason))?;
    Ok((cfg, kid))
}

/// A `kid` that names the key without revealing it.
fn short_fingerprint(material: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(&Sha256::digest(material)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_demo_is_on_in_development_off_in_production_and_switchable() {
        let secret = ("JWT_SECRET", "0123456789abcdef0123456789abcdef-long-enough");
        let demo = |pairs: &[(&str, &str)]| Config::from_vars(&vars(pairs)).map(|c| c.demo);
        assert_eq!(demo(&[]).unwrap(), Some(DemoConfig::Embedded));
        assert_eq!(demo(&[("DEMO", "0")]).unwrap(), None);
        assert_eq!(demo(&[("APP_ENV", "production"), secret]).unwrap(), None);
        assert_eq!(demo(&[("APP_ENV", "production"), secret, ("DEMO", "1")]).unwrap(), Some(DemoConfig::Embedded));
        assert_eq!(demo(&[("DEMO", "yes")]).err().map(|e| e.var), Some("DEMO"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_str().unwrap();
        assert_eq!(demo(&[("DEMO_DIR", path)]).err().map(|e| e.var), Some("DEMO_DIR"));
        std::fs::write(dir.path().join("index.html"), "<!doctype html>").unwrap();
        assert_eq!(demo(&[("DEMO_DIR", path)]).unwrap(), Some(DemoConfig::Dir(dir.path().to_owned())));
        assert_eq!(demo(&[("DEMO_DIR", path), ("DEMO", "0")]).unwrap(), None);
    }

    #[test]
    fn the_tail_check_defaults_to_two_seconds_turns_off_with_zero_and_is_bounded() {
        let tail = |v: &str| Config::from_vars(&vars(&[("BUS_TAIL_CHECK_MS", v)])).map(|c| c.ws.tail_check);
        assert_eq!(Config::from_vars(&vars(&[])).unwrap().ws.tail_check, Some(Duration::from_secs(2)));
        assert_eq!(tail("0").unwrap(), None);
        assert_eq!(tail("300").unwrap(), Some(Duration::from_millis(300)));
        for bad in ["49", "600001", "soon"] {
            assert_eq!(tail(bad).err().unwrap().var, "BUS_TAIL_CHECK_MS", "{bad}");
        }
    }

    #[test]
    fn development_defaults_start_without_any_variable() {
        let c = Config::from_vars(&vars(&[])).expect("defaults are valid");
        assert_eq!(c.environment, Environment::Development);
        assert_eq!(c.listen_addr.to_string(), "127.0.0.1:8080");
        assert!(c.is_sqlite());
    }

    #[test]
    fn production_refuses_missing_short_and_well_known_secrets() {
        let prod = |s: Option<&str>| {
            let mut v = vars(&[("APP_ENV", "production")]);
            if let Some(s) = s {
                v.insert("JWT_SECRET".into(), s.into());
            }
            Config::from_vars(&v)
        };
        assert_eq!(prod(None).err().unwrap().var, "JWT_SECRET");
        assert_eq!(prod(Some("tooshort")).err().unwrap().var, "JWT_SECRET");
        assert_eq!(prod(Some("your-256-bit-secret-your-256-bit-secret")).err().unwrap().var, "JWT_SECRET");
        assert_eq!(prod(Some(&"a".repeat(40))).err().unwrap().var, "JWT_SECRET");
        assert!(prod(Some("q8Jm2vXr7pL0sT4wZ9yB3nC6dF1gH5kA")).is_ok());
    }

    #[test]
    fn sentry_is_opt_in_and_its_environment_defaults_to_app_env() {
        assert!(Config::from_vars(&vars(&[])).unwrap().sentry.is_none());
        let c = Config::from_vars(&vars(&[("SENTRY_DSN", "https://abc123@o1.ingest.example.com/42")])).unwrap();
        let s = c.sentry.expect("enabled by SENTRY_DSN");
        assert_eq!((s.environment.as_str(), s.sample_rate), ("development", 1.0));
        let c = Config::from_vars(&vars(&[
            ("APP_ENV", "prod"),
            ("JWT_SECRET", "q8Jm2vXr7pL0sT4wZ9yB3nC6dF1gH5kA"),
            ("SENTRY_DSN", "http://public@127.0.0.1:9/1"),
            ("SENTRY_SAMPLE_RATE", "0.25"),
        ]))
        .unwrap();
        let s = c.sentry.unwrap();
        assert_eq!((s.environment.as_str(), s.sample_rate), ("production", 0.25));
        let c = Config::from_vars(&vars(&[("SENTRY_DSN", "http://k@h/1"), ("SENTRY_ENVIRONMENT", "staging-eu")]));
        assert_eq!(c.unwrap().sentry.unwrap().environment, "staging-eu");
    }

    #[test]
    fn a_webhook_url_needs_its_secret() {
        assert!(Config::from_vars(&vars(&[])).unwrap().webhook.is_none());
        let e = Config::from_vars(&vars(&[("WEBHOOK_URL", "https://push.example.com/hook")])).err().unwrap();
        assert_eq!(e.var, "WEBHOOK_SECRET");
        let c = Config::from_vars(&vars(&[
            ("WEBHOOK_URL", "https://push.example.com/hook"),
            ("WEBHOOK_SECRET", "whsec-0123456789"),
            ("WEBHOOK_INCLUDE_BODY", "1"),
        ]))
        .unwrap();
        let w = c.webhook.expect("enabled by WEBHOOK_URL");
        assert!(w.include_body);
        assert_eq!((w.max_attempts, w.batch_size), (12, 100));
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (k, v) in [
            ("LISTEN_ADDR", "nope"),
            ("METRICS_ADDR", "1.2.3"),
            ("DATABASE_URL", "mysql://x"),
            ("REDIS_URL", "http://x"),
            ("ALLOWED_ORIGINS", "example.com"),
            ("ACCESS_TOKEN_TTL_SECS", "-1"),
            ("ACCESS_TOKEN_TTL_SECS", "1"),
            ("JWT_ALGORITHM", "none"),
            ("APP_ENV", "staging"),
            ("SENTRY_DSN", "not-a-dsn"),
            ("SENTRY_DSN", "ftp://key@host/1"),
            ("SENTRY_SAMPLE_RATE", "1.5"),
            ("SENTRY_SAMPLE_RATE", "often"),
            ("SENTRY_ENVIRONMENT", "prod/eu"),
            ("TRUSTED_PROXIES", "10.0.0.0/8,nope"),
            ("TRUSTED_PROXIES", "10.0.0.0/40"),
            ("TRUSTED_PROXY_HEADER", "x-real-ip"),
            ("AUDIT_RETENTION_DAYS", "-3"),
            ("WEBHOOK_URL", "ftp://push.example.com/"),
            ("WEBHOOK_INCLUDE_BODY", "yes"),
            ("WEBHOOK_LEASE_MS", "1000"),
        ] {
            let e = Config::from_vars(&vars(&[(k, v)])).err().unwrap_or_else(|| panic!("{k}={v} accepted"));
            assert_eq!(e.var, k);
            assert!(!e.to_string().contains(v) || v.len() < 3, "error echoes the value");
        }
    }
}
