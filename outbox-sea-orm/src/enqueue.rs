//! Writing events inside the caller's transaction.

use std::sync::Arc;

use chrono::{TimeDelta, Utc};
use outbox_engine::{NewRecord, OutboxEvent, Status};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Query, SimpleExpr};
use uuid::Uuid;

use crate::entity::{Column, Entity};
use crate::error::{Error, fail};
use crate::{clock, keys};

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

/// Writes one event to the outbox through `db`: the caller's transaction
/// (then the event is published if and only if it commits), a pool, or a
/// mock connection. Returns the event's id.
///
/// The event is serialized before anything is sent to the database, so a
/// payload that does not serialize fails here ([`Error::Event`]) and the
/// caller's transaction fails with it; so does an empty key, or a key or
/// topic longer than the table's columns ([`Error::InvalidEvent`]).
///
/// # Order
///
/// The relay publishes the events of one key in the order their
/// transactions commit. To make that so, `enqueue` locks the key (a row of
/// `outbox_keys`) before writing the event, and the lock is held until the
/// caller's transaction ends: a second transaction enqueueing for the same
/// key waits at its `enqueue` until the first commits or rolls back.
/// Transactions that enqueue for several keys in different orders can
/// deadlock like any two that lock rows; the database aborts one of them
/// (retry it). Given a pool rather than a transaction, `enqueue` writes in
/// a transaction of its own.
///
/// Nothing else waits for the key: the relay passes over a key a writer
/// holds (its claims and settlements use `SKIP LOCKED`), so a transaction
/// left open delays its own key's records only, the committed ones
/// included, until it ends (and then by a poll, at most the lease of the
/// key's last claim). On SQLite, one writer at a time holds the whole
/// database, so an open transaction holds up every writer and the relay.
///
/// On PostgreSQL at `REPEATABLE READ` or `SERIALIZABLE`, `enqueue` fails
/// with a serialization error (SQLSTATE 40001; retry the transaction) when
/// the key's row in `outbox_keys` was changed by a transaction that
/// committed after this one's snapshot: a writer that found the key new or
/// idle (it creates or wakes the row), or a relay that claimed or settled
/// the key. A writer of a key that already has pending records only locks
/// the row, so writers of a busy key take turns without that error. At
/// `READ COMMITTED` (PostgreSQL's default) there is no such error.
///
/// The record's availability (`available_at`) is stamped with the
/// database's clock, so a writer whose clock is off does not delay or
/// hurry its events; a delay set with [`NewRecord::available_at`] counts
/// from the insert.
///
/// ```no_run
/// # use outbox_engine::OutboxEvent;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// # #[outbox(topic = "orders", key = order_id)]
/// # struct OrderPlaced { order_id: u64, total_cents: i64 }
/// # async fn example(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
/// use sea_orm::TransactionTrait;
///
/// let txn = db.begin().await?;
/// // ... the business change, on `&txn` ...
/// outbox_sea_orm::enqueue(&txn, &OrderPlaced { order_id: 7, total_cents: 990 }).await?;
/// txn.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn enqueue<C: ConnectionTrait + 'static>(
    db: &C,
    event: &dyn OutboxEvent,
) -> Result<Uuid, Error> {
    let record = NewRecord::from_event(event).map_err(Error::Event)?;
    let id = record.event_id;
    enqueue_records(db, std::slice::from_ref(&record)).await?;
    Ok(id)
}

/// [`enqueue`] for code generic over a connection that is not `'static`:
/// SeaORM's `ActiveModelBehavior` hooks (`before_save`, `after_save`,
/// ...), which get a `db: &C` where `C: ConnectionTrait`. Given the
/// transaction the model is saved in, the event commits or rolls back
/// with it, in the key's commit order, as with [`enqueue`]. Given a pool,
/// each statement commits on its own (the key's row, the record, then the
/// key's row again so a relay that looked in between finds the record),
/// so save models in a transaction when the event must be atomic with
/// them.
///
/// ```
/// use outbox_engine::OutboxEvent;
/// use sea_orm::entity::prelude::*;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(topic = "orders", key = order_id)]
/// struct OrderSaved { order_id: i64, total_cents: i64 }
///
/// #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
/// #[sea_orm(table_name = "orders")]
/// pub struct Model {
///     #[sea_orm(primary_key)]
///     pub id: i64,
///     pub total_cents: i64,
/// }
///
/// #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
/// pub enum Relation {}
///
/// #[async_trait::async_trait]
/// impl ActiveModelBehavior for ActiveModel {
///     async fn after_save<C: ConnectionTrait>(
///         model: Model,
///         db: &C,
///         _insert: bool,
///     ) -> Result<Model, DbErr> {
///         let event = OrderSaved { order_id: model.id, total_cents: model.total_cents };
///         outbox_sea_orm::enqueue_in(db, &event).await?; // converts into DbErr
///         Ok(model)
///     }
/// }
/// ```
pub async fn enqueue_in<C: ConnectionTrait>(
    db: &C,
    event: &dyn OutboxEvent,
) -> Result<Uuid, Error> {
    let record = NewRecord::from_event(event).map_err(Error::Event)?;
    let id = record.event_id;
    write(
        db,
        std::slice::from_ref(&record),
        TimeDelta::zero(),
        db,
        Mode::Either,
    )
    .await?;
    Ok(id)
}

