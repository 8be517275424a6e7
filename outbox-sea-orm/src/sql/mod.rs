//! Every statement the store runs, in one place: what all databases share
//! here, as the [`Dialect`] trait's provided methods, and one module per
//! database ([`postgres`], [`mysql`], [`sqlite`]) overriding the statements
//! that differ there. Each statement is a named method that returns it
//! whole, with its values bound; the `EXPLAIN` tests run the very methods
//! the store calls ([`Dialect::explained`]).
//!
//! # Hand-written SQL or sea-query
//!
//! - **Hand-written** (in these modules, one `format!` per statement): the
//!   reads whose plans matter (the claim's, the keys' refresh, the
//!   operators' counts: they are `EXPLAIN`ed), and every statement whose
//!   text differs by database (locks, index hints, upserts, `LATERAL`,
//!   deletes with a limit). Values are always bound through [`Binds`],
//!   never spliced; only table and index names, checked by
//!   [`Tables`](outbox_migration::Tables), are written into the text.
//! - **sea-query** ([`rows`]): the row changes whose text is the same on
//!   every database but for quoting and placeholders, and whose shape
//!   follows the data (settlements with a `CASE` per record, leases,
//!   requeues, multi-row inserts): built from the entity's columns against
//!   the named tables.
//!
//! # The keys' table
//!
//! `outbox_keys`: one row per key with pending records (or a dead record
//! holding it), whose `next_at` is when the key's first pending record can
//! be claimed. The claim reads this table instead of the records, so its
//! cost does not grow with the records waiting behind blocked keys.
//!
//! A key left with nothing pending is deleted by the settlement that
//! empties it (PostgreSQL, SQLite); on MySQL/MariaDB it stays as an idle
//! row (no `next_at`) until housekeeping (`tidy`) deletes it (see
//! [`Dialect::deletes_idle_keys`]).
//!
//! Writers lock the key's row; the relay never waits for one:
//!
//! - `enqueue` upserts the key **before** inserting the record, so a
//!   second transaction enqueueing for the key waits for the first to
//!   commit before its record gets an id: ids of one key are in commit
//!   order, and the relay publishes in id order.
//! - the claim locks ready keys `FOR UPDATE SKIP LOCKED`, passing over a
//!   key a writer holds, leases their first records and refreshes them;
//! - a settlement locks its records' keys `FOR UPDATE SKIP LOCKED` too: it
//!   changes the records of every key, refreshes the keys it locked, and
//!   leaves a busy key's `next_at` at its lease's end for the next claim to
//!   refresh (see `store::settle`);
//! - housekeeping deletes and repairs idle keys it can lock without
//!   waiting;
//! - only the operators' requeue and discard wait for a writer, one key
//!   per transaction, so they never hold one key while waiting for another.
//!

pub(crate) mod mysql;
pub(crate) mod postgres;
pub(crate) mod rows;
pub(crate) mod sqlite;

use std::fmt;
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, TimeDelta, Utc};
use outbox_migration::Tables;
use sea_orm::sea_query::{Alias, Expr, ExprTrait, InsertStatement, OnConflict, Query, SimpleExpr};
use sea_orm::{DbBackend, IdenStatic, Iterable, Statement, TransactionOptions, Value};

use crate::entity::Column;

/// Ids or keys per statement: far below every dialect's bound-parameter
/// limit, and above any sensible batch, so a batch is one statement.
pub(crate) const IDS_PER_STATEMENT: usize = 10_000;

/// Values bound to a statement as its text is written: [`bind`](Self::bind)
/// returns the placeholder (`$n` on PostgreSQL, `?` elsewhere), so bind
/// in the order the placeholders appear in the text.
pub(crate) struct Binds {
    backend: DbBackend,
    values: Vec<Value>,
}

