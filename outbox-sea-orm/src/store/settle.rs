//! Settling claimed records, in one transaction: published, retried, dead
//! or released. Each statement touches only rows still pending and leased
//! under the claim's token, and clears the lease; a kind of outcome is one
//! statement (a `CASE` on `id` where the values differ per record).
//!
//! The settlement never waits for a business transaction. It locks the
//! records' keys in `outbox_keys` with `FOR UPDATE SKIP LOCKED`: a key a
//! writer holds (it enqueued for the key and has not committed) is *busy*
//! and passed over. The records of every key change all the same (a
//! writer never locks existing records); then the keys the settlement
//! locked are refreshed from their rows, so each key's `next_at` is again
//! its first pending record's `available_at`: the end of a lease still
//! running, a retry's time, or now for a released one. A busy key keeps
//! the `next_at` its claim gave it, the lease's end, and is remembered
//! ([`StaleKeys`]): the next claim refreshes it once the writer is done,
//! so its next records wait for the writer and at most one lease. Only a
//! dead letter that must hold a busy key cannot be written without it: it
//! is deferred (left pending, still leased) for the relay to settle again.
//!
//! SQLite has no row locks: a writer holds the whole database, and every
//! statement of the relay waits for it (SQLite's busy timeout), then fails
//! with `SQLITE_BUSY`, which the relay tries again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use outbox_engine::{Settled, Settlement};
use sea_orm::{ConnectionTrait, DatabaseTransaction};

use super::{SeaOrmStore, TxError};
use crate::error::Error;
use crate::sql::{Dialect, IDS_PER_STATEMENT, rows};

/// Extends the leases of `ids` still leased under `owner` to `lease` from
/// now: `locked_until`, and an unkeyed record's `available_at`, which is
/// its lease (keys' `next_at` stay: a claim that reads a key whose first
/// record is still leased refreshes the key from it).
pub(super) async fn renew(
    store: &SeaOrmStore,
    owner: &str,
    ids: &[i64],
    lease: std::time::Duration,
) -> Result<u64, Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let offset = store.clock_offset();
    let sql = store.sql();
    store
        .transaction("renew the leases of outbox records", async |txn| {
            let now = crate::clock::now(txn, sql, offset).await?;
            let until = crate::clock::later(now, lease);
            let mut renewed = 0;
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let update = rows::renew(sql.names(), owner, chunk, now, until);
                renewed += txn.execute(&update).await?.rows_affected();
            }
            Ok::<_, TxError>(renewed)
        })
        .await
}

/// Keys a settlement could not lock (a writer held them), whose `next_at`
/// may be later than their first record's: the next claim refreshes them
/// once they are free. Shared by a store's clones; a process that stops
/// forgets them, and the keys then wait for the lease their claim gave
/// them, as before the settlement.
#[derive(Debug, Clone, Default)]
pub(crate) struct StaleKeys(Arc<Mutex<BTreeSet<String>>>);

/// The most stale keys remembered: beyond that, keys wait for their lease.
const MAX_STALE_KEYS: usize = 100_000;

impl StaleKeys {
    pub(crate) fn add(&self, keys: impl IntoIterator<Item = String>) {
        let mut stale = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for key in keys {
            if stale.len() >= MAX_STALE_KEYS {
                break;
            }
            stale.insert(key);
        }
    }

    /// Takes up to `limit` of them.
    pub(crate) fn take(&self, limit: usize) -> Vec<String> {
        let mut stale = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let taken: Vec<String> = stale.iter().take(limit).cloned().collect();
        for key in &taken {
            stale.remove(key);
        }
        taken
    }
}

