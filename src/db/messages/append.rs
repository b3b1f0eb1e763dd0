//! Appending a batch: read what storage knows under the rooms' locks, let
//! the pure [`plan`](super::plan) apply the chat's rules, then write the
//! plan, all in one transaction of a constant number of statements.

use sqlx::Row;

use super::plan::{self, Facts, Plan, Target};
use super::{AppendOutcome, DeleteReason, EntryType, IN_CHUNK, MSG_COLS_M, NewMessage, StoredMessage, message_from};
use crate::db::script::{Script, WriteTx};
use crate::db::{Backend, DbError, Store};

/// Rows per multi-row INSERT: 6 parameters each stays far below both
/// backends' parameter limits.
const INSERT_CHUNK: usize = 500;

impl Store {
    /// Appends a batch of messages, possibly for many rooms, in ONE
    /// transaction (the hub's group commit) of a constant number of
    /// statements, whatever the number of rooms:
    ///
    /// 1. lock the batch's rooms and read their `last_seq`: `FOR UPDATE` in
    ///    id order on PostgreSQL, so concurrent writers on any instance
    ///    serialise per room and can never deadlock; SQLite has one writer
    ///    connection, which already serialises;
    /// 2. read the batch's senders' memberships (and who owns the room),
    ///    under the lock, so a removed member can never store another
    ///    message;
    /// 3. read the rows already stored under the batch's
    ///    `(room, sender, client_msg_id)`s, and the current state of the
    ///    messages its changes (edit, delete) apply to;
    ///
    /// then [`plan::plan`] applies the chat's rules to these facts (retry
    /// dedup, permissions, seq allocation, same-batch changes: the list is
    /// in the `plan` module's doc), and the writes follow the plan:
    ///
    /// 4. insert the new rows, with consecutive seqs after `last_seq`, and
    ///    rewrite each changed message to its new state;
    /// 5. move each room's `last_seq`.
    ///
    /// A rollback releases the seqs unused, so they stay gap-free. Outcomes
    /// are in the order of `batch`.
    pub async fn append_messages(&self, batch: &[NewMessage]) -> Result<Vec<AppendOutcome>, DbError> {
        self.append_messages_with(batch, false).await
    }

    /// [`Store::append_messages`], and with `push_outbox` (the offline-push
    /// webhook is configured) one `push_outbox` row per newly stored
    /// message in the same transaction, so the webhook can neither miss a
    /// committed message nor announce one that was rolled back. Without it
    /// nothing more is written.
    pub async fn append_messages_with(
        &self,
        batch: &[NewMessage],
        push_outbox: bool,
    ) -> Result<Vec<AppendOutcome>, DbError> {
        let mut tx = self.begin_write().await?;
        let facts = self.read_facts(&mut tx, batch).await?;
        let plan = plan::plan(batch, facts);
        self.write_plan(tx, &plan, push_outbox).await?;
        Ok(plan.outcomes)
    }