impl Binds {
    pub(crate) fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            values: Vec::new(),
        }
    }

    /// Binds `value`; returns its placeholder.
    pub(crate) fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        match self.backend {
            DbBackend::Postgres => format!("${}", self.values.len()),
            _ => "?".to_owned(),
        }
    }

    /// Binds each of `values`; returns their placeholders, comma-separated.
    pub(crate) fn list<V: Into<Value>>(&mut self, values: impl IntoIterator<Item = V>) -> String {
        values
            .into_iter()
            .map(|value| self.bind(value))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The statement `sql` with the values bound so far.
    pub(crate) fn statement(self, sql: String) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, self.values)
    }
}

/// The names a dialect writes into its statements, from a [`Tables`]:
/// tables quoted and schema-qualified, indexes as they are named.
#[derive(Debug, Clone)]
pub(crate) struct Names {
    pub(crate) backend: DbBackend,
    pub(crate) tables: Tables,
    /// The outbox table, as written in SQL.
    pub(crate) outbox: String,
    /// The keys' table, as written in SQL.
    pub(crate) keys: String,
    /// The inbox table, as written in SQL.
    pub(crate) inbox: String,
    /// The keys' table's own name, quoted: a column qualifier.
    pub(crate) keys_name: String,
    /// Every column of the outbox table, qualified with `o.`.
    pub(crate) columns: String,
    pub(crate) index_pending: String,
    pub(crate) index_key_pending: String,
    pub(crate) index_keyless: String,
}

impl Names {
    fn new(backend: DbBackend, tables: &Tables) -> Self {
        Self {
            backend,
            tables: tables.clone(),
            outbox: tables.qualified(backend, tables.outbox()),
            keys: tables.qualified(backend, tables.keys()),
            inbox: tables.qualified(backend, tables.inbox()),
            keys_name: Tables::quoted(backend, tables.keys()),
            columns: Column::iter()
                .map(|column| format!("o.{}", column.as_str()))
                .collect::<Vec<_>>()
                .join(", "),
            index_pending: tables.index_pending(),
            index_key_pending: tables.index_key_pending(),
            index_keyless: tables.index_keyless(),
        }
    }
}

/// The store's statements on one database. The provided methods are those
/// every database runs as written; [`postgres::Postgres`],
/// [`mysql::MySql`] and [`sqlite::Sqlite`] override the others.
pub(crate) trait Dialect: Send + Sync + fmt::Debug {
    fn names(&self) -> &Names;

    fn backend(&self) -> DbBackend {
        self.names().backend
    }

    fn binds(&self) -> Binds {
        Binds::new(self.backend())
    }

    /// Whether the database locks rows (`FOR UPDATE SKIP LOCKED`); SQLite
    /// has one writer, which holds the whole database.
    fn locks_rows(&self) -> bool {
        true
    }

    /// How the store's own transactions begin (the claim's, a
    /// settlement's, housekeeping's).
    fn transaction(&self) -> TransactionOptions {
        TransactionOptions::default()
    }

    // --- The clock ---------------------------------------------------------

    /// The database server's time (`now`), or `None` where the database
    /// runs in this process (SQLite) and its clock is this host's.
    fn now(&self) -> Option<Statement>;

    /// The database's time `after` from now, as a value written by a
    /// statement.
    fn after(&self, after: TimeDelta) -> SimpleExpr;

    // --- The claim ---------------------------------------------------------

