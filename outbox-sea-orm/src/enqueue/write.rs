//! One write: the records checked, their keys locked (upserted, in one
//! order), the records inserted in chunks.

use chrono::{TimeDelta, Utc};
use outbox_engine::NewRecord;
use sea_orm::ConnectionTrait;

use crate::error::{Error, fail};
use crate::sql::{Dialect, rows};

/// Column limits of the `outbox` table, in characters.
const MAX_TOPIC: usize = 249;
const MAX_KEY: usize = 255;
const MAX_EVENT_TYPE: usize = 255;

/// Rows per `INSERT`: 12 values each stays under SQLite's 32,766 bound
/// parameters (PostgreSQL and MySQL allow 65,535).
pub(crate) const ROWS_PER_INSERT: usize = 2_000;

/// Bytes of payload and headers per `INSERT`: well under MySQL/MariaDB's
/// smallest usual `max_allowed_packet` (16 MiB on MariaDB, 64 MiB on MySQL
/// 8, 4 MiB on older servers), so many large events are written in several
/// statements rather than refused. An event larger than this goes alone.
pub(crate) const BYTES_PER_INSERT: usize = 1 << 20;
/// The most records PostgreSQL writes with their keys in one statement
/// ([`locked_insert`]); larger writes take a statement for the keys and
/// one per chunk of records.
const RECORDS_PER_LOCKED_INSERT: usize = 100;

/// [`enqueue_records`] with the store's clock `offset` (tests move it).
pub(crate) async fn write(
    db: &impl ConnectionTrait,
    sql: &dyn Dialect,
    records: &[NewRecord],
    offset: TimeDelta,
    diagnose: &impl ConnectionTrait,
    mode: Mode,
) -> Result<(), Error> {
    for record in records {
        check(record)?;
    }
    if records.is_empty() {
        return Ok(());
    }
    check_packet_size(db, sql, records, diagnose).await?;
    let now = Utc::now();
    // When each record becomes available, on the database's clock: its
    // delay (if any) counted from the insert.
    let available = |record: &NewRecord| {
        let delay = (record.available_at - now).max(TimeDelta::zero());
        sql.after(delay + offset)
    };
    // Lock each key first (sorted, so writers lock keys in one order).
    let mut heads: Vec<(&str, &NewRecord)> = Vec::new();
    for record in records {
        if let Some(key) = record.key.as_deref()
            && !heads.iter().any(|(k, _)| *k == key)
        {
            heads.push((key, record));
        }
    }
    heads.sort_by_key(|(key, _)| *key);
    if sql.inserts_with_keys()
        && !heads.is_empty()
        && records.len() <= RECORDS_PER_LOCKED_INSERT
        && chunks(records).len() == 1
    {
        let statement = rows::locked_insert(sql, &heads, records, &available)?;
        if let Err(error) = db.execute(&statement).await {
            let error = fail(diagnose, "write events to the outbox", error).await;
            return Err(too_large(records, error));
        }
        return Ok(());
    }
    let upsert_heads = async || {
        for chunk in heads.chunks(ROWS_PER_INSERT) {
            let upsert = sql.upsert_keys(
                chunk
                    .iter()
                    .map(|(key, record)| ((*key).to_owned(), available(record)))
                    .collect(),
            );
            if let Err(error) = db.execute(&upsert).await {
                return Err(fail(diagnose, "lock the events' keys", error).await);
            }
        }
        Ok(())
    };
    upsert_heads().await?;
    for chunk in chunks(records) {
        let insert = rows::insert(sql.names(), chunk, &available)?;
        if let Err(error) = db.execute(&insert).await {
            let error = fail(diagnose, "write events to the outbox", error).await;
            return Err(too_large(chunk, error));
        }
    }
    if mode == Mode::Either {
        // Outside a transaction the first upsert committed on its own, and
        // a claim may have found the key without a record and marked it
        // idle: make it ready again now that the record is there. Inside
        // one, the key's row is ours and this changes nothing.
        upsert_heads().await?;
    }
    Ok(())
}

/// What [`write`] knows of the connection it is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A transaction: every statement commits with it.
    Transaction,
    /// A transaction or a pool, it cannot tell.
    Either,
}

