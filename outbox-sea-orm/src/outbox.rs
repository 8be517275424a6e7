//! [`Outbox`]: transactions that wake the relay when they commit, and
//! [`listen`], the same across processes on PostgreSQL.

use std::future::Future;
use std::pin::Pin;

use outbox_engine::{NewRecord, OutboxEvent, Wakeup};
use uuid::Uuid;

use crate::enqueue::AsEvent;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, TransactionError,
    TransactionTrait,
};

use crate::store::SeaOrmStore;

/// The PostgreSQL channel [`Outbox::notify_on_commit`] notifies and
/// [`listen`] listens on, for the default table names; see
/// [`notify_channel`] for others.
pub const NOTIFY_CHANNEL: &str = "outbox";

/// The PostgreSQL channel of the outbox on the tables `tables` names: the
/// outbox table's name, after its schema's and `_` when it has one
/// (`outbox` by default).
pub fn notify_channel(tables: &outbox_migration::Tables) -> String {
    match tables.schema_name() {
        Some(schema) => format!("{schema}_{}", tables.outbox()),
        None => tables.outbox().to_owned(),
    }
}

/// The application's side of the outbox: runs its transactions and wakes
/// the relay once they commit.
///
/// Give the relay the same [`Wakeup`] (`Relay::builder(...)
/// .wakeup(outbox.wakeup())`): a record committed through
/// [`transaction`](Self::transaction) is then claimed at once instead of at
/// the relay's next poll. Records committed otherwise (with
/// [`enqueue`](crate::enqueue) on a transaction of your own) are found by
/// the poll as before; call `outbox.wakeup().wake()` after such a commit
/// to get the same effect.
///
/// For relays in other processes on PostgreSQL, turn on
/// [`notify_on_commit`](Self::notify_on_commit) and run [`listen`] beside
/// each relay.
///
/// ```no_run
/// # use outbox_engine::OutboxEvent;
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// # #[outbox(topic = "orders", key = order_id)]
/// # struct OrderPlaced { order_id: u64, total_cents: i64 }
/// # async fn example(store: outbox_sea_orm::SeaOrmStore, sink: outbox_engine::InMemorySink)
/// #     -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_engine::Relay;
/// use outbox_sea_orm::Outbox;
/// use sea_orm::DbErr;
///
/// let outbox = Outbox::new(store.clone());
/// let relay = Relay::builder(store, sink).wakeup(outbox.wakeup()).build()?;
/// // ... run the relay (`relay.run(shutdown)`) on a task of its own ...
///
/// let event = OrderPlaced { order_id: 7, total_cents: 990 };
/// outbox
///     .transaction(|txn| {
///         Box::pin(async move {
///             // ... the business change, on `txn` ...
///             outbox_sea_orm::enqueue(txn, &event).await?;
///             Ok::<_, DbErr>(())
///         })
///     })
///     .await?;
/// // The relay is claiming the event now.
/// # Ok(())
/// # }
/// ```
///
/// Clones share the store and the wake-up.
#[derive(Debug, Clone)]
pub struct Outbox {
    store: SeaOrmStore,
    wakeup: Wakeup,
    notify: bool,
}

impl Outbox {
    /// An outbox over `store`'s connection pool, with a new [`Wakeup`].
    pub fn new(store: SeaOrmStore) -> Self {
        Self {
            store,
            wakeup: Wakeup::new(),
            notify: false,
        }
    }

