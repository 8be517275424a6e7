//! MySQL's and MariaDB's statements, where they differ from the shared
//! ones.
//!
//! Reads name their index (`FORCE INDEX`): the optimizer prefers an index
//! that spares an `ORDER BY ... LIMIT` its sort over one that reads only
//! the rows wanted (the `EXPLAIN` tests check it). MariaDB has no
//! `LATERAL`; upserts and deletes with a limit have their own forms.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::sea_query::{Alias, Expr, InsertStatement, OnConflict, SimpleExpr};
use sea_orm::{IsolationLevel, Statement, TransactionOptions};

use super::{Dialect, Names, key_branches, keys_insert};

#[derive(Debug)]
pub(crate) struct MySql(pub(crate) Names);

impl Dialect for MySql {
    fn names(&self) -> &Names {
        &self.0
    }

    /// No: deleting them in the settlement made a writer of one key wait
    /// for another key's open transaction (InnoDB's locks on index entries
    /// beyond a key's own; `tests/never_wait.rs`). A settlement marks them,
    /// and the relay's housekeeping purges them in batches of its own.
    fn deletes_published(&self) -> bool {
        false
    }

    /// No: a key left idle stays until housekeeping deletes it. A writer's
    /// upsert of an existing key takes InnoDB's next-key lock on it, which
    /// also covers the gap before it; a key deleted from that gap must be
    /// inserted again by its next writer, who then waits for the open
    /// transaction of the neighbouring key. Kept, the key is found and
    /// locked alone.
    fn deletes_idle_keys(&self) -> bool {
        false
    }

    /// At `READ COMMITTED`, so locking reads take no gap locks that would
    /// hold up writers' inserts.
    fn transaction(&self) -> TransactionOptions {
        TransactionOptions {
            isolation_level: Some(IsolationLevel::ReadCommitted),
            ..TransactionOptions::default()
        }
    }

    fn now(&self) -> Option<Statement> {
        Some(
            self.binds()
                .statement("SELECT UTC_TIMESTAMP(6) AS now".to_owned()),
        )
    }

    fn after(&self, after: TimeDelta) -> SimpleExpr {
        match after.num_microseconds().unwrap_or(i64::MAX) {
            0 => Expr::cust("UTC_TIMESTAMP(6)"),
            micros => {
                Expr::cust_with_values("TIMESTAMPADD(MICROSECOND, ?, UTC_TIMESTAMP(6))", [micros])
            }
        }
    }

