//! Records published through `KafkaSink` come back from Kafka as they were
//! sent: keys, headers, timestamps, payloads, and per-key order.

mod common;

use std::collections::HashMap;

use common::{
    Heartbeat, OrderPlaced, TestKafka, assert_first_copies_in_order, interleaved_orders,
    publish_all, record,
};
use outbox_engine::{OutboxRecord, Sink};
use outbox_rdkafka::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, KafkaSink, SCHEMA_VERSION_HEADER, TRACEPARENT_HEADER,
    decode_message, decode_message_as,
};
use rdkafka::message::{Headers, OwnedMessage};
use rdkafka::{Message, Timestamp};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn headers_of(message: &OwnedMessage) -> Vec<(String, String)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    headers
        .iter()
        .map(|h| {
            let value = String::from_utf8(h.value.unwrap_or_default().to_vec()).unwrap();
            (h.key.to_owned(), value)
        })
        .collect()
}

fn expected_headers(record: &OutboxRecord) -> Vec<(String, String)> {
    let mut headers = vec![
        (EVENT_ID_HEADER.to_owned(), record.event_id.to_string()),
        (EVENT_TYPE_HEADER.to_owned(), record.event_type.clone()),
        (
            SCHEMA_VERSION_HEADER.to_owned(),
            record.schema_version.to_string(),
        ),
    ];
    headers.extend(record.headers.clone());
    headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_comes_back_as_it_was_sent() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(3).await;

    let mut records = interleaved_orders(&topic, 4, 3);
    // A keyless event, and records with headers of their own.
    let beat = record(records.len() as i64 + 1, &topic, &Heartbeat { beat: 1 });
    records.push(beat);
    records[0]
        .headers
        .insert(TRACEPARENT_HEADER.into(), TRACEPARENT.into());
    records[1].headers.insert("tenant".into(), "acme".into());
    records[1].headers.insert("zz-last".into(), "z".into());

    let sink = kafka.sink();
    publish_all(&sink, &records).await;

    let messages = kafka.read_topic(&topic, 3).await;
    assert_eq!(messages.len(), records.len());
    let by_id: HashMap<_, _> = records.iter().map(|r| (r.event_id, r)).collect();
    let mut partition_of_key = HashMap::new();
    for message in &messages {
        let decoded = decode_message(message).expect("decodes");
        let sent = by_id[&decoded.event_id];
        assert_eq!(message.topic(), topic);
        assert_eq!(decoded.event_type, sent.event_type);
        assert_eq!(decoded.schema_version, sent.schema_version);
        assert_eq!(decoded.key, sent.key);
        assert_eq!(
            message.key().map(|k| std::str::from_utf8(k).unwrap()),
            sent.key.as_deref()
        );
        assert_eq!(message.payload().unwrap(), sent.payload.as_bytes());
        assert_eq!(
            message.timestamp(),
            Timestamp::CreateTime(sent.created_at.timestamp_millis())
        );
        assert_eq!(headers_of(message), expected_headers(sent));
        if let Some(key) = &sent.key {
            let partition = *partition_of_key
                .entry(key.clone())
                .or_insert(message.partition());
            assert_eq!(partition, message.partition(), "key {key} spans partitions");
        }

        match decode_message_as::<OrderPlaced, _>(message).expect("decodes") {
            Some((event_id, order)) => {
                assert_eq!(event_id, sent.event_id);
                assert_eq!(Some(order), sent.decode_as::<OrderPlaced>().unwrap());
            }
            None => {
                let (_, beat) = decode_message_as::<Heartbeat, _>(message)
                    .expect("decodes")
                    .expect("a heartbeat");
                assert_eq!(beat, Heartbeat { beat: 1 });
                assert_eq!(decoded.key, None);
                assert!(message.key().is_none());
            }
        }
    }
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_records_of_one_key_keep_their_order() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(2).await;
    let records = interleaved_orders(&topic, 3, 25);
    publish_all(&kafka.sink(), &records).await;
    let messages = kafka.read_topic(&topic, 2).await;
    assert_eq!(messages.len(), records.len());
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefix_and_a_route_choose_the_topic() {
    let kafka = TestKafka::start();
    let base = format!("outbox-test-{}", uuid::Uuid::now_v7());
    let prefixed = format!("staging.{base}");
    let orders = format!("{base}-orders");
    let beats = format!("{base}-beats");
    for topic in [&prefixed, &orders, &beats] {
        kafka.create_topic(topic, 1).await;
    }

    // A prefix in front of the record's own topic.
    let sink = KafkaSink::builder(kafka.config())
        .topic_prefix("staging.")
        .build()
        .unwrap();
    let order = OrderPlaced {
        order_id: 1,
        seq: 0,
        note: String::new(),
    };
    let first = record(1, &base, &order);
    publish_all(&sink, std::slice::from_ref(&first)).await;
    let messages = kafka.read_topic(&prefixed, 1).await;
    assert_eq!(common::event_ids(&messages), vec![first.event_id]);

    // A route by event type.
    let route_base = base.clone();
    let sink = KafkaSink::builder(kafka.config())
        .route(move |record| match record.event_type.as_str() {
            "test.Heartbeat" => format!("{route_base}-beats"),
            _ => format!("{route_base}-orders"),
        })
        .build()
        .unwrap();
    let records = vec![
        record(2, "ignored", &order),
        record(3, "ignored", &Heartbeat { beat: 7 }),
    ];
    let outcomes = sink.publish(&records).await;
    assert!(outcomes.iter().all(|o| o.is_delivered()), "{outcomes:?}");
    let routed_orders = common::event_ids(&kafka.read_topic(&orders, 1).await);
    let routed_beats = common::event_ids(&kafka.read_topic(&beats, 1).await);
    assert_eq!(routed_orders, vec![records[0].event_id]);
    assert_eq!(routed_beats, vec![records[1].event_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_batch_publishes_nothing() {
    let kafka = TestKafka::start();
    assert!(kafka.sink().publish(&[]).await.is_empty());
}