/// Applies a settlement; returns how many records changed and which dead
/// letters wait for their key.
pub(super) async fn settle(
    store: &SeaOrmStore,
    owner: &str,
    settlement: &Settlement,
) -> Result<Settled, Error> {
    if settlement.is_empty() {
        return Ok(Settled::default());
    }
    let offset = store.clock_offset();
    let sql = store.sql();
    let history = store.keeps_published();
    let (settled, busy) = store
        .retrying(|| {
            store.transaction("settle outbox records", async |txn| {
                let now = crate::clock::now(txn, sql, offset).await?;
                let ids = settlement
                    .published
                    .iter()
                    .copied()
                    .chain(settlement.retries.iter().map(|r| r.id))
                    .chain(settlement.dead.iter().map(|d| d.id))
                    .chain(settlement.released.iter().copied());
                let keys_of = leased_keys(txn, sql, owner, ids).await?;
                let mut keys: Vec<String> = keys_of.values().cloned().collect();
                keys.sort_unstable();
                keys.dedup();
                let locked = lock_free(txn, sql, &keys).await?;
                let busy: Vec<String> = keys
                    .iter()
                    .filter(|key| !locked.contains(*key))
                    .cloned()
                    .collect();
                let deferred: HashSet<i64> = settlement
                    .dead
                    .iter()
                    .filter(|dead| {
                        dead.holds_key
                            && keys_of
                                .get(&dead.id)
                                .is_some_and(|key| !locked.contains(key))
                    })
                    .map(|dead| dead.id)
                    .collect();
                let mut changed = 0;
                let statements =
                    rows::settlement(sql.names(), owner, now, settlement, history, |id| {
                        deferred.contains(&id)
                    });
                for statement in statements {
                    changed += match statement {
                        rows::Change::Update(update) => txn.execute(&update).await?,
                        rows::Change::Delete(delete) => txn.execute(&delete).await?,
                    }
                    .rows_affected();
                }
                for dead in settlement
                    .dead
                    .iter()
                    .filter(|d| d.holds_key && !deferred.contains(&d.id))
                {
                    txn.execute_raw(sql.hold_key(dead.id)).await?;
                }
                let locked: Vec<String> = locked.into_iter().collect();
                refresh(txn, sql, &locked).await?;
                // A key left with nothing pending (and no dead record
                // holding it) goes: the keys' table holds the keys that
                // have work, whatever the number of keys ever used
                // (not on MySQL: see `Dialect::deletes_idle_keys`).
                if sql.deletes_idle_keys() {
                    for chunk in locked.chunks(IDS_PER_STATEMENT) {
                        txn.execute_raw(sql.delete_keys(chunk)).await?;
                    }
                }
                let mut deferred: Vec<i64> = deferred.into_iter().collect();
                deferred.sort_unstable();
                Ok::<_, TxError>((Settled { changed, deferred }, busy))
            })
        })
        .await?;
    store.stale_keys().add(busy);
    store.settled_rows(settled.changed);
    Ok(settled)
}

/// The keys of the records among `ids` still leased under `owner`, by id.
async fn leased_keys(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    owner: &str,
    ids: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, String>, TxError> {
    let ids: Vec<i64> = ids.collect();
    let mut keys = HashMap::new();
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        for row in txn.query_all_raw(sql.leased_keys(chunk, owner)).await? {
            keys.insert(row.try_get("", "id")?, row.try_get("", "partition_key")?);
        }
    }
    Ok(keys)
}

/// Locks the rows of `keys` that no other transaction holds, without
/// waiting (`FOR UPDATE SKIP LOCKED`), and returns those keys. SQLite has
/// no row locks: the transaction holds the database, so every key.
pub(super) async fn lock_free(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    keys: &[String],
) -> Result<HashSet<String>, TxError> {
    if !sql.locks_rows() {
        return Ok(keys.iter().cloned().collect());
    }
    let mut locked = HashSet::new();
    for chunk in keys.chunks(IDS_PER_STATEMENT) {
        for row in txn.query_all_raw(sql.lock_free_keys(chunk)).await? {
            locked.insert(row.try_get("", "partition_key")?);
        }
    }
    Ok(locked)
}

/// Sorts, deduplicates and upserts `keys`, which locks their rows,
/// waiting for a writer that holds one: for the operators' commands, which
/// lock one key per transaction.
pub(super) async fn upsert_keys(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    keys: &mut Vec<String>,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    keys.sort_unstable();
    keys.dedup();
    for chunk in keys.chunks(IDS_PER_STATEMENT) {
        let upsert = sql.upsert_keys(chunk.iter().map(|key| (key.clone(), now.into())).collect());
        txn.execute(&upsert).await?;
    }
    Ok(())
}

/// Refreshes `keys` from their rows.
pub(super) async fn refresh(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    keys: &[String],
) -> Result<(), TxError> {
    for chunk in keys.chunks(IDS_PER_STATEMENT) {
        txn.execute_raw(sql.refresh_keys(chunk)).await?;
    }
    Ok(())
}
