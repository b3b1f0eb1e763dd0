//! The gateway binary: config -> telemetry -> build -> run.
//!
//! `chatgw` serves; `chatgw seed …` bootstraps load-test users (see
//! `chatgw seed --help`).

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
    /// Operator commands against a running instance's admin API
    /// (ADMIN_TOKEN from the environment): stats, connections, disconnect,
    /// ban, unban.
    Admin(chatgw::admin_cli::AdminArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // A client of a running instance: it needs none of the server's
    // configuration.
    if let Some(Command::Admin(args)) = cli.command {
        return chatgw::admin_cli::run(args).await;
    }
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
