//! Storage: one [`Store`] over PostgreSQL (cluster) or SQLite (embedded).
//!
//! Both backends run the same SQL through sqlx's `Any` driver: times are
//! Unix milliseconds, ids are TEXT, placeholders are `$n` (SQLite accepts
//! them too), and conflicts use `ON CONFLICT`, which both speak. Only the
//! schema files differ (`migrations/postgres`, `migrations/sqlite`). That keeps
//! one implementation to test instead of two that drift apart.
//!
//! SQLite allows one writer at a time; rather than retrying `SQLITE_BUSY`,
//! the store gives SQLite a separate single-connection write pool, so writers
//! queue in the pool and readers keep going (WAL). On PostgreSQL both pools
//! are the same pool.

mod audit;
mod idempotency;
mod messages;
mod push;
mod retention;
mod rooms;
mod script;
mod seed;
mod sessions;
mod users;

pub use audit::{AuditAction, AuditEvent, AuditQuery, AuditRecord, PURGE_BATCH};
pub use idempotency::IdempotencyRecord;
pub use messages::{
    AppendOutcome, DeleteReason, Deleter, EntryType, HistoryPage, MessageKey, NewKind, NewMessage, OPERATOR,
    StoredMessage,
};
pub use push::OutboxRow;
pub use retention::{ResumeState, Retention, RetentionRoom, new_epoch};
pub use rooms::{Member, Role, Room, RoomForUser};
pub use seed::SeedUser;
pub use sessions::{RefreshOutcome, SessionIdentity, SessionStatus};
pub use users::{EXPORT_MESSAGES_PAGE, Export, NewPassword, User};

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Connection, Executor};

/// Storage failures, sorted by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("not found")]
    NotFound,
    /// A uniqueness rule was violated; the string names which.
    #[error("conflict: {0}")]
    Conflict(&'static str),
    /// Storage cannot answer now (the database is unreachable, or the
    /// request never reached it); retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(Unavailable),
    #[error("database error: {0}")]
    Other(sqlx::Error),
}

/// Why storage is unavailable, so that code outside `db` says what
/// happened rather than inventing a `sqlx` error.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    /// The database cannot be reached (pool timeout, I/O, server going
    /// away): see `From<sqlx::Error>` for [`DbError`].
    #[error("{0}")]
    Database(sqlx::Error),
    /// The hub's committer ended without answering a request (the hub is
    /// shutting down).
    #[error("the committer stopped before answering")]
    CommitterGone,
    /// The batch holding the request failed to commit; its cause is
    /// logged once, for the whole batch.
    #[error("the batch holding the request failed to commit")]
    CommitFailed,
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => DbError::NotFound,
            sqlx::Error::PoolTimedOut
            | sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_) => DbError::Unavailable(Unavailable::Database(e)),
            // A server going away says so before the socket closes:
            // connection exceptions (class 08), shutdown or crash (57P01-03),
            // too many connections (53300). All are outages, not bugs.
            sqlx::Error::Database(ref d)
                if d.code().is_some_and(|c| c.starts_with("08") || c.starts_with("57P0") || c == "53300") =>
            {
                DbError::Unavailable(Unavailable::Database(e))
            }
            other => DbError::Other(other),
        }
    }
}

impl From<Unavailable> for DbError {
    fn from(cause: Unavailable) -> Self {
        DbError::Unavailable(cause)
    }
}

/// Maps a unique-constraint violation to [`DbError::Conflict`].
pub(crate) trait ResultExt<T> {
    fn on_unique(self, what: &'static str) -> Result<T, DbError>;
}

impl<T> ResultExt<T> for Result<T, sqlx::Error> {
    fn on_unique(self, what: &'static str) -> Result<T, DbError> {
        self.map_err(|e| match e.as_database_error() {
            Some(d) if d.is_unique_violation() => DbError::Conflict(what),
            _ => e.into(),
        })
    }
}

/// One connection pool's occupancy.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct PoolStats {
    pub pool: &'static str,
    pub idle: usize,
    pub in_use: usize,
    pub max: usize,
}

/// Which database the store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// What SQLite's commit waits for (`SQLITE_SYNCHRONOUS`). In WAL mode,
/// `Normal` writes each commit to the WAL without an fsync (the WAL is
/// synced at checkpoints): a commit survives the process crashing, but the
/// last commits before a power loss or kernel crash can be lost (never
/// corrupted). `Full` syncs the WAL at every commit, so an acknowledged
/// message survives power loss too, at the cost of an fsync per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    #[default]
    Normal,
    Full,
}

impl SqliteSync {
    fn pragma(self) -> &'static str {
        match self {
            SqliteSync::Normal => "NORMAL",
            SqliteSync::Full => "FULL",
        }
    }
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    read: AnyPool,
    write: AnyPool,
    backend: Backend,
}

/// A pooled PostgreSQL connection idle for this long is pinged before use.
const PING_IDLE: Duration = Duration::from_secs(1);

