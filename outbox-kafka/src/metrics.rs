//! The names of the metrics this crate reports through the `metrics`
//! facade (a no-op unless the application installs a recorder).

/// Records Kafka wrote after an earlier record of their key failed in the
/// same batch: each a place where the key's order in the topic may be
/// broken ([`KafkaSink::order_gaps`](crate::KafkaSink::order_gaps)).
pub(crate) const ORDER_GAPS_TOTAL: &str = "outbox_kafka_order_gaps_total";
