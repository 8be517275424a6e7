//! Claiming a batch.
//!
//! # How a claim finds its records
//!
//! Scanning pending records in `id` order and skipping those behind a
//! blocked record of their key costs as much as the backlog behind blocked
//! keys: during an outage, every key is blocked and every poll would read
//! every pending record. So the claim never reads records of a key that
//! cannot move. It reads, in one transaction:
//!
//! 1. the **ready keys**: rows of `outbox_keys` whose `next_at` (the
//!    `available_at` of the key's first pending record) has come, oldest
//!    first, through the index on `next_at`, locked `FOR UPDATE SKIP
//!    LOCKED` so that concurrent claimers (and writers enqueueing for the
//!    key) never share a key. A key in backoff, leased by another claim,
//!    delayed or held by a dead record is never read;
//! 2. the **first pending records of each ready key**, a bounded number per
//!    key through the `(partition_key, id)` index, fairly shared between
//!    the keys (a round or two), each key's run cut at its first record
//!    not yet available (a delayed record holds its key);
//! 3. the **unkeyed records** whose `available_at` has come, through their
//!    own index on `available_at`, locked `FOR UPDATE SKIP LOCKED`.
//!
//! It keeps the `limit` lowest ids of both, leases them by pushing their
//! `available_at` to the lease's end (a lease and a backoff are then one
//! thing: a time before which the record is not claimable), and refreshes
//! the keys it read, so a leased key's `next_at` is its lease's end. Its
//! cost is that of the records it returns and the blocked keys it skips in
//! the index, not of the records waiting behind them.
//!
//! A row that cannot be read (bad JSON in `headers`, a negative version,
//! ...) is moved to dead letters with the reason, in the same transaction;
//! with `dead_holds_key` it holds its key, as a failed publish would.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use outbox_engine::{ClaimRequest, OutboxRecord, Status};
use sea_orm::sea_query::Query;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, FromQueryResult, IdenStatic,
    Iterable, QueryResult, Statement,
};

use super::{SeaOrmStore, TxError};
use crate::entity::{Column, Entity, Model};
use crate::error::Error;
use crate::keys;
use crate::sql::{Param, render};

/// Keys per statement that reads their first records: SQLite allows at
/// most 500 terms in a compound `SELECT`.
const KEYS_PER_STATEMENT: usize = 200;
/// Ids or keys per statement that leases or refreshes: far below every
/// dialect's bound-parameter limit, whatever the batch size.
const PER_STATEMENT: usize = 10_000;
/// Rounds of reading keys' records: the first shares the batch evenly,
/// the later ones give what is left to keys that have more.
const ROUNDS: usize = 3;
/// Stale keys (see `settle`) a claim refreshes first, at most.
const STALE_KEYS_PER_CLAIM: usize = 1_000;

