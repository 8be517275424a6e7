//! Operators' work: dead letters, housekeeping, counts.

use chrono::{DateTime, Utc};
use outbox_core::{OutboxRecord, OutboxStats, Status};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult,
    IdenStatic, Iterable, Statement, Value,
};

use super::{SeaOrmStore, TxError, settle};
use crate::entity::{Column, Entity, Model};
use crate::error::Error;
use crate::keys;
use crate::sql::{Param, render};

pub(super) async fn list_dead(
    store: &SeaOrmStore,
    after_id: Option<i64>,
    limit: usize,
) -> Result<Vec<OutboxRecord>, Error> {
    let statement = list_dead_statement(store.backend(), after_id.unwrap_or(i64::MIN), limit);
    let rows = match store.connection().query_all_raw(statement).await {
        Ok(rows) => rows,
        Err(error) => return Err(store.fail("list dead outbox records", error).await),
    };
    let models = rows
        .iter()
        .map(|row| Model::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>();
    match models {
        // A dead row may be one set aside as unreadable: list it anyway.
        Ok(models) => Ok(models.into_iter().map(Model::into_listed).collect()),
        Err(error) => Err(store.fail("list dead outbox records", error).await),
    }
}

/// Dead records after `after_id`, in id order, through the dead records'
/// index (`(status, id)` on MySQL/MariaDB, named: it would take
/// `(status, published_at)` and sort).
fn list_dead_statement(backend: DbBackend, after_id: i64, limit: usize) -> Statement {
    let columns = Column::iter()
        .map(|column| column.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let hint = match backend {
        DbBackend::MySql => " FORCE INDEX (idx_outbox_pending)",
        _ => "",
    };
    render(
        backend,
        &format!(
            "SELECT {columns} FROM outbox{hint}
WHERE status = 'dead' AND id > :after
ORDER BY id LIMIT :limit"
        ),
        &[
            ("after", Param::one(after_id)),
            (
                "limit",
                Param::one(i64::try_from(limit).unwrap_or(i64::MAX)),
            ),
        ],
    )
}

/// Moves dead records back to pending, available now, attempts reset, last
/// error kept, and frees the keys they held: one record, or all of them.
/// It reads the dead records first and changes exactly those, so a record
/// that dies meanwhile (and may hold its key) is left for the next call.
pub(super) async fn requeue(store: &SeaOrmStore, id: Option<i64>) -> Result<u64, Error> {
    let offset = store.clock_offset();
    store
        .retrying(|| {
            store.transaction("requeue dead outbox records", async |txn| {
                let now = crate::clock::now(txn, offset).await?;
                let dead = dead_records(txn, id).await?;
                let ids: Vec<i64> = dead.iter().map(|(id, _)| *id).collect();
                let mut keys: Vec<String> = dead.into_iter().filter_map(|(_, key)| key).collect();
                settle::upsert_keys(txn, &mut keys, now).await?;
                let mut requeued = 0;
                for chunk in ids.chunks(IDS_PER_STATEMENT) {
                    let mut update = Query::update();
                    update
                        .table(Entity)
                        .value(Column::Status, Status::Pending.as_str())
                        .value(Column::Attempts, 0)
                        .value(Column::AvailableAt, now)
                        .value(Column::LockedBy, Value::String(None))
                        .value(Column::LockedUntil, Value::ChronoDateTimeUtc(None))
                        .value(Column::UpdatedAt, now)
                        .and_where(Column::Status.eq(Status::Dead.as_str()))
                        .and_where(Column::Id.is_in(chunk.iter().copied()));
                    requeued += txn.execute(&update).await?.rows_affected();
                    let mut free = Query::update();
                    free.table(Alias::new(keys::TABLE))
                        .value(Alias::new("held_by"), Value::BigInt(None))
                        .and_where(Expr::col(Alias::new("held_by")).is_in(chunk.iter().copied()));
                    txn.execute(&free).await?;
                }
                settle::refresh(txn, &keys).await?;
                Ok::<_, TxError>(requeued)
            })
        })
        .await
}

/// Ids per statement of a requeue.
const IDS_PER_STATEMENT: usize = 10_000;

/// The dead record `id` (or every dead record), with its key.
async fn dead_records(
    txn: &DatabaseTransaction,
    id: Option<i64>,
) -> Result<Vec<(i64, Option<String>)>, TxError> {
    let backend = txn.get_database_backend();
    let statement = match id {
        Some(id) => render(
            backend,
            "SELECT id, partition_key FROM outbox WHERE id = :id AND status = 'dead'",
            &[("id", Param::one(id))],
        ),
        None => render(
            backend,
            "SELECT id, partition_key FROM outbox WHERE status = 'dead'",
            &[],
        ),
    };
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "partition_key")?)))
        .collect()
}

