//! The consumer's half of effectively once: an inbox of the events a
//! consumer has handled, written in the same transaction as the handling.
//!
//! The relay delivers every event at least once, so a consumer sees some
//! twice (a relay crash between publishing and marking, a consumer crash
//! between its database commit and its offset commit). Recording the event
//! id in the consumer's own transaction, before its writes, makes the
//! second delivery a no-op: [`record`] says whether the event is new, and
//! [`handle`] runs a handler only for a new one, committing the handler's
//! writes and the inbox entry together. Commit the Kafka offset after that
//! transaction commits (`outbox_rdkafka::handle_message` does).
//!
//! The table is `inbox` (migration `outbox_migration::Inbox`, not part of the
//! outbox's own migrations): one row per consumer and event id. For a
//! table of another name, use an [`Inbox`] made with the same
//! [`Tables`] as its migration (`outbox_migration::inbox_migrations_for`).
//!
//! ```no_run
//! # use uuid::Uuid;
//! # async fn example(db: sea_orm::DatabaseConnection, event_id: Uuid) -> Result<(), sea_orm::DbErr> {
//! use sea_orm::{ConnectionTrait, DbErr};
//!
//! let handled = outbox_sea_orm::inbox::handle(&db, "billing", event_id, |txn| {
//!     Box::pin(async move {
//!         txn.execute_unprepared("UPDATE accounts SET balance = balance - 1250 WHERE id = 7")
//!             .await?;
//!         Ok::<_, DbErr>(())
//!     })
//! })
//! .await
//! .map_err(|error| DbErr::Custom(error.to_string()))?;
//! if handled.is_none() {
//!     // Delivered before: nothing was done this time.
//! }
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use outbox_migration::Tables;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, TransactionError, TransactionTrait,
};
use uuid::Uuid;

use crate::error::{Error, fail};
use crate::sql::Dialect;

/// The inbox on a table named in a [`Tables`]; the module's functions use
/// the default, `inbox`.
#[derive(Debug, Clone, Default)]
pub struct Inbox {
    tables: Tables,
    /// The statements for other than the default names, made at the first
    /// call rather than at every event.
    sql: Arc<OnceLock<Arc<dyn Dialect>>>,
}

impl Inbox {
    /// The inbox on the table `tables` names.
    pub fn new(tables: &Tables) -> Self {
        Self {
            tables: tables.clone(),
            sql: Arc::default(),
        }
    }

    fn sql(&self, backend: DbBackend) -> Arc<dyn Dialect> {
        if self.tables.is_default() {
            return crate::sql::default_dialect(backend);
        }
        let made = self
            .sql
            .get_or_init(|| crate::sql::dialect(backend, &self.tables));
        if made.backend() == backend {
            made.clone()
        } else {
            crate::sql::dialect(backend, &self.tables)
        }
    }

    /// [`record`] in this inbox.
    pub async fn record<C: ConnectionTrait>(
        &self,
        txn: &C,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<bool, Error> {
        if consumer.is_empty() || consumer.chars().count() > MAX_CONSUMER {
            return Err(Error::InvalidArgument(format!(
                "the inbox consumer name must be 1 to {MAX_CONSUMER} characters, got {:?}",
                consumer
            )));
        }
        let sql = self.sql(txn.get_database_backend());
        let statement = sql.inbox_record(consumer, event_id, Utc::now());
        match txn.execute_raw(statement).await {
            Ok(result) => Ok(result.rows_affected() == 1),
            Err(error) => Err(fail(txn, "record an event in the inbox", error).await),
        }
    }

    /// [`handle`] with this inbox.
    pub async fn handle<C, F, T, E>(
        &self,
        db: &C,
        consumer: &str,
        event_id: Uuid,
        handler: F,
    ) -> Result<Option<T>, TransactionError<E>>
    where
        C: TransactionTrait<Transaction = DatabaseTransaction>,
        F: for<'c> FnOnce(&'c DatabaseTransaction) -> Handler<'c, T, E> + Send + 'static,
        T: Send + 'static,
        E: From<Error> + fmt::Display + fmt::Debug + Send + 'static,
    {
        let consumer = consumer.to_owned();
        let inbox = self.clone();
        db.transaction::<_, Option<T>, E>(move |txn| {
            Box::pin(async move {
                if !inbox.record(txn, &consumer, event_id).await? {
                    return Ok(None);
                }
                handler(txn).await.map(Some)
            })
        })
        .await
    }

    /// [`purge`] of this inbox.
    pub async fn purge<C: ConnectionTrait>(
        &self,
        db: &C,
        before: DateTime<Utc>,
        batch_size: usize,
    ) -> Result<u64, Error> {
        if batch_size == 0 {
            return Err(Error::InvalidArgument(
                "inbox purge batch size must be at least 1".to_owned(),
            ));
        }
        let sql = self.sql(db.get_database_backend());
        let limit = i64::try_from(batch_size).unwrap_or(i64::MAX);
        let mut total = 0;
        loop {
            let deleted = match db.execute_raw(sql.inbox_purge(before, limit)).await {
                Ok(result) => result.rows_affected(),
                Err(error) => return Err(fail(db, "purge the inbox", error).await),
            };
            total += deleted;
            if deleted < limit as u64 {
                return Ok(total);
            }
        }
    }
}
/// The longest consumer name (the `consumer` column).
const MAX_CONSUMER: usize = 255;

/// Records, in the caller's transaction `txn`, that `consumer` handled
/// `event_id`. Returns `true` the first time, `false` when it was recorded
/// already (a redelivery: skip the handling).
///
/// Call it first in the transaction that does the handling's writes, so
/// both commit or neither. A second transaction recording the same event
/// for the same consumer waits at this call until the first ends, then
/// gets `false` if the first committed.
pub async fn record<C: ConnectionTrait>(
    txn: &C,
    consumer: &str,
    event_id: Uuid,
) -> Result<bool, Error> {
    Inbox::default().record(txn, consumer, event_id).await
}

/// A handler's transaction body, as SeaORM's
/// [`transaction`](TransactionTrait::transaction) takes it.
pub type Handler<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// Runs `handler` in a new transaction on `db`, once per event and
/// consumer: the transaction first [`record`]s the event; if it is new,
/// `handler` does its writes and everything commits together
/// (`Ok(Some(value))`); if it was handled before, nothing is done
/// (`Ok(None)`). An error of `handler` rolls back both.
pub async fn handle<C, F, T, E>(
    db: &C,
    consumer: &str,
    event_id: Uuid,
    handler: F,
) -> Result<Option<T>, TransactionError<E>>
where
    C: TransactionTrait<Transaction = DatabaseTransaction>,
    F: for<'c> FnOnce(&'c DatabaseTransaction) -> Handler<'c, T, E> + Send + 'static,
    T: Send + 'static,
    E: From<Error> + fmt::Display + fmt::Debug + Send + 'static,
{
    Inbox::default()
        .handle(db, consumer, event_id, handler)
        .await
}

/// Deletes inbox entries recorded before `before`, at most `batch_size` per
/// statement, until none is left; returns how many. Keep entries longer
/// than any redelivery can come (the topic's retention, at least).
pub async fn purge<C: ConnectionTrait>(
    db: &C,
    before: DateTime<Utc>,
    batch_size: usize,
) -> Result<u64, Error> {
    Inbox::default().purge(db, before, batch_size).await
}
