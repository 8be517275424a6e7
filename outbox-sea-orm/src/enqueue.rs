//! Writing events inside the caller's transaction.

use std::sync::Arc;

use chrono::Utc;
use outbox_core::{NewRecord, OutboxEvent, Status};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Query, SimpleExpr};
use uuid::Uuid;

use crate::entity::{Column, Entity};
use crate::error::{Error, fail};

/// Column limits of the `outbox` table, in characters.
const MAX_TOPIC: usize = 249;
const MAX_KEY: usize = 255;
const MAX_EVENT_TYPE: usize = 255;

/// Rows per `INSERT`: 12 values each stays under SQLite's 32,766 bound
/// parameters (PostgreSQL and MySQL allow 65,535).
pub(crate) const ROWS_PER_INSERT: usize = 2_000;

/// Writes one event to the outbox through `db`: the caller's transaction
/// (then the event is published if and only if it commits), a pool, or a
/// mock connection. Returns the event's id.
///
/// The event is serialized before anything is sent to the database, so a
/// payload that does not serialize fails here ([`Error::Event`]) and the
/// caller's transaction fails with it; so does a key or topic longer than
/// the table's columns ([`Error::InvalidEvent`]).
///
/// ```no_run
/// # use outbox_core::OutboxEvent;
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
pub async fn enqueue(db: &impl ConnectionTrait, event: &dyn OutboxEvent) -> Result<Uuid, Error> {
    let record = NewRecord::from_event(event).map_err(Error::Event)?;
    let id = record.event_id;
    enqueue_records(db, std::slice::from_ref(&record)).await?;
    Ok(id)
}

/// Writes several events with one multi-row `INSERT` (one per 2,000
/// events), and returns their ids in order.
///
/// Takes anything that iterates over events: `&[OrderPlaced]`,
/// `[&a, &b]`, `&[&dyn OutboxEvent]`, `Vec<Box<dyn OutboxEvent>>` or
/// `&[Box<dyn OutboxEvent>]` (see [`AsEvent`]). Every event is serialized
/// and checked before the first row is sent; pass a transaction to make a
/// large write all-or-nothing.
///
/// ```no_run
/// # use outbox_core::OutboxEvent;
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
pub async fn enqueue_all<I, M>(db: &impl ConnectionTrait, events: I) -> Result<Vec<Uuid>, Error>
where
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
/// delay, extra headers) with one multi-row `INSERT` per 2,000 records.
pub async fn enqueue_records(
    db: &impl ConnectionTrait,
    records: &[NewRecord],
) -> Result<(), Error> {
    for record in records {
        check(record)?;
    }
    for chunk in records.chunks(ROWS_PER_INSERT) {
        let insert = insert_statement(chunk)?;
        if let Err(error) = db.execute(&insert).await {
            return Err(fail(db, "write events to the outbox", error).await);
        }
    }
    Ok(())
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

fn insert_statement(records: &[NewRecord]) -> Result<sea_orm::sea_query::InsertStatement, Error> {
    let columns = [
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
    let now = Utc::now();
    let mut insert = Query::insert();
    insert.into_table(Entity).columns(columns);
    for record in records {
        let headers = serde_json::to_string(&record.headers)
            .map_err(|e| Error::InvalidArgument(format!("headers do not serialize: {e}")))?;
        let values: [SimpleExpr; 12] = [
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
            record.available_at.into(),
            record.created_at.into(),
            now.into(),
        ];
        insert
            .values(values)
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
