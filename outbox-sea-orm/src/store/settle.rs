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
use outbox_engine::{DeadLetter, Settled, Settlement, Status};
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, Query, UpdateStatement};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, Value};

use super::{SeaOrmStore, TxError};
use crate::entity::{Column, Entity};
use crate::error::Error;
use crate::keys;
use crate::sql::{Param, render};

/// Ids per statement: far below every dialect's bound-parameter limit, and
/// above any sensible batch, so a batch is one statement.
const IDS_PER_STATEMENT: usize = 10_000;
/// Records per `CASE` statement (three parameters each).
const CASES_PER_STATEMENT: usize = 5_000;

/// `UPDATE outbox SET <lease cleared>, updated_at WHERE status = 'pending'
/// AND locked_by = owner AND id IN (ids)`, to which callers add their own
/// values.
fn leased_update(
    owner: &str,
    now: DateTime<Utc>,
    ids: impl IntoIterator<Item = i64>,
) -> UpdateStatement {
    Query::update()
        .table(Entity)
        .value(Column::LockedBy, Value::String(None))
        .value(Column::LockedUntil, Value::ChronoDateTimeUtc(None))
        .value(Column::UpdatedAt, now)
        .and_where(Column::Status.eq(Status::Pending.as_str()))
        .and_where(Column::LockedBy.eq(owner))
        .and_where(Column::Id.is_in(ids))
        .to_owned()
}

/// `CASE WHEN id = ... THEN ... END`, one branch per item.
fn case_by_id<T, V: Into<Expr>>(
    items: &[T],
    id: impl Fn(&T) -> i64,
    value: impl Fn(&T) -> V,
) -> Expr {
    let mut case = CaseStatement::new();
    for item in items {
        case = case.case(Expr::col(Column::Id).eq(id(item)), value(item));
    }
    case.into()
}

fn failed_attempt(
    owner: &str,
    now: DateTime<Utc>,
    ids: impl IntoIterator<Item = i64>,
) -> UpdateStatement {
    let mut update = leased_update(owner, now, ids);
    update.value(Column::Attempts, Expr::col(Column::Attempts).add(1));
    update
}