/// The columns of `outbox`, qualified with `alias`.
fn columns(alias: &str) -> String {
    Column::iter()
        .map(|column| format!("{alias}.{}", column.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn lock_clause(backend: DbBackend) -> &'static str {
    // `FOR UPDATE ... SKIP LOCKED` passes over rows another claimer (or a
    // writer) holds; SQLite has one writer and no row locks.
    match backend {
        DbBackend::Postgres | DbBackend::MySql => "\nFOR UPDATE SKIP LOCKED",
        _ => "",
    }
}

/// The index a read must use: `FORCE INDEX` on MySQL/MariaDB, whose
/// optimizer prefers an index that spares an `ORDER BY ... LIMIT` its sort
/// over one that reads only the rows wanted, and `INDEXED BY` on SQLite,
/// which otherwise reads unkeyed records through the keys' index (`IS
/// NULL`) and sorts them; on PostgreSQL the statements are shaped so only
/// the right index serves them (see `key_records`). The
/// `EXPLAIN` tests check all three.
fn index_hint(backend: DbBackend, index: &str) -> String {
    match backend {
        DbBackend::MySql => format!(" FORCE INDEX ({index})"),
        DbBackend::Sqlite => format!(" INDEXED BY {index}"),
        _ => String::new(),
    }
}

/// The statements of a claim for `backend`, as they run, for `EXPLAIN` in
/// tests and by operators: the ready keys, the first records of two keys
/// (several each, then one each), the unkeyed records. Not a stable API.
#[doc(hidden)]
pub fn claim_statements(backend: DbBackend, now: DateTime<Utc>, limit: usize) -> [Statement; 4] {
    let keys = ["k1".to_owned(), "k2".to_owned()];
    let after = BTreeMap::new();
    [
        ready_keys(backend, now, limit),
        key_records(backend, &keys, &after, limit),
        key_records(backend, &keys, &after, 1),
        unkeyed(backend, now, limit),
    ]
}

fn ready_keys(backend: DbBackend, now: DateTime<Utc>, limit: usize) -> Statement {
    render(
        backend,
        &format!(
            "SELECT partition_key FROM outbox_keys
WHERE next_at <= :now
ORDER BY next_at
LIMIT :limit{}",
            lock_clause(backend)
        ),
        &[
            ("now", Param::one(now)),
            (
                "limit",
                Param::one(i64::try_from(limit).unwrap_or(i64::MAX)),
            ),
        ],
    )
}

/// The first `per_key` pending records of each key, after the id already
/// read for it (if any): one bounded index range per key.
///
/// - PostgreSQL: one `LATERAL` subquery over the keys, passed as one JSON
///   parameter, so the statement's text (and its cached plan) is the same
///   whatever the number of keys; a `UNION ALL` of 200 branches spent 30 ms
///   planning. The key and the id are matched as a range of the pending
///   index, `(partition_key, id) > (k, after) AND partition_key <= k` (the
///   same rows under PostgreSQL's deterministic collations), and the order
///   is `partition_key, id`, which only that index gives: with
///   `partition_key = k`, PostgreSQL drops the key from the order and,
///   when its statistics still say most records are pending (taken before
///   a large drain, autovacuum behind), walks the primary key from the
///   oldest id instead, reading every published record: 100 to 500 ms per
///   claim on a 100,000-record drain over 10 keys.
/// - MySQL/MariaDB, one record per key: the lowest id of each key, grouped
///   (MariaDB has no `LATERAL`).
/// - Otherwise a `UNION ALL` of one branch per key, each with its own
///   `ORDER BY` and `LIMIT`: in parentheses on MySQL/MariaDB (as a derived
///   table, MariaDB materializes each branch: 20 times slower); SQLite takes
///   no parentheses there, only a subquery.
fn key_records(
    backend: DbBackend,
    keys: &[String],
    after: &BTreeMap<String, i64>,
    per_key: usize,
) -> Statement {
    let columns = columns("o");
    let limit = i64::try_from(per_key).unwrap_or(i64::MAX);
    // MariaDB otherwise reads `(status, id)` in id order to skip the sort,
    // filtering every pending record by key: hundreds of milliseconds.
    let hint = index_hint(backend, "idx_outbox_key_pending");
    let after_id = |key: &String| after.get(key).copied().unwrap_or(i64::MIN);
    match backend {
        DbBackend::Postgres => {
            let keys: Vec<serde_json::Value> = keys
                .iter()
                .map(|key| serde_json::json!({"key": key, "after": after_id(key)}))
                .collect();
            return render(
                backend,
                &format!(
                    "SELECT {columns}
FROM jsonb_to_recordset(CAST(:keys AS jsonb)) AS k(key text, after bigint)
CROSS JOIN LATERAL (
  SELECT * FROM outbox
  WHERE (partition_key, id) > (k.key, k.after) AND partition_key <= k.key
    AND status = 'pending'
  ORDER BY partition_key, id LIMIT :limit) o"
                ),
                &[
                    (
                        "keys",
                        Param::one(serde_json::Value::Array(keys).to_string()),
                    ),
                    ("limit", Param::one(limit)),
                ],
            );
        }
        DbBackend::MySql | DbBackend::Sqlite if per_key == 1 && after.is_empty() => {
            return render(
                backend,
                &format!(
                    "SELECT {columns} FROM outbox o WHERE o.id IN (
  SELECT MIN(i.id) FROM outbox i{hint}
  WHERE i.partition_key IN (:keys) AND i.status = 'pending' AND i.id > :after
  GROUP BY i.partition_key)"
                ),
                &[
                    ("keys", Param::list(keys.iter().cloned())),
                    ("after", Param::one(i64::MIN)),
                ],
            );
        }
        _ => {}
    }
    let branch = |i: usize| match backend {
        DbBackend::Sqlite => ("SELECT * FROM (", format!(") AS k{i}")),
        _ => ("(", ")".to_owned()),
    };
    let mut sql = String::new();
    let mut params = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        if i > 0 {
            sql.push_str("\nUNION ALL\n");
        }
        let (open, close) = branch(i);
        sql.push_str(&format!(
            "{open}SELECT {columns} FROM outbox o{hint}
  WHERE o.partition_key = :key{i} AND o.status = 'pending' AND o.id > :after{i}
  ORDER BY o.id LIMIT :limit{i}{close}"
        ));
        params.push((format!("key{i}"), Param::one(key.clone())));
        params.push((format!("after{i}"), Param::one(after_id(key))));
        params.push((format!("limit{i}"), Param::one(limit)));
    }
    let params: Vec<(&str, Param)> = params
        .iter()
        .map(|(name, param)| (name.as_str(), param.clone()))
        .collect();
    render(backend, &sql, &params)
}