    /// A `UNION ALL` of one branch per key, each with its own `ORDER BY`
    /// and `LIMIT`, in parentheses (as a derived table, MariaDB
    /// materializes each branch: 20 times slower). Without the named
    /// index, MariaDB reads `(status, id)` in id order to skip the sort,
    /// filtering every pending record by key: hundreds of milliseconds.
    fn key_records(&self, keys: &[(String, i64)], per_key: i64) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let sql = key_branches(&mut b, keys, per_key, |_, key, after, limit| {
            format!(
                "(SELECT {columns} FROM {outbox} o FORCE INDEX ({index})
  WHERE o.partition_key = {key} AND o.status = 'pending' AND o.id > {after}
  ORDER BY o.id LIMIT {limit})",
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
  SELECT MIN(i.id) FROM {outbox} i FORCE INDEX ({index})
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
            "SELECT {columns} FROM {outbox} o FORCE INDEX ({index})
WHERE o.status = 'pending' AND o.partition_key IS NULL AND o.available_at <= {now}
ORDER BY o.available_at
LIMIT {limit}
FOR UPDATE SKIP LOCKED",
            columns = n.columns,
            outbox = n.outbox,
            index = n.index_keyless,
        ))
    }

    /// MySQL/MariaDB writes nothing when the value stays, so a busy key
    /// keeps its `next_at` and is only locked.
    fn upsert_keys(&self, rows: Vec<(String, SimpleExpr)>) -> InsertStatement {
        let n = self.names();
        let mut insert = keys_insert(n, rows);
        let mut on_conflict = OnConflict::column(Alias::new("partition_key"));
        on_conflict.value(
            Alias::new("next_at"),
            Expr::cust(format!(
                "CASE WHEN {name}.next_at IS NULL AND {name}.held_by IS NULL \
                 THEN VALUES(next_at) ELSE {name}.next_at END",
                name = n.keys_name
            )),
        );
        insert.on_conflict(on_conflict);
        insert
    }

    /// Through the pending index: MariaDB otherwise reads the head through
    /// the unkeyed records' index and sorts what it finds.
    fn refresh_keys(&self, keys: &[String]) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let keys = b.list(keys.iter().cloned());
        b.statement(format!(
            "UPDATE {table} SET next_at = (
  SELECT CASE WHEN o.locked_until > o.available_at THEN o.locked_until ELSE o.available_at END
  FROM {outbox} o FORCE INDEX ({index})
  WHERE o.partition_key = {name}.partition_key AND o.status = 'pending'
  ORDER BY o.id LIMIT 1)
WHERE partition_key IN ({keys}) AND held_by IS NULL",
            table = n.keys,
            outbox = n.outbox,
            index = n.index_key_pending,
            name = n.keys_name,
        ))
    }

    fn register_missing_keys(&self, now: DateTime<Utc>) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let now = b.bind(now);
        b.statement(format!(
            "INSERT IGNORE INTO {keys} (partition_key, next_at)
SELECT DISTINCT o.partition_key, {now} FROM {outbox} o
WHERE o.status = 'pending' AND o.partition_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {keys} k WHERE k.partition_key = o.partition_key)",
            keys = n.keys,
            outbox = n.outbox
        ))
    }

    /// Through `(status, id)`, named: MariaDB would take
    /// `(status, published_at)` and sort.
    fn list_dead(
        &self,
        topic: Option<&str>,
        key: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let after_id = b.bind(after_id);
        let topic = topic.map(|topic| format!(" AND o.topic = {}", b.bind(topic)));
        let key = key.map(|key| format!(" AND o.partition_key = {}", b.bind(key)));
        let limit = b.bind(limit);
        b.statement(format!(
            "SELECT {columns} FROM {outbox} o FORCE INDEX ({index})
WHERE o.status = 'dead' AND o.id > {after_id}{topic}{key}
ORDER BY o.id
LIMIT {limit}",
            columns = n.columns,
            outbox = n.outbox,
            index = n.index_pending,
            topic = topic.unwrap_or_default(),
            key = key.unwrap_or_default(),
        ))
    }

    /// MySQL/MariaDB take no `LIMIT` in an `IN` subquery, but delete with
    /// `ORDER BY` and `LIMIT` directly.
    fn purge_published(&self, before: DateTime<Utc>, limit: i64) -> Statement {
        let mut b = self.binds();
        let (before, limit) = (b.bind(before), b.bind(limit));
        b.statement(format!(
            "DELETE FROM {outbox}
WHERE status = 'published' AND published_at < {before}
ORDER BY published_at LIMIT {limit}",
            outbox = self.names().outbox
        ))
    }

    /// The name is checked and the id is fixed-size, so the only error
    /// `IGNORE` can turn into a warning is the duplicate key.
    fn inbox_record(&self, consumer: &str, event_id: uuid::Uuid, now: DateTime<Utc>) -> Statement {
        let mut b = self.binds();
        let (consumer, event_id, now) = (b.bind(consumer), b.bind(event_id), b.bind(now));
        b.statement(format!(
            "INSERT IGNORE INTO {inbox} (consumer, event_id, processed_at)
VALUES ({consumer}, {event_id}, {now})",
            inbox = self.names().inbox
        ))
    }

    fn inbox_purge(&self, before: DateTime<Utc>, limit: i64) -> Statement {
        let mut b = self.binds();
        let (before, limit) = (b.bind(before), b.bind(limit));
        b.statement(format!(
            "DELETE FROM {inbox} WHERE processed_at < {before} ORDER BY processed_at LIMIT {limit}",
            inbox = self.names().inbox
        ))
    }

    fn max_statement_size(&self) -> Option<Statement> {
        Some(
            self.binds()
                .statement("SELECT @@max_allowed_packet AS max_allowed_packet".to_owned()),
        )
    }
}