/// Splits records into runs of at most [`ROWS_PER_INSERT`] rows and
/// [`BYTES_PER_INSERT`] bytes (a larger record is a run of its own).
fn chunks(records: &[NewRecord]) -> Vec<&[NewRecord]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, record) in records.iter().enumerate() {
        let size = size(record);
        if i > start && (i - start == ROWS_PER_INSERT || bytes + size > BYTES_PER_INSERT) {
            chunks.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    chunks.push(&records[start..]);
    chunks
}

fn size(record: &NewRecord) -> usize {
    record.payload.len()
        + record
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
}

/// On MySQL/MariaDB, refuses an event larger than the server's
/// `max_allowed_packet` before sending it: the server would drop the
/// connection (or answer error 1153) and the same insert would fail again.
/// Asked only when an event is larger than [`BYTES_PER_INSERT`].
async fn check_packet_size(
    db: &impl ConnectionTrait,
    sql: &dyn Dialect,
    records: &[NewRecord],
    diagnose: &impl ConnectionTrait,
) -> Result<(), Error> {
    let Some(largest) = records
        .iter()
        .filter(|record| size(record) > BYTES_PER_INSERT)
        .max_by_key(|record| size(record))
    else {
        return Ok(());
    };
    let Some(statement) = sql.max_statement_size() else {
        return Ok(());
    };
    let limit: i64 = match db.query_one_raw(statement).await {
        Ok(Some(row)) => row
            .try_get::<i64>("", "max_allowed_packet")
            .or_else(|_| {
                row.try_get::<u64>("", "max_allowed_packet")
                    .map(|n| n as i64)
            })
            .unwrap_or(i64::MAX),
        Ok(None) => i64::MAX,
        Err(error) => return Err(fail(diagnose, "read max_allowed_packet", error).await),
    };
    // The statement around the event takes a few kilobytes more.
    let needed = size(largest) as i64 + 16 * 1024;
    if needed > limit {
        return Err(Error::InvalidEvent {
            event_type: largest.event_type.clone(),
            reason: format!(
                "it is {} bytes, and the server takes statements of at most {limit} bytes \
                 (max_allowed_packet); make the event smaller, or raise max_allowed_packet",
                size(largest)
            ),
        });
    }
    Ok(())
}

/// Says so when a lone event larger than [`BYTES_PER_INSERT`] is refused
/// for good (MySQL/MariaDB's `max_allowed_packet`): retrying cannot help.
fn too_large(chunk: &[NewRecord], error: Error) -> Error {
    match chunk {
        [record] if size(record) > BYTES_PER_INSERT && !error.is_retriable() => {
            Error::InvalidEvent {
                event_type: record.event_type.clone(),
                reason: format!(
                    "the database refused the event of {} bytes ({}); make the event smaller, \
                     or raise the server's limit (max_allowed_packet on MySQL/MariaDB)",
                    size(record),
                    outbox_engine::error_chain(&error),
                ),
            }
        }
        _ => error,
    }
}

/// Rejects a record that would not fit its columns, before the insert.
fn check(record: &NewRecord) -> Result<(), Error> {
    let too_long = |what: &str, value: &str, max: usize| {
        let len = value.chars().count();
        (len > max).then(|| Error::InvalidEvent {
            event_type: record.event_type.clone(),
            reason: format!(
                "its {what} is {len} characters long, and the outbox table holds at most {max}"
            ),
        })
    };
    if record.key.as_deref() == Some("") {
        return Err(Error::InvalidEvent {
            event_type: record.event_type.clone(),
            reason: "its key is empty; Kafka's default partitioner spreads empty keys over \
                     random partitions, so an empty key orders nothing: give the event a key, \
                     or none (key = None) for an unordered event"
                .to_owned(),
        });
    }
    let checks = [
        too_long("topic", &record.topic, MAX_TOPIC),
        record
            .key
            .as_deref()
            .and_then(|key| too_long("key", key, MAX_KEY)),
        too_long("event type", &record.event_type, MAX_EVENT_TYPE),
    ];
    if let Some(error) = checks.into_iter().flatten().next() {
        return Err(error);
    }
    if i32::try_from(record.schema_version).is_err() {
        return Err(Error::InvalidEvent {
            event_type: record.event_type.clone(),
            reason: format!(
                "its schema version {} is above {}",
                record.schema_version,
                i32::MAX
            ),
        });
    }
    Ok(())
}
