use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

fn topic_of(_: &u64) -> String {
    String::new()
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = topic_of)]
struct WrongTopicFn {
    id: u64,
}

fn main() {}
