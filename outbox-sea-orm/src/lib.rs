//! The transactional outbox on SeaORM: write events in the same database
//! transaction as the business change, and let a relay publish them.
//!
//! - [`enqueue`], [`enqueue_all`] and [`enqueue_records`] write events
//!   through any [`ConnectionTrait`](sea_orm::ConnectionTrait): the
//!   caller's transaction, a pool, a mock.
//! - [`SeaOrmStore`] is the [`OutboxStore`](outbox_engine::OutboxStore) a
//!   [`Relay`](outbox_engine::Relay) claims from, and the
//!   [`OutboxAdmin`](outbox_engine::OutboxAdmin) operators use, on
//!   PostgreSQL, MySQL/MariaDB and SQLite.
//! - [`entity`] is the SeaORM entity of the `outbox` table, for queries of
//!   your own.
//! - [`Error`] says what failed and whether retrying can help.
//!
//! The tables come from the `migration` crate (package `outbox-migration`):
//! add `outbox_migration::migrations()` to your `Migrator`, or run
//! `outbox_migration::Migrator`.
//!
//! # Table names
//!
//! The tables are `outbox`, `outbox_keys` and `inbox` in the connection's
//! default schema unless a [`Tables`] says otherwise: give the same one to
//! the migration (`outbox_migration::migrate_tables`), the store
//! ([`SeaOrmStore::with_tables`]), the writers (the `enqueue` methods of an
//! [`Outbox`] over that store) and the inbox ([`inbox::Inbox`]). Two
//! outboxes with different names share a database and never see each
//! other's records.
//!
//! ```no_run
//! use outbox_engine::{OutboxEvent, Relay, InMemorySink};
//! use outbox_sea_orm::SeaOrmStore;
//! use sea_orm::{Database, TransactionTrait};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
//! #[outbox(topic = "orders", key = order_id)]
//! struct OrderPlaced { order_id: u64, total_cents: i64 }
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::connect("postgres://postgres@127.0.0.1/app").await?;
//!
//! // In the business transaction: both rows commit, or neither.
//! let txn = db.begin().await?;
//! // ... insert the order on `&txn` ...
//! outbox_sea_orm::enqueue(&txn, &OrderPlaced { order_id: 7, total_cents: 990 }).await?;
//! txn.commit().await?;
//!
//! // The relay, here or in another process.
//! let store = SeaOrmStore::new(db);
//! store.check().await?;
//! let relay = Relay::builder(store, InMemorySink::new()).batch_size(500).build()?;
//! relay.run_once().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! One per database, each enabling the matching sea-orm driver:
//!
//! - `postgres`: PostgreSQL (`sqlx-postgres`).
//! - `mysql`: MySQL 8 and MariaDB 10.6+ (`sqlx-mysql`).
//! - `sqlite`: SQLite (`sqlx-sqlite`).
//!
//! The application picks sea-orm's async runtime and TLS features
//! (`runtime-tokio-rustls`, ...); this crate enables none.
//!
//! # Ordering and concurrency
//!
//! Events of one key are published in the commit order of the transactions
//! that enqueued them: [`enqueue`] locks the key (its row in
//! `outbox_keys`) before writing, until the caller's transaction ends, so
//! a second transaction enqueueing for the key waits for the first, and
//! ids of one key follow commit order. Enqueue inside the business
//! transaction; transactions that enqueue for several keys in opposite
//! orders may deadlock (the database aborts one: retry it).
//!
//! A claim reads the keys whose first pending record can be claimed
//! (`outbox_keys.next_at` reached, through an index), never the records
//! waiting behind a blocked key, and takes a run of first records of each,
//! shared fairly between the keys, plus available unkeyed records. On
//! PostgreSQL and MySQL/MariaDB, claimers running at once lock disjoint
//! keys (`FOR UPDATE SKIP LOCKED`); SQLite has one writer. Leases, backoff
//! and delays follow the database's clock. A transaction that loses a
//! deadlock to another is run again.
//!
//! # Feature flags (for tests)
//!
//! - `testkit`: `SeaOrmStore` implements `outbox_engine::testkit::TestStore`,
//!   to run the store conformance suite, which moves the store's clock.

mod classify;
mod clock;
mod enqueue;
pub mod entity;
mod error;
pub mod inbox;
mod outbox;
mod sql;
mod store;

pub use enqueue::{AsEvent, enqueue, enqueue_all, enqueue_in, enqueue_records, marker};
pub use error::{DbError, Error};
#[cfg(feature = "postgres")]
pub use outbox::listen;
pub use outbox::{NOTIFY_CHANNEL, Outbox, notify_channel};
/// The `outbox-migration` crate: the names of the tables this store reads,
/// and (with its default feature `migrations`) their migrations.
pub use outbox_migration as migration;
pub use outbox_migration::{InvalidName, Tables};
pub use store::{SeaOrmStore, redact_url};
