//! What the generated `OutboxEvent` and `TypedEvent` impls return, and the
//! typetag registration they make.

use outbox_engine::{OutboxEvent, TypedEvent};
use serde::{Deserialize, Serialize};

#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id, event_type = "order.placed", version = 3)]
struct OrderPlaced {
    order_id: u64,
    total_cents: i64,
}

/// All defaults: no key, the struct's name as event type, version 1.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "audit")]
struct AuditTrail {
    note: String,
}

fn tenant_topic(event: &UserRenamed) -> String {
    format!("tenant-{}.users", event.tenant)
}

mod topics {
    pub(crate) fn shard(event: &super::Sharded) -> impl std::fmt::Display + use<> {
        event.shard % 4
    }
}

/// A computed topic, and keys split across two attributes.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = tenant_topic)]
#[outbox(key = user_id, version = 2)]
struct UserRenamed {
    tenant: String,
    user_id: String,
    name: String,
}

/// A computed topic through a module path, returning a number.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = topics::shard, key = shard)]
struct Sharded {
    shard: u32,
}

/// A unit struct.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "heartbeats", event_type = "heartbeat")]
struct Heartbeat;

/// A tuple struct.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "pairs")]
struct Pair(u8, u8);

/// A raw identifier as key, and as the struct name.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "kinds", key = r#type)]
struct r#Kind {
    r#type: String,
}

/// A method of the type itself as topic.
#[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = Self::topic_name)]
struct SelfTopic {
    region: String,
}

impl SelfTopic {
    fn topic_name(&self) -> &str {
        &self.region
    }
}

#[test]
fn literal_topic_key_event_type_and_version() {
    let event = OrderPlaced {
        order_id: 42,
        total_cents: 1999,
    };
    assert_eq!(event.topic(), "orders");
    assert!(matches!(
        event.topic(),
        std::borrow::Cow::Borrowed("orders")
    ));
    assert_eq!(event.key().as_deref(), Some("42"));
    assert_eq!(event.event_type(), "order.placed");
    assert_eq!(event.schema_version(), 3);
    assert!(event.headers().is_empty());
}

#[test]
fn defaults() {
    let event = AuditTrail { note: "x".into() };
    assert_eq!(event.topic(), "audit");
    assert_eq!(event.key(), None);
    assert_eq!(event.event_type(), "AuditTrail");
    assert_eq!(event.schema_version(), 1);
    assert_eq!(AuditTrail::EVENT_TYPE, "AuditTrail");
    assert_eq!(AuditTrail::SCHEMA_VERSION, 1);
}

#[test]
fn computed_topic() {
    let event = UserRenamed {
        tenant: "acme".into(),
        user_id: "u-7".into(),
        name: "Ada".into(),
    };
    assert_eq!(event.topic(), "tenant-acme.users");
    assert_eq!(event.key().as_deref(), Some("u-7"));
    assert_eq!(event.schema_version(), 2);

    let event = Sharded { shard: 6 };
    assert_eq!(event.topic(), "2");
    assert_eq!(event.key().as_deref(), Some("6"));

    assert_eq!(
        SelfTopic {
            region: "eu".into()
        }
        .topic(),
        "eu"
    );
}

#[test]
fn unit_tuple_and_raw_identifiers() {
    assert_eq!(Heartbeat.topic(), "heartbeats");
    assert_eq!(Heartbeat.event_type(), "heartbeat");
    assert_eq!(Heartbeat.key(), None);
    assert_eq!(Pair(1, 2).event_type(), "Pair");
    let kind = Kind { r#type: "t".into() };
    assert_eq!(kind.key().as_deref(), Some("t"));
    assert_eq!(kind.event_type(), "Kind");
}

#[test]
fn typed_event_constants_match_the_methods() {
    assert_eq!(OrderPlaced::EVENT_TYPE, "order.placed");
    assert_eq!(OrderPlaced::SCHEMA_VERSION, 3);
    assert_eq!(UserRenamed::EVENT_TYPE, "UserRenamed");
    assert_eq!(UserRenamed::SCHEMA_VERSION, 2);
    assert_eq!(Heartbeat::EVENT_TYPE, Heartbeat.event_type());
}

#[test]
fn boxed_events_round_trip_through_json() {
    let events: Vec<Box<dyn OutboxEvent>> = vec![
        Box::new(OrderPlaced {
            order_id: 7,
            total_cents: 1250,
        }),
        Box::new(AuditTrail {
            note: "checked".into(),
        }),
        Box::new(UserRenamed {
            tenant: "acme".into(),
            user_id: "u-1".into(),
            name: "Grace".into(),
        }),
        Box::new(Heartbeat),
        Box::new(Pair(3, 4)),
    ];
    let json = serde_json::to_string(&events).unwrap();
    let back: Vec<Box<dyn OutboxEvent>> = serde_json::from_str(&json).unwrap();

    assert_eq!(back.len(), events.len());
    for (original, decoded) in events.iter().zip(&back) {
        assert_eq!(decoded.event_type(), original.event_type());
        assert_eq!(decoded.topic(), original.topic());
        assert_eq!(decoded.key(), original.key());
        assert_eq!(decoded.schema_version(), original.schema_version());
        assert_eq!(
            serde_json::to_value(decoded).unwrap(),
            serde_json::to_value(original).unwrap(),
        );
    }
    let tags: Vec<String> =
        serde_json::from_str::<Vec<serde_json::Map<String, serde_json::Value>>>(&json)
            .unwrap()
            .into_iter()
            .flat_map(|object| object.into_iter().map(|(tag, _)| tag))
            .collect();
    assert_eq!(
        tags,
        [
            "order.placed",
            "AuditTrail",
            "UserRenamed",
            "heartbeat",
            "Pair"
        ]
    );
}

#[test]
fn decode_by_event_type() {
    let event = OrderPlaced {
        order_id: 9,
        total_cents: 100,
    };
    let payload = serde_json::to_vec(&event).unwrap();

    let decoded = outbox_engine::decode("order.placed", &payload).unwrap();
    assert_eq!(decoded.key().as_deref(), Some("9"));
    assert_eq!(
        outbox_engine::decode_as::<OrderPlaced>(OrderPlaced::EVENT_TYPE, &payload).unwrap(),
        Some(event),
    );
    assert_eq!(
        outbox_engine::decode_as::<AuditTrail>("order.placed", &payload).unwrap(),
        None,
    );
}
