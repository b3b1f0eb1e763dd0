//! Structured JSON logs on stdout, filtered by `RUST_LOG`.
//!
//! What is logged is chosen at each call site: ids, counts, codes. Request
//! bodies, tokens, passwords, emails and message bodies never are.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber (the one process-wide thing, owned by
/// `main`). Defaults to `info`.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // `try_init` fails only if a subscriber is already set (tests): fine.
    let _ = tracing_subscriber::fmt()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}
