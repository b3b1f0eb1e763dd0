//! The command line: the subcommands and, besides serving, the ones that
//! run once and exit. `main.rs` parses [`Cli`], serves, or hands the
//! command to [`run`].
//!
//! - [`admin`]: `chatgw admin …`, the admin API from an operator's shell.
//! - [`backup`]: `chatgw backup --out FILE`, an online copy of the embedded
//!   SQLite database.
//! - [`seed`]: `chatgw seed …`, bulk users, rooms and tokens for load tests.
//! - `chatgw bump-epochs`: a new history epoch for every room, after a
//!   restore ([`bump_epochs`]).

pub mod admin;
pub mod backup;
pub mod seed;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::config::Config;

/// The command line of the `chatgw` binary.
#[derive(Parser)]
#[command(version, about = "Real-time chat gateway. Configured from the environment: see README.md.")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the API and WebSockets (the default).
    Serve,
    /// Create load-test users, sessions, tokens and rooms directly in
    /// DATABASE_URL, signed with the configured JWT key; writes a JSON file
    /// for `loadtest`. For load-test databases only.
    Seed(seed::SeedArgs),
    /// Operator commands against a running instance's admin API
    /// (ADMIN_TOKEN from the environment): stats, connections, disconnect,
    /// ban, unban.
    Admin(admin::AdminArgs),
    /// Write a consistent copy of the SQLite database named by DATABASE_URL
    /// to a new file, while a gateway keeps running (PostgreSQL: use
    /// pg_dump; see README.md, "Backups and restore").
    Backup(backup::BackupArgs),
    /// Give every room of DATABASE_URL a new history epoch. Run it after
    /// restoring a backup, before the gateways start: clients holding seqs
    /// of the lost timeline then get `reset` instead of silently missing
    /// the reused seqs (protocol §17; README.md, "Backups and restore").
    BumpEpochs,
}

/// The runtime `#[tokio::main]` would build, made by hand so that Sentry
/// can start before any of its threads exist (`main`'s serve).
///
/// # Errors
/// The runtime could not start its threads.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

/// Runs a one-shot subcommand against the configured database and
/// returns when it is done. `main` handles `serve` and `admin` (a client
/// of a running instance, which needs no configuration) itself.
///
/// # Errors
/// What the subcommand failed with.
pub fn run(command: Command, config: &Config) -> anyhow::Result<()> {
    match command {
        Command::Seed(args) => runtime()?.block_on(run_seed(config, &args)),
        Command::Backup(args) => runtime()?.block_on(run_backup(config, &args)),
        Command::BumpEpochs => runtime()?.block_on(bump_epochs(config)),
        Command::Serve | Command::Admin(_) => unreachable!("main handles serve and admin"),
    }
}

async fn run_seed(config: &Config, args: &seed::SeedArgs) -> anyhow::Result<()> {
    let file = seed::run(config, args).await?;
    std::fs::write(&args.out, serde_json::to_vec(&file)?)?;
    println!("seeded {} users and {} rooms into {}", file.users.len(), file.rooms.len(), args.out.display());
    Ok(())
}

/// `chatgw bump-epochs`: every room of `DATABASE_URL` gets a new history
/// epoch (migrations first, so it also works on a restored old file).
///
/// # Errors
/// The database is unreachable or the update failed.
pub async fn bump_epochs(config: &Config) -> anyhow::Result<()> {
    let store = crate::db::Store::connect(config.database_url.expose_secret(), 2).await?;
    store.migrate().await?;
    let n = store.bump_epochs().await?;
    store.close().await;
    println!("new epochs for {n} rooms");
    Ok(())
}

async fn run_backup(config: &Config, args: &backup::BackupArgs) -> anyhow::Result<()> {
    match backup::run(config.database_url.expose_secret(), &args.out).await {
        Ok(w) => {
            println!("backup written to {}: {} bytes in {} ms", w.path.display(), w.bytes, w.duration.as_millis());
            Ok(())
        }
        Err(e) => {
            // One line, as for configuration errors.
            eprintln!("backup failed: {e}");
            std::process::exit(1);
        }
    }
}