fn unkeyed(backend: DbBackend, now: DateTime<Utc>, limit: usize) -> Statement {
    render(
        backend,
        &format!(
            "SELECT {} FROM outbox o{}
WHERE o.status = 'pending' AND o.partition_key IS NULL AND o.available_at <= :now
ORDER BY o.available_at
LIMIT :limit{}",
            columns("o"),
            index_hint(backend, "idx_outbox_keyless"),
            lock_clause(backend)
        ),
        &[
            ("now", Param::one(now)),
            (
                "limit",
                Param::one(i64::try_from(limit).unwrap_or(i64::MAX)),
            ),
        ],
    )
}

/// A row read by the claim, or why it cannot be read.
enum Row {
    Good(Box<Model>),
    Bad {
        id: i64,
        key: Option<String>,
        reason: String,
    },
}

impl Row {
    fn read(row: &QueryResult) -> Result<Self, TxError> {
        match Model::from_query_result(row, "") {
            Ok(model) => Ok(Row::Good(Box::new(model))),
            Err(error) => Ok(Row::Bad {
                id: row.try_get("", "id")?,
                key: row.try_get("", "partition_key").ok().flatten(),
                reason: format!("the row cannot be read: {error}"),
            }),
        }
    }

    fn id(&self) -> i64 {
        match self {
            Row::Good(model) => model.id,
            Row::Bad { id, .. } => *id,
        }
    }

    fn key(&self) -> Option<&str> {
        match self {
            Row::Good(model) => model.partition_key.as_deref(),
            Row::Bad { key, .. } => key.as_deref(),
        }
    }

    /// When it can be claimed: its `available_at`, or the end of a lease
    /// still held on it.
    fn claimable_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Row::Good(model) => Some(match model.locked_until {
                Some(until) if until > model.available_at => until,
                _ => model.available_at,
            }),
            Row::Bad { .. } => None,
        }
    }
}

