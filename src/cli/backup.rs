//! `chatgw backup --out FILE`: a consistent copy of the embedded SQLite
//! database, taken while a gateway keeps serving and writing.
//!
//! The copy is made by `VACUUM INTO` on a connection of its own: SQLite runs
//! it inside one read transaction, so under WAL it sees exactly the
//! transactions committed before it began (every message acknowledged
//! before the backup started) while writers carry on beside it, and it
//! writes one compact file with no `-wal` to carry along. A file copy (`cp`)
//! of a live WAL database can tear between the main file and its WAL; this
//! cannot.
//!
//! The copy is written under a temporary name beside FILE, checked
//! (`PRAGMA quick_check`), fsynced, and only then linked into place, so FILE
//! either does not exist or is a complete backup; an existing FILE is never
//! replaced. PostgreSQL has its own tools (`pg_dump`, `pg_basebackup`; README
//! "Backups and restore"): this command refuses it rather than shelling out.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row};

use crate::db::sqlite_path;

/// What `chatgw backup` is asked to do.
#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    /// The backup file to create. It must not exist: a backup never
    /// replaces another one.
    #[arg(long)]
    pub out: PathBuf,
}

/// A finished backup, for the operator's console.
#[derive(Debug)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub duration: Duration,
}

/// Why no backup was written. `Display` is the line the command prints.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(
        "DATABASE_URL is PostgreSQL: `chatgw backup` copies the embedded SQLite database only. Back PostgreSQL up \
         with its own tools: pg_dump -Fc for a logical dump, pg_basebackup with WAL archiving for point-in-time \
         recovery (README.md, section \"Backups and restore\")"
    )]
    Postgres,
    #[error("DATABASE_URL names no SQLite file (an in-memory database has nothing to back up)")]
    NoFile,
    #[error("no database file at {0} (check DATABASE_URL)")]
    Missing(PathBuf),
    #[error("{0} already exists: refusing to overwrite it (choose a new --out)")]
    Exists(PathBuf),
    #[error("--out must be a UTF-8 path")]
    NonUtf8Path,
    #[error("the copy failed its integrity check: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.to_owned();
    move |source| BackupError::Io { what, path, source }
}

/// Copies the database `database_url` names into `out`.
///
/// # Errors
/// See [`BackupError`]; on any error no file is left at `out` or beside it.
pub async fn run(database_url: &str, out: &Path) -> Result<Written, BackupError> {
    let started = Instant::now();
    if !database_url.starts_with("sqlite:") {
        // The configuration admits only sqlite: and postgres URLs.
        return Err(BackupError::Postgres);
    }
    let db = sqlite_path(database_url).ok_or(BackupError::NoFile)?;
    if !db.is_file() {
        return Err(BackupError::Missing(db));
    }
    // Checked again at the end without a race (see `publish`); checking
    // now as well fails fast, before copying anything.
    if out.symlink_metadata().is_ok() {
        return Err(BackupError::Exists(out.to_owned()));
    }
    let name = out.file_name().and_then(|n| n.to_str()).ok_or(BackupError::NonUtf8Path)?;
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Same directory as `out`, so the final link never crosses file systems.
    let partial = Partial(Some(dir.join(format!(".{name}.partial-{}", uuid::Uuid::new_v4().simple()))));
    let tmp = partial.path();

    vacuum_into(&db, tmp).await?;
    check(tmp).await?;
    let file = std::fs::File::open(tmp).map_err(io("opening", tmp))?;
    file.sync_all().map_err(io("syncing", tmp))?;
    let bytes = file.metadata().map_err(io("reading", tmp))?.len();
    drop(file);
    publish(tmp, out)?;
    partial.published();
    // The new directory entry is durable only once the directory is synced.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing", dir))?;
    Ok(Written { path: out.to_owned(), bytes, duration: started.elapsed() })
}

