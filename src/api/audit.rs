//! Writing audit records from handlers (the table is `db::audit`; operators
//! read it at `GET /admin/audit`, users in their export).

use crate::db::AuditEvent;
use crate::state::AppState;

/// Appends an audit record after the action it describes has happened.
///
/// A failure is logged (action only: a record holds nothing secret, but
/// the error stays server-side) and counted in
/// `chatgw_db_errors_total{source="audit"}`, and the request goes on.
/// Failing the request instead would be wrong in both directions: the
/// action (a ban, a logout, an erasure) has already taken effect, so an
/// error would tell the client it did not and invite a retry; and making
/// sign-in depend on the audit insert would turn a full audit table into
/// an outage. Both writes go to the same database, so a lost record almost
/// always comes with failing requests that are already visible; the
/// counter and the `ChatgwPersistenceErrors` alert watch the rest.
pub async fn record(state: &AppState, event: AuditEvent<'_>) {
    if let Err(e) = state.store.append_audit(&event).await {
        state.metrics.db_errors.inc("audit");
        tracing::error!(action = event.action.as_str(), error = %e, "audit record not written");
    }
}
