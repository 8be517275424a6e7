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
//!    delayed or held by a dead record is never read. A large claim first
//!    locks a quarter as many keys as it may take records (`KEY_DEPTH`, at
//!    least 100 keys), so that each key's lock, lease and refresh serve
//!    several records, and more keys only when those had fewer records;
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
use outbox_engine::{ClaimRequest, OutboxRecord};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult, QueryResult};

use super::{SeaOrmStore, TxError};
use crate::entity::Model;
use crate::error::Error;
use crate::sql::{Dialect, IDS_PER_STATEMENT, rows};

/// Keys per statement that reads their first records: SQLite allows at
/// most 500 terms in a compound `SELECT`.
const KEYS_PER_STATEMENT: usize = 200;
/// Rounds of reading keys' records: the first shares the batch evenly,
/// the later ones give what is left to keys that have more.
const ROUNDS: usize = 3;
/// Records a large claim aims to take of each key it reads first.
const KEY_DEPTH: usize = 4;
/// Keys a claim reads first, at least: a claim of up to this many records
/// reads as many keys as records (one of each key, the oldest first).
const SPREAD: usize = 100;

/// Keys a claim of `limit` records locks first: `limit / KEY_DEPTH`, but
/// not fewer than [`SPREAD`] (nor more than `limit`).
fn first_keys(limit: usize) -> usize {
    limit.div_ceil(KEY_DEPTH).max(SPREAD).min(limit)
}
/// Stale keys (see `settle`) a claim refreshes first, at most.
const STALE_KEYS_PER_CLAIM: usize = 1_000;

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
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
    let sql = store.sql();
    let offset = store.clock_offset();
    // Keys a settlement passed over while a writer held them, refreshed
    // first (those still held are passed over again), so that their next
    // records are claimable as soon as the writer is done.
    let stale = store.stale_keys().take(STALE_KEYS_PER_CLAIM);
    let result = store
        .retrying(|| {
            store.transaction("claim outbox records", async |txn| {
                let now = crate::clock::now(txn, sql, offset).await?;
                let limit = request.limit;
                let still_busy = if stale.is_empty() {
                    Vec::new()
                } else {
                    let free = super::settle::lock_free(txn, sql, &stale).await?;
                    let free_keys: Vec<String> = free.iter().cloned().collect();
                    super::settle::refresh(txn, sql, &free_keys).await?;
                    stale
                        .iter()
                        .filter(|key| !free.contains(*key))
                        .cloned()
                        .collect()
                };

                // Deep keys first: a quarter as many keys as records, a
                // few records each, so the keys' bookkeeping (their lock,
                // lease and refresh) is shared by several records; then,
                // when those keys had fewer, more keys for the rest.
                let deep = first_keys(limit);
                let mut keys = ready_keys(txn, sql, now, deep, &[]).await?;
                let mut keyed = first_records(txn, sql, &keys, now, limit).await?;
                if keys.len() == deep && keyed.len() < limit {
                    let budget = limit - keyed.len();
                    let more = ready_keys(txn, sql, now, budget, &keys).await?;
                    keyed.extend(first_records(txn, sql, &more, now, budget).await?);
                    keys.extend(more);
                }
                let loose = txn.query_all_raw(sql.unkeyed(now, count(limit))).await?;

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
                    lease(txn, sql, request, now, until, &claimed).await?;
                }
                if !bad.is_empty() {
                    set_aside(txn, sql, now, &bad, request.dead_holds_key).await?;
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
                for chunk in leased_keys.chunks(IDS_PER_STATEMENT) {
                    txn.execute_raw(sql.lease_keys(chunk, until)).await?;
                }
                let stale: Vec<String> = keys
                    .iter()
                    .filter(|key| {
                        !leased.contains(key.as_str()) && !untouched.contains(key.as_str())
                    })
                    .cloned()
                    .collect();
                super::settle::refresh(txn, sql, &stale).await?;
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

/// Up to `limit` keys whose first pending record can be claimed, but for
/// `except`, locked.
async fn ready_keys(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    now: DateTime<Utc>,
    limit: usize,
    except: &[String],
) -> Result<Vec<String>, TxError> {
    txn.query_all_raw(sql.ready_keys(now, count(limit), except))
        .await?
        .iter()
        .map(|row| Ok(row.try_get("", "partition_key")?))
        .collect()
}

/// The first available records of each key, at most `limit` in all,
/// shared between the keys.
async fn first_records(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    keys: &[String],
    now: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<Row>, TxError> {
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
            let statement = if per_key == 1 && after.is_empty() {
                sql.key_heads(chunk)
            } else {
                let chunk: Vec<(String, i64)> = chunk
                    .iter()
                    .map(|key| (key.clone(), after.get(key).copied().unwrap_or(i64::MIN)))
                    .collect();
                sql.key_records(&chunk, count(per_key))
            };
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

/// Leases the claimed records under the claim's token until `until`
/// ([`rows::lease`]): keyed and unkeyed apart.
async fn lease(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    request: &ClaimRequest,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    claimed: &[OutboxRecord],
) -> Result<(), TxError> {
    let (keyed, unkeyed): (Vec<&OutboxRecord>, Vec<&OutboxRecord>) =
        claimed.iter().partition(|record| record.key.is_some());
    for (records, fold) in [(keyed, false), (unkeyed, true)] {
        for records in records.chunks(IDS_PER_STATEMENT) {
            let ids: Vec<i64> = records.iter().map(|record| record.id).collect();
            let update = rows::lease(sql.names(), &request.owner, now, until, &ids, fold);
            txn.execute(&update).await?;
        }
    }
    Ok(())
}

/// Moves unreadable rows to dead letters (holding their keys when asked).
async fn set_aside(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    now: DateTime<Utc>,
    bad: &[(i64, Option<String>, String)],
    holds_key: bool,
) -> Result<(), TxError> {
    for (id, key, reason) in bad {
        txn.execute(&rows::set_aside(sql.names(), *id, reason, now))
            .await?;
        if holds_key && key.is_some() {
            txn.execute_raw(sql.hold_key(*id)).await?;
        }
    }
    Ok(())
}
