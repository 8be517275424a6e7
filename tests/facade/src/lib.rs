//! A service in miniature that uses the outbox through the `outbox` crate
//! alone: its derive, its SeaORM `enqueue` and store, its migration and its
//! Kafka sink, with no other outbox crate in `Cargo.toml`.

use outbox::OutboxEvent;
use serde::{Deserialize, Serialize};

/// An event of the service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id)]
pub struct OrderPlaced {
    /// The order.
    pub order_id: u64,
    /// Its total.
    pub total_cents: i64,
}
