use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", partition = 3)]
struct UnknownKey {
    id: u64,
}

fn main() {}
