//! The group commit's statements, and the write transaction they run in,
//! with as few trips to the database as each backend allows.
//!
//! sqlx runs every SQLite connection on a worker thread of its own: each
//! statement, and `BEGIN` and `COMMIT` too, is a hand-off to that thread and
//! back. On one core those hand-offs were the largest cost of a send (two
//! context switches each, eight trips per batch). SQLite accepts several
//! statements in one query, and sqlx binds `$n` by number across all of
//! them, so on SQLite a [`Script`] is sent as one query: a batch costs two
//! trips (`BEGIN IMMEDIATE` and the reads; the writes and `COMMIT`).
//! PostgreSQL's extended protocol takes one statement per query, so there
//! the same statements run one by one inside an ordinary transaction.

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, Arguments, Encode, Type};

use super::{Backend, DbError, Store};

/// Statements built with their bound values. Placeholders come from
/// [`Script::arg`]: numbered across the whole script when it is sent as one
/// query, from `$1` in each statement otherwise.
pub(super) struct Script<'q> {
    joined: bool,
    stmts: Vec<(String, AnyArguments<'q>)>,
    args: AnyArguments<'q>,
    n: usize,
}

impl<'q> Script<'q> {
    pub(super) fn new(tx: &WriteTx) -> Self {
        Script { joined: tx.joins(), stmts: Vec::new(), args: AnyArguments::default(), n: 0 }
    }

    /// Binds `v` to the statement being built; returns its placeholder.
    pub(super) fn arg<T>(&mut self, v: T) -> String
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        // Adding to `AnyArguments` only fails for a type Any cannot carry;
        // every caller binds text and integers.
        let _ = self.args.add(v);
        self.n += 1;
        format!("${}", self.n)
    }

    /// Ends a statement whose placeholders were taken from [`Script::arg`].
    pub(super) fn push(&mut self, sql: String) {
        if self.joined {
            match self.stmts.last_mut() {
                Some((all, _)) => {
                    all.push_str(";\n");
                    all.push_str(&sql);
                }
                None => self.stmts.push((sql, AnyArguments::default())),
            }
        } else {
            self.stmts.push((sql, std::mem::take(&mut self.args)));
            self.n = 0;
        }
    }

    /// Ends statements that write and whose order does not matter, as one
    /// query on both backends: on PostgreSQL, data-modifying `WITH`
    /// clauses of one statement (each runs once, to completion), so the
    /// commit's inserts and `last_seq` update cost one round trip. Their
    /// placeholders are taken together, before this call.
    pub(super) fn push_together(&mut self, parts: Vec<String>) {
        if self.joined || parts.len() < 2 {
            for p in parts {
                self.push(p);
            }
        } else {
            let clauses = parts.iter().enumerate().map(|(i, p)| format!("w{i} AS ({p})")).collect::<Vec<_>>();
            self.push(format!("WITH {} SELECT 1", clauses.join(", ")));
        }
    }

    /// The queries to send: one when joined (all values together).
    fn into_queries(mut self) -> Vec<(String, AnyArguments<'q>)> {
        if self.joined
            && let Some((_, args)) = self.stmts.last_mut()
        {
            *args = self.args;
        }
        self.stmts
    }
}

/// A write transaction for the group commit.
///
/// On SQLite it holds the single writer connection and begins and ends the
/// transaction with statements of its own scripts, so neither costs a trip;
/// sqlx does not know a transaction is open, so a `WriteTx` dropped before
/// its `COMMIT` ran (an error, a cancelled future) closes the connection
/// instead of returning it to the pool, and SQLite rolls back.
pub(super) enum WriteTx {
    /// `None` once committed.
    Postgres(Option<sqlx::Transaction<'static, Any>>),
    Sqlite {
        conn: Option<PoolConnection<Any>>,
        begun: bool,
        open: bool,
    },
}

impl Store {
    pub(super) async fn begin_write(&self) -> Result<WriteTx, DbError> {
        Ok(match self.backend {
            Backend::Postgres => WriteTx::Postgres(Some(self.write.begin().await?)),
            Backend::Sqlite => WriteTx::Sqlite { conn: Some(self.write.acquire().await?), begun: false, open: true },
        })
    }
}

impl WriteTx {
    fn joins(&self) -> bool {
        matches!(self, WriteTx::Sqlite { .. })
    }

    /// The connection, inside the transaction: for statements that are not
    /// part of a script (rare paths: push outbox rows, change events).
    pub(super) async fn conn(&mut self) -> Result<&mut AnyConnection, DbError> {
        match self {
            WriteTx::Postgres(tx) => Ok(&mut **tx.as_mut().ok_or(DbError::from(sqlx::Error::PoolClosed))?),
            WriteTx::Sqlite { conn, begun, .. } => {
                let c = conn.as_mut().ok_or(DbError::from(sqlx::Error::PoolClosed))?;
                if !*begun {
                    sqlx::query("BEGIN IMMEDIATE").execute(&mut **c).await?;
                    *begun = true;
                }
                Ok(&mut **c)
            }
        }
    }

    /// Runs `script` and returns every row its statements produced, in order.
    pub(super) async fn fetch(&mut self, script: Script<'_>) -> Result<Vec<AnyRow>, DbError> {
        let mut rows = Vec::new();
        for (sql, args) in script.into_queries() {
            let sql = self.with_begin(sql);
            rows.extend(sqlx::query_with(&sql, args).fetch_all(self.raw()?).await?);
        }
        Ok(rows)
    }

    /// Runs `script`, then commits: on SQLite `COMMIT` ends the script's
    /// query.
    pub(super) async fn commit(mut self, mut script: Script<'_>) -> Result<(), DbError> {
        if self.joins() {
            script.push("COMMIT".into());
        }
        for (sql, args) in script.into_queries() {
            let sql = self.with_begin(sql);
            sqlx::query_with(&sql, args).execute(self.raw()?).await?;
        }
        match &mut self {
            WriteTx::Postgres(tx) => {
                if let Some(tx) = tx.take() {
                    tx.commit().await?;
                }
            }
            WriteTx::Sqlite { open, .. } => *open = false,
        }
        Ok(())
    }

    /// `sql`, preceded by `BEGIN IMMEDIATE` if this is the transaction's
    /// first query on SQLite. Immediate: the write lock is taken at once, so
    /// the transaction never has to upgrade a read snapshot a writer moved.
    fn with_begin(&mut self, sql: String) -> String {
        match self {
            WriteTx::Sqlite { begun, .. } if !*begun => {
                *begun = true;
                format!("BEGIN IMMEDIATE;\n{sql}")
            }
            _ => sql,
        }
    }

    fn raw(&mut self) -> Result<&mut AnyConnection, DbError> {
        match self {
            WriteTx::Postgres(tx) => Ok(&mut **tx.as_mut().ok_or(DbError::from(sqlx::Error::PoolClosed))?),
            WriteTx::Sqlite { conn, .. } => Ok(&mut **conn.as_mut().ok_or(DbError::from(sqlx::Error::PoolClosed))?),
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let WriteTx::Sqlite { conn, open: true, begun: true } = self
            && let Some(c) = conn.take()
        {
            // Closed, not pooled: closing rolls the transaction back.
            drop(c.detach());
        }
    }
}