static PG_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl Store {
    /// Connects (creating the SQLite file and its directory if needed).
    ///
    /// # Errors
    /// The URL is invalid or the database cannot be reached.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, DbError> {
        Self::connect_with(url, max_connections, SqliteSync::default()).await
    }

    /// [`Store::connect`] with SQLite's commit durability (ignored for
    /// PostgreSQL, whose `synchronous_commit` is the server's or the URL's:
    /// `?options=-c%20synchronous_commit%3Doff`).
    ///
    /// # Errors
    /// The URL is invalid or the database cannot be reached.
    pub async fn connect_with(url: &str, max_connections: u32, sync: SqliteSync) -> Result<Self, DbError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") { Backend::Sqlite } else { Backend::Postgres };
        match backend {
            Backend::Postgres => {
                let opts = AnyConnectOptions::from_str(url)?;
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(5))
                    // A ping before every acquire doubled the round trips of
                    // every query. Only a connection that sat idle for a
                    // while is checked: after an outage every pooled
                    // connection has, and a dead one is replaced unseen.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for < PING_IDLE {
                                return Ok(true);
                            }
                            Ok(conn.ping().await.is_ok())
                        })
                    })
                    .connect_with(opts)
                    .await?;
                Ok(Store { read: pool.clone(), write: pool, backend })
            }
            Backend::Sqlite => {
                let url = sqlite_url_with_create(url);
                if let Some(dir) = sqlite_dir(&url) {
                    std::fs::create_dir_all(dir).map_err(|e| DbError::from(sqlx::Error::Io(e)))?;
                }
                let opts = AnyConnectOptions::from_str(&url)?;
                // The writer does not checkpoint (see `checkpoints`).
                let pool = |n: u32, writer: bool| {
                    AnyPoolOptions::new()
                        .max_connections(n)
                        .acquire_timeout(Duration::from_secs(10))
                        // A local file does not go away like a server does;
                        // the ping would be one more hand-off to sqlx's
                        // worker thread (two context switches) per query.
                        .test_before_acquire(false)
                        .after_connect(move |conn, _| {
                            Box::pin(async move {
                                let pragmas = format!(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = {}; \
                                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; \
                                     PRAGMA wal_autocheckpoint = {}; PRAGMA cache_size = {};",
                                    sync.pragma(),
                                    if writer { 0 } else { 1000 },
                                    // Readers: 256 KiB of pages each (SQLite's
                                    // default is 2 MiB); what they miss is in
                                    // the OS's page cache. The writer keeps 2 MiB.
                                    if writer { -2000 } else { -256 }
                                );
                                conn.execute(pragmas.as_str()).await?;
                                Ok(())
                            })
                        })
                        .connect_with(opts.clone())
                };
                let write = pool(1, true).await?;
                let read = pool(max_connections.max(2), false).await?;
                tokio::spawn(checkpoints(read.clone()));
                Ok(Store { read, write, backend })
            }
        }
    }

    /// Applies the embedded migrations for this backend.
    ///
    /// # Errors
    /// A migration failed or was changed after being applied.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self.backend {
            Backend::Postgres => PG_MIGRATOR.run(&self.write).await,
            Backend::Sqlite => SQLITE_MIGRATOR.run(&self.write).await,
        }
    }

    /// A real round trip, for `/readyz`.
    ///
    /// # Errors
    /// The database did not answer.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.read).await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pools' sizes now (PostgreSQL has one pool, reported as `read`;
    /// SQLite a reader pool and its single-connection `write` pool).
    pub fn pool_stats(&self) -> Vec<PoolStats> {
        let stats = |pool: &'static str, p: &AnyPool| {
            let (size, idle) = (p.size() as usize, p.num_idle());
            PoolStats { pool, idle, in_use: size.saturating_sub(idle), max: p.options().get_max_connections() as usize }
        };
        match self.backend {
            Backend::Postgres => vec![stats("read", &self.read)],
            Backend::Sqlite => vec![stats("read", &self.read), stats("write", &self.write)],
        }
    }

    /// Waits for checked-out connections to return, then closes the pools.
    pub async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }
}

/// How often the WAL is checkpointed into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints SQLite's WAL from a reader connection until the pool closes.
///
/// SQLite checkpoints on the committing connection by default, every 1,000
/// pages: with a commit per send that is several times a second, and each
/// one copied pages and synced files while every send queued behind it
/// (the fan-out benchmark's p99 was a flat plateau of such waits, 3-10 ms).
/// The writer has `wal_autocheckpoint = 0`; here a PASSIVE checkpoint,
/// which never blocks the writer, runs on another connection, so on
/// another of sqlx's threads. Ends when the store is closed.
async fn checkpoints(read: AnyPool) {
    let mut tick = tokio::time::interval(CHECKPOINT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if read.is_closed() {
            return;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&read).await {
            if read.is_closed() {
                return;
            }
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

/// Ensures `mode=rwc` so a fresh machine gets its database file created.
fn sqlite_url_with_create(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

fn sqlite_dir(url: &str) -> Option<std::path::PathBuf> {
    sqlite_path(url)?.parent().filter(|p| !p.as_os_str().is_empty()).map(Into::into)
}

/// The file a `sqlite:` URL names (`sqlite://./data/chatgw.db?mode=rwc` ->
/// `./data/chatgw.db`); `None` for other URLs and in-memory databases.
pub fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let path = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    Some(path.into())
}

/// A fresh opaque id (UUIDv7: time-ordered, so indexes stay compact).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// `$start, $start+1, …` placeholders for a dynamically sized statement.
pub(crate) fn placeholders(start: usize, n: usize) -> String {
    (start..start + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}
