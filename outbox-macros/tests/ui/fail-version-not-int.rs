use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", version = "2")]
struct VersionString {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", version = 5_000_000_000)]
struct VersionTooBig {
    id: u64,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", version = 2u8)]
struct VersionSuffix {
    id: u64,
}

fn main() {}
