use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", event_type = "")]
struct EmptyEventType {
    id: u64,
}

fn main() {}
