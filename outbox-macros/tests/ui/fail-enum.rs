use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders")]
enum OrderEvent {
    Placed { id: u64 },
    Cancelled { id: u64 },
}

fn main() {}
