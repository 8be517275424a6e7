//! SQLite's statements, where they differ from the shared ones.
//!
//! SQLite has one writer, which holds the whole database: no row locks, so
//! no `FOR UPDATE SKIP LOCKED`. Reads of records name their index
//! (`INDEXED BY`): SQLite otherwise reads unkeyed records through the
//! keys' index (`IS NULL`) and sorts them. Its clock is this host's.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::sea_query::SimpleExpr;
use sea_orm::{SqliteTransactionMode, Statement, TransactionOptions};

use super::{Dialect, Names, key_branches};

#[derive(Debug)]
pub(crate) struct Sqlite(pub(crate) Names);

impl Dialect for Sqlite {
    fn names(&self) -> &Names {
        &self.0
    }

    fn locks_rows(&self) -> bool {
        false
    }

    /// Taking the write lock at `BEGIN` (`IMMEDIATE`), so two claimers
    /// never both read and then fail to upgrade.
    fn transaction(&self) -> TransactionOptions {
        TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        }
    }

    fn now(&self) -> Option<Statement> {
        None
    }

    fn after(&self, after: TimeDelta) -> SimpleExpr {
        (Utc::now() + after).into()
    }

    fn ready_keys(&self, now: DateTime<Utc>, limit: i64, except: &[String]) -> Statement {
        let mut b = self.binds();
        let now = b.bind(now);
        let except = self.except_keys(&mut b, except);
        let limit = b.bind(limit);
        b.statement(format!(
            "SELECT partition_key FROM {keys}
WHERE next_at <= {now}{except}
ORDER BY next_at
LIMIT {limit}",
            keys = self.names().keys
        ))
    }

    /// A `UNION ALL` of one branch per key, each with its own `ORDER BY`
    /// and `LIMIT` in a subquery (SQLite takes no parentheses there), at
    /// most 500 terms.
    fn key_records(&self, keys: &[(String, i64)], per_key: i64) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let sql = key_branches(&mut b, keys, per_key, |i, key, after, limit| {
            format!(
                "SELECT * FROM (SELECT {columns} FROM {outbox} o INDEXED BY {index}
  WHERE o.partition_key = {key} AND o.status = 'pending' AND o.id > {after}
  ORDER BY o.id LIMIT {limit}) AS k{i}",
                columns = n.columns,
                outbox = n.outbox,
                index = n.index_key_pending,
            )
        });
        b.statement(sql)
    }

    /// The lowest id of each key, grouped.
    fn key_heads(&self, keys: &[String]) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let keys = b.list(keys.iter().cloned());
        let after = b.bind(i64::MIN);
        b.statement(format!(
            "SELECT {columns} FROM {outbox} o WHERE o.id IN (
  SELECT MIN(i.id) FROM {outbox} i INDEXED BY {index}
  WHERE i.partition_key IN ({keys}) AND i.status = 'pending' AND i.id > {after}
  GROUP BY i.partition_key)",
            columns = n.columns,
            outbox = n.outbox,
            index = n.index_key_pending,
        ))
    }

    fn unkeyed(&self, now: DateTime<Utc>, limit: i64) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let (now, limit) = (b.bind(now), b.bind(limit));
        b.statement(format!(
            "SELECT {columns} FROM {outbox} o INDEXED BY {index}
WHERE o.status = 'pending' AND o.partition_key IS NULL AND o.available_at <= {now}
ORDER BY o.available_at
LIMIT {limit}",
            columns = n.columns,
            outbox = n.outbox,
            index = n.index_keyless,
        ))
    }

    fn idle_keys(&self, limit: i64) -> Statement {
        let mut b = self.binds();
        let limit = b.bind(limit);
        b.statement(format!(
            "SELECT partition_key FROM {table} WHERE next_at IS NULL AND held_by IS NULL
LIMIT {limit}",
            table = self.names().keys
        ))
    }

    fn idle_keys_with_records(&self) -> Statement {
        let n = self.names();
        self.binds().statement(format!(
            "SELECT partition_key FROM {table}
WHERE next_at IS NULL AND held_by IS NULL AND EXISTS (
  SELECT 1 FROM {outbox} o
  WHERE o.partition_key = {name}.partition_key AND o.status = 'pending')",
            table = n.keys,
            outbox = n.outbox,
            name = n.keys_name
        ))
    }

    /// By `rowid`: SQLite's `DELETE` takes no `LIMIT` unless built with it.
    fn inbox_purge(&self, before: DateTime<Utc>, limit: i64) -> Statement {
        let mut b = self.binds();
        let (before, limit) = (b.bind(before), b.bind(limit));
        b.statement(format!(
            "DELETE FROM {inbox} WHERE rowid IN (
  SELECT rowid FROM {inbox}
  WHERE processed_at < {before} ORDER BY processed_at LIMIT {limit})",
            inbox = self.names().inbox
        ))
    }
}