    /// Steps 1-3 of [`Store::append_messages`]: what the plan needs to
    /// know, as one script (one query on SQLite); each row says which step
    /// it answers in its first column.
    async fn read_facts(&self, tx: &mut WriteTx, batch: &[NewMessage]) -> Result<Facts, DbError> {
        let mut rooms: Vec<&str> = batch.iter().map(|m| m.room_id.as_str()).collect();
        rooms.sort_unstable();
        rooms.dedup();
        let mut reads = Script::new(tx);
        // 1. Lock and read.
        let lock = if self.backend == Backend::Postgres { " FOR UPDATE" } else { "" };
        for chunk in rooms.chunks(IN_CHUNK) {
            let ids = chunk.iter().map(|r| reads.arg(*r)).collect::<Vec<_>>().join(", ");
            reads.push(format!("SELECT 'r' AS k, id, last_seq FROM rooms WHERE id IN ({ids}) ORDER BY id{lock}"));
        }
        // 2. Membership of (room, sender) pairs, and whether the sender owns
        // the room (for owners' deletes).
        let mut pairs: Vec<(&str, &str)> = batch.iter().map(|m| (m.room_id.as_str(), m.sender_id.as_str())).collect();
        pairs.sort_unstable();
        pairs.dedup();
        for chunk in pairs.chunks(IN_CHUNK) {
            let tuples = chunk
                .iter()
                .map(|(r, u)| format!("({}, {})", reads.arg(*r), reads.arg(*u)))
                .collect::<Vec<_>>()
                .join(", ");
            // A join on VALUES plans as index look-ups on both backends.
            reads.push(format!(
                "SELECT 'm' AS k, m.room_id, m.user_id, m.role FROM memberships m JOIN (VALUES {tuples}) AS v \
                 ON m.room_id = v.column1 AND m.user_id = v.column2"
            ));
        }
        // 3. Already stored.
        for chunk in batch.chunks(IN_CHUNK) {
            let tuples = chunk
                .iter()
                .map(|m| {
                    format!("({}, {}, {})", reads.arg(&m.room_id), reads.arg(&m.sender_id), reads.arg(&m.client_msg_id))
                })
                .collect::<Vec<_>>()
                .join(", ");
            reads.push(format!(
                "SELECT 'd' AS k, {MSG_COLS_M}, m.sent_digest FROM messages m JOIN (VALUES {tuples}) AS v \
                 ON m.room_id = v.column1 AND m.sender_id = v.column2 AND m.client_msg_id = v.column3"
            ));
        }
        // 3b. The current state of the messages that changes apply to (none
        // for a batch of plain messages).
        let wanted: Vec<(&str, i64)> =
            batch.iter().filter_map(|m| m.kind.target().map(|t| (m.room_id.as_str(), t))).collect();
        for chunk in wanted.chunks(IN_CHUNK) {
            let tuples = chunk
                .iter()
                .map(|(r, t)| format!("({}, {})", reads.arg(*r), reads.arg(*t)))
                .collect::<Vec<_>>()
                .join(", ");
            reads.push(format!(
                "SELECT 't' AS k, m.room_id, m.seq, m.sender_id, m.sent_at, m.kind, m.deleted_at, m.body, m.edited_at, \
                 m.sent_digest \
                 FROM messages m JOIN (VALUES {tuples}) AS v ON m.room_id = v.column1 AND m.seq = v.column2"
            ));
        }
        let mut facts = Facts::default();
        for row in tx.fetch(reads).await? {
            match row.try_get::<&str, _>("k")? {
                "r" => {
                    facts.last_seq.insert(row.try_get("id")?, row.try_get("last_seq")?);
                }
                "m" => {
                    let owner = row.try_get::<&str, _>("role")? == "owner";
                    facts.members.insert((row.try_get("room_id")?, row.try_get("user_id")?), owner);
                }
                "d" => {
                    let m = message_from(&row)?;
                    let digest = row.try_get("sent_digest")?;
                    facts.known.insert((m.room.clone(), m.sender.clone(), m.client_msg_id.clone()), (m, digest));
                }
                _ => {
                    let target = Target::stored(
                        row.try_get("sender_id")?,
                        row.try_get("sent_at")?,
                        row.try_get("kind")?,
                        row.try_get("deleted_at")?,
                        row.try_get("body")?,
                        row.try_get("edited_at")?,
                        row.try_get("sent_digest")?,
                    );
                    facts.targets.insert((row.try_get("room_id")?, row.try_get("seq")?), target);
                }
            }
        }
        Ok(facts)
    }