    /// Keys whose first pending record can be claimed, oldest first,
    /// locked without waiting for a writer (or a claimer) that holds one.
    /// Passes over the keys in `except` (those the claim holds already).
    fn ready_keys(&self, now: DateTime<Utc>, limit: i64, except: &[String]) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let now = b.bind(now);
        let except = self.except_keys(&mut b, except);
        let limit = b.bind(limit);
        b.statement(format!(
            "SELECT partition_key FROM {keys}
WHERE next_at <= {now}{except}
ORDER BY next_at
LIMIT {limit}
FOR UPDATE SKIP LOCKED",
            keys = n.keys
        ))
    }

    /// ` AND partition_key NOT IN (...)` with `keys` bound, or nothing for
    /// no keys.
    fn except_keys(&self, b: &mut Binds, keys: &[String]) -> String {
        if keys.is_empty() {
            return String::new();
        }
        format!(
            " AND partition_key NOT IN ({})",
            b.list(keys.iter().cloned())
        )
    }

    /// The first `per_key` pending records of each key after the id given
    /// with it: one bounded range of the `(partition_key, id)` index per
    /// key.
    fn key_records(&self, keys: &[(String, i64)], per_key: i64) -> Statement;

    /// The first pending record of each key.
    fn key_heads(&self, keys: &[String]) -> Statement;

    /// Available unkeyed records, by availability, locked without waiting.
    fn unkeyed(&self, now: DateTime<Utc>, limit: i64) -> Statement;

    // --- The keys' table ---------------------------------------------------

    /// Upserts keys, each with the `next_at` it gets when it has no pending
    /// record yet; an existing key keeps its `next_at` (and is locked, not
    /// written) unless it has neither a head nor a dead record holding it.
    fn upsert_keys(&self, rows: Vec<(String, SimpleExpr)>) -> InsertStatement {
        let n = self.names();
        let mut insert = keys_insert(n, rows);
        let table = Alias::new(n.tables.keys());
        let idle = Expr::col((table.clone(), Alias::new("next_at")))
            .is_null()
            .and(Expr::col((table, Alias::new("held_by"))).is_null());
        let mut on_conflict = OnConflict::column(Alias::new("partition_key"));
        on_conflict
            .value(Alias::new("next_at"), Expr::cust("excluded.next_at"))
            .action_and_where(idle);
        insert.on_conflict(on_conflict);
        insert
    }

    /// Sets each key's `next_at` to when its first pending record can be
    /// claimed (none when it has none: the key is idle). Keys held by a
    /// dead record are left alone.
    fn refresh_keys(&self, keys: &[String]) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let keys = b.list(keys.iter().cloned());
        b.statement(format!(
            "UPDATE {table} SET next_at = (
  SELECT CASE WHEN o.locked_until > o.available_at THEN o.locked_until ELSE o.available_at END
  FROM {outbox} o
  WHERE o.partition_key = {name}.partition_key AND o.status = 'pending'
  ORDER BY o.id LIMIT 1)
WHERE partition_key IN ({keys}) AND held_by IS NULL",
            table = n.keys,
            outbox = n.outbox,
            name = n.keys_name,
        ))
    }

    /// Sets the `next_at` of keys whose first records a claim just leased
    /// to the lease's end.
    fn lease_keys(&self, keys: &[&str], until: DateTime<Utc>) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let until = b.bind(until);
        let keys = b.list(keys.iter().map(|key| (*key).to_owned()));
        b.statement(format!(
            "UPDATE {table} SET next_at = {until}
WHERE partition_key IN ({keys}) AND held_by IS NULL",
            table = n.keys
        ))
    }

    /// Locks the rows of `keys` no other transaction holds, without waiting.
    fn lock_free_keys(&self, keys: &[String]) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let keys = b.list(keys.iter().cloned());
        b.statement(format!(
            "SELECT partition_key FROM {table} WHERE partition_key IN ({keys})
FOR UPDATE SKIP LOCKED",
            table = n.keys
        ))
    }

    /// Up to `limit` idle keys no transaction holds, locked for
    /// [`delete_keys`](Self::delete_keys).
    fn idle_keys(&self, limit: i64) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let limit = b.bind(limit);
        b.statement(format!(
            "SELECT partition_key FROM {table} WHERE next_at IS NULL AND held_by IS NULL
LIMIT {limit}
FOR UPDATE SKIP LOCKED",
            table = n.keys
        ))
    }

    /// Deletes `keys` that are still idle.
    fn delete_keys(&self, keys: &[String]) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let keys = b.list(keys.iter().cloned());
        b.statement(format!(
            "DELETE FROM {table}
WHERE partition_key IN ({keys}) AND next_at IS NULL AND held_by IS NULL",
            table = n.keys
        ))
    }

    /// Registers, ready at `now`, the keys of pending records that have no
    /// key row (records another client inserted). Reads every pending
    /// record: housekeeping.
    fn register_missing_keys(&self, now: DateTime<Utc>) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let now = b.bind(now);
        b.statement(format!(
            "INSERT INTO {keys} (partition_key, next_at)
SELECT DISTINCT o.partition_key, {now} FROM {outbox} o
WHERE o.status = 'pending' AND o.partition_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM {keys} k WHERE k.partition_key = o.partition_key)
ON CONFLICT (partition_key) DO NOTHING",
            keys = n.keys,
            outbox = n.outbox
        ))
    }

    /// Idle keys that have pending records all the same, locked without
    /// waiting, for [`ready_now`](Self::ready_now).
    fn idle_keys_with_records(&self) -> Statement {
        let n = self.names();
        self.binds().statement(format!(
            "SELECT partition_key FROM {table}
WHERE next_at IS NULL AND held_by IS NULL AND EXISTS (
  SELECT 1 FROM {outbox} o
  WHERE o.partition_key = {name}.partition_key AND o.status = 'pending')
FOR UPDATE SKIP LOCKED",
            table = n.keys,
            outbox = n.outbox,
            name = n.keys_name
        ))
    }

    /// Makes `keys` ready at `now`, if they are still idle.
    fn ready_now(&self, keys: &[String], now: DateTime<Utc>) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let now = b.bind(now);
        let keys = b.list(keys.iter().cloned());
        b.statement(format!(
            "UPDATE {table} SET next_at = {now}
WHERE partition_key IN ({keys}) AND next_at IS NULL AND held_by IS NULL",
            table = n.keys
        ))
    }

    /// Makes the dead record `id` hold its key, unless an earlier dead
    /// record holds it: the earliest holds.
    fn hold_key(&self, id: i64) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let (first, second, third) = (b.bind(id), b.bind(id), b.bind(id));
        b.statement(format!(
            "UPDATE {keys} SET held_by = {first}, next_at = NULL
WHERE (held_by IS NULL OR held_by > {second}) AND partition_key = (
  SELECT o.partition_key FROM {outbox} o WHERE o.id = {third} AND o.status = 'dead')",
            keys = n.keys,
            outbox = n.outbox
        ))
    }

    /// The outbox table with every column the store reads, no rows:
    /// whether it exists as the store expects.
    fn check_outbox(&self) -> Statement {
        let n = self.names();
        self.binds().statement(format!(
            "SELECT {columns} FROM {outbox} o WHERE 1 = 0",
            columns = n.columns,
            outbox = n.outbox
        ))
    }

    /// The keys' table with the columns the store reads, no rows: whether
    /// it exists as the store expects.
    fn check_keys(&self) -> Statement {
        self.binds().statement(format!(
            "SELECT partition_key, next_at, held_by FROM {} WHERE 1 = 0",
            self.names().keys
        ))
    }

    // --- Settlements -------------------------------------------------------

    /// The keys of the records among `ids` still leased under `owner`.
    fn leased_keys(&self, ids: &[i64], owner: &str) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let ids = b.list(ids.iter().copied());
        let owner = b.bind(owner);
        b.statement(format!(
            "SELECT id, partition_key FROM {outbox}
WHERE id IN ({ids}) AND locked_by = {owner} AND partition_key IS NOT NULL",
            outbox = n.outbox
        ))
    }

    // --- Operators ---------------------------------------------------------

    /// Counts by status, each through that status's index rather than one
    /// scan of the whole table; the published records (the history) only
    /// when asked.
    fn stats(&self, now: DateTime<Utc>, published: bool) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let now = b.bind(now);
        let published = if published {
            format!(
                "(SELECT COUNT(*) FROM {} WHERE status = 'published')",
                n.outbox
            )
        } else {
            // A count of nothing, typed as the counts are on every database.
            format!("(SELECT COUNT(*) FROM {} WHERE 1 = 0)", n.keys)
        };
        b.statement(format!(
            "SELECT
  (SELECT COUNT(*) FROM {outbox} WHERE status = 'pending') AS pending,
  (SELECT COUNT(*) FROM {outbox} WHERE status = 'pending' AND locked_until > {now}) AS leased,
  (SELECT COUNT(*) FROM {keys} k JOIN {outbox} o ON o.partition_key = k.partition_key
   WHERE k.held_by IS NOT NULL AND o.status = 'pending') AS held,
  {published} AS published,
  (SELECT COUNT(*) FROM {outbox} WHERE status = 'dead') AS dead,
  (SELECT MIN(created_at) FROM {outbox} WHERE status = 'pending') AS oldest_pending_at",
            outbox = n.outbox,
            keys = n.keys
        ))
    }

    /// Pending and dead records by topic.
    fn topic_stats(&self) -> Statement {
        let n = self.names();
        self.binds().statement(format!(
            "SELECT topic, 'pending' AS status, COUNT(*) AS records, MIN(created_at) AS oldest
FROM {outbox} WHERE status = 'pending' GROUP BY topic
UNION ALL
SELECT topic, 'dead' AS status, COUNT(*) AS records, NULL AS oldest
FROM {outbox} WHERE status = 'dead' GROUP BY topic
ORDER BY topic",
            outbox = n.outbox
        ))
    }

    /// Dead records after `after_id` of a topic and/or key, in id order.
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
            "SELECT {columns} FROM {outbox} o
