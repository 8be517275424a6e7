//! [`SeaOrmStore`]: the relay's [`OutboxStore`] and the operators'
//! [`OutboxAdmin`] over a SeaORM connection.

mod admin;
mod claim;
mod connect;
mod settle;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::enqueue::Mode;
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, Utc};
use outbox_engine::{
    ClaimRequest, DeadFilter, NewRecord, OutboxAdmin, OutboxRecord, OutboxStats, OutboxStore,
    RecordRef, Settled, Settlement, StoreError,
};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, EntityTrait, IsolationLevel, QuerySelect, SqliteTransactionMode, Statement,
    TransactionOptions, TransactionTrait,
};

pub use claim::claim_statements;
pub use connect::redact as redact_url;

/// Every statement whose plan matters, by name, as the store runs it on
/// `backend` at `now`: the claim's three reads, the refresh of keys, and
/// the operators' dead-letter, purge and count statements. For `EXPLAIN`
/// in tests and by operators; not a stable API.
#[doc(hidden)]
pub fn explained_statements(
    backend: DbBackend,
    now: DateTime<Utc>,
) -> Vec<(&'static str, Statement)> {
    let [ready, records, heads, unkeyed] = claim_statements(backend, now, 500);
    let keys = ["k1".to_owned(), "k2".to_owned()];
    let mut statements = vec![
        ("claim: ready keys", ready),
        ("claim: first records of keys", records),
        ("claim: first record of each key", heads),
        ("claim: unkeyed records", unkeyed),
        ("refresh keys", crate::keys::refresh(backend, &keys)),
    ];
    statements.extend(admin::statements(backend, now));
    statements
}

use crate::entity::Entity;
use crate::error::{Error, fail};

/// The outbox in a SQL database, through SeaORM: PostgreSQL, MySQL 8 /
/// MariaDB 10.6+ (both with `FOR UPDATE SKIP LOCKED`) and SQLite (one
/// writer at a time).
///
/// It implements [`OutboxStore`] for the relay and [`OutboxAdmin`] for
/// operators, with the same behaviour as `outbox_engine::InMemoryStore` (both
/// pass the store conformance suite). Clones share the connection pool.
///
/// The tables come from the `migration` crate (`outbox-migration`).
/// [`connect`](SeaOrmStore::connect) checks that they exist; with
/// [`new`](SeaOrmStore::new), call [`check`](SeaOrmStore::check) at
/// start-up, or the first operation reports [`Error::MissingTable`].
///
/// Leases, availability and backoff follow the database server's clock
/// (`now()` on PostgreSQL, `UTC_TIMESTAMP(6)` on MySQL/MariaDB; SQLite runs
/// in this process and uses its clock), so relays and writers on hosts
/// whose clocks differ agree on them.
#[derive(Debug, Clone)]
pub struct SeaOrmStore {
    db: DatabaseConnection,
    /// Microseconds added to the database's clock: zero, except in tests
    /// that move time forward (feature `testkit`).
    offset: Arc<AtomicI64>,
    /// Keys a settlement passed over while a writer held them.
    stale: settle::StaleKeys,
}

