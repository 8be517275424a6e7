//! Operators' work: dead letters, housekeeping, counts.

use chrono::{DateTime, Utc};
use outbox_core::{OutboxRecord, OutboxStats, Status};
use sea_orm::sea_query::Query;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Value,
};

use super::{SeaOrmStore, TxError};
use crate::entity::{Column, Entity};
use crate::error::Error;
use crate::sql::{Param, render};

pub(super) async fn list_dead(
    store: &SeaOrmStore,
    after_id: Option<i64>,
    limit: usize,
) -> Result<Vec<OutboxRecord>, Error> {
    let mut query = Entity::find().filter(Column::Status.eq(Status::Dead.as_str()));
    if let Some(after) = after_id {
        query = query.filter(Column::Id.gt(after));
    }
    let limit = u64::try_from(limit)
        .unwrap_or(u64::MAX)
        .min(i64::MAX as u64);
    let rows = match query
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(store.connection())
        .await
    {
        Ok(rows) => rows,
        Err(error) => return Err(store.fail("list dead outbox records", error).await),
    };
    rows.into_iter().map(OutboxRecord::try_from).collect()
}

/// Moves dead records back to pending, available now, attempts reset, last
/// error kept: one record, or all of them.
pub(super) async fn requeue(store: &SeaOrmStore, id: Option<i64>) -> Result<u64, Error> {
    let now = Utc::now();
    let mut update = Query::update();
    update
        .table(Entity)
        .value(Column::Status, Status::Pending.as_str())
        .value(Column::Attempts, 0)
        .value(Column::AvailableAt, now)
        .value(Column::LockedBy, Value::String(None))
        .value(Column::LockedUntil, Value::ChronoDateTimeUtc(None))
        .value(Column::UpdatedAt, now)
        .and_where(Column::Status.eq(Status::Dead.as_str()));
    if let Some(id) = id {
        update.and_where(Column::Id.eq(id));
    }
    match store.connection().execute(&update).await {
        Ok(result) => Ok(result.rows_affected()),
        Err(error) => Err(store.fail("requeue dead outbox records", error).await),
    }
}

/// Deletes published records published before `before`, `batch_size` per
/// statement, each statement its own transaction, oldest first (the order
/// of the published index, so no sort).
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
                Ok::<_, TxError>(txn.execute_raw(statement).await?.rows_affected())
            })
            .await?;
        total += deleted;
        if deleted < limit as u64 {
            return Ok(total);
        }
    }
}

pub(super) async fn stats(store: &SeaOrmStore, now: DateTime<Utc>) -> Result<OutboxStats, Error> {
    let statement = render(
        store.backend(),
        "SELECT
  COUNT(CASE WHEN status = 'pending' THEN 1 END) AS pending,
  COUNT(CASE WHEN status = 'pending' AND locked_until > :now THEN 1 END) AS leased,
  COUNT(CASE WHEN status = 'published' THEN 1 END) AS published,
  COUNT(CASE WHEN status = 'dead' THEN 1 END) AS dead,
  (SELECT MIN(created_at) FROM outbox WHERE status = 'pending') AS oldest_pending_at
FROM outbox",
        &[("now", Param::one(now))],
    );
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
