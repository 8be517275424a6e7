//! Operators' work: dead letters, housekeeping, counts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_engine::{DeadFilter, OutboxRecord, OutboxStats, RecordRef, Status, TopicStats};
use sea_orm::sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
use sea_orm::sea_query::{Alias, Expr, ExprTrait, Order, Query, SelectStatement};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityTrait, FromQueryResult,
    Iterable, QueryFilter, Statement, Value,
};

use super::{SeaOrmStore, TxError, settle};
use crate::entity::{Column, Entity, Model};
use crate::error::Error;
use crate::keys;
use crate::sql::{Param, render};

pub(super) async fn list_dead(
    store: &SeaOrmStore,
    filter: &DeadFilter,
    after_id: Option<i64>,
    limit: usize,
) -> Result<Vec<OutboxRecord>, Error> {
    let statement =
        list_dead_statement(store.backend(), filter, after_id.unwrap_or(i64::MIN), limit);
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

/// One record by id or event id, whatever its status; a row that cannot be
/// read comes back as [`Model::into_listed`] shows it.
pub(super) async fn find(
    store: &SeaOrmStore,
    record: RecordRef,
) -> Result<Option<OutboxRecord>, Error> {
    let query = match record {
        RecordRef::Id(id) => Entity::find().filter(Column::Id.eq(id)),
        RecordRef::EventId(event_id) => Entity::find().filter(Column::EventId.eq(event_id)),
    };
    match query.one(store.connection()).await {
        Ok(model) => Ok(model.map(Model::into_listed)),
        Err(error) => Err(store.fail("find an outbox record", error).await),
    }
}

/// Dead records after `after_id` that pass `filter`, in id order, through
/// the dead records' index (`(status, id)` on MySQL/MariaDB, named: it
/// would take `(status, published_at)` and sort).
fn list_dead_statement(
    backend: DbBackend,
    filter: &DeadFilter,
    after_id: i64,
    limit: usize,
) -> Statement {
    let mut select = Query::select();
    select
        .columns(Column::iter())
        .from(Entity)
        .and_where(Column::Status.eq(Status::Dead.as_str()))
        .and_where(Column::Id.gt(after_id))
        .order_by(Column::Id, Order::Asc)
        .limit(u64::try_from(limit).unwrap_or(u64::MAX));
    matching(&mut select, filter);
    if backend == DbBackend::MySql {
        select.force_index(Alias::new("idx_outbox_pending"), IndexHintScope::All);
    }
    backend.build(&select)
}

/// Adds the conditions of `filter`.
fn matching(select: &mut SelectStatement, filter: &DeadFilter) {
    if let Some(topic) = &filter.topic {
        select.and_where(Column::Topic.eq(topic.as_str()));
    }
    if let Some(key) = &filter.key {
        select.and_where(Column::PartitionKey.eq(key.as_str()));
    }
}

/// Which dead records a requeue revives.
#[derive(Debug, Clone, Copy)]
pub(super) enum Which<'a> {
    One(i64),
    Matching(&'a DeadFilter),
}

/// Moves dead records back to pending, available now, attempts reset, last
/// error kept, and frees the keys they held: one record, or all of them.
/// It reads the dead records first and changes exactly those, so a record
/// that dies meanwhile (and may hold its key) is left for the next call.
/// Each key's records are requeued in a transaction of their own, which
/// waits for a writer holding that key (and only it) to commit: a writer
/// of another key never waits for a key the requeue holds.
pub(super) async fn requeue(store: &SeaOrmStore, which: Which<'_>) -> Result<u64, Error> {
    let dead = match dead_records(store.connection(), which).await {
        Ok(dead) => dead,
        Err(TxError::Db(error)) => return Err(store.fail("read dead outbox records", error).await),
        Err(TxError::Outbox(error)) => return Err(error),
    };
    let mut by_key: BTreeMap<Option<String>, Vec<i64>> = BTreeMap::new();
    for (id, key) in dead {
        by_key.entry(key).or_default().push(id);
    }
    let offset = store.clock_offset();
    let mut requeued = 0;
    for (key, ids) in &by_key {
        requeued += store
            .retrying(|| {
                store.transaction("requeue dead outbox records", async |txn| {
                    let now = crate::clock::now(txn, offset).await?;
                    let mut keys: Vec<String> = key.iter().cloned().collect();
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
                            .and_where(
                                Expr::col(Alias::new("held_by")).is_in(chunk.iter().copied()),
                            );
                        txn.execute(&free).await?;
                    }
                    settle::refresh(txn, &keys).await?;
                    Ok::<_, TxError>(requeued)
                })
            })
            .await?;
    }
    Ok(requeued)
}