/// Writes several events with one multi-row `INSERT` (one per 2,000
/// events or 1 MiB), and returns their ids in order. Locks their keys
/// first, as [`enqueue`] does.
///
/// Takes anything that iterates over events: `&[OrderPlaced]`,
/// `[&a, &b]`, `&[&dyn OutboxEvent]`, `Vec<Box<dyn OutboxEvent>>` or
/// `&[Box<dyn OutboxEvent>]` (see [`AsEvent`]). Every event is serialized
/// and checked before the first row is sent; pass a transaction to make a
/// large write all-or-nothing.
///
/// ```no_run
/// # use outbox_engine::OutboxEvent;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// # #[outbox(topic = "orders", key = order_id)]
/// # struct OrderPlaced { order_id: u64, total_cents: i64 }
/// # #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// # #[outbox(topic = "orders", key = order_id)]
/// # struct OrderShipped { order_id: u64 }
/// # async fn example(txn: &sea_orm::DatabaseTransaction) -> Result<(), outbox_sea_orm::Error> {
/// use outbox_sea_orm::enqueue_all;
///
/// // Events of one type, by reference.
/// let placed = [OrderPlaced { order_id: 1, total_cents: 5 }, OrderPlaced { order_id: 2, total_cents: 7 }];
/// enqueue_all(txn, &placed).await?;
///
/// // Events of several types.
/// let (a, b) = (OrderPlaced { order_id: 3, total_cents: 1 }, OrderShipped { order_id: 1 });
/// enqueue_all(txn, [&a as &dyn OutboxEvent, &b]).await?;
/// let boxed: Vec<Box<dyn OutboxEvent>> = vec![Box::new(a), Box::new(b)];
/// enqueue_all(txn, &boxed).await?;
/// # Ok(())
/// # }
/// ```
pub async fn enqueue_all<C, I, M>(db: &C, events: I) -> Result<Vec<Uuid>, Error>
where
    C: ConnectionTrait + 'static,
    I: IntoIterator,
    I::Item: AsEvent<M>,
{
    let records = events
        .into_iter()
        .map(|event| NewRecord::from_event(event.as_event()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::Event)?;
    enqueue_records(db, &records).await?;
    Ok(records.iter().map(|r| r.event_id).collect())
}

/// Writes records built beforehand (with [`NewRecord::from_event`], a
/// delay, extra headers) with one multi-row `INSERT` per 2,000 records or
/// 1 MiB, after locking their keys as [`enqueue`] does.
pub async fn enqueue_records<C: ConnectionTrait + 'static>(
    db: &C,
    records: &[NewRecord],
) -> Result<(), Error> {
    // On a pool (no transaction of the caller's), in a transaction of its
    // own: a key's row must not say "ready" before its record commits, or
    // a claim in between finds no record and marks the key idle.
    let any = db as &dyn std::any::Any;
    let Some(pool) = any.downcast_ref::<sea_orm::DatabaseConnection>() else {
        let mode = if any.is::<sea_orm::DatabaseTransaction>() {
            Mode::Transaction
        } else {
            Mode::Either
        };
        return write(db, records, TimeDelta::zero(), db, mode).await;
    };
    let txn = match sea_orm::TransactionTrait::begin(pool).await {
        Ok(txn) => txn,
        Err(error) => return Err(fail(pool, "begin a transaction for the outbox", error).await),
    };
    match write(&txn, records, TimeDelta::zero(), &txn, Mode::Transaction).await {
        Ok(()) => {}
        // Looked into again on the pool, once the transaction (aborted on
        // PostgreSQL, holding the only connection of an in-memory SQLite)
        // is rolled back.
        Err(Error::Database { operation, source }) => {
            drop(txn);
            return Err(fail(pool, operation, source.into_inner()).await);
        }
        Err(Error::MissingTable { database: None }) => {
            drop(txn);
            let database = crate::error::database_name(pool).await.ok().flatten();
            return Err(Error::MissingTable { database });
        }
        Err(error) => return Err(error),
    }
    match txn.commit().await {
        Ok(()) => Ok(()),
        Err(error) => Err(fail(pool, "commit events to the outbox", error).await),
    }
}

