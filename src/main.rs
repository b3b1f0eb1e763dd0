//! The gateway binary: config -> telemetry -> build -> run.

use chatgw::config::{Config, Environment};
use chatgw::startup::Application;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            // One clear line naming the variable, then a non-zero exit.
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    chatgw::telemetry::init();
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
