//! A transactional outbox for Rust, in one dependency.
//!
//! A service writes each event as a row of an `outbox` table **in the same
//! database transaction** as its business change; a [`Relay`] publishes
//! the committed rows to Kafka (or NATS) and marks them published. A
//! rolled-back transaction announces nothing, a committed one is published
//! at least once with a stable event id, and the events of one key arrive
//! in the order their transactions committed.
//!
//! ```toml
//! [dependencies]
//! outbox = { version = "0.1", features = ["postgres", "kafka", "migration"] }
//! ```
//!
//! This crate re-exports the workspace's crates, each behind a feature:
//!
//! | feature | what it adds |
//! |---|---|
//! | `derive` (default) | `#[derive(OutboxEvent)]` |
//! | `postgres`, `mysql`, `sqlite` | [`sea_orm`]: `enqueue` into your SeaORM transaction, and `SeaOrmStore` for the relay |
//! | `kafka` | [`kafka`]: `KafkaSink`, `decode_message_as`, `handle_message`, and `rdkafka` itself |
//! | `nats` | [`nats`]: the NATS JetStream sink |
//! | `migration` | [`migration`]: the outbox and inbox tables for sea-orm-migration |
//! | `testkit` | the store and sink conformance suites and the crash-point explorer ([`testkit`]) |
//!
//! Everything of `outbox-engine` is at the root: [`OutboxEvent`], [`Relay`],
//! [`InMemoryStore`], [`InMemorySink`], and the rest.
//!
//! ```
//! use outbox::{InMemorySink, InMemoryStore, NewRecord, OutboxEvent, OutboxStore, Relay};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
//! #[outbox(topic = "orders", key = order_id)]
//! struct OrderPlaced {
//!     order_id: u64,
//!     total_cents: i64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // In a service: `outbox::sea_orm::enqueue(&txn, &event).await?` inside
//! // the business transaction, and a relay over `SeaOrmStore` and
//! // `KafkaSink`. Here, the in-memory parts:
//! let store = InMemoryStore::new();
//! let placed = OrderPlaced { order_id: 7, total_cents: 1250 };
//! store.enqueue(&[NewRecord::from_event(&placed)?]).await?;
//!
//! let sink = InMemorySink::new();
//! let relay = Relay::builder(store, sink.clone()).build()?;
//! relay.run_once().await?;
//! assert_eq!(sink.events::<OrderPlaced>(), vec![placed]);
//! # Ok(())
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

pub use outbox_engine::*;

/// The SeaORM side: `enqueue` (and `enqueue_all`, `enqueue_in`) into your
/// transaction, `SeaOrmStore` for the relay, the consumer's `inbox`
/// (crate `outbox-sea-orm`).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite")))
)]
pub mod sea_orm {
    pub use outbox_sea_orm::*;
}

/// Kafka: `KafkaSink`, decoding consumed messages, `handle_message`, and
/// the `rdkafka` the sink is built with (crate `outbox-rdkafka`).
#[cfg(feature = "kafka")]
#[cfg_attr(docsrs, doc(cfg(feature = "kafka")))]
pub mod kafka {
    pub use outbox_rdkafka::*;
}

/// NATS JetStream: the sink (crate `outbox-nats`).
#[cfg(feature = "nats")]
#[cfg_attr(docsrs, doc(cfg(feature = "nats")))]
pub mod nats {
    pub use outbox_nats::*;
}

/// The tables for sea-orm-migration: `Migration`, `KeyHeads`, `Inbox`,
/// `migrations()`, `Migrator` (crate `outbox-migration`).
#[cfg(feature = "migration")]
#[cfg_attr(docsrs, doc(cfg(feature = "migration")))]
pub mod migration {
    pub use outbox_migration::*;
}
