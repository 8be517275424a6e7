//! Settling claimed records, in one transaction: published, retried, dead
//! or released. Each statement touches only rows still pending and leased
//! under the claim's token, and clears the lease; a kind of outcome is one
//! statement (a `CASE` on `id` where the values differ per record).
//!
//! Before the rows change, the transaction upserts their keys in
//! `outbox_keys` (waiting for a writer that is enqueueing for one of them
//! to commit); after, it refreshes those keys from the rows, so each key's
//! `next_at` is again its first pending record's `available_at`: the end
//! of a lease still running, a retry's time, or now for a released one.

use chrono::{DateTime, Utc};
use outbox_core::{Settlement, Status};
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, Query, UpdateStatement};
use sea_orm::{ColumnTrait, ConnectionTrait, DatabaseTransaction, Value};

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

/// The row statements of a settlement at `now`.
fn statements(owner: &str, now: DateTime<Utc>, settlement: &Settlement) -> Vec<UpdateStatement> {
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
    for chunk in settlement.dead.chunks(CASES_PER_STATEMENT) {
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

/// Applies a settlement; returns how many records changed.
pub(super) async fn settle(
    store: &SeaOrmStore,
    owner: &str,
    settlement: &Settlement,
) -> Result<u64, Error> {
    if settlement.is_empty() {
        return Ok(0);
    }
    let offset = store.clock_offset();
    store
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
                let keys = lock_keys(txn, owner, now, ids).await?;
                let mut changed = 0;
                for statement in statements(owner, now, settlement) {
                    changed += txn.execute(&statement).await?.rows_affected();
                }
                let backend = txn.get_database_backend();
                for dead in settlement.dead.iter().filter(|d| d.holds_key) {
                    txn.execute_raw(keys::hold(backend, dead.id)).await?;
                }
                refresh(txn, &keys).await?;
                Ok::<_, TxError>(changed)
            })
        })
        .await
}

/// Locks (creating it if it is missing) the `outbox_keys` row of every key
/// among `ids` that are leased under `owner`, in key order; returns the
/// keys.
pub(super) async fn lock_keys(
    txn: &DatabaseTransaction,
    owner: &str,
    now: DateTime<Utc>,
    ids: impl Iterator<Item = i64>,
) -> Result<Vec<String>, TxError> {
    let ids: Vec<i64> = ids.collect();
    let backend = txn.get_database_backend();
    let mut keys: Vec<String> = Vec::new();
    for chunk in ids.chunks(IDS_PER_STATEMENT) {
        let statement = render(
            backend,
            "SELECT DISTINCT partition_key FROM outbox
WHERE id IN (:ids) AND locked_by = :owner AND partition_key IS NOT NULL",
            &[
                ("ids", Param::list(chunk.iter().copied())),
                ("owner", Param::one(owner)),
            ],
        );
        for row in txn.query_all_raw(statement).await? {
            keys.push(row.try_get("", "partition_key")?);
        }
    }
    upsert_keys(txn, &mut keys, now).await?;
    Ok(keys)
}

/// Sorts, deduplicates and upserts `keys`, which locks their rows.
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
    use outbox_core::Retry;
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
        let statements = statements("relay-1#1", now, &settlement);
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
