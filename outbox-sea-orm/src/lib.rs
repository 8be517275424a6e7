//! The transactional outbox on SeaORM: write events in the same database
//! transaction as the business change, and let a relay publish them.
//!
//! - [`enqueue`], [`enqueue_all`] and [`enqueue_records`] write events
//!   through any [`ConnectionTrait`](sea_orm::ConnectionTrait): the
//!   caller's transaction, a pool, a mock.
//! - [`SeaOrmStore`] is the [`OutboxStore`](outbox_core::OutboxStore) a
//!   [`Relay`](outbox_core::Relay) claims from, and the
//!   [`OutboxAdmin`](outbox_core::OutboxAdmin) operators use, on
//!   PostgreSQL, MySQL/MariaDB and SQLite.
//! - [`entity`] is the SeaORM entity of the `outbox` table, for queries of
//!   your own.
//! - [`Error`] says what failed and whether retrying can help.
//!
//! The table comes from the `migration` crate (package `outbox-migration`):
//! add `migration::Migration` to your `Migrator`, or run
//! `migration::Migrator`.
//!
//! ```no_run
//! use outbox_core::{OutboxEvent, Relay, InMemorySink};
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
//! Relays claim records in `id` order under a lease. A record is claimed
//! only together with, or after, every earlier pending record of its key,
//! so each key is published in enqueue order, while records of other keys
//! flow. On PostgreSQL and MySQL/MariaDB, claimers running at once lock
//! disjoint rows (`FOR UPDATE SKIP LOCKED`); SQLite has one writer.
//!
//! "Enqueue order" is `id` order. Two transactions that enqueue events of
//! one key at the same time may commit in the other order than their ids;
//! serialize such writers (lock the business row first, as an update of it
//! does) when their order matters.

mod clock;
mod enqueue;
pub mod entity;
mod error;
mod keys;
mod sql;
mod store;

pub use enqueue::{AsEvent, enqueue, enqueue_all, enqueue_records, marker};
pub use error::{DbError, Error};
pub use store::SeaOrmStore;
#[doc(hidden)]
pub use store::{claim_statements, explained_statements};
