//! The socket itself: writes raced against the kill switch, feeds and
//! flushes (write batching), reads sorted into kinds, the close handshake.
//!
//! It knows the wire (text frames, close codes) and nothing of what a frame
//! means: rooms, seqs and acks are the connection's business (`mod.rs`).
//! Every way the socket edge fails is one [`SocketError`].

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, TryFutureExt};

use crate::db::DbError;
use crate::hub::ConnShared;
use crate::metrics::Metrics;
use crate::protocol::{self, close};

/// Queued frames written before one flush (write coalescing).
pub(super) const WRITE_BATCH: usize = 64;

/// How long a close (ours, or the answer to the peer's) may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a write to the socket (or a replay that feeds it) failed. One type
/// for the socket edge: the connection ends on any of them, and only the
/// kill switch says how (the close code it was given).
#[derive(Debug, thiserror::Error)]
pub(super) enum SocketError {
    /// The hub cut the connection off (`ConnShared::close`) while the write
    /// waited.
    #[error("connection killed")]
    Killed,
    /// The WebSocket broke (peer gone, reset, protocol error).
    #[error("websocket: {0}")]
    Ws(#[from] axum::Error),
    /// Storage failed while frames were fed from it (a replay): logged
    /// where it happened; the socket cannot be left half-replayed.
    #[error("storage: {0}")]
    Storage(#[source] DbError),
}

/// Why a read failed, by the error's type (never its text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ReadError {
    /// A message or frame over `max_frame_bytes` (tungstenite's capacity
    /// error): closed with 1009.
    TooBig,
    /// A text message that is not UTF-8: closed with 1007.
    InvalidUtf8,
    /// Anything else (reset, protocol error, I/O): nothing more to send.
    Broken,
}

impl ReadError {
    /// Sorts a read error by the tungstenite error axum wraps.
    pub(super) fn of(e: axum::Error) -> ReadError {
        match e.into_inner().downcast::<tungstenite::Error>() {
            Ok(e) => match *e {
                tungstenite::Error::Capacity(_) => ReadError::TooBig,
                tungstenite::Error::Utf8(_) => ReadError::InvalidUtf8,
                _ => ReadError::Broken,
            },
            Err(_) => ReadError::Broken,
        }
    }

    /// The close code and reason the peer is told, if any is worth sending.
    pub(super) fn close(self) -> Option<(u16, &'static str)> {
        match self {
            ReadError::TooBig => Some((close::TOO_BIG, "frame too large")),
            ReadError::InvalidUtf8 => Some((close::INVALID_UTF8, "invalid UTF-8")),
            ReadError::Broken => None,
        }
    }
}

/// One read, sorted.
pub(super) enum Incoming {
    Text(Utf8Bytes),
    Binary,
    /// A WebSocket ping or pong (tungstenite answers pings itself).
    Control,
    /// The peer's Close, with its code if it gave one.
    Close(Option<u16>),
    /// The stream ended without a Close.
    Ended,
    Failed(ReadError),
}

/// One connection's WebSocket with its counters: every frame written goes
/// through here, so `frames_out` and `chatgw_ws_frames_out_total` cannot
/// miss one.
pub(super) struct Socket {
    ws: WebSocket,
    /// This connection's own entry in the registry: the kill switch.
    shared: Arc<ConnShared>,
    metrics: Metrics,
    /// Frames written, for the close log line.
    pub(super) frames_out: u64,
}

impl Socket {
    pub(super) fn new(ws: WebSocket, shared: Arc<ConnShared>, metrics: Metrics) -> Socket {
        Socket { ws, shared, metrics, frames_out: 0 }
    }

    /// Reads the next message.
    pub(super) async fn recv(&mut self) -> Incoming {
        match self.ws.recv().await {
            None => Incoming::Ended,
            Some(Ok(Message::Close(frame))) => Incoming::Close(frame.map(|f| f.code)),
            Some(Ok(Message::Text(text))) => Incoming::Text(text),
            Some(Ok(Message::Binary(_))) => Incoming::Binary,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => Incoming::Control,
            Some(Err(e)) => Incoming::Failed(ReadError::of(e)),
        }
    }

    /// Sends one frame now (fed and flushed), counted by its type, unless
    /// the kill switch is (or gets) pulled first: a peer that stopped
    /// reading cannot hold the task.
    ///
    /// # Errors
    /// [`SocketError::Killed`] or the WebSocket's error.
    pub(super) async fn write(&mut self, frame: Utf8Bytes) -> Result<(), SocketError> {
        if self.shared.kill.is_cancelled() {
            return Err(SocketError::Killed);
        }
        self.frames_out += 1;
        self.metrics.frames_out.inc(protocol::kind_of(&frame));
        tokio::select! {
            biased;
            () = self.shared.kill.cancelled() => Err(SocketError::Killed),
            r = self.ws.send(Message::Text(frame)) => Ok(r?),
        }
    }

    /// Feeds one frame without flushing, counted by its type.
    pub(super) async fn feed(&mut self, frame: Utf8Bytes) -> Result<(), SocketError> {
        self.frames_out += 1;
        self.metrics.frames_out.inc(protocol::kind_of(&frame));
        Ok(self.ws.feed(Message::Text(frame)).await?)
    }

