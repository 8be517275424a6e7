#![deny(warnings)]
#![forbid(unsafe_code)]

use outbox_engine::{OutboxEvent, TypedEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id, event_type = "order.placed", version = 2)]
pub struct OrderPlaced {
    order_id: u64,
}

pub mod routing {
    pub fn topic_of(event: &super::Routed) -> String {
        format!("region-{}", event.region)
    }
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = routing::topic_of)]
pub struct Routed {
    region: String,
}

fn main() {
    let placed = OrderPlaced { order_id: 1 };
    assert_eq!(placed.topic(), "orders");
    assert_eq!(OrderPlaced::SCHEMA_VERSION, 2);
    let routed = Routed {
        region: "eu".into(),
    };
    assert_eq!(routed.topic(), "region-eu");
    assert_eq!(<Routed as TypedEvent>::EVENT_TYPE, "Routed");
}