/// Ids per statement of a requeue.
const IDS_PER_STATEMENT: usize = 10_000;

/// The dead record `id` (or every dead record that passes a filter), with
/// its key.
async fn dead_records(
    txn: &impl ConnectionTrait,
    which: Which<'_>,
) -> Result<Vec<(i64, Option<String>)>, TxError> {
    let mut select = Query::select();
    select
        .columns([Column::Id, Column::PartitionKey])
        .from(Entity)
        .and_where(Column::Status.eq(Status::Dead.as_str()));
    match which {
        Which::One(id) => {
            select.and_where(Column::Id.eq(id));
        }
        Which::Matching(filter) => matching(&mut select, filter),
    }
    let statement = txn.get_database_backend().build(&select);
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "partition_key")?)))
        .collect()
}

/// The keys of the dead record `id`, or of every dead record.
async fn dead_keys(txn: &DatabaseTransaction, id: i64) -> Result<Vec<String>, TxError> {
    Ok(dead_records(txn, Which::One(id))
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
                let mut keys = dead_keys(txn, id).await?;
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

/// Deletes at most `limit` published records published before `before`,
/// oldest first (the order of the published index, so no sort), in one
/// statement and transaction.
pub(super) async fn purge_published_batch(
    store: &SeaOrmStore,
    before: DateTime<Utc>,
    limit: usize,
) -> Result<u64, Error> {
    if limit == 0 {
        return Err(Error::InvalidArgument(
            "purge batch size must be at least 1".to_owned(),
        ));
    }
    let backend = store.backend();
    let limit = u64::try_from(limit).unwrap_or(u64::MAX);
    let old_published = || {
        Column::Status
            .eq(Status::Published.as_str())
            .and(Column::PublishedAt.lt(before))
    };
    let mut delete = Query::delete();
    delete.from_table(Entity);
    match backend {
        // MySQL/MariaDB take no LIMIT in an IN subquery, but delete with
        // ORDER BY and LIMIT directly.
        DbBackend::MySql => {
            delete
                .and_where(old_published())
                .order_by(Column::PublishedAt, Order::Asc)
                .limit(limit);
        }
        _ => {
            let oldest = Query::select()
                .column(Column::Id)
                .from(Entity)
                .and_where(old_published())
                .order_by(Column::PublishedAt, Order::Asc)
                .limit(limit)
                .to_owned();
            delete.and_where(Column::Id.in_subquery(oldest));
        }
    }
    let statement = backend.build(&delete);
    store
        .transaction("purge published outbox records", async |txn| {
            Ok::<_, TxError>(txn.execute_raw(statement.clone()).await?.rows_affected())
        })
        .await
}

/// Deletes the keys left idle, `batch_size` per transaction; then
/// registers the keys of pending records that another client inserted into
/// the table without one (a scan of the pending records). Keys a
/// transaction holds (a writer enqueueing for them) are passed over, never
/// waited for.
pub(super) async fn tidy(store: &SeaOrmStore, batch_size: usize) -> Result<(), Error> {
    let backend = store.backend();
    let limit = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
    loop {
        let found = store
            .retrying(|| {
                store.transaction("delete idle outbox keys", async |txn| {
                    let keys: Vec<String> = txn
                        .query_all_raw(keys::idle_keys(backend, limit))
                        .await?
                        .iter()
                        .map(|row| row.try_get("", "partition_key"))
                        .collect::<Result<_, _>>()?;
                    if !keys.is_empty() {
                        txn.execute_raw(keys::delete_keys(backend, &keys)).await?;
                    }
                    Ok::<_, TxError>(keys.len())
                })
            })
            .await?;
        if found < limit as usize {
            break;
        }
    }
    let offset = store.clock_offset();
    store
        .retrying(|| {
            store.transaction("register the keys of pending outbox records", async |txn| {
                let now = crate::clock::now(txn, offset).await?;
                txn.execute_raw(keys::register_missing(backend, now))
                    .await?;
                let idle: Vec<String> = txn
                    .query_all_raw(keys::idle_with_records(backend))
                    .await?
                    .iter()
                    .map(|row| row.try_get("", "partition_key"))
                    .collect::<Result<_, _>>()?;
                for chunk in idle.chunks(IDS_PER_STATEMENT) {
                    txn.execute_raw(keys::ready_now(backend, chunk, now))
                        .await?;
                }
                Ok::<_, TxError>(())
            })
        })
        .await
}

fn stats_statement(backend: DbBackend, now: DateTime<Utc>, published: bool) -> Statement {
    // The published records are the outbox's history: counted for
    // `stats`, never for the gauges' `backlog`.
    let published = if published {
        "(SELECT COUNT(*) FROM outbox WHERE status = 'published')"
    } else {
        // A count of nothing, typed as the counts are on every database.
        "(SELECT COUNT(*) FROM outbox_keys WHERE 1 = 0)"
    };
    render(
        backend,
        // One count per status, each through that status's index, rather
        // than one scan of the whole table.
        &format!(
            "SELECT
  (SELECT COUNT(*) FROM outbox WHERE status = 'pending') AS pending,
  (SELECT COUNT(*) FROM outbox WHERE status = 'pending' AND locked_until > :now) AS leased,
  (SELECT COUNT(*) FROM outbox_keys k JOIN outbox o ON o.partition_key = k.partition_key
   WHERE k.held_by IS NOT NULL AND o.status = 'pending') AS held,
  {published} AS published,
  (SELECT COUNT(*) FROM outbox WHERE status = 'dead') AS dead,
  (SELECT MIN(created_at) FROM outbox WHERE status = 'pending') AS oldest_pending_at"
        ),
        &[("now", Param::one(now))],
    )
}

pub(super) async fn stats(
    store: &SeaOrmStore,
    now: DateTime<Utc>,
    published: bool,
) -> Result<OutboxStats, Error> {
    let statement = stats_statement(store.backend(), now, published);
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
            held: count("held")?,
            published: count("published")?,
            dead: count("dead")?,
            oldest_pending_at: row.try_get("", "oldest_pending_at")?,
            topics: Vec::new(),
        })
    };
    let mut stats = match read() {
        Ok(stats) => stats,
        Err(error) => return Err(store.fail("count outbox records", error).await),
    };
    let rows = match store
        .connection()
        .query_all_raw(topic_stats_statement(store.backend()))
        .await
    {
        Ok(rows) => rows,
        Err(error) => return Err(store.fail("count outbox records by topic", error).await),
    };
    match topic_stats(&rows) {
        Ok(topics) => stats.topics = topics,
        Err(error) => return Err(store.fail("count outbox records by topic", error).await),
    }
    Ok(stats)
}

