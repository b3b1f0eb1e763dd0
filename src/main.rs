//! The gateway binary: config -> telemetry -> build -> run.
//!
//! `chatgw` serves; `chatgw seed …` bootstraps load-test users (see
//! `chatgw seed --help`); `chatgw backup --out FILE` copies the embedded
//! SQLite database while a gateway runs.

use clap::{Parser, Subcommand};

use chatgw::config::{Config, Environment};
use chatgw::startup::Application;

// The global allocator of the binary only (tests and the library keep the
// system's). jemalloc by default: under a sign-in storm it gives the argon2
// blocks back to the OS, where glibc malloc kept them (BENCHMARKS.md,
// "Sign-in storm and the allocator"). `--features mimalloc` (wins over
// jemalloc) or `--no-default-features` (glibc) for comparisons.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
/// jemalloc's options, read before `main`: a background thread gives freed
/// pages back to the OS a second after they were freed, even while the
/// process is idle. By default they went back only as a side effect of
/// later allocations, so what a burst of handshakes used stayed resident
/// in a quiet gateway (4 KiB per idle socket at 2,000 sockets,
/// BENCHMARKS.md "Idle sockets"). `_RJEM_MALLOC_CONF` in the environment
/// still overrides it.
#[cfg(all(feature = "jemalloc", not(feature = "mimalloc")))]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(version, about = "Real-time chat gateway. Configured from the environment: see README.md.")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API and WebSockets (the default).
    Serve,
    /// Create load-test users, sessions, tokens and rooms directly in
    /// DATABASE_URL, signed with the configured JWT key; writes a JSON file
    /// for `loadtest`. For load-test databases only.
    Seed(chatgw::cli::seed::SeedArgs),
    /// Operator commands against a running instance's admin API
    /// (ADMIN_TOKEN from the environment): stats, connections, disconnect,
    /// ban, unban.
    Admin(chatgw::cli::admin::AdminArgs),
    /// Write a consistent copy of the SQLite database named by DATABASE_URL
    /// to a new file, while a gateway keeps running (PostgreSQL: use
    /// pg_dump; see README.md, "Backups and restore").
    Backup(chatgw::cli::backup::BackupArgs),
    /// Give every room of DATABASE_URL a new history epoch. Run it after
    /// restoring a backup, before the gateways start: clients holding seqs
    /// of the lost timeline then get `reset` instead of silently missing
    /// the reused seqs (protocol §17; README.md, "Backups and restore").
    BumpEpochs,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A client of a running instance: it needs none of the server's
    // configuration.
    let command = match cli.command {
        Some(Command::Admin(args)) => return runtime()?.block_on(chatgw::cli::admin::run(args)),
        other => other,
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // One clear line naming the variable, then a non-zero exit.
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    match command {
        Some(Command::Admin(_)) => unreachable!("handled above"),
        Some(Command::Seed(args)) => runtime()?.block_on(seed(&config, &args)),
        Some(Command::Backup(args)) => runtime()?.block_on(backup(&config, &args)),
        Some(Command::BumpEpochs) => runtime()?.block_on(bump_epochs(&config)),
        None | Some(Command::Serve) => serve(config),
    }
}

/// The runtime `#[tokio::main]` would build, made by hand so that Sentry
/// can start before any of its threads exist.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build()
}

fn serve(config: Config) -> anyhow::Result<()> {
    // Sentry before the runtime: every thread's hub is copied from the main
    // one, and the panic hook must be in place before any task can panic.
    // The guard lives until `main` returns, then flushes queued events.
    let sentry = config.sentry.as_ref().map(chatgw::telemetry::error_tracking::init);
    if sentry.is_some() {
        chatgw::telemetry::init_with_sentry();
    } else {
        chatgw::telemetry::init();
    }
    let served = runtime()?.block_on(async {
        // One descriptor per socket: raise the soft limit to the hard one.
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => tracing::info!(nofile = n, "file descriptor limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
        }
        if config.environment == Environment::Development {
            tracing::warn!("running in development mode (APP_ENV=production for deployments)");
        }
        if let Some(s) = &config.sentry {
            tracing::info!(environment = %s.environment, sample_rate = s.sample_rate, "reporting errors to Sentry");
        }
        let demo = config.demo.is_some();
        let app = Application::build(config).await?;
        // Installed before the URL is printed (from then on a SIGTERM
        // drains), not before the build (a hung start-up stays killable).
        let stop = chatgw::shutdown::signal();
        // Before the listening line, which tools and tests wait for as the
        // last word of start-up.
        if demo {
            println!("demo on http://{}/demo/ (DEMO=0 turns it off)", app.local_addr());
        }
        println!("chatgw listening on http://{}", app.local_addr());
        if let Some(m) = app.metrics_addr() {
            println!("metrics on http://{m}/metrics");
        }
        app.run_until_stopped(stop).await
    });
    if let Err(e) = &served {
        // A failed start-up is worth an event too (it is sent before exit).
        tracing::error!(error = format!("{e:#}"), "gateway stopped with an error");
    }
    drop(sentry);
    served
}

async fn seed(config: &Config, args: &chatgw::cli::seed::SeedArgs) -> anyhow::Result<()> {
    let file = chatgw::cli::seed::run(config, args).await?;
    std::fs::write(&args.out, serde_json::to_vec(&file)?)?;
    println!("seeded {} users and {} rooms into {}", file.users.len(), file.rooms.len(), args.out.display());
    Ok(())
}

async fn bump_epochs(config: &Config) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    let store = chatgw::db::Store::connect(config.database_url.expose_secret(), 2).await?;
    store.migrate().await?;
    let n = store.bump_epochs().await?;
    store.close().await;
    println!("new epochs for {n} rooms");
    Ok(())
}

async fn backup(config: &Config, args: &chatgw::cli::backup::BackupArgs) -> anyhow::Result<()> {
    use secrecy::ExposeSecret;
    match chatgw::cli::backup::run(config.database_url.expose_secret(), &args.out).await {
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