    /// Uses `wakeup` (say, a relay's own, from `Relay::wakeup`) instead of
    /// a new one.
    #[must_use]
    pub fn with_wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = wakeup;
        self
    }

    /// On PostgreSQL, makes each transaction also `NOTIFY` the
    /// store's [`notify_channel`] before it commits, so relays in other
    /// processes running [`listen`] wake at once. Ignored on other
    /// databases. Default: off, since PostgreSQL serializes the commits of
    /// notifying transactions on one lock; the cost is measured in the
    /// README's "Performance" section.
    #[must_use]
    pub fn notify_on_commit(mut self, notify: bool) -> Self {
        self.notify = notify;
        self
    }

    /// The store.
    pub fn store(&self) -> &SeaOrmStore {
        &self.store
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        self.store.connection()
    }

    /// A clone of the wake-up this outbox signals after each commit.
    pub fn wakeup(&self) -> Wakeup {
        self.wakeup.clone()
    }

    /// [`enqueue`](crate::enqueue) into this outbox's tables (those of its
    /// store, [`SeaOrmStore::with_tables`]).
    pub async fn enqueue<C: ConnectionTrait + 'static>(
        &self,
        db: &C,
        event: &dyn OutboxEvent,
    ) -> Result<Uuid, crate::Error> {
        crate::enqueue::enqueue_with(db, self.store.sql(), event).await
    }

    /// [`enqueue_all`](crate::enqueue_all) into this outbox's tables.
    pub async fn enqueue_all<C, I, M>(&self, db: &C, events: I) -> Result<Vec<Uuid>, crate::Error>
    where
        C: ConnectionTrait + 'static,
        I: IntoIterator,
        I::Item: AsEvent<M>,
    {
        crate::enqueue::enqueue_all_with(db, self.store.sql(), events).await
    }

    /// [`enqueue_records`](crate::enqueue_records) into this outbox's
    /// tables.
    pub async fn enqueue_records<C: ConnectionTrait + 'static>(
        &self,
        db: &C,
        records: &[NewRecord],
    ) -> Result<(), crate::Error> {
        crate::enqueue::enqueue_records_with(db, self.store.sql(), records).await
    }

    /// [`enqueue_in`](crate::enqueue_in) into this outbox's tables.
    pub async fn enqueue_in<C: ConnectionTrait>(
        &self,
        db: &C,
        event: &dyn OutboxEvent,
    ) -> Result<Uuid, crate::Error> {
        crate::enqueue::enqueue_in_with(db, self.store.sql(), event).await
    }

    /// Runs `callback` in a transaction on the store's pool, as SeaORM's
    /// [`TransactionTrait::transaction`] does: commits when it returns
    /// `Ok`, rolls back when it returns `Err`. After the commit it wakes
    /// the relay (and, with [`notify_on_commit`](Self::notify_on_commit),
    /// the relays listening in other processes).
    ///
    /// # Errors
    ///
    /// [`TransactionError::Transaction`] with the callback's error (the
    /// transaction is rolled back), or [`TransactionError::Connection`]
    /// when beginning, notifying or committing fails (then nothing is
    /// committed, unless the commit itself failed midway, which the
    /// database's error says).
    pub async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: Send,
    {
        let txn = self
            .connection()
            .begin()
            .await
            .map_err(TransactionError::Connection)?;
        let value = match callback(&txn).await {
            Ok(value) => value,
            Err(error) => {
                txn.rollback().await.map_err(TransactionError::Connection)?;
                return Err(TransactionError::Transaction(error));
            }
        };
        if self.notify && txn.get_database_backend() == DbBackend::Postgres {
            // Identical notifications of one transaction are delivered once.
            let channel = notify_channel(self.store.tables());
            txn.execute_unprepared(&format!("NOTIFY \"{channel}\""))
                .await
                .map_err(TransactionError::Connection)?;
        }
        txn.commit().await.map_err(TransactionError::Connection)?;
        self.wakeup.wake();
        Ok(value)
    }
}

/// How long [`listen`] waits before trying again when its connection
/// fails.
#[cfg(feature = "postgres")]
const LISTEN_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Wakes `wakeup` whenever a transaction of another process commits
/// through an [`Outbox`] with [`notify_on_commit`](Outbox::notify_on_commit)
/// (PostgreSQL `LISTEN` on the store's [`notify_channel`]).
///
/// Spawns a task on the current Tokio runtime that holds one connection of
/// `store`'s pool for as long as it runs, and returns its handle (abort it
/// to stop listening). When the connection is lost it reconnects, waking
/// the relay each time since notifications sent meanwhile are lost; the
/// relay's poll covers the gap.
///
/// # Errors
///
/// [`crate::Error::InvalidArgument`] when the store is not on PostgreSQL,
/// [`crate::Error::Database`] when the first `LISTEN` fails (say, the
/// server is down): the relay then works by polling alone.
#[cfg(feature = "postgres")]
pub async fn listen(
    store: &SeaOrmStore,
    wakeup: Wakeup,
) -> Result<tokio::task::JoinHandle<()>, crate::Error> {
    use sea_orm::sqlx::postgres::PgListener;

    let db = store.connection();
    if db.get_database_backend() != DbBackend::Postgres {
        return Err(crate::Error::InvalidArgument(format!(
            "LISTEN/NOTIFY needs PostgreSQL, and this store is on {:?}; leave \
             notify_on_commit off and rely on the in-process wake-up and the poll",
            db.get_database_backend()
        )));
    }
    let connect = |error: sea_orm::sqlx::Error| crate::Error::Database {
        operation: "listen for outbox notifications",
        source: sea_orm::DbErr::Conn(sea_orm::RuntimeErr::SqlxError(error.into())).into(),
    };
    let mut listener = PgListener::connect_with(db.get_postgres_connection_pool())
        .await
        .map_err(connect)?;
    let channel = notify_channel(store.tables());
    listener.listen(&channel).await.map_err(connect)?;
    Ok(tokio::spawn(async move {
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => wakeup.wake(),
                // The connection was lost; the next call reconnects.
                Ok(None) => wakeup.wake(),
                Err(error) => {
                    tracing::warn!(
                        error = %error,
                        "listening for outbox notifications failed; trying again (the relay \
                         polls meanwhile)"
                    );
                    wakeup.wake();
                    tokio::time::sleep(LISTEN_RETRY).await;
                }
            }
        }
    }))
}
