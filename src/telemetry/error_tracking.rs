//! The Sentry client: errors and panics of this instance, scrubbed, tagged
//! with release, environment and instance.
//!
//! The client is process-wide by Sentry's design (every thread's hub is
//! derived from the main one), so `main` creates it before the runtime
//! starts any thread and owns the guard, like the tracing subscriber;
//! dropping the guard at exit flushes what is queued (bounded by
//! [`SHUTDOWN_FLUSH`]). Events are sent from a thread of the transport's
//! own (ureq over rustls): a slow or unreachable Sentry never blocks a
//! request, and a full queue drops events rather than memory.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sentry::{ClientInitGuard, ClientOptions, MaxRequestBodySize};

use super::scrub;

/// `chatgw@<version>`: how Sentry tells releases apart.
pub const RELEASE: &str = concat!("chatgw@", env!("CARGO_PKG_VERSION"));

/// How long exit waits for queued events to be sent.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

/// Where and how errors and panics are reported to Sentry.
#[derive(Clone)]
pub struct SentrySettings {
    /// The project's DSN, already checked to parse. Its key only allows
    /// sending events, but it still stays out of logs and errors.
    pub dsn: SecretString,
    /// `SENTRY_ENVIRONMENT`, defaulting to the `APP_ENV` name.
    pub environment: String,
    /// Share of error events sent, 0.0–1.0.
    pub sample_rate: f32,
}

/// Starts the client and its panic hook. Call it before any thread that
/// could log or panic exists, and keep the guard until exit.
pub fn init(config: &SentrySettings) -> ClientInitGuard {
    let instance = instance_name();
    let options = ClientOptions::new()
        .dsn(config.dsn.expose_secret())
        .release(RELEASE)
        .environment(config.environment.clone())
        .sample_rate(config.sample_rate)
        // No IP addresses, cookies, headers or request bodies, whatever an
        // integration would otherwise attach.
        .send_default_pii(false)
        .max_request_body_size(MaxRequestBodySize::None)
        .max_breadcrumbs(50)
        .shutdown_timeout(SHUTDOWN_FLUSH)
        .before_breadcrumb(|b| Some(scrub::breadcrumb(b)))
        .before_send(move |mut event| {
            // Set here rather than on a scope: a thread's scope is copied
            // from the main hub when first used, this applies to all.
            event.tags.insert("instance".into(), instance.clone());
            scrub::event(event)
        });
    let guard = sentry::init(options);
    // Sentry's DSN was validated by `Config`; an enabled client proves it.
    debug_assert!(guard.is_enabled());
    guard
}

/// Names this process among the instances of a deployment: the host name
/// (the same as Sentry's `server_name`) and the process id, since several
/// instances may share a host (and a container's pid alone says nothing).
fn instance_name() -> String {
    let host = sentry::integrations::contexts::utils::server_name().unwrap_or_else(|| "unknown-host".into());
    format!("{host}:{}", std::process::id())
}