    /// Feeds one frame without flushing, counted under `label` (the caller
    /// knows the type: no need to read it from the frame).
    pub(super) async fn feed_as(&mut self, frame: Utf8Bytes, label: &str) -> Result<(), SocketError> {
        self.frames_out += 1;
        self.metrics.frames_out.inc(label);
        Ok(self.ws.feed(Message::Text(frame)).await?)
    }

    /// Feeds one frame without flushing, counted in `frames_out` only
    /// (stored messages and events: the hot path skips the metric).
    ///
    /// Not an `async fn`, and inlined: it is called once per delivery, and
    /// returning the sink's own future adds no state machine (and no copy
    /// of the frame into one) on that path.
    #[inline]
    pub(super) fn feed_quiet(&mut self, frame: Utf8Bytes) -> impl Future<Output = Result<(), SocketError>> + '_ {
        self.frames_out += 1;
        self.ws.feed(Message::Text(frame)).err_into()
    }

    /// Feeds one frame and counts nothing: a replay counts its page once
    /// ([`Socket::tally`]).
    pub(super) async fn feed_uncounted(&mut self, frame: Utf8Bytes) -> Result<(), SocketError> {
        Ok(self.ws.feed(Message::Text(frame)).await?)
    }

    /// Counts `n` frames fed under `label`.
    pub(super) fn tally(&mut self, label: &str, n: u64) {
        self.frames_out += n;
        self.metrics.frames_out.add(label, n);
    }

    /// Writes what was fed. Inlined and not an `async fn`, like
    /// [`Socket::feed_quiet`]: once per written batch.
    #[inline]
    pub(super) fn flush(&mut self) -> impl Future<Output = Result<(), SocketError>> + '_ {
        self.ws.flush().err_into()
    }

    /// A WebSocket ping (the `ws` heartbeat).
    pub(super) async fn ping(&mut self) -> Result<(), SocketError> {
        Ok(self.ws.send(Message::Ping(Default::default())).await?)
    }

    /// Closes with `code`, best effort, 2 s in all: the peer may be gone or
    /// not reading.
    ///
    /// Then the closing handshake (RFC 6455 5.5.1): read until the peer's
    /// Close, discarding. A socket dropped with unread input is reset, and
    /// the reset can destroy the close frame before the client reads it: a
    /// client flooding us (4008) or sending junk (1007, 1009) would see 1006
    /// instead of the code that says why. Only for the closes a client's own
    /// sending causes: an idle, a slow or a drained peer is not worth
    /// holding the task for.
    pub(super) async fn close(&mut self, code: u16, reason: String) {
        let frame = CloseFrame { code, reason: Utf8Bytes::from(reason) };
        let handshake = matches!(code, close::RATE_LIMIT | close::TOO_BIG | close::INVALID_UTF8);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            if self.ws.send(Message::Close(Some(frame))).await.is_ok() && handshake {
                while let Some(Ok(msg)) = self.ws.recv().await {
                    if matches!(msg, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }

    /// Writes what was fed, within the close timeout: at drain, and to
    /// answer the peer's Close (RFC 6455 5.5.1). tungstenite queued that
    /// answer (the peer's code echoed) on reading it; only a write or flush
    /// sends it, and without one the client sees the connection drop (1006)
    /// instead of its clean close.
    pub(super) async fn flush_bounded(&mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.flush()).await;
    }
}

/// Runs `write` (feeds and a flush) racing the kill switch. The write goes
/// first: one that completes at once (the usual case) never looks at the
/// switch; one that waits on a peer that stopped reading is cut off by it.
///
/// # Errors
/// [`SocketError::Killed`] when the switch won, else the write's error.
pub(super) async fn race_kill<F>(shared: &ConnShared, write: F) -> Result<(), SocketError>
where
    F: std::future::Future<Output = Result<(), SocketError>>,
{
    tokio::select! {
        biased;
        r = write => r,
        () = shared.kill.cancelled() => Err(SocketError::Killed),
    }
}

#[cfg(test)]
mod tests {
    use super::ReadError;
    use crate::protocol::close;

    fn ws_error(e: tungstenite::Error) -> axum::Error {
        axum::Error::new(e)
    }

    #[test]
    fn read_errors_are_sorted_by_type_into_their_close_codes() {
        let too_long = tungstenite::error::CapacityError::MessageTooLong { size: 2, max_size: 1 };
        let cases = [
            (ws_error(tungstenite::Error::Capacity(too_long)), ReadError::TooBig, Some(close::TOO_BIG)),
            // The text of the error plays no part: a client's invalid bytes
            // saying "size" are still invalid UTF-8.
            (
                ws_error(tungstenite::Error::Utf8("size too long".into())),
                ReadError::InvalidUtf8,
                Some(close::INVALID_UTF8),
            ),
            (ws_error(tungstenite::Error::ConnectionClosed), ReadError::Broken, None),
            (ws_error(tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into())), ReadError::Broken, None),
            (axum::Error::new(std::io::Error::other("Message too big, utf-8")), ReadError::Broken, None),
        ];
        for (e, kind, code) in cases {
            let got = ReadError::of(e);
            assert_eq!(got, kind);
            assert_eq!(got.close().map(|(c, _)| c), code);
        }
    }
}
