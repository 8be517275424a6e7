//! NATS JetStream for the transactional outbox: a
//! [`Sink`](outbox_engine::Sink) that publishes each outbox record to a
//! subject derived from its topic and key, deduplicated by event id, and
//! awaits JetStream's acknowledgement.
//!
//! - [`NatsSink`]: publishes each batch the relay claims, keeping per-key
//!   order (it is built on [`outbox_engine::publish_by_key`]), and reports an
//!   [`Outcome`](outbox_engine::Outcome) per record, classified by the
//!   client's error kind and JetStream's error codes. Configured with
//!   [`NatsSinkBuilder`] (subject prefix, routing, key in subject, publish
//!   timeout, missing streams).
//! - [`key_token`]: the subject token of a key, for consumers that filter
//!   on one key.
//! - [`EVENT_ID_HEADER`], [`EVENT_TYPE_HEADER`], [`SCHEMA_VERSION_HEADER`],
//!   [`KEY_HEADER`], [`TRACEPARENT_HEADER`]: the headers every message
//!   carries, besides `Nats-Msg-Id`.
//! - [`Error`]: everything that can fail, with
//!   [`is_retriable`](Error::is_retriable).
//!
//! The stream is yours to create: one whose subjects cover the records'
//! subjects (`orders` and `orders.>` for the topic `orders`), with a
//! duplicate window at least as long as the relay's lease, so that a record
//! published again after a relay crash is dropped by JetStream.
//!
//! ```no_run
//! use outbox_engine::{InMemoryStore, Relay};
//! use outbox_nats::NatsSink;
//! use outbox_nats::async_nats::jetstream::{self, stream};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = outbox_nats::async_nats::connect("nats://127.0.0.1:4222").await?;
//! let js = jetstream::new(client);
//! js.get_or_create_stream(stream::Config {
//!     name: "ORDERS".into(),
//!     subjects: vec!["orders".into(), "orders.>".into()],
//!     duplicate_window: std::time::Duration::from_secs(120),
//!     ..Default::default()
//! })
//! .await?;
//!
//! let sink = NatsSink::builder(js).build()?;
//! # let store = InMemoryStore::new();
//! let relay = Relay::builder(store, sink).build()?;
//! relay.run_once().await?;
//! # Ok(())
//! # }
//! ```
//!
//! The sink uses `async-nats` without its default features, with
//! `jetstream` and TLS over `ring`; it is re-exported as [`async_nats`] so
//! an application connects with the same version.

mod classify;
mod error;
mod headers;
mod sink;
mod subject;

/// The async-nats this crate is built with.
pub use async_nats;

pub use error::Error;
pub use headers::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, KEY_HEADER, SCHEMA_VERSION_HEADER, TRACEPARENT_HEADER,
};
pub use sink::{NatsSink, NatsSinkBuilder};
pub use subject::key_token;
