use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = ids)]
struct KeyNotDisplay {
    ids: Vec<u64>,
}

fn main() {}