impl SeaOrmStore {
    /// A store over an existing connection pool.
    pub fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            offset: Arc::default(),
            stale: settle::StaleKeys::default(),
        }
    }

    fn stale_keys(&self) -> &settle::StaleKeys {
        &self.stale
    }

    fn clock_offset(&self) -> TimeDelta {
        TimeDelta::microseconds(self.offset.load(Ordering::Relaxed))
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

    /// Checks that a database URL names a database this build supports,
    /// without connecting: [`Error::UnsupportedScheme`] or
    /// [`Error::BackendDisabled`] say what is wrong.
    pub fn check_url(url: &str) -> Result<(), Error> {
        connect::check_scheme(url)
    }

    /// Checks that the `outbox` and `outbox_keys` tables exist with the
    /// columns the store reads: [`Error::MissingTable`] names the database
    /// and the fix.
    pub async fn check(&self) -> Result<(), Error> {
        if let Err(error) = Entity::find().limit(0).all(&self.db).await {
            return Err(fail(&self.db, "read the outbox table", error).await);
        }
        let keys = Statement::from_string(
            self.backend(),
            "SELECT partition_key, next_at, held_by FROM outbox_keys WHERE 1 = 0",
        );
        match self.db.query_all_raw(keys).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::OutdatedTable {
                database: crate::error::database_name(&self.db).await.ok().flatten(),
            }),
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

    /// Runs `transaction` again, a few times after a short random pause,
    /// while it loses a deadlock or a serialization conflict to another
    /// transaction (relays settling while writers enqueue for the same keys,
    /// InnoDB's next-key locks).
    async fn retrying<T, F, Fut>(&self, mut transaction: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let mut tries = 0;
        loop {
            match transaction().await {
                Err(error)
                    if tries < CONFLICT_TRIES
                        && error.db_err().is_some_and(crate::error::is_conflict) =>
                {
                    tries += 1;
                    tracing::debug!(tries, error = %error, "an outbox transaction lost a conflict; running it again");
                    let pause = rand::random_range(1..=10 * u64::from(tries));
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                result => return result,
            }
        }
    }

    async fn fail(&self, operation: &'static str, error: DbErr) -> Error {
        fail(&self.db, operation, error).await
    }
}

/// How often a transaction that lost a conflict is run again.
const CONFLICT_TRIES: u32 = 5;

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
        // In a transaction of its own: all or nothing, and the keys' locks
        // held until the records commit.
        let offset = self.clock_offset();
        Ok(self
            .retrying(|| {
                self.transaction("write events to the outbox", async |txn| {
                    crate::enqueue::write(txn, records, offset, &self.db, Mode::Transaction)
                        .await?;
                    Ok::<_, TxError>(())
                })
            })
            .await?)
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(claim::claim(self, request).await?)
    }

    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
        Ok(settle::settle(self, owner, settlement).await?)
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[i64],
        lease: std::time::Duration,
    ) -> Result<u64, StoreError> {
        Ok(settle::renew(self, owner, ids, lease).await?)
    }
}

#[async_trait]
impl OutboxAdmin for SeaOrmStore {
    async fn list_dead(
        &self,
        filter: &DeadFilter,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError> {
        Ok(admin::list_dead(self, filter, after_id, limit).await?)
    }

    async fn find(&self, record: RecordRef) -> Result<Option<OutboxRecord>, StoreError> {
        Ok(admin::find(self, record).await?)
    }

    async fn requeue(&self, id: i64) -> Result<bool, StoreError> {
        Ok(admin::requeue(self, admin::Which::One(id)).await? > 0)
    }

    async fn requeue_all(&self, filter: &DeadFilter) -> Result<u64, StoreError> {
        Ok(admin::requeue(self, admin::Which::Matching(filter)).await?)
    }

    async fn discard(&self, id: i64) -> Result<bool, StoreError> {
        Ok(admin::discard(self, id).await?)
    }

    async fn purge_published_batch(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError> {
        Ok(admin::purge_published_batch(self, before, limit).await?)
    }

    async fn tidy(&self, batch_size: usize) -> Result<(), StoreError> {
        Ok(admin::tidy(self, batch_size).await?)
    }

    async fn stats(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError> {
        Ok(admin::stats(self, now, true).await?)
    }

    async fn backlog(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError> {
        Ok(admin::stats(self, now, false).await?)
    }
}

/// The store conformance suite moves time forward on the store's clock,
/// and leaves writers' transactions open.
#[cfg(feature = "testkit")]
#[async_trait]
impl outbox_engine::testkit::TestStore for SeaOrmStore {
    fn advance_clock(&self, by: std::time::Duration) {
        let micros = i64::try_from(by.as_micros()).unwrap_or(i64::MAX);
        self.offset.fetch_add(micros, Ordering::Relaxed);
    }

    async fn begin_write(
        &self,
        records: &[NewRecord],
    ) -> Result<Option<Box<dyn outbox_engine::testkit::OpenTransaction>>, StoreError> {
        if self.backend() == DbBackend::Sqlite {
            return Ok(None);
        }
        let txn = match TransactionTrait::begin(&self.db).await {
            Ok(txn) => txn,
            Err(error) => {
                return Err(self
                    .fail("begin a writer's transaction", error)
                    .await
                    .into());
            }
        };
        crate::enqueue::write(&txn, records, self.clock_offset(), &txn, Mode::Transaction).await?;
        Ok(Some(Box::new(OpenTransaction(txn))))
    }
}

/// A writer's transaction left open, for the conformance suite.
#[cfg(feature = "testkit")]
#[derive(Debug)]
struct OpenTransaction(DatabaseTransaction);

#[cfg(feature = "testkit")]
#[async_trait]
impl outbox_engine::testkit::OpenTransaction for OpenTransaction {
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        self.0
            .commit()
            .await
            .map_err(|error| StoreError::retriable(error.to_string()))
    }
}