    /// Steps 4-5 of [`Store::append_messages`]: the plan's rows and the
    /// moved `last_seq`s, then the commit.
    async fn write_plan(&self, mut tx: WriteTx, plan: &Plan<'_>, push_outbox: bool) -> Result<(), DbError> {
        let (plain, changes): (Vec<&StoredMessage>, Vec<&StoredMessage>) =
            plan.fresh.iter().partition(|m| m.kind == EntryType::Message);
        // The inserts, then (rare) outbox rows and changes, then 5. the
        // moved `last_seq`s (one CASE statement per chunk of rooms) and the
        // commit. With nothing rare: the inserts and the update in one
        // query (one round trip), and on SQLite the commit in it too.
        let mut writes = Script::new(&tx);
        let mut parts = Vec::new();
        for chunk in plain.chunks(INSERT_CHUNK) {
            let rows = chunk
                .iter()
                .map(|m| {
                    let v = [
                        writes.arg(&m.room),
                        writes.arg(m.seq),
                        writes.arg(&m.sender),
                        writes.arg(&m.body),
                        writes.arg(&m.client_msg_id),
                        writes.arg(m.sent_at),
                    ];
                    format!("({})", v.join(", "))
                })
                .collect::<Vec<_>>()
                .join(", ");
            parts.push(format!(
                "INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id, sent_at) VALUES {rows}"
            ));
        }
        // Push notifications are for messages, not for edits and deletes.
        let outbox = push_outbox && !plain.is_empty();
        if outbox || plan.has_changes {
            // These need the new rows in place: the inserts go first.
            writes.push_together(std::mem::take(&mut parts));
            tx.fetch(writes).await?;
            writes = Script::new(&tx);
        }
        if outbox {
            crate::db::push::insert_outbox(tx.conn().await?, &plain).await?;
        }
        if plan.has_changes {
            self.store_changes(tx.conn().await?, &changes, &plan.changed).await?;
        }
        for chunk in plan.moved.chunks(IN_CHUNK) {
            let cases = chunk
                .iter()
                .map(|(room, seq)| format!("WHEN {} THEN {}", writes.arg(*room), writes.arg(*seq)))
                .collect::<Vec<_>>()
                .join(" ");
            let ids = chunk.iter().map(|(room, _)| writes.arg(*room)).collect::<Vec<_>>().join(", ");
            parts.push(format!("UPDATE rooms SET last_seq = CASE id {cases} END WHERE id IN ({ids})"));
        }
        writes.push_together(parts);
        tx.commit(writes).await
    }

    /// Inserts change events and writes their targets' new state (step 4
    /// of [`Store::append_messages`], only for batches holding changes): one
    /// statement per changed message, written in `(room, seq)` order.
    async fn store_changes(
        &self,
        tx: &mut sqlx::AnyConnection,
        changes: &[&StoredMessage],
        changed: &[((String, i64), Target)],
    ) -> Result<(), DbError> {
        for chunk in changes.chunks(INSERT_CHUNK) {
            let rows = (0..chunk.len())
                .map(|k| format!("({})", crate::db::placeholders(1 + 9 * k, 9)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO messages (room_id, seq, sender_id, body, client_msg_id, sent_at, kind, target_seq, reason) \
                 VALUES {rows}"
            );
            let mut q = sqlx::query(&sql);
            for m in chunk {
                q = q
                    .bind(&m.room)
                    .bind(m.seq)
                    .bind(&m.sender)
                    .bind(&m.body)
                    .bind(&m.client_msg_id)
                    .bind(m.sent_at)
                    .bind(m.kind.as_str())
                    .bind(m.target_seq)
                    .bind(m.reason.map(DeleteReason::as_str));
            }
            q.execute(&mut *tx).await?;
        }
        // One statement per changed message: changes are rare next to
        // messages, and an erasure batch is bounded.
        for ((room, seq), t) in changed {
            let (deleted_at, deleted_by) = match &t.deleted {
                Some((at, by)) => (Some(*at), Some(by.as_str())),
                None => (None, None),
            };
            sqlx::query(
                "UPDATE messages SET body = $3, edited_at = $4, deleted_at = $5, deleted_by = $6, sent_digest = $7 \
                 WHERE room_id = $1 AND seq = $2",
            )
            .bind(room)
            .bind(*seq)
            .bind(&t.body)
            .bind(t.edited_at)
            .bind(deleted_at)
            .bind(deleted_by)
            .bind(t.sent_digest.as_deref())
            .execute(&mut *tx)
            .await?;
            if t.deleted.is_some() {
                // A deleted message keeps no earlier version either.
                sqlx::query("UPDATE messages SET body = '' WHERE room_id = $1 AND target_seq = $2 AND kind = 'edit'")
                    .bind(room)
                    .bind(*seq)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        Ok(())
    }
}