/// [`enqueue_records`] with the store's clock `offset` (tests move it).
pub(crate) async fn write(
    db: &impl ConnectionTrait,
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
    let backend = db.get_database_backend();
    check_packet_size(db, records, diagnose).await?;
    let now = Utc::now();
    // When each record becomes available, on the database's clock: its
    // delay (if any) counted from the insert.
    let available = |record: &NewRecord| {
        let delay = (record.available_at - now).max(TimeDelta::zero());
        clock::after(backend, delay + offset)
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
    if backend == sea_orm::DbBackend::Postgres
        && !heads.is_empty()
        && records.len() <= RECORDS_PER_LOCKED_INSERT
        && chunks(records).len() == 1
    {
        let statement = locked_insert(backend, &heads, records, &available)?;
        if let Err(error) = db.execute(&statement).await {
            let error = fail(diagnose, "write events to the outbox", error).await;
            return Err(too_large(records, error));
        }
        return Ok(());
    }
    let upsert_heads = async || {
        for chunk in heads.chunks(ROWS_PER_INSERT) {
            let upsert = keys::upsert(
                backend,
                chunk
                    .iter()
                    .map(|(key, record)| ((*key).to_owned(), available(record))),
            );
            if let Err(error) = db.execute(&upsert).await {
                return Err(fail(diagnose, "lock the events' keys in outbox_keys", error).await);
            }
        }
        Ok(())
    };
    upsert_heads().await?;
    for chunk in chunks(records) {
        let insert = insert_statement(chunk, &available)?;
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
    if db.get_database_backend() != sea_orm::DbBackend::MySql {
        return Ok(());
    }
    let statement = sea_orm::Statement::from_string(
        sea_orm::DbBackend::MySql,
        "SELECT @@max_allowed_packet AS max_allowed_packet",
    );
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

/// On PostgreSQL, the keys' upsert and the records' insert in one
/// statement, so an event costs the writer one round trip:
///
/// ```sql
/// WITH locked AS (INSERT INTO outbox_keys ... ON CONFLICT ... DO UPDATE ... RETURNING partition_key)
/// INSERT INTO outbox (...) SELECT ... FROM (SELECT COUNT(*) FROM locked) AS l UNION ALL ...
/// ```
///
/// The count reads every row of `locked` before the first record row is
/// formed, so the keys are locked (waiting for a writer of the same key to
/// commit) before the records' ids are drawn from the sequence: ids follow
/// commit order per key, as with the two statements.
fn locked_insert(
    backend: sea_orm::DbBackend,
    heads: &[(&str, &NewRecord)],
    records: &[NewRecord],
    available: &dyn Fn(&NewRecord) -> SimpleExpr,
) -> Result<sea_orm::sea_query::WithQuery, Error> {
    use sea_orm::sea_query::{Alias, CommonTableExpression, Expr, UnionType, WithClause};

    let mut upsert = keys::upsert(
        backend,
        heads
            .iter()
            .map(|(key, record)| ((*key).to_owned(), available(record))),
    );
    upsert.returning_col(Alias::new("partition_key"));
    let locked = CommonTableExpression::new()
        .query(upsert)
        .table_name(Alias::new("locked"))
        .to_owned();
    let count = Query::select()
        .expr(Expr::cust("COUNT(*)"))
        .from(Alias::new("locked"))
        .to_owned();
    let mut rows: Option<sea_orm::sea_query::SelectStatement> = None;
    for record in records {
        let mut row = Query::select();
        row.exprs(row_values(record, available)?)
            .from_subquery(count.clone(), Alias::new("l"));
        match &mut rows {
            None => rows = Some(row),
            Some(first) => {
                first.union(UnionType::All, row);
            }
        }
    }
    let rows = rows.expect("at least one record");
    let mut insert = Query::insert();
    insert
        .into_table(Entity)
        .columns(INSERT_COLUMNS)
        .select_from(rows)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(insert.with(WithClause::new().cte(locked).to_owned()))
}

/// The columns an insert sets, in [`row_values`]' order.
const INSERT_COLUMNS: [Column; 12] = [
    Column::EventId,
    Column::Topic,
    Column::PartitionKey,
    Column::EventType,
    Column::SchemaVersion,
    Column::Payload,
    Column::Headers,
    Column::Status,
    Column::Attempts,
    Column::AvailableAt,
    Column::CreatedAt,
    Column::UpdatedAt,
];

/// A record's values for [`INSERT_COLUMNS`].
fn row_values(
    record: &NewRecord,
    available: &dyn Fn(&NewRecord) -> SimpleExpr,
) -> Result<[SimpleExpr; 12], Error> {
    let headers = serde_json::to_string(&record.headers)
        .map_err(|e| Error::InvalidArgument(format!("headers do not serialize: {e}")))?;
    Ok([
        record.event_id.into(),
        record.topic.clone().into(),
        record.key.clone().into(),
        record.event_type.clone().into(),
        // Checked to fit above.
        (record.schema_version as i32).into(),
        record.payload.clone().into(),
        headers.into(),
        Status::Pending.as_str().into(),
        0_i32.into(),
        available(record),
        record.created_at.into(),
        Utc::now().into(),
    ])
}

fn insert_statement(
    records: &[NewRecord],
    available: &dyn Fn(&NewRecord) -> SimpleExpr,
) -> Result<sea_orm::sea_query::InsertStatement, Error> {
    let mut insert = Query::insert();
    insert.into_table(Entity).columns(INSERT_COLUMNS);
    for record in records {
        insert
            .values(row_values(record, available)?)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    }
    Ok(insert)
}

/// What [`enqueue_all`] accepts as an event: an event by value, a
/// reference to one (`&OrderPlaced`, `&dyn OutboxEvent`), a reference to
/// such a reference (the items of `&[&OrderPlaced]`), a `Box` or `Arc` of an
/// event, or a reference to one (the items of `&[Box<dyn OutboxEvent>]`).
///
/// `M` is one of the [`marker`] types; the compiler infers it, so callers
/// never name it. (One trait per shape keeps the implementations apart:
/// with a single trait, the one for events by value would collide with
/// those for references and boxes.)
pub trait AsEvent<M> {
    /// The event.
    fn as_event(&self) -> &dyn OutboxEvent;
}

/// The shapes of [`AsEvent`], inferred by the compiler.
pub mod marker {
    /// An event by value.
    #[derive(Debug)]
    pub enum Value {}
    /// `&E`.
    #[derive(Debug)]
    pub enum Ref {}
    /// `&&E`.
    #[derive(Debug)]
    pub enum RefRef {}
    /// `Box<E>` or `Arc<E>`.
    #[derive(Debug)]
    pub enum Owned {}
    /// `&Box<E>` or `&Arc<E>`.
    #[derive(Debug)]
    pub enum OwnedRef {}
}

impl<T: OutboxEvent> AsEvent<marker::Value> for T {
    fn as_event(&self) -> &dyn OutboxEvent {
        self
    }
}

/// Implements [`AsEvent`] for a shape, once for concrete events and once
/// for `dyn OutboxEvent` (a generic `T: ?Sized` cannot become a trait
/// object). `$deref` turns `self` into a reference to the event.
macro_rules! as_event {
    ($($marker:ident: $concrete:ty, $dynamic:ty, |$this:ident| $deref:expr;)*) => {$(
        impl<T: OutboxEvent> AsEvent<marker::$marker> for $concrete {
            fn as_event(&self) -> &dyn OutboxEvent {
                let $this = self;
                let event: &T = $deref;
                event
            }
        }
        impl AsEvent<marker::$marker> for $dynamic {
            fn as_event(&self) -> &dyn OutboxEvent {
                let $this = self;
                $deref
            }
        }
    )*};
}

as_event! {
    Ref: &T, &dyn OutboxEvent, |this| &**this;
    RefRef: &&T, &&dyn OutboxEvent, |this| &***this;
    Owned: Box<T>, Box<dyn OutboxEvent>, |this| &**this;
    Owned: Arc<T>, Arc<dyn OutboxEvent>, |this| &**this;
    OwnedRef: &Box<T>, &Box<dyn OutboxEvent>, |this| &***this;
    OwnedRef: &Arc<T>, &Arc<dyn OutboxEvent>, |this| &***this;
}
