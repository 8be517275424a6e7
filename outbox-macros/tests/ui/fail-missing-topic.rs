use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(key = id)]
struct NoTopic {
    id: u64,
}

fn main() {}
