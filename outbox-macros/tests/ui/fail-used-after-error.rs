use outbox_engine::OutboxEvent;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = missing)]
struct Broken {
    id: u64,
}

fn publish(_: Box<dyn OutboxEvent>) {}

fn decode() -> Option<Broken> {
    outbox_engine::decode_as::<Broken>("Broken", b"{}")
        .ok()
        .flatten()
}

fn _use() {
    publish(Box::new(Broken { id: 1 }));
    let _ = decode();
}

fn main() {}
