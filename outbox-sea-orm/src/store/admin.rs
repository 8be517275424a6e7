//! Operators' work: dead letters, housekeeping, counts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_engine::{DeadFilter, OutboxRecord, OutboxStats, RecordRef, Status, TopicStats};
use sea_orm::{ConnectionTrait, DatabaseTransaction, FromQueryResult};

use super::{SeaOrmStore, TxError, settle};
use crate::entity::Model;
use crate::error::Error;
use crate::sql::{Dialect, IDS_PER_STATEMENT, rows};

pub(super) async fn list_dead(
    store: &SeaOrmStore,
    filter: &DeadFilter,
    after_id: Option<i64>,
    limit: usize,
) -> Result<Vec<OutboxRecord>, Error> {
    let statement = store.sql().list_dead(
        filter.topic.as_deref(),
        filter.key.as_deref(),
        after_id.unwrap_or(i64::MIN),
        i64::try_from(limit).unwrap_or(i64::MAX),
    );
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
    let select = rows::find(store.sql().names(), record);
    let row = store
        .connection()
        .query_one_raw(store.backend().build(&select))
        .await;
    let model = match row {
        Ok(Some(row)) => Model::from_query_result(&row, "").map(Some),
        Ok(None) => Ok(None),
        Err(error) => Err(error),
    };
    match model {
        Ok(model) => Ok(model.map(Model::into_listed)),
        Err(error) => Err(store.fail("find an outbox record", error).await),
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
    let sql = store.sql();
    let dead = match dead_records(store.connection(), sql, which).await {
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
                    let now = crate::clock::now(txn, sql, offset).await?;
                    let mut keys: Vec<String> = key.iter().cloned().collect();
                    settle::upsert_keys(txn, sql, &mut keys, now).await?;
                    let mut requeued = 0;
                    for chunk in ids.chunks(IDS_PER_STATEMENT) {
                        let update = rows::requeue(sql.names(), chunk, now);
                        requeued += txn.execute(&update).await?.rows_affected();
                        txn.execute(&rows::free_keys(sql.names(), chunk, None))
                            .await?;
                    }
                    settle::refresh(txn, sql, &keys).await?;
                    Ok::<_, TxError>(requeued)
                })
            })
            .await?;
    }
    Ok(requeued)
}

/// The dead record `id` (or every dead record that passes a filter), with
/// its key.
async fn dead_records(
    txn: &impl ConnectionTrait,
    sql: &dyn Dialect,
    which: Which<'_>,
) -> Result<Vec<(i64, Option<String>)>, TxError> {
    let select = match which {
        Which::One(id) => rows::dead_records(sql.names(), Some(id), None, None),
        Which::Matching(filter) => rows::dead_records(
            sql.names(),
            None,
            filter.topic.as_deref(),
            filter.key.as_deref(),
        ),
    };
    let statement = txn.get_database_backend().build(&select);
    txn.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("", "id")?, row.try_get("", "partition_key")?)))
        .collect()
}

/// The keys of the dead record `id`, or of every dead record.
async fn dead_keys(
    txn: &DatabaseTransaction,
    sql: &dyn Dialect,
    id: i64,
) -> Result<Vec<String>, TxError> {
    Ok(dead_records(txn, sql, Which::One(id))
        .await?
        .into_iter()
        .filter_map(|(_, key)| key)
        .collect())
}

/// Frees the key held by the dead record `id` and notes the discard in its
/// last error; false when it holds nothing.
pub(super) async fn discard(store: &SeaOrmStore, id: i64) -> Result<bool, Error> {
    let offset = store.clock_offset();
    let sql = store.sql();
    store
        .retrying(|| {
            store.transaction("discard a dead outbox record", async |txn| {
                let now = crate::clock::now(txn, sql, offset).await?;
                let mut keys = dead_keys(txn, sql, id).await?;
                if keys.is_empty() {
                    return Ok(false);
                }
                settle::upsert_keys(txn, sql, &mut keys, now).await?;
                let free = rows::free_keys(sql.names(), &[id], Some(keys[0].as_str()));
                if txn.execute(&free).await?.rows_affected() == 0 {
                    return Ok(false);
                }
                let find = rows::find(sql.names(), RecordRef::Id(id));
                let row = match txn.query_one_raw(sql.backend().build(&find)).await? {
                    Some(row) => Some(Model::from_query_result(&row, "")?),
                    None => None,
                };
                let error = row.and_then(|row| row.last_error).unwrap_or_default();
                let note = format!("discarded at {now}: {error}");
                txn.execute(&rows::note_discard(sql.names(), id, note, now))
                    .await?;
                settle::refresh(txn, sql, &keys).await?;
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
    let statement = store
        .sql()
        .purge_published(before, i64::try_from(limit).unwrap_or(i64::MAX));
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
    delete_idle_keys(store, batch_size).await?;
    register_missing(store).await
}

/// Deletes the keys left idle, `batch_size` per transaction, passing over
/// those a transaction holds.
pub(super) async fn delete_idle_keys(store: &SeaOrmStore, batch_size: usize) -> Result<(), Error> {
    let sql = store.sql();
    let limit = i64::try_from(batch_size.max(1)).unwrap_or(i64::MAX);
    loop {
        let found = store
            .retrying(|| {
                store.transaction("delete idle outbox keys", async |txn| {
                    let keys: Vec<String> = txn
                        .query_all_raw(sql.idle_keys(limit))
                        .await?
                        .iter()
                        .map(|row| row.try_get("", "partition_key"))
                        .collect::<Result<_, _>>()?;
                    if !keys.is_empty() {
                        txn.execute_raw(sql.delete_keys(&keys)).await?;
                    }
                    Ok::<_, TxError>(keys.len())
                })
            })
            .await?;
        if found < limit as usize {
            break;
        }
    }
    Ok(())
}

/// Registers the keys of pending records inserted without one; see
/// [`tidy`].
async fn register_missing(store: &SeaOrmStore) -> Result<(), Error> {
    let (sql, offset) = (store.sql(), store.clock_offset());
    store
        .retrying(|| {
            store.transaction("register the keys of pending outbox records", async |txn| {
                let now = crate::clock::now(txn, sql, offset).await?;
                txn.execute_raw(sql.register_missing_keys(now)).await?;
                let idle: Vec<String> = txn
                    .query_all_raw(sql.idle_keys_with_records())
                    .await?
                    .iter()
                    .map(|row| row.try_get("", "partition_key"))
                    .collect::<Result<_, _>>()?;
                for chunk in idle.chunks(IDS_PER_STATEMENT) {
                    txn.execute_raw(sql.ready_now(chunk, now)).await?;
                }
                Ok::<_, TxError>(())
            })
        })
        .await
}

pub(super) async fn stats(
    store: &SeaOrmStore,
    now: DateTime<Utc>,
    published: bool,
) -> Result<OutboxStats, Error> {
    let statement = store.sql().stats(now, published);
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
        .query_all_raw(store.sql().topic_stats())
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