/// The keys of the dead record `id`, or of every dead record.
async fn dead_keys(txn: &DatabaseTransaction, id: Option<i64>) -> Result<Vec<String>, TxError> {
    Ok(dead_records(txn, id)
        .await?
        .into_iter()
        .filter_map(|(_, key)| key)
        .collect())
}

/// Frees the key held by the dead record `id` and notes the discard in its
/// last error; false when it holds nothing.
pub(super) async fn discard(store: &SeaOrmStore, id: i64) -> Result<bool, Error> {
    let offset = store.clock_offset();
    store
        .retrying(|| {
            store.transaction("discard a dead outbox record", async |txn| {
                let now = crate::clock::now(txn, offset).await?;
                let mut keys = dead_keys(txn, Some(id)).await?;
                if keys.is_empty() {
                    return Ok(false);
                }
                settle::upsert_keys(txn, &mut keys, now).await?;
                let mut free = Query::update();
                free.table(Alias::new(keys::TABLE))
                    .value(Alias::new("held_by"), Value::BigInt(None))
                    .and_where(Expr::col(Alias::new("held_by")).eq(id))
                    .and_where(Expr::col(Alias::new("partition_key")).eq(keys[0].as_str()));
                if txn.execute(&free).await?.rows_affected() == 0 {
                    return Ok(false);
                }
                let row = Entity::find_by_id(id).one(txn).await?;
                let error = row.and_then(|row| row.last_error).unwrap_or_default();
                let mut note = Query::update();
                note.table(Entity)
                    .value(Column::LastError, format!("discarded at {now}: {error}"))
                    .value(Column::UpdatedAt, now)
                    .and_where(Column::Id.eq(id));
                txn.execute(&note).await?;
                settle::refresh(txn, &keys).await?;
                Ok::<_, TxError>(true)
            })
        })
        .await
}

