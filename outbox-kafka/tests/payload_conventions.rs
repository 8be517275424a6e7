//! Payload conventions on a real Kafka protocol: CloudEvents headers
//! beside the outbox's own, and a consumer that refuses a schema version
//! newer than its type.

mod common;

use common::{OrderPlaced, TestKafka, publish_all, record};
use outbox_engine::TypedEvent;
use outbox_rdkafka::rdkafka::Message;
use outbox_rdkafka::rdkafka::message::{Headers, OwnedMessage};
use outbox_rdkafka::{
    CE_ID_HEADER, CE_SOURCE_HEADER, CE_SPECVERSION_HEADER, CE_TIME_HEADER, CE_TYPE_HEADER,
    CONTENT_TYPE_HEADER, EVENT_ID_HEADER, Error, KafkaSink, decode_message_as,
};

fn header(message: &OwnedMessage, name: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .map(|v| String::from_utf8(v.to_vec()).unwrap())
}

fn order(seq: u32) -> OrderPlaced {
    OrderPlaced {
        order_id: 7,
        seq,
        note: "n".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloud_events_headers_travel_beside_the_outbox_headers() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(1).await;
    let sink = KafkaSink::builder(kafka.config())
        .cloud_events("/orders-service")
        .build()
        .unwrap();
    let sent = record(1, &topic, &order(1));
    publish_all(&sink, std::slice::from_ref(&sent)).await;

    let messages = kafka.read_topic(&topic, 1).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    let id = sent.event_id.to_string();
    assert_eq!(
        header(message, CE_SPECVERSION_HEADER).as_deref(),
        Some("1.0")
    );
    assert_eq!(header(message, CE_ID_HEADER), Some(id.clone()));
    assert_eq!(header(message, EVENT_ID_HEADER), Some(id));
    assert_eq!(
        header(message, CE_SOURCE_HEADER).as_deref(),
        Some("/orders-service")
    );
    assert_eq!(
        header(message, CE_TYPE_HEADER).as_deref(),
        Some(OrderPlaced::EVENT_TYPE)
    );
    assert_eq!(
        header(message, CONTENT_TYPE_HEADER).as_deref(),
        Some("application/json")
    );
    assert!(header(message, CE_TIME_HEADER).is_some());
    // And the outbox's own decoding still works.
    let (_, decoded) = decode_message_as::<OrderPlaced, _>(message)
        .unwrap()
        .unwrap();
    assert_eq!(decoded, order(1));

    // Without the option, no CloudEvents header.
    let plain_topic = kafka.topic(1).await;
    publish_all(&kafka.sink(), &[record(2, &plain_topic, &order(2))]).await;
    let plain = kafka.read_topic(&plain_topic, 1).await;
    assert_eq!(header(&plain[0], CE_SPECVERSION_HEADER), None);

    assert!(matches!(
        KafkaSink::builder(kafka.config()).cloud_events(" ").build(),
        Err(Error::Config(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_version_than_the_type_reads_is_refused() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(1).await;
    assert_eq!(OrderPlaced::SCHEMA_VERSION, 2);
    let mut older = record(1, &topic, &order(1));
    older.schema_version = 1;
    let current = record(2, &topic, &order(2));
    let mut newer = record(3, &topic, &order(3));
    newer.schema_version = 3;
    publish_all(&kafka.sink(), &[older, current, newer]).await;

    let messages = kafka.read_topic(&topic, 1).await;
    assert_eq!(messages.len(), 3);
    assert!(
        decode_message_as::<OrderPlaced, _>(&messages[0])
            .unwrap()
            .is_some()
    );
    assert!(
        decode_message_as::<OrderPlaced, _>(&messages[1])
            .unwrap()
            .is_some()
    );
    match decode_message_as::<OrderPlaced, _>(&messages[2]) {
        Err(
            error @ Error::UnsupportedSchemaVersion {
                version: 3,
                supported: 2,
                ..
            },
        ) => assert!(error.to_string().contains("schema version 3"), "{error}"),
        other => panic!("{other:?}"),
    }
}