/// Pending and dead records by topic: the pending ones read whole (as
/// the pending count does), the dead ones through their own index, the
/// published ones not at all.
fn topic_stats_statement(backend: DbBackend) -> Statement {
    render(
        backend,
        "SELECT topic, 'pending' AS status, COUNT(*) AS records, MIN(created_at) AS oldest
FROM outbox WHERE status = 'pending' GROUP BY topic
UNION ALL
SELECT topic, 'dead' AS status, COUNT(*) AS records, NULL AS oldest
FROM outbox WHERE status = 'dead' GROUP BY topic
ORDER BY topic",
        &[],
    )
}

fn topic_stats(rows: &[sea_orm::QueryResult]) -> Result<Vec<TopicStats>, sea_orm::DbErr> {
    let mut topics: Vec<TopicStats> = Vec::new();
    for row in rows {
        let topic: String = row.try_get("", "topic")?;
        let status: String = row.try_get("", "status")?;
        let records = u64::try_from(row.try_get::<i64>("", "records")?).unwrap_or_default();
        if topics.last().is_none_or(|last| last.topic != topic) {
            topics.push(TopicStats {
                topic,
                ..TopicStats::default()
            });
        }
        let entry = topics.last_mut().expect("pushed above");
        if status == Status::Dead.as_str() {
            entry.dead = records;
        } else {
            entry.pending = records;
            entry.oldest_pending_at = row.try_get("", "oldest")?;
        }
    }
    Ok(topics)
}

/// The operators' statements whose plans matter, for `EXPLAIN`.
pub(super) fn statements(backend: DbBackend, now: DateTime<Utc>) -> Vec<(&'static str, Statement)> {
    let list = list_dead_statement(backend, &DeadFilter::all(), 0, 100);
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
        ("stats", stats_statement(backend, now, true)),
        ("stats for the gauges", stats_statement(backend, now, false)),
        ("stats by topic", topic_stats_statement(backend)),
        ("find idle keys", keys::idle_keys(backend, 1000)),
    ]
}
