//! The gateway binary: config -> telemetry -> build -> run.
//!
//! `chatgw` serves; the other subcommands (`seed`, `admin`, `backup`,
//! `bump-epochs`) are declared and run by the library's `cli` module.

use clap::Parser;

use chatgw::cli::{self, Cli, Command};
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

fn main() -> anyhow::Result<()> {
    let line = Cli::parse();
    // A client of a running instance: it needs none of the server's
    // configuration.
    let command = match line.command {
        Some(Command::Admin(args)) => return cli::runtime()?.block_on(cli::admin::run(args)),
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
        None | Some(Command::Serve) => serve(config),
        Some(once) => cli::run(once, &config),
    }
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
    let served = cli::runtime()?.block_on(async {
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
