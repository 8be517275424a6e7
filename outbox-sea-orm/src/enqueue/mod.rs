//! Writing events inside the caller's transaction.

//!
//! - this file: the entry points, on a transaction or a pool;
//! - [`write`]: checks, chunks and the statements of one write;
//! - [`as_event`]: what [`enqueue_all`] accepts as an event.

mod as_event;
mod write;

use chrono::TimeDelta;
use outbox_engine::{NewRecord, OutboxEvent};
use sea_orm::ConnectionTrait;
use uuid::Uuid;

pub use as_event::{AsEvent, marker};
pub(crate) use write::{Mode, write};

use crate::error::{Error, fail};
use crate::sql::Dialect;

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
    let sql = crate::sql::default_dialect(db.get_database_backend());
    enqueue_with(db, &*sql, event).await
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
    let sql = crate::sql::default_dialect(db.get_database_backend());
    enqueue_in_with(db, &*sql, event).await
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
    let sql = crate::sql::default_dialect(db.get_database_backend());
    enqueue_all_with(db, &*sql, events).await
}

/// Writes records built beforehand (with [`NewRecord::from_event`], a
/// delay, extra headers) with one multi-row `INSERT` per 2,000 records or
/// 1 MiB, after locking their keys as [`enqueue`] does.
pub async fn enqueue_records<C: ConnectionTrait + 'static>(
    db: &C,
    records: &[NewRecord],
) -> Result<(), Error> {
    let sql = crate::sql::default_dialect(db.get_database_backend());
    enqueue_records_with(db, &*sql, records).await
}

/// [`enqueue`] into the tables `sql` names.
pub(crate) async fn enqueue_with<C: ConnectionTrait + 'static>(
    db: &C,
    sql: &dyn Dialect,
    event: &dyn OutboxEvent,
) -> Result<Uuid, Error> {
    let record = NewRecord::from_event(event).map_err(Error::Event)?;
    enqueue_records_with(db, sql, std::slice::from_ref(&record)).await?;
    Ok(record.event_id)
}

/// [`enqueue_in`] into the tables `sql` names.
pub(crate) async fn enqueue_in_with<C: ConnectionTrait>(
    db: &C,
    sql: &dyn Dialect,
    event: &dyn OutboxEvent,
) -> Result<Uuid, Error> {
    let record = NewRecord::from_event(event).map_err(Error::Event)?;
    let records = std::slice::from_ref(&record);
    write(db, sql, records, TimeDelta::zero(), db, Mode::Either).await?;
    Ok(record.event_id)
}

/// [`enqueue_all`] into the tables `sql` names.
pub(crate) async fn enqueue_all_with<C, I, M>(
    db: &C,
    sql: &dyn Dialect,
    events: I,
) -> Result<Vec<Uuid>, Error>
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
    enqueue_records_with(db, sql, &records).await?;
    Ok(records.iter().map(|r| r.event_id).collect())
}

/// [`enqueue_records`] into the tables `sql` names.
pub(crate) async fn enqueue_records_with<C: ConnectionTrait + 'static>(
    db: &C,
    sql: &dyn Dialect,
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
        return write(db, sql, records, TimeDelta::zero(), db, mode).await;
    };
    let txn = match sea_orm::TransactionTrait::begin(pool).await {
        Ok(txn) => txn,
        Err(error) => return Err(fail(pool, "begin a transaction for the outbox", error).await),
    };
    match write(
        &txn,
        sql,
        records,
        TimeDelta::zero(),
        &txn,
        Mode::Transaction,
    )
    .await
    {
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
