//! The shutdown signal: SIGTERM or Ctrl-C.

use std::future::Future;

/// Resolves when the process is asked to stop.
///
/// The handlers are installed by this call, not when the future is first
/// polled: `main` calls it before printing the URL it listens on, so a
/// SIGTERM sent as soon as the URL appears drains like any other instead of
/// meeting the default action (an unclean exit).
///
/// # Panics
/// Outside a Tokio runtime with I/O enabled.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        // If a handler cannot be installed, only the other one stops us.
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        let wait = |s: Option<Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        async move {
            tokio::select! {
                () = wait(term) => {},
                () = wait(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
