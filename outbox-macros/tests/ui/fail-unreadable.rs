use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox]
struct NotAList {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders" key = id)]
struct MissingComma {
    id: u64,
}

fn main() {}