/// Claims a batch in one transaction; see the module docs.
pub(super) async fn claim(
    store: &SeaOrmStore,
    request: &ClaimRequest,
) -> Result<Vec<OutboxRecord>, Error> {
    if request.limit == 0 {
        return Ok(Vec::new());
    }
    let backend = store.backend();
    let offset = store.clock_offset();
    // Keys a settlement passed over while a writer held them, refreshed
    // first (those still held are passed over again), so that their next
    // records are claimable as soon as the writer is done.
    let stale = store.stale_keys().take(STALE_KEYS_PER_CLAIM);
    let result = store
        .retrying(|| {
            store.transaction("claim outbox records", async |txn| {
                let now = crate::clock::now(txn, offset).await?;
                let limit = request.limit;
                let still_busy = if stale.is_empty() {
                    Vec::new()
                } else {
                    let free = super::settle::lock_free(txn, &stale).await?;
                    let free_keys: Vec<String> = free.iter().cloned().collect();
                    super::settle::refresh(txn, &free_keys).await?;
                    stale
                        .iter()
                        .filter(|key| !free.contains(*key))
                        .cloned()
                        .collect()
                };

                let keys: Vec<String> = txn
                    .query_all_raw(ready_keys(backend, now, limit))
                    .await?
                    .iter()
                    .map(|row| row.try_get("", "partition_key"))
                    .collect::<Result<_, _>>()?;
                let keyed = first_records(txn, &keys, now, limit).await?;
                let loose = txn.query_all_raw(unkeyed(backend, now, limit)).await?;

                // The lowest ids of both; a cut keeps a prefix of every key.
                let mut rows: Vec<Row> = keyed;
                for row in &loose {
                    rows.push(Row::read(row)?);
                }
                rows.sort_by_key(Row::id);
                // Keys whose available records were all cut by the limit
                // keep their head, and so their `next_at`.
                let fetched: HashSet<String> = rows
                    .iter()
                    .filter_map(|row| row.key().map(str::to_owned))
                    .collect();
                rows.truncate(limit);
                let kept: HashSet<&str> = rows.iter().filter_map(Row::key).collect();
                let untouched: HashSet<String> = fetched
                    .into_iter()
                    .filter(|key| !kept.contains(key.as_str()))
                    .collect();

                // In id order: a row that cannot be read is set aside, and
                // nothing of its key after it is claimed this time.
                let mut claimed = Vec::new();
                let mut bad: Vec<(i64, Option<String>, String)> = Vec::new();
                let mut stopped: HashSet<String> = HashSet::new();
                // Keys with a record claimed here: a bad row after one is not
                // their first pending record, so it waits (it is set aside once
                // it heads its key) rather than hold the key against an earlier
                // record that may yet fail.
                let mut taken: HashSet<String> = HashSet::new();
                for row in rows {
                    let (id, key, reason) = match row {
                        Row::Good(model) => {
                            if model
                                .partition_key
                                .as_ref()
                                .is_some_and(|k| stopped.contains(k))
                            {
                                continue;
                            }
                            let (id, key) = (model.id, model.partition_key.clone());
                            match OutboxRecord::try_from(*model) {
                                Ok(record) => {
                                    if let Some(key) = &record.key {
                                        taken.insert(key.clone());
                                    }
                                    claimed.push(record);
                                    continue;
                                }
                                Err(error) => (id, key, error.to_string()),
                            }
                        }
                        Row::Bad { id, key, reason } => (id, key, reason),
                    };
                    if let Some(key) = &key {
                        stopped.insert(key.clone());
                        if taken.contains(key) {
                            continue;
                        }
                    }
                    bad.push((id, key, reason));
                }

                let until = crate::clock::later(now, request.lease);
                if !claimed.is_empty() {
                    lease(txn, request, now, until, &claimed).await?;
                }
                if !bad.is_empty() {
                    set_aside(txn, now, &bad, request.dead_holds_key).await?;
                }
                // A key with a claimed record waits for the lease's end; the
                // others read (their head was delayed, leased, set aside,
                // or gone) are refreshed from their records. Keys whose
                // records were all cut by the limit are ready as they were.
                let leased: HashSet<&str> = claimed
                    .iter()
                    .filter_map(|record| record.key.as_deref())
                    .collect();
                let leased_keys: Vec<&str> = leased.iter().copied().collect();
                for chunk in leased_keys.chunks(PER_STATEMENT) {
                    txn.execute_raw(keys::lease(backend, chunk.iter().copied(), until))
                        .await?;
                }
                let stale: Vec<String> = keys
                    .iter()
                    .filter(|key| {
                        !leased.contains(key.as_str()) && !untouched.contains(key.as_str())
                    })
                    .cloned()
                    .collect();
                for chunk in stale.chunks(PER_STATEMENT) {
                    txn.execute_raw(keys::refresh(backend, chunk)).await?;
                }
                if !bad.is_empty() {
                    tracing::error!(
                        dead = bad.len(),
                        first = bad[0].0,
                        reason = %bad[0].2,
                        "outbox rows that cannot be read were moved to dead letters"
                    );
                }
                Ok::<_, TxError>((claimed, still_busy))
            })
        })
        .await;
    match result {
        Ok((claimed, still_busy)) => {
            store.stale_keys().add(still_busy);
            Ok(claimed)
        }
        Err(error) => {
            store.stale_keys().add(stale);
            Err(error)
        }
    }
}

