//! PostgreSQL's statements, where they differ from the shared ones.
//!
//! The reads of a key's records match the key as a range of the pending
//! index, `(partition_key, id) > (k, after) AND partition_key <= k` (the
//! same rows under PostgreSQL's deterministic collations), ordered by
//! `partition_key, id`, which only that index gives. With
//! `partition_key = k`, PostgreSQL drops the key from the order and, when
//! its statistics still say most records are pending (taken before a
//! large drain, autovacuum behind), walks the primary key from the oldest
//! id instead, reading every published record: 100 to 500 ms per claim on
//! a 100,000-record drain over 10 keys.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::Statement;
use sea_orm::sea_query::{Expr, SimpleExpr};

use super::{Binds, Dialect, Names};

#[derive(Debug)]
pub(crate) struct Postgres(pub(crate) Names);

impl Dialect for Postgres {
    fn names(&self) -> &Names {
        &self.0
    }

    fn now(&self) -> Option<Statement> {
        Some(self.binds().statement("SELECT now() AS now".to_owned()))
    }

    fn after(&self, after: TimeDelta) -> SimpleExpr {
        match after.num_microseconds().unwrap_or(i64::MAX) {
            0 => Expr::cust("now()"),
            micros => Expr::cust_with_values(
                "now() + CAST($1 AS double precision) * interval '1 microsecond'",
                [micros],
            ),
        }
    }

    /// One `LATERAL` subquery over the keys, passed as one JSON parameter,
    /// so the statement's text (and its cached plan) is the same whatever
    /// the number of keys: a `UNION ALL` of 200 branches spent 30 ms
    /// planning.
    fn key_records(&self, keys: &[(String, i64)], per_key: i64) -> Statement {
        let n = self.names();
        let keys: Vec<serde_json::Value> = keys
            .iter()
            .map(|(key, after)| serde_json::json!({"key": key, "after": after}))
            .collect();
        let mut b = self.binds();
        let keys = b.bind(serde_json::Value::Array(keys).to_string());
        let limit = b.bind(per_key);
        b.statement(format!(
            "SELECT {columns}
FROM jsonb_to_recordset(CAST({keys} AS jsonb)) AS k(key text, after bigint)
CROSS JOIN LATERAL (
  SELECT * FROM {outbox}
  WHERE (partition_key, id) > (k.key, k.after) AND partition_key <= k.key
    AND status = 'pending'
  ORDER BY partition_key, id LIMIT {limit}) o",
            columns = n.columns,
            outbox = n.outbox
        ))
    }

    /// The keys as one JSON parameter, so the statement's text is the same
    /// whatever their number.
    fn except_keys(&self, b: &mut Binds, keys: &[String]) -> String {
        if keys.is_empty() {
            return String::new();
        }
        let keys = b.bind(serde_json::json!(keys).to_string());
        format!(
            " AND partition_key NOT IN (SELECT jsonb_array_elements_text(CAST({keys} AS jsonb)))"
        )
    }

    fn key_heads(&self, keys: &[String]) -> Statement {
        let keys: Vec<(String, i64)> = keys.iter().map(|key| (key.clone(), i64::MIN)).collect();
        self.key_records(&keys, 1)
    }

    fn unkeyed(&self, now: DateTime<Utc>, limit: i64) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let (now, limit) = (b.bind(now), b.bind(limit));
        b.statement(format!(
            "SELECT {columns} FROM {outbox} o
WHERE o.status = 'pending' AND o.partition_key IS NULL AND o.available_at <= {now}
ORDER BY o.available_at
LIMIT {limit}
FOR UPDATE SKIP LOCKED",
            columns = n.columns,
            outbox = n.outbox
        ))
    }

    /// The head as a range of the pending index, as in
    /// [`key_records`](Dialect::key_records).
    fn refresh_keys(&self, keys: &[String]) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let keys = b.list(keys.iter().cloned());
        b.statement(format!(
            "UPDATE {table} SET next_at = (
  SELECT CASE WHEN o.locked_until > o.available_at THEN o.locked_until ELSE o.available_at END
  FROM {outbox} o
  WHERE o.partition_key >= {name}.partition_key AND o.partition_key <= {name}.partition_key
    AND o.status = 'pending'
  ORDER BY o.partition_key, o.id LIMIT 1)
WHERE partition_key IN ({keys}) AND held_by IS NULL",
            table = n.keys,
            outbox = n.outbox,
            name = n.keys_name,
        ))
    }

    /// By the row's physical address: PostgreSQL's `DELETE` takes no
    /// `LIMIT`.
    fn inbox_purge(&self, before: DateTime<Utc>, limit: i64) -> Statement {
        let mut b = self.binds();
        let (before, limit) = (b.bind(before), b.bind(limit));
        b.statement(format!(
            "DELETE FROM {inbox} WHERE ctid IN (
  SELECT ctid FROM {inbox}
  WHERE processed_at < {before} ORDER BY processed_at LIMIT {limit})",
            inbox = self.names().inbox
        ))
    }

    fn inserts_with_keys(&self) -> bool {
        true
    }

    /// `VACUUM` of the outbox and keys tables, never waiting for a lock:
    /// `SKIP_LOCKED` passes over a table another vacuum holds, and without
    /// `TRUNCATE` it never takes the exclusive lock that shrinking the file
    /// needs (the room stays in the file, for the next records). It takes
    /// no lock a writer or a claim waits for.
    fn vacuum(&self) -> Option<Statement> {
        let n = self.names();
        Some(self.binds().statement(format!(
            "VACUUM (SKIP_LOCKED, TRUNCATE false) {outbox}, {keys}",
            outbox = n.outbox,
            keys = n.keys
        )))
    }

    /// Only a table's owner (or a superuser) may vacuum it.
    fn may_vacuum(&self) -> Option<Statement> {
        let n = self.names();
        let mut b = self.binds();
        let (outbox, keys) = (b.bind(n.outbox.clone()), b.bind(n.keys.clone()));
        Some(b.statement(format!(
            "SELECT bool_and(pg_has_role(c.relowner, 'USAGE')) AS allowed FROM pg_class c
WHERE c.oid IN (CAST({outbox} AS regclass), CAST({keys} AS regclass))"
        )))
    }
}
