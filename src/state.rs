//! The shared state every handler receives: handles, never globals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::auth::{JwtKeys, Passwords};
use crate::config::Config;
use crate::db::Store;
use crate::hub::Hub;
use crate::limits::Limits;
use crate::metrics::Metrics;
use crate::net::TrustedProxies;

/// Cheap to clone: every field is a handle.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub keys: Arc<JwtKeys>,
    pub passwords: Passwords,
    pub limits: Arc<Limits>,
    pub metrics: Metrics,
    pub readiness: Readiness,
    pub hub: Hub,
    /// When the application was built (uptime in the admin view).
    pub started: std::time::Instant,
}

/// Flipped to "draining" first thing on shutdown, so load balancers stop
/// sending new work before anything closes.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_draining(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Lends the trusted proxies to the [`crate::net::ClientAddr`] extractor,
/// which is generic so that `net` need not know this state.
impl AsRef<TrustedProxies> for AppState {
    fn as_ref(&self) -> &TrustedProxies {
        &self.config.trusted_proxies
    }
}