/// `VACUUM INTO` from a fresh connection: the gateway's pools are not
/// involved and its writers are not blocked (WAL).
async fn vacuum_into(db: &Path, target: &Path) -> Result<(), BackupError> {
    let target = target.to_str().ok_or(BackupError::NonUtf8Path)?;
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .create_if_missing(false)
        // Only a checkpoint can hold the read lock up briefly.
        .busy_timeout(Duration::from_secs(30))
        .connect()
        .await?;
    // VACUUM INTO takes an expression: the path is bound, never quoted by hand.
    let done = sqlx::query("VACUUM INTO $1").bind(target).execute(&mut conn).await;
    conn.close().await?;
    done?;
    Ok(())
}

/// Opens the copy as an immutable file (no locks, no `-wal`/`-shm` beside
/// it) and runs SQLite's quick integrity check.
async fn check(copy: &Path) -> Result<(), BackupError> {
    let mut conn = SqliteConnectOptions::new().filename(copy).read_only(true).immutable(true).connect().await?;
    let verdict: String = sqlx::query("PRAGMA quick_check").fetch_one(&mut conn).await?.try_get(0)?;
    conn.close().await?;
    if verdict == "ok" { Ok(()) } else { Err(BackupError::Corrupt(verdict)) }
}

/// Gives `partial` its final name without ever replacing an existing file:
/// a hard link fails if `out` exists (a rename would silently overwrite),
/// then the temporary name is removed. Where hard links are unsupported,
/// falls back to a rename after one more check.
fn publish(partial: &Path, out: &Path) -> Result<(), BackupError> {
    match std::fs::hard_link(partial, out) {
        Ok(()) => std::fs::remove_file(partial).map_err(io("removing", partial)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(BackupError::Exists(out.to_owned())),
        Err(_) if out.symlink_metadata().is_ok() => Err(BackupError::Exists(out.to_owned())),
        Err(_) => std::fs::rename(partial, out).map_err(io("renaming to", out)),
    }
}

/// The temporary copy, removed on every early return.
struct Partial(Option<PathBuf>);

impl Partial {
    fn path(&self) -> &Path {
        // Some until `published` consumes the guard.
        self.0.as_deref().expect("set at construction")
    }

    /// The file now has its final name: nothing to remove.
    fn published(mut self) {
        self.0 = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            // Best effort: it may not exist (the copy failed before writing).
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_postgres_and_missing_files_and_existing_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("b.db");
        let e = run("postgres://u@h/db", &out).await.unwrap_err();
        assert!(matches!(e, BackupError::Postgres));
        assert!(e.to_string().contains("pg_dump") && e.to_string().contains("Backups and restore"));
        let missing = format!("sqlite://{}/nope.db", dir.path().display());
        assert!(matches!(run(&missing, &out).await.unwrap_err(), BackupError::Missing(_)));
        std::fs::write(dir.path().join("live.db"), b"").unwrap();
        std::fs::write(&out, b"keep").unwrap();
        let live = format!("sqlite://{}/live.db", dir.path().display());
        assert!(matches!(run(&live, &out).await.unwrap_err(), BackupError::Exists(_)));
        assert_eq!(std::fs::read(&out).unwrap(), b"keep");
    }

    #[tokio::test]
    async fn copies_committed_rows_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("live.db");
        let mut conn = SqliteConnectOptions::new()
            .filename(&db)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .connect()
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (x INTEGER)").execute(&mut conn).await.unwrap();
        sqlx::query("INSERT INTO t VALUES (1), (2), (3)").execute(&mut conn).await.unwrap();
        // Left open: the rows may still sit in the WAL, as in a live gateway.
        let out = dir.path().join("copy.db");
        let w = run(&format!("sqlite://{}", db.display()), &out).await.unwrap();
        assert_eq!(w.bytes, std::fs::metadata(&out).unwrap().len());
        let mut copy = SqliteConnectOptions::new().filename(&out).immutable(true).connect().await.unwrap();
        let n: i64 = sqlx::query("SELECT count(*) FROM t").fetch_one(&mut copy).await.unwrap().get(0);
        assert_eq!(n, 3);
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!names.iter().any(|n| n.contains("partial")), "{names:?}");
        drop(conn);
    }
}
