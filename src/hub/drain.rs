//! Drain: closing every socket at shutdown without a reconnect storm.

use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;

use super::Hub;
use crate::protocol::close;

impl Hub {
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Spawns a connection task on the hub's tracker (awaited at drain).
    pub fn spawn_conn<F: std::future::Future<Output = ()> + Send + 'static>(&self, f: F) {
        self.inner.conn_tasks.spawn(f);
    }

    /// Every connection is told to reconnect after a randomised delay (so a
    /// restart does not become a reconnect storm) and closed with 1001
    /// after its queue is flushed. Waits for the connection tasks, at most
    /// `deadline`.
    pub async fn drain(&self, deadline: Duration) {
        self.inner.draining.store(true, Ordering::SeqCst);
        let max = self.inner.settings.drain_reconnect_max_ms.max(1);
        for c in self.inner.registry.all() {
            let delay = rand::thread_rng().gen_range(0..max);
            c.close(close::GOING_AWAY, &format!("drain; reconnect_after_ms={delay}"));
        }
        self.inner.conn_tasks.close();
        if tokio::time::timeout(deadline, self.inner.conn_tasks.wait()).await.is_err() {
            tracing::warn!(remaining = self.connection_count(), "connections did not close in time");
        }
    }
}
