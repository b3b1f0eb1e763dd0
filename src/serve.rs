//! The public listener's accept loop: `axum::serve` plus the bounds it
//! lacks.
//!
//! `axum::serve` gives hyper no timer, so hyper's header-read timeout never
//! fires: a client that opens a connection and trickles an upgrade request a
//! byte at a time (slowloris) holds a socket and a task forever, before any
//! per-IP or connection limit sees it. Here every HTTP/1 connection must
//! deliver a request's headers within `header_timeout` (from the connection's
//! start, and again for each keep-alive request), or it is closed. A
//! request's head (request line and headers) is held to
//! [`MAX_REQUEST_HEAD_BYTES`] however its bytes arrive. Everything else follows
//! `axum::serve`: upgrades, `ConnectInfo`, TCP_NODELAY, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Bytes of a request's head (request line, headers, the blank line) at
/// most; a longer head is answered 431 and the connection closed. Room for
/// a URL at hyper's limit (64 KiB, else 414) and ordinary headers beside it.
///
/// Set as hyper's `max_header_size`, which counts the head itself: its
/// read-buffer bound (`max_buf_size`, about 400 KiB) is checked only while
/// the head is incomplete, so a larger head that arrived in a few writes
/// could complete in one read past it and be served.
pub const MAX_REQUEST_HEAD_BYTES: usize = 128 * 1024;

/// Serves `app` until `shutdown` resolves, then stops accepting, lets
/// requests in flight finish, and returns once every HTTP connection has
/// closed (upgraded sockets are the hub's to drain, not this loop's).
pub async fn serve(listener: TcpListener, app: Router, header_timeout: Duration, shutdown: impl Future<Output = ()>) {
    let connections = TaskTracker::new();
    let closing = CancellationToken::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Chat frames are small and latency-sensitive: no Nagle delay.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        let service = app.clone().map_request(move |mut req: axum::http::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.map(axum::body::Body::new)
        });
        let closing = closing.clone();
        connections.spawn(async move {
            // Hyper's header deadline starts with the first byte; a client
            // that connects and sends nothing gets the same deadline here.
            match tokio::time::timeout(header_timeout, tcp.peek(&mut [0u8; 1])).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            // HTTP/1.1 only: the version sniffing that serves h2c reads the
            // first bytes with no deadline at all, so a silent connection
            // would never reach the header timeout. Proxies and WebSocket
            // clients speak HTTP/1.1 to us. (hyper's own HTTP/1 builder: the
            // auto builder does not offer `max_header_size`.)
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_header_size(MAX_REQUEST_HEAD_BYTES);
            let conn = builder.serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service)).with_upgrades();
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => return log_end(r, peer),
                () = closing.cancelled() => conn.as_mut().graceful_shutdown(),
            }
            log_end(conn.await, peer);
        });
    }
    drop(listener);
    closing.cancel();
    connections.close();
    connections.wait().await;
}

fn log_end(r: Result<(), hyper::Error>, peer: SocketAddr) {
    if let Err(e) = r {
        // Header timeouts, resets and malformed requests: the client's doing.
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// Errors of one connection (reset before accept) are skipped; anything else
/// (out of file descriptors) is logged and retried after a pause, as
/// `axum::serve` does, rather than spinning.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
