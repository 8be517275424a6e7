use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", version = 0)]
struct VersionZero {
    id: u64,
}

fn main() {}