/// Deletes published records published before `before`, `batch_size` per
/// statement, each statement its own transaction, oldest first (the order
/// of the published index, so no sort); then the keys left idle, in
/// batches of the same size; then registers the keys of pending records
/// that another client inserted into the table without one (a scan of the
/// pending records).
pub(super) async fn purge_published(
    store: &SeaOrmStore,
    before: DateTime<Utc>,
    batch_size: usize,
) -> Result<u64, Error> {
    if batch_size == 0 {
        return Err(Error::InvalidArgument(
            "purge batch size must be at least 1".to_owned(),
        ));
    }
    let backend = store.backend();
    // MySQL/MariaDB take no LIMIT in an IN subquery, but delete with ORDER
    // BY and LIMIT directly.
    let template = match backend {
        DbBackend::MySql => {
            "DELETE FROM outbox WHERE status = 'published' AND published_at < :before
ORDER BY published_at LIMIT :limit"
        }
        _ => {
            "DELETE FROM outbox WHERE id IN (
  SELECT id FROM outbox WHERE status = 'published' AND published_at < :before
  ORDER BY published_at LIMIT :limit)"
        }
    };
    let limit = i64::try_from(batch_size).unwrap_or(i64::MAX);
    let params = [("before", Param::one(before)), ("limit", Param::one(limit))];
    let mut total = 0;
    loop {
        let statement = render(backend, template, &params);
        let deleted = store
            .transaction("purge published outbox records", async |txn| {
                Ok::<_, TxError>(txn.execute_raw(statement.clone()).await?.rows_affected())
            })
            .await?;
        total += deleted;
        if deleted < limit as u64 {
            break;
        }
    }
    // Keys left with nothing pending, in batches of the same size.
    loop {
        let statement = keys::delete_idle(backend, limit);
        let deleted = store
            .retrying(|| {
                store.transaction("delete idle outbox keys", async |txn| {
                    Ok::<_, TxError>(txn.execute_raw(statement.clone()).await?.rows_affected())
                })
            })
            .await?;
        if deleted < limit as u64 {
            break;
        }
    }
    // Keys of pending records that another client inserted without one.
    let offset = store.clock_offset();
    store
        .retrying(|| {
            store.transaction("register the keys of pending outbox records", async |txn| {
                let now = crate::clock::now(txn, offset).await?;
                for statement in keys::repair(txn.get_database_backend(), now) {
                    txn.execute_raw(statement).await?;
                }
                Ok::<_, TxError>(())
            })
        })
        .await?;
    Ok(total)
}

fn stats_statement(backend: DbBackend, now: DateTime<Utc>) -> Statement {
    render(
        backend,
        // One count per status, each through that status's index, rather
        // than one scan of the whole table.
        "SELECT
  (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS pending,
  (SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND locked_until > :now) AS leased,
  (SELECT COUNT(*) FROM outbox WHERE status = 'published') AS published,
  (SELECT COUNT(*) FROM outbox WHERE status = 'dead') AS dead,
  (SELECT MIN(created_at) FROM outbox WHERE status = 'pending') AS oldest_pending_at",
        &[("now", Param::one(now))],
    )
}

pub(super) async fn stats(store: &SeaOrmStore, now: DateTime<Utc>) -> Result<OutboxStats, Error> {
    let statement = stats_statement(store.backend(), now);
    let row = match store.connection().query_one_raw(statement).await {
        Ok(row) => row,
        Err(error) => return Err(store.fail("count outbox records", error).await),
    };
    let Some(row) = row else {
        return Ok(OutboxStats::default());
    };
    let count = |column: &str| -> Result<u64, sea_orm::DbErr> {
        Ok(u64::try_from(row.try_get::<i64>("", column)?).unwrap_or_default())
    };
    let read = || -> Result<OutboxStats, sea_orm::DbErr> {
        Ok(OutboxStats {
            pending: count("pending")?,
            leased: count("leased")?,
            published: count("published")?,
            dead: count("dead")?,
            oldest_pending_at: row.try_get("", "oldest_pending_at")?,
        })
    };
    match read() {
        Ok(stats) => Ok(stats),
        Err(error) => Err(store.fail("count outbox records", error).await),
    }
}

/// The operators' statements whose plans matter, for `EXPLAIN`.
pub(super) fn statements(backend: DbBackend, now: DateTime<Utc>) -> Vec<(&'static str, Statement)> {
    let list = list_dead_statement(backend, 0, 100);
    let mut requeue_all = Query::update();
    requeue_all
        .table(Entity)
        .value(Column::Status, Status::Pending.as_str())
        .and_where(Column::Status.eq(Status::Dead.as_str()));
    vec![
        ("list dead", list),
        ("requeue all", backend.build(&requeue_all)),
        (
            "keys of dead records",
            render(
                backend,
                "SELECT DISTINCT partition_key FROM outbox
WHERE status = 'dead' AND partition_key IS NOT NULL",
                &[],
            ),
        ),
        ("stats", stats_statement(backend, now)),
        ("delete idle keys", keys::delete_idle(backend, 1000)),
    ]
}
