//! [`SeaOrmStore`]: the relay's [`OutboxStore`] and the operators'
//! [`OutboxAdmin`] over a SeaORM connection.

mod admin;
mod claim;
mod connect;
mod reclaim;
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
use outbox_migration::Tables;
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction, DbBackend,
    DbErr, Statement, TransactionTrait,
};

pub use connect::redact as redact_url;

use crate::error::{Error, fail};
use crate::sql::Dialect;

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
    /// The statements, for the database and the tables' names.
    sql: Arc<dyn Dialect>,
    /// Microseconds added to the database's clock: zero, except in tests
    /// that move time forward (feature `testkit`).
    offset: Arc<AtomicI64>,
    /// Keys a settlement passed over while a writer held them.
    stale: settle::StaleKeys,
    /// Whether published records stay in the table, marked.
    history: bool,
    /// Space reclaimed by the relay's housekeeping (PostgreSQL's `VACUUM`).
    reclaim: reclaim::Reclaim,
}

impl SeaOrmStore {
    /// A store over an existing connection pool.
    pub fn new(db: DatabaseConnection) -> Self {
        let backend = db.get_database_backend();
        Self {
            sql: crate::sql::default_dialect(backend),
            db,
            offset: Arc::default(),
            stale: settle::StaleKeys::default(),
            history: false,
            reclaim: reclaim::Reclaim::default(),
        }
    }

    /// Keeps published records in the table, marked `published` with the
    /// time, as a history that [`find`](OutboxAdmin::find), the counts
    /// and audits read, until a purge deletes them: the relay's
    /// `retain_published`, or `outbox purge`. Each event then costs the
    /// database a second row version and its index entries, and a purge.
    ///
    /// By default a settlement deletes the records it publishes: the table
    /// holds only the records still to publish and the dead letters, and
    /// the published events are in the broker. On MySQL/MariaDB the
    /// settlement marks them all the same (see `Dialect::deletes_published`)
    /// and, without a history, the relay's housekeeping purges them.
    #[must_use]
    pub fn keep_published(mut self) -> Self {
        self.history = true;
        self
    }

    /// Whether a settlement leaves the records it publishes in the table,
    /// marked: with [`keep_published`](Self::keep_published), and always on
    /// MySQL/MariaDB, where the relay's housekeeping purges them instead.
    pub fn keeps_published(&self) -> bool {
        self.history || !self.sql.deletes_published()
    }

    /// Whether the relay's housekeeping purges what settlements marked
    /// published: on MySQL/MariaDB, unless a history was asked for.
    pub(crate) fn purges_published(&self) -> bool {
        !self.history && !self.sql.deletes_published()
    }

    /// Whether the relay's housekeeping ([`OutboxStore::housekeep`]) vacuums
    /// the outbox tables on PostgreSQL, once 1,000 rows were settled since
    /// the last time (see the store's docs). Default: on. Turn it off where
    /// autovacuum keeps up with the tables. It needs the relay's role to
    /// own them; when it does not, the relay says so once and leaves them to
    /// autovacuum.
    #[must_use]
    pub fn vacuum(self, on: bool) -> Self {
        self.reclaim.set(on);
        self
    }

    pub(crate) fn settled_rows(&self, rows: u64) {
        self.reclaim.settled(rows);
    }

    /// The store on the tables named in `tables` (by default `outbox`,
    /// `outbox_keys` and `inbox`): give the same names to the migration
    /// (`outbox_migration::migrate_tables`) and to the writers, which
    /// enqueue through this store ([`enqueue`](Self::enqueue)). Fails with
    /// [`Error::InvalidArgument`] for a schema outside PostgreSQL.
    pub fn with_tables(mut self, tables: &Tables) -> Result<Self, Error> {
        let backend = self.backend();
        tables
            .check_backend(backend)
            .map_err(|error| Error::InvalidArgument(error.to_string()))?;
        self.sql = crate::sql::dialect(backend, tables);
        Ok(self)
    }

    /// The names of the tables the store works on.
    pub fn tables(&self) -> &Tables {
        &self.sql.names().tables
    }

    pub(crate) fn sql(&self) -> &dyn Dialect {
        &*self.sql
    }

    /// Every statement whose plan matters, by name, as this store runs it
    /// at `now`: the claim's reads, the refresh of keys, the operators'
    /// lists, counts and purge. For `EXPLAIN` in tests and by operators;
    /// not a stable API.
    #[doc(hidden)]
    pub fn explained_statements(&self, now: DateTime<Utc>) -> Vec<(&'static str, Statement)> {
        self.sql.explained(now)
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
        Self::connect_with_tables(options, &Tables::default()).await
    }

    /// [`connect`](Self::connect) to the tables named in `tables`
    /// ([`with_tables`](Self::with_tables)).
    pub async fn connect_with_tables(
        options: impl Into<ConnectOptions>,
        tables: &Tables,
    ) -> Result<Self, Error> {
        let options = options.into();
        let url = options.get_url().to_owned();
        connect::check_scheme(&url)?;
        let db = Database::connect(options)
            .await
            .map_err(|error| Error::Connect {
                url: connect::redact(&url),
                source: error.into(),
            })?;
        let store = Self::new(db).with_tables(tables)?;
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
        if let Err(error) = self.db.query_all_raw(self.sql.check_outbox()).await {
            // Reading no row of the table fails only when it, or one of
            // its columns, is missing (whatever its name).
            if matches!(
                crate::error::classify(&error),
                crate::error::Class::UndefinedTable | crate::error::Class::SqliteError
            ) {
                let database = crate::error::database_name(&self.db).await.ok().flatten();
                return Err(Error::MissingTable { database });
            }
            return Err(fail(&self.db, "read the outbox table", error).await);
        }
        match self.db.query_all_raw(self.sql.check_keys()).await {
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
            let txn = self.db.begin_with_options(self.sql.transaction()).await?;
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

#[async_trait]
impl OutboxStore for SeaOrmStore {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        // In a transaction of its own: all or nothing, and the keys' locks
        // held until the records commit.
        let offset = self.clock_offset();
        Ok(self
            .retrying(|| {
                self.transaction("write events to the outbox", async |txn| {
                    crate::enqueue::write(
                        txn,
                        self.sql(),
                        records,
                        offset,
                        &self.db,
                        Mode::Transaction,
                    )
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

    async fn housekeep(&self) -> Result<(), StoreError> {
        reclaim::housekeep(self).await?;
        Ok(())
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
    fn keeps_published(&self) -> bool {
        SeaOrmStore::keeps_published(self)
    }

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
        crate::enqueue::write(
            &txn,
            self.sql(),
            records,
            self.clock_offset(),
            &txn,
            Mode::Transaction,
        )
        .await?;
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
