//! The gateway binary: config -> telemetry -> build -> run.
//!
//! `chatgw` serves; `chatgw seed …` bootstraps load-test users (see
//! `chatgw seed --help`); `chatgw backup --out FILE` copies the embedded
//! SQLite database while a gateway runs.

use clap::{Parser, Subcommand};

use chatgw::config::{Config, Environment};
use chatgw::startup::Application;

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
    Seed(chatgw::seed::SeedArgs),
    /// Write a consistent copy of the SQLite database named by DATABASE_URL
    /// to a new file, while a gateway keeps running (PostgreSQL: use
    /// pg_dump; see README.md, "Backups and restore").
    Backup(chatgw::backup::BackupArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // One clear line naming the variable, then a non-zero exit.
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(Command::Seed(args)) = &cli.command {
        let file = chatgw::seed::run(&config, args).await?;
        std::fs::write(&args.out, serde_json::to_vec(&file)?)?;
        println!("seeded {} users and {} rooms into {}", file.users.len(), file.rooms.len(), args.out.display());
        return Ok(());
    }
    if let Some(Command::Backup(args)) = &cli.command {
        use secrecy::ExposeSecret;
        match chatgw::backup::run(config.database_url.expose_secret(), &args.out).await {
            Ok(w) => {
                println!("backup written to {}: {} bytes in {} ms", w.path.display(), w.bytes, w.duration.as_millis());
                return Ok(());
            }
            Err(e) => {
                eprintln!("backup failed: {e}");
                std::process::exit(1);
            }
        }
    }
    chatgw::telemetry::init();
    // One descriptor per socket: raise the soft limit to the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(nofile = n, "file descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "could not raise the file descriptor limit"),
    }
    if config.environment == Environment::Development {
        tracing::warn!("running in development mode (APP_ENV=production for deployments)");
    }
    let app = Application::build(config).await?;
    println!("chatgw listening on http://{}", app.local_addr());
    if let Some(m) = app.metrics_addr() {
        println!("metrics on http://{m}/metrics");
    }
    app.run_until_stopped(chatgw::shutdown::signal()).await
}