WHERE o.status = 'dead' AND o.id > {after_id}{topic}{key}
ORDER BY o.id
LIMIT {limit}",
            columns = n.columns,
            outbox = n.outbox,
            topic = topic.unwrap_or_default(),
            key = key.unwrap_or_default(),
        ))
    }

    /// Deletes at most `limit` records published before `before`, oldest
    /// first, through the published index.
    fn purge_published(&self, before: DateTime<Utc>, limit: i64) -> Statement {
        let n = self.names();
        let mut b = self.binds();
        let (before, limit) = (b.bind(before), b.bind(limit));
        b.statement(format!(
            "DELETE FROM {outbox} WHERE id IN (
  SELECT id FROM {outbox}
  WHERE status = 'published' AND published_at < {before}
  ORDER BY published_at LIMIT {limit})",
            outbox = n.outbox
        ))
    }

    // --- The inbox ---------------------------------------------------------

    /// Records an event for a consumer, unless recorded already.
    fn inbox_record(&self, consumer: &str, event_id: uuid::Uuid, now: DateTime<Utc>) -> Statement {
        let mut b = self.binds();
        let (consumer, event_id, now) = (b.bind(consumer), b.bind(event_id), b.bind(now));
        b.statement(format!(
            "INSERT INTO {inbox} (consumer, event_id, processed_at)
VALUES ({consumer}, {event_id}, {now})
ON CONFLICT DO NOTHING",
            inbox = self.names().inbox
        ))
    }

    /// Deletes at most `limit` inbox entries recorded before `before`,
    /// oldest first.
    fn inbox_purge(&self, before: DateTime<Utc>, limit: i64) -> Statement;

    // --- Writers -----------------------------------------------------------

    /// The largest statement the server takes, where it has a limit
    /// smaller than an event may be (MySQL/MariaDB's
    /// `max_allowed_packet`).
    fn max_statement_size(&self) -> Option<Statement> {
        None
    }

    /// Whether the keys' upsert and the records' insert go in one
    /// statement ([`rows::locked_insert`]).
    fn inserts_with_keys(&self) -> bool {
        false
    }

    // --- Housekeeping ------------------------------------------------------

    /// Whether a settlement deletes the records it publishes (unless the
    /// store keeps a history), rather than mark them for housekeeping to
    /// purge.
    fn deletes_published(&self) -> bool {
        true
    }

    /// Whether a settlement deletes the keys it leaves with nothing to do,
    /// so that the keys' table holds only keys with work.
    fn deletes_idle_keys(&self) -> bool {
        true
    }

    /// Makes the room that deleted and updated rows left in the outbox
    /// tables usable again, where the database does not do it by itself
    /// (PostgreSQL without autovacuum); `None` elsewhere.
    fn vacuum(&self) -> Option<Statement> {
        None
    }

    /// Whether this connection's role may [`vacuum`](Self::vacuum) the
    /// tables: a one-row, one-column (`allowed`) answer.
    fn may_vacuum(&self) -> Option<Statement> {
        None
    }

    // --- For EXPLAIN -------------------------------------------------------

    /// The statements whose plans matter, by name, built by the methods the
    /// store runs: the claim's reads, the keys' refresh, the operators'
    /// lists, counts and purge, housekeeping's idle keys.
    fn explained(&self, now: DateTime<Utc>) -> Vec<(&'static str, Statement)> {
        let keys = ["k1".to_owned(), "k2".to_owned()];
        let after: Vec<(String, i64)> = keys.iter().map(|key| (key.clone(), i64::MIN)).collect();
        vec![
            ("claim: ready keys", self.ready_keys(now, 500, &[])),
            ("claim: more ready keys", self.ready_keys(now, 500, &keys)),
            (
                "claim: first records of keys",
                self.key_records(&after, 250),
            ),
            ("claim: first record of each key", self.key_heads(&keys)),
            ("claim: unkeyed records", self.unkeyed(now, 500)),
            ("refresh keys", self.refresh_keys(&keys)),
            ("list dead", self.list_dead(None, None, 0, 100)),
            (
                "list dead of a key",
                self.list_dead(None, Some("k1"), 0, 100),
            ),
            ("stats", self.stats(now, true)),
            ("stats for the gauges", self.stats(now, false)),
            ("stats by topic", self.topic_stats()),
            ("purge published", self.purge_published(now, 1000)),
            ("find idle keys", self.idle_keys(1000)),
        ]
    }
}

