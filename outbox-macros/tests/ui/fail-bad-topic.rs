use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = 42)]
struct NumberTopic {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic("orders"))]
struct ListTopic {
    id: u64,
}

fn main() {}
