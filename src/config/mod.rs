//! Typed configuration, read once from the environment at start-up.
//!
//! Every name here is part of the public contract (see README.md). Values are
//! validated before anything binds: a bad value stops the process with one
//! line naming the variable. Handlers never read the environment.
//!
//! The settings types belong to their components (`auth::JwtSettings`,
//! `hub::HubSettings`, `push::WebhookSettings`, …): this module imports
//! them to build them, and no component imports it. Declared once, built
//! once, copied nowhere.

mod components;
mod keys;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::{JwtSettings, PreviousKey};
use crate::bus::redis::RedisSettings;
use crate::hub::HubSettings;
use crate::limits::LimitSettings;
use crate::net::TrustedProxies;
use crate::push::WebhookSettings;
use crate::retention::RetentionSettings;
use crate::telemetry::SentrySettings;
use components::{demo_config, hub_settings, sentry_config, trusted_proxies, webhook_config};
use keys::jwt_key_from;

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

pub(super) fn err(var: &'static str, reason: impl Into<String>) -> ConfigError {
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
    /// The Redis bus (`REDIS_URL`, `REDIS_PREFIX`, `REDIS_PUBLISH_QUEUE`,
    /// `REDIS_TIMEOUT_MS`, `REDIS_ROOM_LINGER_SECS`, `PRESENCE_TTL_SECS`);
    /// `None` means the in-process bus.
    pub redis: Option<RedisSettings>,
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
    /// Longer than 120 lines on purpose: it reads top to bottom in the order
    /// the variables have always been checked, and that order decides which
    /// variable a configuration with several mistakes names. Each
    /// component's block is a function of `components.rs` or `keys.rs`.
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
            redis: redis_url.map(|url| RedisSettings {
                url,
                prefix: redis_prefix,
                publish_queue: redis_publish_queue,
                timeout: redis_timeout,
                linger: redis_linger,
                presence_ttl,
            }),
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

pub(super) type NumFn<'a> = dyn Fn(&'static str, u64, u64, u64) -> Result<u64, ConfigError> + 'a;

fn parse_addr(v: &str, var: &'static str) -> Result<SocketAddr, ConfigError> {
    v.parse().map_err(|_| err(var, "must be an IP:port socket address, e.g. 127.0.0.1:8080"))
}

pub(super) fn parse_num(v: Option<&str>, var: &'static str, default: u64) -> Result<u64, ConfigError> {
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

#[cfg(test)]
mod tests;