/// The first available records of each key, at most `limit` in all,
/// shared between the keys.
async fn first_records(
    txn: &DatabaseTransaction,
    keys: &[String],
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Row>, TxError> {
    let backend = txn.get_database_backend();
    let mut rows = Vec::new();
    let mut after: BTreeMap<String, i64> = BTreeMap::new();
    let mut open: Vec<String> = keys.to_vec();
    let mut budget = limit;
    for _ in 0..ROUNDS {
        if open.is_empty() || budget == 0 {
            break;
        }
        let per_key = budget.div_ceil(open.len());
        let mut by_key: HashMap<String, Vec<Row>> = HashMap::new();
        for chunk in open.chunks(KEYS_PER_STATEMENT) {
            let statement = key_records(backend, chunk, &after, per_key);
            for row in txn.query_all_raw(statement).await? {
                let key: String = row.try_get("", "partition_key")?;
                by_key.entry(key).or_default().push(Row::read(&row)?);
            }
        }
        let mut still_open = Vec::new();
        for key in open {
            let mut found = by_key.remove(&key).unwrap_or_default();
            found.sort_by_key(Row::id);
            let full = found.len() == per_key;
            let mut blocked = false;
            for row in found {
                // A record not yet available (delayed, or leased) holds the
                // rest of its key; an unreadable one is set aside.
                if row.claimable_at().is_some_and(|at| at > now) {
                    blocked = true;
                    break;
                }
                let bad = matches!(row, Row::Bad { .. });
                after.insert(key.clone(), row.id());
                rows.push(row);
                budget = budget.saturating_sub(1);
                if bad {
                    blocked = true;
                    break;
                }
            }
            if full && !blocked {
                still_open.push(key);
            }
        }
        open = still_open;
    }
    Ok(rows)
}

/// Leases the claimed records under the claim's token until `until`. An
/// unkeyed record's lease is also its `available_at` (the unkeyed claim
/// reads that index alone); a keyed record's `available_at` stays, so the
/// update touches no indexed column (a HOT update on PostgreSQL): its key's
/// `next_at` holds the lease for it.
async fn lease(
    txn: &DatabaseTransaction,
    request: &ClaimRequest,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    claimed: &[OutboxRecord],
) -> Result<(), TxError> {
    let (keyed, unkeyed): (Vec<&OutboxRecord>, Vec<&OutboxRecord>) =
        claimed.iter().partition(|record| record.key.is_some());
    for (records, fold) in [(keyed, false), (unkeyed, true)] {
        for records in records.chunks(PER_STATEMENT) {
            let mut update = Query::update();
            update
                .table(Entity)
                .value(Column::LockedBy, request.owner.as_str())
                .value(Column::LockedUntil, until)
                .value(Column::UpdatedAt, now)
                .and_where(Column::Status.eq(Status::Pending.as_str()))
                .and_where(Column::Id.is_in(records.iter().map(|record| record.id)));
            if fold {
                update.value(Column::AvailableAt, until);
            }
            txn.execute(&update).await?;
        }
    }
    Ok(())
}

/// Moves unreadable rows to dead letters (holding their keys when asked).
async fn set_aside(
    txn: &DatabaseTransaction,
    now: DateTime<Utc>,
    bad: &[(i64, Option<String>, String)],
    holds_key: bool,
) -> Result<(), TxError> {
    let backend = txn.get_database_backend();
    for (id, key, reason) in bad {
        let mut update = Query::update();
        update
            .table(Entity)
            .value(Column::Status, Status::Dead.as_str())
            .value(
                Column::LastError,
                format!("set aside by the relay: {reason}"),
            )
            .value(Column::UpdatedAt, now)
            .and_where(Column::Id.eq(*id));
        txn.execute(&update).await?;
        if holds_key && key.is_some() {
            txn.execute_raw(keys::hold(backend, *id)).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_statements_differ_by_dialect_in_locks_hints_and_branches() {
        let now = Utc::now();
        let pg = claim_statements(DbBackend::Postgres, now, 100);
        let my = claim_statements(DbBackend::MySql, now, 100);
        let lite = claim_statements(DbBackend::Sqlite, now, 100);
        for statement in pg.iter().chain(&my).chain(&lite) {
            eprintln!("{:?}:\n{}\n", statement.db_backend, statement.sql);
        }
        assert!(
            pg[0].sql.ends_with("LIMIT $2\nFOR UPDATE SKIP LOCKED"),
            "{}",
            pg[0].sql
        );
        assert!(
            my[3].sql.ends_with("LIMIT ?\nFOR UPDATE SKIP LOCKED"),
            "{}",
            my[3].sql
        );
        assert!(lite[0].sql.ends_with("LIMIT ?"), "{}", lite[0].sql);
        assert_eq!(
            pg[1].values.as_ref().unwrap().0.len(),
            2,
            "the keys, the limit"
        );
        assert_eq!(
            my[1].values.as_ref().unwrap().0.len(),
            6,
            "key, after, limit per key"
        );
        assert!(my[1].sql.starts_with("(SELECT"), "{}", my[1].sql);
        assert!(pg[1].sql.contains("CROSS JOIN LATERAL"), "{}", pg[1].sql);
        assert!(
            lite[1].sql.starts_with("SELECT * FROM (SELECT"),
            "{}",
            lite[1].sql
        );
        assert!(my[2].sql.contains("GROUP BY"), "{}", my[2].sql);
        assert!(lite[2].sql.contains("GROUP BY"), "{}", lite[2].sql);
        for i in [0, 3] {
            let my = my[i]
                .sql
                .replace("\nFOR UPDATE SKIP LOCKED", "")
                .replace(" FORCE INDEX (", " INDEXED BY ")
                .replace("_keyless)", "_keyless");
            assert_eq!(my, lite[i].sql);
        }
    }
}
