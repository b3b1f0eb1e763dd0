//! Structured JSON logs on stdout, filtered by `RUST_LOG`, and optionally
//! error tracking in Sentry (`SENTRY_DSN`).
//!
//! What is logged is chosen at each call site: ids, counts, codes. Request
//! bodies, tokens, passwords, emails and message bodies never are; nor are
//! the wire payloads a dependency dumps at `trace` (`shows_payloads`),
//! whatever `RUST_LOG` asks for. What goes
//! to Sentry is scrubbed once more on the way out ([`scrub`]), because an
//! error event also carries panic messages and breadcrumbs.

pub mod error_tracking;
pub mod scrub;

pub use error_tracking::SentrySettings;

use tracing::{Level, Metadata};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::prelude::*;

/// The target of the events `POST /admin/debug/sentry-test` emits: they
/// carry fake secrets on purpose, so they go to Sentry (to prove scrubbing)
/// and never into the logs, where a secret scanner would flag them.
pub const SENTRY_TEST_TARGET: &str = "chatgw::sentry_test";

/// Targets whose `TRACE` lines print what crosses the wire: tungstenite
/// logs every frame it reads or writes, as text and as hex (message
/// bodies, the token of an `auth` frame). Their `DEBUG` lines (handshakes,
/// close frames) stay.
const PAYLOAD_TRACE_TARGETS: &[&str] = &["tungstenite"];

/// Whether an event is one of those payload dumps: never logged, even at
/// `RUST_LOG=trace`, since a log is read by more people than the traffic.
fn shows_payloads(m: &Metadata<'_>) -> bool {
    *m.level() == Level::TRACE
        && PAYLOAD_TRACE_TARGETS
            .iter()
            .any(|t| m.target().strip_prefix(t).is_some_and(|rest| rest.is_empty() || rest.starts_with("::")))
}

/// Installs the global subscriber with logs only (the one process-wide
/// thing, owned by `main`). Defaults to `info`.
pub fn init() {
    install(false);
}

/// Like [`init`], and forwards events to the Sentry client that
/// [`error_tracking::init`] installed: `ERROR` events become Sentry events,
/// `WARN` and `INFO` events breadcrumbs (both as far as `RUST_LOG` lets
/// them through).
pub fn init_with_sentry() {
    install(true);
}

fn install(sentry: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stdout)
        .with_filter(filter_fn(|m| m.target() != SENTRY_TEST_TARGET && !shows_payloads(m)));
    let breadcrumbs = sentry.then(|| {
        sentry::integrations::tracing::BreadcrumbLayer::new()
            .with_filter(filter_fn(|m| matches!(*m.level(), Level::WARN | Level::INFO)))
    });
    let errors = sentry.then(|| sentry::integrations::tracing::ErrorLayer::new().with_filter(LevelFilter::ERROR));
    // `try_init` fails only if a subscriber is already set (tests): fine.
    let _ = tracing_subscriber::registry().with(filter).with(logs).with(breadcrumbs).with(errors).try_init();
}
