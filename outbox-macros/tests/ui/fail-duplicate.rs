use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders")]
#[outbox(topic = "payments")]
struct Duplicate {
    id: u64,
}

fn main() {}