/// The row statements of a settlement at `now`, but for the dead letters
/// in `deferred`.
fn statements(
    owner: &str,
    now: DateTime<Utc>,
    settlement: &Settlement,
    deferred: &HashSet<i64>,
) -> Vec<UpdateStatement> {
    let mut statements = Vec::new();
    for chunk in settlement.published.chunks(IDS_PER_STATEMENT) {
        let mut update = leased_update(owner, now, chunk.iter().copied());
        update
            .value(Column::Status, Status::Published.as_str())
            .value(Column::PublishedAt, now);
        statements.push(update);
    }
    for chunk in settlement.retries.chunks(CASES_PER_STATEMENT) {
        let mut update = failed_attempt(owner, now, chunk.iter().map(|r| r.id));
        update
            .value(
                Column::LastError,
                case_by_id(chunk, |r| r.id, |r| r.error.clone()),
            )
            .value(
                Column::AvailableAt,
                case_by_id(chunk, |r| r.id, |r| crate::clock::later(now, r.delay)),
            );
        statements.push(update);
    }
    let dead: Vec<&DeadLetter> = settlement
        .dead
        .iter()
        .filter(|dead| !deferred.contains(&dead.id))
        .collect();
    for chunk in dead.chunks(CASES_PER_STATEMENT) {
        let mut update = failed_attempt(owner, now, chunk.iter().map(|d| d.id));
        update
            .value(
                Column::LastError,
                case_by_id(chunk, |d| d.id, |d| d.error.clone()),
            )
            .value(Column::Status, Status::Dead.as_str());
        statements.push(update);
    }
    for chunk in settlement.released.chunks(IDS_PER_STATEMENT) {
        let mut update = leased_update(owner, now, chunk.iter().copied());
        update.value(Column::AvailableAt, now);
        statements.push(update);
    }
    statements
}

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
    store
        .transaction("renew the leases of outbox records", async |txn| {
            let now = crate::clock::now(txn, offset).await?;
            let until = crate::clock::later(now, lease);
            let mut renewed = 0;
            for chunk in ids.chunks(IDS_PER_STATEMENT) {
                let mut update = Query::update();
                update
                    .table(Entity)
                    .value(Column::LockedUntil, until)
                    .value(
                        Column::AvailableAt,
                        Expr::case(Column::PartitionKey.is_null(), until)
                            .finally(Expr::col(Column::AvailableAt)),
                    )
                    .value(Column::UpdatedAt, now)
                    .and_where(Column::Status.eq(Status::Pending.as_str()))
                    .and_where(Column::LockedBy.eq(owner))
                    .and_where(Column::Id.is_in(chunk.iter().copied()));
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
    let (settled, busy) = store
        .retrying(|| {
            store.transaction("settle outbox records", async |txn| {
                let now = crate::clock::now(txn, offset).await?;
                let ids = settlement
                    .published
                    .iter()
                    .copied()
                    .chain(settlement.retries.iter().map(|r| r.id))
                    .chain(settlement.dead.iter().map(|d| d.id))
                    .chain(settlement.released.iter().copied());
                let keys_of = leased_keys(txn, owner, ids).await?;
                let mut keys: Vec<String> = keys_of.values().cloned().collect();
                keys.sort_unstable();
                keys.dedup();
                let locked = lock_free(txn, &keys).await?;
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
                for statement in statements(owner, now, settlement, &deferred) {
                    changed += txn.execute(&statement).await?.rows_affected();
                }
                let backend = txn.get_database_backend();
                for dead in settlement
                    .dead
                    .iter()
                    .filter(|d| d.holds_key && !deferred.contains(&d.id))
                {
                    txn.execute_raw(keys::hold(backend, dead.id)).await?;
                }
                let locked: Vec<String> = locked.into_iter().collect();
                refresh(txn, &locked).await?;
                let mut deferred: Vec<i64> = deferred.into_iter().collect();
                deferred.sort_unstable();
                Ok::<_, TxError>((Settled { changed, deferred }, busy))
            })
        })
        .await?;
    store.stale_keys().add(busy);
    Ok(settled)
}

/// The keys of the records among `ids` still leased under `owner`, by id.
async fn leased_keys(
    txn: &DatabaseTransaction,
    owner: &str,
    ids: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, String>, TxError> {
    let ids: Vec<i64> = ids.collect();
    let backend = txn.get_database_backend();
    let mut keys = HashMap::new();
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let statement = render(
            backend,
            "SELECT id, partition_key FROM outbox
WHERE id IN (:ids) AND locked_by = :owner AND partition_key IS NOT NULL",
            &[
                ("ids", Param::list(chunk.iter().copied())),
                ("owner", Param::one(owner)),
            ],
        );
        for row in txn.query_all_raw(statement).await? {
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
    keys: &[String],
) -> Result<HashSet<String>, TxError> {
    let backend = txn.get_database_backend();
    if backend == DbBackend::Sqlite {
        return Ok(keys.iter().cloned().collect());
    }
    let mut locked = HashSet::new();
    for chunk in keys.chunks(IDS_PER_STATEMENT) {
        let statement = render(
            backend,
            "SELECT partition_key FROM outbox_keys WHERE partition_key IN (:keys)
FOR UPDATE SKIP LOCKED",
            &[("keys", Param::list(chunk.iter().cloned()))],
        );
        for row in txn.query_all_raw(statement).await? {
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
    keys: &mut Vec<String>,
    now: DateTime<Utc>,
) -> Result<(), TxError> {
    keys.sort_unstable();
    keys.dedup();
    let backend = txn.get_database_backend();
    for chunk in keys.chunks(IDS_PER_STATEMENT) {
        let upsert = keys::upsert(backend, chunk.iter().map(|key| (key.clone(), now.into())));
        txn.execute(&upsert).await?;
    }
    Ok(())
}

/// Refreshes `keys` from their rows.
pub(super) async fn refresh(txn: &DatabaseTransaction, keys: &[String]) -> Result<(), TxError> {
    let backend = txn.get_database_backend();
    for chunk in keys.chunks(IDS_PER_STATEMENT) {
        txn.execute_raw(keys::refresh(backend, chunk)).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use outbox_engine::Retry;
    use sea_orm::DbBackend;

    use super::*;

    fn sql(backend: DbBackend, statement: &UpdateStatement) -> String {
        backend.build(statement).sql
    }

    #[test]
    fn a_settlement_is_one_statement_per_outcome_guarded_by_the_lease() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let settlement = Settlement {
            published: vec![1, 2, 3],
            retries: vec![
                Retry {
                    id: 4,
                    error: "timeout".into(),
                    delay: std::time::Duration::from_secs(1),
                },
                Retry {
                    id: 5,
                    error: "timeout".into(),
                    delay: std::time::Duration::from_secs(2),
                },
            ],
            ..Settlement::default()
        };
        let statements = statements("relay-1#1", now, &settlement, &HashSet::new());
        assert_eq!(statements.len(), 2);
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            for statement in &statements {
                eprintln!("{backend:?}: {}", sql(backend, statement));
            }
        }
        assert_eq!(
            sql(DbBackend::Postgres, &statements[0]),
            r#"UPDATE "outbox" SET "locked_by" = $1, "locked_until" = $2, "updated_at" = $3, "status" = $4, "published_at" = $5 WHERE "outbox"."status" = $6 AND "outbox"."locked_by" = $7 AND "outbox"."id" IN ($8, $9, $10)"#
        );
        assert_eq!(
            sql(DbBackend::MySql, &statements[1]),
            "UPDATE `outbox` SET `locked_by` = ?, `locked_until` = ?, `updated_at` = ?, \
             `attempts` = `attempts` + ?, \
             `last_error` = (CASE WHEN (`id` = ?) THEN ? WHEN (`id` = ?) THEN ? END), \
             `available_at` = (CASE WHEN (`id` = ?) THEN ? WHEN (`id` = ?) THEN ? END) \
             WHERE `outbox`.`status` = ? AND `outbox`.`locked_by` = ? AND `outbox`.`id` IN (?, ?)"
        );
    }
}
