//! The core of a transactional outbox: events are written to an outbox table
//! in the same database transaction as the business change, and a
//! [`Relay`] publishes the committed records to a [`Sink`] and marks them
//! published.
//!
//! - [`OutboxEvent`] (and `#[derive(OutboxEvent)]`): a domain event with its
//!   topic, key, type and schema version.
//! - [`NewRecord`] and [`OutboxRecord`]: an event on its way in and as
//!   stored.
//! - [`OutboxStore`] (enqueue, claim, [`Settlement`]) and [`OutboxAdmin`]
//!   (list, requeue and discard dead records, purge, stats): what a
//!   database adapter implements (`outbox-sea-orm`).
//! - [`Sink`]: what a transport implements (`outbox-rdkafka`, `outbox-nats`),
//!   built on [`publish_by_key`], which keeps the per-key rules given a
//!   function that sends one record; [`sink_fn`] makes a whole sink of such
//!   a function.
//! - [`Relay`]: claims batches under a lease, publishes them, settles each
//!   record as soon as its outcome is known, retries with
//!   [`ExponentialBackoff`] (forever unless a [`RetryPolicy`] limits it),
//!   keeps per-key order ([`DeadKeyPolicy`]), and never stops on an error
//!   short of shutdown.
//! - [`InMemoryStore`] and [`InMemorySink`]: for your tests.
//!
//! ```
//! use outbox_engine::{InMemorySink, InMemoryStore, NewRecord, OutboxEvent, OutboxStore, Relay};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
//! #[outbox(topic = "orders", key = order_id)]
//! struct OrderPlaced { order_id: u64, total_cents: i64 }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), outbox_engine::Error> {
//! let store = InMemoryStore::new();
//! let sink = InMemorySink::new();
//! let event = OrderPlaced { order_id: 1, total_cents: 990 };
//! store.enqueue(&[NewRecord::from_event(&event)?]).await?;
//!
//! let relay = Relay::builder(store.clone(), sink.clone()).batch_size(100).build()?;
//! let report = relay.run_once().await?;
//! assert_eq!(report.published, 1);
//! assert_eq!(sink.events::<OrderPlaced>(), vec![event]);
//! # Ok(())
//! # }
//! ```
//!
//! # Observability
//!
//! The relay opens `tracing` spans `outbox.claim`, `outbox.publish` and
//! `outbox.mark` with record counts, reports through the `metrics` facade
//! (counters `outbox_claimed_total`, `outbox_published_total`,
//! `outbox_retried_total`, `outbox_dead_total`, `outbox_released_total`,
//! `outbox_batch_errors_total`; histograms `outbox_batch_seconds` and
//! `outbox_publish_lag_seconds`, enqueue to delivery), and keeps a
//! [`RelayStatus`] for health checks (last success, failures in a row,
//! last error). [`OutboxAdmin::stats`] gives the
//! backlog and the age of the oldest pending record.
//!
//! # Feature flags
//!
//! - `derive` (default): re-exports `#[derive(OutboxEvent)]`.
//! - `testkit`: [`testkit`], the conformance suites every store
//!   (`store_conformance_tests!`) and every sink
//!   (`sink_conformance_tests!`) runs.

mod clock;
mod error;
mod event;
mod memory;
mod record;
mod relay;
mod retry;
pub mod sink;
mod store;
#[cfg(feature = "testkit")]
pub mod testkit;
mod trace;

pub use clock::{Clock, SystemClock};
pub use error::{BoxError, Error, StoreError};
pub use event::{OutboxEvent, TypedEvent, decode, decode_as};
pub use memory::{FailureKind, InMemorySink, InMemoryStore, OpenWrite};
pub use record::{Headers, NewRecord, OutboxRecord, Status};
pub use relay::{
    DeadKeyPolicy, Relay, RelayBuilder, RelayStatus, RunReport, Wakeup, describe_metrics,
};
pub use retry::{Backoff, ExponentialBackoff, MaxAttempts, RetryForever, RetryPolicy};
pub use sink::{HeldBack, Outcome, Sink, SinkFn, error_chain, publish_by_key, sink_fn};
pub use store::{
    ClaimRequest, DeadFilter, DeadLetter, OutboxAdmin, OutboxStats, OutboxStore, RecordRef,
    ScheduledRetry, Settled, Settlement, TopicStats,
};
pub use trace::{TRACEPARENT, set_traceparent_source};

#[cfg(feature = "derive")]
pub use outbox_macros::OutboxEvent;

/// Names the derive's generated code uses; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use std::borrow::Cow;
    pub use std::option::Option;
    pub use std::string::{String, ToString};
    pub use typetag;
}
