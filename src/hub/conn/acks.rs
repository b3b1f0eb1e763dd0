//! Answers: the sends waiting for their commit, and each outcome (stored,
//! duplicate, refused, storage down) turned into its frame.
//!
//! Pure of the socket: these build frames; the connection writes them.

use std::future::Future;
use std::pin::Pin;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use serde_json::value::RawValue;
use tokio::sync::oneshot;

use crate::db::{AppendOutcome, DbError};
use crate::metrics::Metrics;
use crate::protocol::{ErrorCode, ServerFrame, error_frame};

/// A settled send: request id, room, client_msg_id, when it was received,
/// and the outcome.
pub(super) type Settled = (Option<Box<RawValue>>, String, String, Instant, Result<AppendOutcome, DbError>);

/// A send waiting for its commit.
type PendingAck = Pin<Box<dyn Future<Output = Settled> + Send>>;

/// The sends, edits and deletes of one socket waiting for their commit.
/// Made on the first send: a socket that only listens does not carry the
/// set.
#[derive(Default)]
pub(super) struct Acks(Option<FuturesUnordered<PendingAck>>);

impl Acks {
    /// Whether a commit is awaited (the loop polls [`Acks::next`] only then).
    pub(super) fn is_waiting(&self) -> bool {
        self.0.as_ref().is_some_and(|a| !a.is_empty())
    }

    /// The next settled send, if any were made.
    pub(super) async fn next(&mut self) -> Option<Settled> {
        match &mut self.0 {
            Some(a) => a.next().await,
            None => None,
        }
    }

    /// Waits for `rx`, the committer's answer to a send read at `received`
    /// (the start of the persist latency).
    pub(super) fn push(
        &mut self,
        rx: oneshot::Receiver<Result<AppendOutcome, DbError>>,
        id: Option<Box<RawValue>>,
        room: String,
        client_msg_id: String,
        received: Instant,
    ) {
        self.0.get_or_insert_with(FuturesUnordered::new).push(Box::pin(async move {
            // The committer dropped the job (shutdown): storage is gone.
            let res = rx.await.unwrap_or(Err(DbError::Unavailable(crate::db::Unavailable::CommitterGone)));
            (id, room, client_msg_id, received, res)
        }));
    }
}

/// An `error` frame, counted by code.
pub(super) fn error(
    metrics: &Metrics,
    id: Option<&RawValue>,
    code: ErrorCode,
    message: &str,
    room: Option<&str>,
    retry: Option<u64>,
) -> Utf8Bytes {
    metrics.ws_errors.with_label_values(&[code.as_str()]).inc();
    error_frame(id, code, message, room, retry)
}

/// Logs and counts a storage failure of a socket request.
pub(super) fn note_db_error(metrics: &Metrics, e: &DbError) {
    tracing::warn!(error = %e, "storage error on socket request");
    metrics.db_errors.inc("ws");
}

/// The `unavailable` answer to a request that storage failed.
pub(super) fn db_error(metrics: &Metrics, id: Option<&RawValue>, room: &str, e: DbError) -> Utf8Bytes {
    note_db_error(metrics, &e);
    error(metrics, id, ErrorCode::Unavailable, "storage temporarily unavailable; retry", Some(room), None)
}

/// The answer to a settled send, edit or delete.
pub(super) fn ack_frame(
    metrics: &Metrics,
    id: Option<&RawValue>,
    room: &str,
    cmid: &str,
    res: Result<AppendOutcome, DbError>,
) -> Utf8Bytes {
    match res {
        Ok(AppendOutcome::Stored(m)) => {
            ServerFrame::Ack { id, room, client_msg_id: cmid, seq: m.seq, sent_at: m.sent_at, duplicate: false }
                .encode()
        }
        Ok(AppendOutcome::Duplicate(m)) => {
            ServerFrame::Ack { id, room, client_msg_id: cmid, seq: m.seq, sent_at: m.sent_at, duplicate: true }.encode()
        }
        Ok(AppendOutcome::Conflict(m)) => {
            let msg = format!(
                "client_msg_id already used for another request (seq {}, a {}); use a new one",
                m.seq,
                m.kind.as_str()
            );
            error(metrics, id, ErrorCode::Conflict, &msg, Some(room), None)
        }
        // A room that does not exist is `forbidden` like one the user is
        // not a member of: the answer does not reveal room ids.
        Ok(AppendOutcome::NotMember) | Ok(AppendOutcome::NoSuchRoom) => {
            error(metrics, id, ErrorCode::Forbidden, "not a member of this room", Some(room), None)
        }
        Ok(AppendOutcome::TargetNotFound) => {
            error(metrics, id, ErrorCode::NotFound, "no such message in this room", Some(room), None)
        }
        // Not `forbidden`: that one tells the client to drop the room.
        Ok(AppendOutcome::NotAuthor) => {
            error(metrics, id, ErrorCode::NotAuthor, "not allowed to change this message", Some(room), None)
        }
        Ok(AppendOutcome::EditWindowClosed) => error(
            metrics,
            id,
            ErrorCode::EditWindowClosed,
            "the edit window of this message has passed",
            Some(room),
            None,
        ),
        Err(e) => db_error(metrics, id, room, e),
    }
}
