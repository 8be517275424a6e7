//! [`SeaOrmStore`]: the relay's [`OutboxStore`] and the operators'
//! [`OutboxAdmin`] over a SeaORM connection.

mod admin;
mod claim;
mod connect;
mod settle;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{
    ClaimRequest, DeadLetter, NewRecord, OutboxAdmin, OutboxRecord, OutboxStats, OutboxStore,
    Retry, StoreError,
};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, IsolationLevel, QuerySelect, SqliteTransactionMode, TransactionOptions,
    TransactionTrait,
};

pub use claim::claim_statement;

use crate::entity::Entity;
use crate::error::{Error, fail};

/// The outbox in a SQL database, through SeaORM: PostgreSQL, MySQL 8 /
/// MariaDB 10.6+ (both with `FOR UPDATE SKIP LOCKED`) and SQLite (one
/// writer at a time).
///
/// It implements [`OutboxStore`] for the relay and [`OutboxAdmin`] for
/// operators, with the same behaviour as `outbox_core::InMemoryStore` (both
/// pass the store conformance suite). Clones share the connection pool.
///
/// The table comes from the `migration` crate (`outbox-migration`).
/// [`connect`](SeaOrmStore::connect) checks that it exists; with
/// [`new`](SeaOrmStore::new), call [`check`](SeaOrmStore::check) at
/// start-up, or the first operation reports [`Error::MissingTable`].
#[derive(Debug, Clone)]
pub struct SeaOrmStore {
    db: DatabaseConnection,
}

impl SeaOrmStore {
    /// A store over an existing connection pool.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Connects to the database at a URL (or with [`ConnectOptions`], to
    /// set pool size and timeouts) and [`check`](Self::check)s the table.
    ///
    /// Fails with [`Error::UnsupportedScheme`] for a URL that is not
    /// `postgres://`, `mysql://` or `sqlite:`, with
    /// [`Error::BackendDisabled`] when this crate's feature for that
    /// database is off, with [`Error::Connect`] when the server cannot be
    /// reached (retriable) or refuses the login (not), and with
    /// [`Error::MissingTable`] when the migration has not run.
    ///
    /// For in-memory SQLite keep one connection (`sqlite::memory:` is a
    /// separate database per connection otherwise, and a shared one admits
    /// one writer): that is SeaORM's default unless you set
    /// `max_connections`.
    pub async fn connect(options: impl Into<ConnectOptions>) -> Result<Self, Error> {
        let options = options.into();
        let url = options.get_url().to_owned();
        connect::check_scheme(&url)?;
        let db = Database::connect(options)
            .await
            .map_err(|error| Error::Connect {
                url: connect::redact(&url),
                source: error.into(),
            })?;
        let store = Self::new(db);
        store.check().await?;
        Ok(store)
    }

    /// Checks that the `outbox` table exists with the columns the store
    /// reads: [`Error::MissingTable`] names the database and the fix.
    pub async fn check(&self) -> Result<(), Error> {
        match Entity::find().limit(0).all(&self.db).await {
            Ok(_) => Ok(()),
            Err(error) => Err(fail(&self.db, "read the outbox table", error).await),
        }
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The database kind.
    pub fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    /// Runs `work` in a transaction of the kind the store's statements
    /// need, and commits it. MySQL/MariaDB runs it at `READ COMMITTED`, so
    /// locking reads take no gap locks that would hold up inserts; SQLite
    /// takes the write lock at `BEGIN` (`IMMEDIATE`), so two claimers never
    /// both read and then fail to upgrade.
    async fn transaction<T, F>(&self, operation: &'static str, work: F) -> Result<T, Error>
    where
        F: AsyncFnOnce(&DatabaseTransaction) -> Result<T, TxError>,
    {
        let result = async {
            let txn = begin(&self.db).await?;
            let value = work(&txn).await?;
            txn.commit().await?;
            Ok(value)
        }
        .await;
        // The transaction is gone (committed, or rolled back on drop)
        // before errors are looked into on the pool.
        match result {
            Ok(value) => Ok(value),
            Err(TxError::Db(error)) => Err(self.fail(operation, error).await),
            Err(TxError::Outbox(error)) => Err(error),
        }
    }

    async fn fail(&self, operation: &'static str, error: DbErr) -> Error {
        fail(&self.db, operation, error).await
    }
}

/// What fails inside a store transaction.
enum TxError {
    Db(DbErr),
    Outbox(Error),
}

impl From<DbErr> for TxError {
    fn from(error: DbErr) -> Self {
        TxError::Db(error)
    }
}

impl From<Error> for TxError {
    fn from(error: Error) -> Self {
        TxError::Outbox(error)
    }
}

async fn begin(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let options = match db.get_database_backend() {
        DbBackend::MySql => TransactionOptions {
            isolation_level: Some(IsolationLevel::ReadCommitted),
            ..TransactionOptions::default()
        },
        DbBackend::Sqlite => TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..TransactionOptions::default()
        },
        _ => TransactionOptions::default(),
    };
    db.begin_with_options(options).await
}

#[async_trait]
impl OutboxStore for SeaOrmStore {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        if records.len() <= crate::enqueue::ROWS_PER_INSERT {
            return Ok(crate::enqueue_records(&self.db, records).await?);
        }
        // Several inserts: all or nothing, as one would be.
        Ok(self
            .transaction("write events to the outbox", async |txn| {
                crate::enqueue_records(txn, records).await?;
                Ok::<_, TxError>(())
            })
            .await?)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(claim::claim(self, request).await?)
    }

    async fn mark_published(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
        Ok(settle::mark_published(self, owner, ids).await?)
    }

    async fn schedule_retry(&self, owner: &str, retries: &[Retry]) -> Result<u64, StoreError> {
        Ok(settle::schedule_retry(self, owner, retries).await?)
    }

    async fn mark_dead(&self, owner: &str, dead: &[DeadLetter]) -> Result<u64, StoreError> {
        Ok(settle::mark_dead(self, owner, dead).await?)
    }

    async fn release(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
        Ok(settle::release(self, owner, ids).await?)
    }
}

#[async_trait]
impl OutboxAdmin for SeaOrmStore {
    async fn list_dead(
        &self,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(admin::list_dead(self, after_id, limit).await?)
    }

    async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        Ok(admin::requeue(self, Some(id)).await? > 0)
    }

    async fn requeue_all(&self) -> Result<u64, StoreError> {
        Ok(admin::requeue(self, None).await?)
    }

    async fn purge_published(
        &self,
        before: DateTime<Utc>,
        batch_size: usize,
    ) -> Result<u64, StoreError> {
        Ok(admin::purge_published(self, before, batch_size).await?)
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError> {
        Ok(admin::stats(self, now).await?)
    }
}