/// A `UNION ALL` of one branch per key (MySQL/MariaDB, SQLite), each
/// written by `branch(i, key, after, limit)` with the placeholders of its
/// values.
pub(crate) fn key_branches(
    b: &mut Binds,
    keys: &[(String, i64)],
    per_key: i64,
    branch: impl Fn(usize, &str, &str, &str) -> String,
) -> String {
    let branches: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, (key, after))| {
            let (key, after, limit) = (b.bind(key.clone()), b.bind(*after), b.bind(per_key));
            branch(i, &key, &after, &limit)
        })
        .collect();
    branches.join("\nUNION ALL\n")
}

/// `INSERT INTO <keys> (partition_key, next_at) VALUES ...`, for the
/// dialects' upserts.
pub(crate) fn keys_insert(n: &Names, rows: Vec<(String, SimpleExpr)>) -> InsertStatement {
    let mut insert = Query::insert();
    insert
        .into_table(n.tables.keys_ref())
        .columns([Alias::new("partition_key"), Alias::new("next_at")]);
    for (key, next_at) in rows {
        insert.values_panic([key.into(), next_at]);
    }
    insert
}

/// The statements for `backend` and the tables named in `tables`.
pub(crate) fn dialect(backend: DbBackend, tables: &Tables) -> Arc<dyn Dialect> {
    let names = Names::new(backend, tables);
    match backend {
        DbBackend::Postgres => Arc::new(postgres::Postgres(names)),
        DbBackend::MySql => Arc::new(mysql::MySql(names)),
        _ => Arc::new(sqlite::Sqlite(names)),
    }
}

/// The statements for `backend` and the default table names, made once.
pub(crate) fn default_dialect(backend: DbBackend) -> Arc<dyn Dialect> {
    static DEFAULTS: LazyLock<[Arc<dyn Dialect>; 3]> = LazyLock::new(|| {
        let tables = Tables::default();
        [
            dialect(DbBackend::Postgres, &tables),
            dialect(DbBackend::MySql, &tables),
            dialect(DbBackend::Sqlite, &tables),
        ]
    });
    match backend {
        DbBackend::Postgres => DEFAULTS[0].clone(),
        DbBackend::MySql => DEFAULTS[1].clone(),
        _ => DEFAULTS[2].clone(),
    }
}

#[cfg(test)]
mod tests;
