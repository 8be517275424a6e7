//! Kafka for the transactional outbox: a [`Sink`](outbox_engine::Sink) that
//! publishes outbox records through rdkafka, and the consumer's side that
//! decodes them.
//!
//! - [`KafkaSink`]: publishes each batch the relay claims, keeping per-key
//!   order, and reports an [`Outcome`](outbox_engine::Outcome) per record
//!   classified by rdkafka's error codes. With its default configuration
//!   (an idempotent producer with `enable.gapless.guarantee`) it hands all
//!   the records of a key to the producer together, which keeps their
//!   order; otherwise it sends a key's records one at a time, each once
//!   the previous one is acknowledged. Its docs say what each way risks.
//!   Configured with your rdkafka [`ClientConfig`](rdkafka::ClientConfig)
//!   and [`KafkaSinkBuilder`] (topic prefix, routing, unknown topics).
//! - [`decode_message`] and [`decode_message_as`]: turn a consumed message
//!   back into its event and event id ([`DecodedEvent`]), so a consumer can
//!   drop duplicates.
//! - [`EVENT_ID_HEADER`], [`EVENT_TYPE_HEADER`], [`SCHEMA_VERSION_HEADER`],
//!   [`TRACEPARENT_HEADER`]: the headers every message carries.
//! - [`Error`]: everything that can fail, with
//!   [`is_retriable`](Error::is_retriable).
//!
//! ```no_run
//! use outbox_engine::{NewRecord, OutboxEvent, OutboxRecord, Sink};
//! use outbox_rdkafka::{KafkaSink, decode_message_as};
//! use rdkafka::ClientConfig;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
//! #[outbox(topic = "orders", key = order_id)]
//! struct OrderPlaced { order_id: u64, total_cents: i64 }
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ClientConfig::new();
//! config.set("bootstrap.servers", "localhost:9092");
//! let sink = KafkaSink::builder(config).topic_prefix("staging.").build()?;
//!
//! // The relay does this with the records it claims.
//! let record = OutboxRecord::from_new(1, NewRecord::from_event(&OrderPlaced {
//!     order_id: 7,
//!     total_cents: 1250,
//! })?);
//! let outcomes = sink.publish(&[record]).await;
//! assert!(outcomes[0].is_delivered());
//!
//! // A consumer of `staging.orders`, given a message `msg`:
//! # let msg: rdkafka::message::OwnedMessage = unimplemented!();
//! if let Some((event_id, order)) = decode_message_as::<OrderPlaced, _>(&msg)? {
//!     // Skip `event_id` if it was handled already, else handle `order`.
//! #   let _ = (event_id, order);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! # Feature flags
//!
//! None is on by default: the bundled librdkafka is built with zlib and lz4
//! and without TLS or SASL. Each flag forwards to rdkafka's flag of the same
//! name.
//!
//! - `ssl`: TLS to the brokers (`security.protocol=ssl`), with the system
//!   OpenSSL; `ssl-vendored`: with OpenSSL built from source.
//! - `sasl`: SASL authentication through Cyrus SASL; `gssapi`: Kerberos.
//! - `zstd`: `compression.type=zstd` (needs libzstd).
//! - `cmake-build`: build librdkafka with CMake.
//! - `dynamic-linking`: link the system's librdkafka instead.

mod brokers;
mod classify;
mod config;
mod consume;
mod decode;
mod error;
mod headers;
mod metrics;
mod sink;

/// The rdkafka this crate is built with, so an application configures the
/// sink and reads topics without pinning the same version by hand.
pub use rdkafka;

pub use brokers::check_brokers;
pub use consume::{HandleError, Handled, handle_message};
pub use decode::{DecodedEvent, decode_message, decode_message_as};
pub use error::Error;
pub use headers::{
    CE_ID_HEADER, CE_SOURCE_HEADER, CE_SPECVERSION_HEADER, CE_TIME_HEADER, CE_TYPE_HEADER,
    CONTENT_TYPE_HEADER, EVENT_ID_HEADER, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER,
    TRACEPARENT_HEADER,
};
pub use sink::{BrokerError, KafkaSink, KafkaSinkBuilder, OAuthContext, TracingContext};
