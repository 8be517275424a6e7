use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "", colour = "red", version = 0)]
struct TwoMistakes {
    id: u64,
}

fn main() {}
