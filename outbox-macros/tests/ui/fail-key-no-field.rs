use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id)]
struct KeyNoField {
    id: u64,
    total_cents: i64,
}

fn main() {}
