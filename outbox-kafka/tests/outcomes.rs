//! How failures are reported: permanent, retriable, or an error when the
//! sink is built.

mod common;

use std::time::{Duration, Instant};

use common::{OrderPlaced, TestKafka, error_of, record};
use outbox_engine::{Outcome, Sink};
use outbox_rdkafka::{Error, KafkaSink};
use rdkafka::ClientConfig;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn order(order_id: u64, seq: u32, note: impl Into<String>) -> OrderPlaced {
    OrderPlaced {
        order_id,
        seq,
        note: note.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_record_is_permanent_and_the_others_go_through() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(1).await;
    let sink = kafka.sink_with("message.max.bytes", "1000");

    let records = vec![
        record(1, &topic, &order(1, 0, "x".repeat(5_000))),
        record(2, &topic, &order(2, 0, "small")),
    ];
    let outcomes = sink.publish(&records).await;

    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
    let error = error_of(&outcomes[0]);
    assert_eq!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge)
    );
    assert!(error.to_string().contains("message.max.bytes"), "{error}");
    assert!(outcomes[1].is_delivered(), "{}", outcomes[1]);
    let messages = kafka.read_topic(&topic, 1).await;
    assert_eq!(common::event_ids(&messages), vec![records[1].event_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_authorization_failure_is_permanent() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("a_topic_authorization_failure_is_permanent") else {
        return;
    };
    let topic = kafka.topic(1).await;
    let sink = kafka.sink();
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );

    let records = vec![record(1, &topic, &order(1, 0, "denied"))];
    let outcomes = sink.publish(&records).await;

    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
    assert_eq!(
        error_of(&outcomes[0]).rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    assert!(kafka.read_topic(&topic, 1).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_topic_is_permanent_without_a_broker() {
    // Nothing listens on port 1: a record that reached the producer would
    // wait for `message.timeout.ms` (20 s by default).
    let sink = KafkaSink::from_brokers("127.0.0.1:1").unwrap();
    let bad_topics = [
        String::new(),
        "with space".to_owned(),
        "slash/topic".to_owned(),
        "..".to_owned(),
        "t".repeat(250),
    ];
    let mut records: Vec<_> = bad_topics
        .iter()
        .enumerate()
        .map(|(i, topic)| record(i as i64 + 1, topic, &order(i as u64, 0, "")))
        .collect();
    // A later record of the first key, to a good topic: held back.
    records.push(record(10, "fine", &order(0, 1, "")));

    let started = Instant::now();
    let outcomes = sink.publish(&records).await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    for (outcome, topic) in outcomes.iter().zip(&bad_topics) {
        assert!(
            matches!(outcome, Outcome::Permanent(_)),
            "{topic:?}: {outcome}"
        );
        assert!(
            matches!(error_of(outcome), Error::InvalidTopic { .. }),
            "{topic:?}: {outcome}"
        );
    }
    assert!(
        matches!(outcomes[5], Outcome::Retriable(_)),
        "{}",
        outcomes[5]
    );
    match error_of(&outcomes[5]) {
        Error::HeldBack { behind, .. } => assert_eq!(*behind, records[0].event_id),
        other => panic!("{other}"),
    }
}

fn unknown_topic_config(kafka: &TestKafka) -> ClientConfig {
    let mut config = kafka.config();
    config
        .set("allow.auto.create.topics", "false")
        .set("topic.metadata.propagation.max.ms", "500")
        .set("message.timeout.ms", "10000");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_is_retriable_by_default() {
    let kafka = TestKafka::start();
    let sink = KafkaSink::new(unknown_topic_config(&kafka)).unwrap();
    let topic = format!("outbox-test-missing-{}", uuid::Uuid::now_v7());
    let outcomes = sink.publish(&[record(1, &topic, &order(1, 0, ""))]).await;

    assert!(
        matches!(outcomes[0], Outcome::Retriable(_)),
        "{}",
        outcomes[0]
    );
    let code = error_of(&outcomes[0]).rdkafka_error_code();
    assert!(
        matches!(
            code,
            Some(RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition)
        ),
        "{}",
        outcomes[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_can_be_made_permanent() {
    let kafka = TestKafka::start();
    let sink = KafkaSink::builder(unknown_topic_config(&kafka))
        .unknown_topic_is_permanent(true)
        .build()
        .unwrap();
    let topic = format!("outbox-test-missing-{}", uuid::Uuid::now_v7());
    let outcomes = sink.publish(&[record(1, &topic, &order(1, 0, ""))]).await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_makes_every_record_retriable() {
    for pipelined in [true, false] {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "1500");
        if !pipelined {
            config.set("enable.gapless.guarantee", "false");
        }
        let sink = KafkaSink::new(config).unwrap();
        assert_eq!(sink.is_pipelined(), pipelined);
        assert_eq!(sink.publish_timeout(), Duration::from_millis(1500));
        let records: Vec<_> = (0..6)
            .map(|i| record(i + 1, "orders", &order(i as u64 % 2, i as u32, "")))
            .collect();

        let started = Instant::now();
        let outcomes = sink.publish(&records).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );

        assert_eq!(outcomes.len(), records.len());
        for outcome in &outcomes {
            assert!(matches!(outcome, Outcome::Retriable(_)), "{outcome}");
            assert!(error_of(outcome).is_retriable());
        }
        // Pipelined, every record was in the producer and failed on its
        // own; one at a time, the first record of each key timed out and
        // the rest waited behind it.
        for (outcome, record) in outcomes.iter().zip(&records).skip(2) {
            match error_of(outcome) {
                Error::HeldBack { key, .. } if !pipelined => {
                    assert_eq!(Some(key), record.key.as_ref());
                }
                Error::Delivery { .. } if pipelined => {}
                other => panic!("record {} (pipelined: {pipelined}): {other}", record.id),
            }
        }
        assert_eq!(sink.order_gaps(), 0);
    }
}

#[test]
fn a_bad_configuration_fails_at_construction() {
    for brokers in [
        "",
        "localhost:notaport",
        "kafka:9092,,kafka2:9092",
        "http://kafka:9092",
    ] {
        let error = KafkaSink::from_brokers(brokers).unwrap_err();
        assert!(matches!(error, Error::Config(_)), "{brokers:?}: {error}");
        assert!(error.to_string().contains("bootstrap.servers"), "{error}");
    }

    let with = |key: &str, value: &str| {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "localhost:9092")
            .set(key, value);
        KafkaSink::new(config).unwrap_err()
    };

    let error = with("acks", "banana");
    assert!(matches!(error, Error::Producer { .. }), "{error}");
    assert!(error.to_string().contains("acks"), "{error}");

    let error = with("no.such.property", "1");
    assert!(matches!(error, Error::Producer { .. }), "{error}");
    assert!(error.to_string().contains("no.such.property"), "{error}");

    // Conflicts with the idempotence default, and says so.
    let error = with("acks", "1");
    assert!(matches!(error, Error::Producer { .. }), "{error}");
    assert!(
        error.to_string().contains("enable.idempotence=true"),
        "{error}"
    );

    let error = with("message.timeout.ms", "0");
    assert!(matches!(error, Error::Config(_)), "{error}");

    let error = KafkaSink::builder(ClientConfig::new()).build().unwrap_err();
    assert!(error.to_string().contains("bootstrap.servers"), "{error}");

    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", "localhost:9092");
    let error = KafkaSink::builder(config)
        .topic_prefix("bad prefix/")
        .build()
        .unwrap_err();
    assert!(matches!(error, Error::Config(_)), "{error}");

    // None of these is an error.
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", "localhost:9092")
        .set("acks", "1")
        .set("enable.idempotence", "false");
    let sink = KafkaSink::new(config).unwrap();
    assert_eq!(sink.client_config().get("acks"), Some("1"));
    assert_eq!(sink.client_config().get("compression.type"), Some("lz4"));
}
