//! Per-key order under failures: injected broker errors, a broker outage in
//! the middle of a batch, a fatal producer error, and a failed record that
//! holds back the rest of its key.

mod common;

use std::time::{Duration, Instant};

use common::{
    OrderPlaced, TestKafka, assert_first_copies_in_order, error_of, event_ids, interleaved_orders,
    publish_all, publish_until_delivered, record, wait_until,
};
use outbox_engine::{Outcome, Sink};
use outbox_rdkafka::{Error, KafkaSink};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_broker_errors_end_in_delivery_in_key_order() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("retriable_broker_errors_end_in_delivery_in_key_order") else {
        return;
    };
    let topic = kafka.topic(3).await;
    let records = interleaved_orders(&topic, 5, 8);
    let mut config = kafka.config();
    // One produce request in flight per broker: the mock cluster does not
    // check an idempotent producer's sequence numbers, so it would write a
    // request sent behind one it refused, which a broker refuses
    // (OUT_OF_ORDER_SEQUENCE_NUMBER), and librdkafka would then count the
    // refused records as delivered.
    config
        .set("message.timeout.ms", "5000")
        .set("max.in.flight.requests.per.connection", "1");
    let sink = KafkaSink::new(config).unwrap();

    use RDKafkaRespErr::*;
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
            RD_KAFKA_RESP_ERR__TRANSPORT,
            RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
            RD_KAFKA_RESP_ERR__TRANSPORT,
            RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );

    publish_until_delivered(&sink, records.clone(), Duration::from_secs(60)).await;

    let messages = kafka.read_topic(&topic, 3).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_mid_batch_loses_nothing_and_keeps_key_order() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("a_broker_outage_mid_batch_loses_nothing_and_keeps_key_order")
    else {
        return;
    };
    let topic = kafka.topic(3).await;
    // One record at a time per key (see `pipelined.rs` for the default):
    // 40 records per key, 40 round trips of at least 50 ms each.
    let records = interleaved_orders(&topic, 4, 40);
    mock.broker_round_trip_time(-1, Duration::from_millis(50))
        .unwrap();
    let mut config = kafka.config();
    config
        .set("message.timeout.ms", "3000")
        .set("enable.gapless.guarantee", "false");
    let sink = KafkaSink::new(config).unwrap();
    assert!(!sink.is_pipelined());

    let in_flight = {
        let sink = sink.clone();
        let records = records.clone();
        tokio::spawn(async move { sink.publish(&records).await })
    };
    // Take the brokers down once part of the batch is written.
    wait_until(
        "the first records to arrive",
        Duration::from_secs(20),
        || {
            let count = kafka.message_count(&topic, 3);
            async move { count.await >= 8 }
        },
    )
    .await;
    mock.broker_down(-1).unwrap();
    let outcomes = in_flight.await.unwrap();
    mock.broker_up(-1).unwrap();

    let delivered = outcomes.iter().filter(|o| o.is_delivered()).count();
    assert!(delivered > 0, "nothing delivered before the outage");
    assert!(delivered < records.len(), "the outage came after the batch");
    let mut undelivered = Vec::new();
    for (record, outcome) in records.iter().zip(&outcomes) {
        match outcome {
            Outcome::Delivered => {}
            Outcome::Retriable(_) => undelivered.push(record.clone()),
            Outcome::Permanent(e) => panic!("record {}: permanent: {e}", record.id),
        }
    }
    mock.broker_round_trip_time(-1, Duration::ZERO).unwrap();
    publish_until_delivered(&sink, undelivered, Duration::from_secs(60)).await;

    let messages = kafka.read_topic(&topic, 3).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_chain_longer_than_the_message_timeout_is_delivered() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("a_key_chain_longer_than_the_message_timeout_is_delivered")
    else {
        return;
    };
    let topic = kafka.topic(1).await;
    let mut config = kafka.config();
    // One record at a time per key: each waits for the previous one.
    config
        .set("message.timeout.ms", "1500")
        .set("enable.gapless.guarantee", "false");
    let sink = KafkaSink::new(config).unwrap();
    assert!(!sink.is_pipelined());
    let order = |order_id, seq| OrderPlaced {
        order_id,
        seq,
        note: String::new(),
    };
    // Connect and fetch metadata before the brokers slow down.
    publish_all(&sink, &[record(100, &topic, &order(2, 0))]).await;
    mock.broker_round_trip_time(-1, Duration::from_millis(300))
        .unwrap();

    // One key: each record is sent once the previous one is acknowledged,
    // one round trip of 300 ms each, 2.4 s in all.
    let records: Vec<_> = (0..8)
        .map(|seq| record(seq + 1, &topic, &order(1, seq as u32)))
        .collect();
    let started = Instant::now();
    let outcomes = sink.publish(&records).await;
    let took = started.elapsed();
    mock.broker_round_trip_time(-1, Duration::ZERO).unwrap();

    for (record, outcome) in records.iter().zip(&outcomes) {
        assert!(
            outcome.is_delivered(),
            "record {} after {took:?}: {outcome}",
            record.id
        );
    }
    assert!(
        took > Duration::from_millis(1500),
        "the chain took {took:?}, not longer than message.timeout.ms: nothing was tested"
    );
    let messages = kafka.read_topic(&topic, 1).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_replaces_the_producer() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("a_fatal_producer_error_replaces_the_producer") else {
        return;
    };
    let topic = kafka.topic(1).await;
    let records = interleaved_orders(&topic, 3, 3);
    let sink = kafka.sink();
    // A sequence desynchronization on the first produce request is fatal to
    // an idempotent producer.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER],
    );

    let outcomes = sink.publish(&records).await;
    assert!(
        outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Retriable(e) if matches!(e.downcast_ref::<Error>(), Some(Error::ProducerFatal { .. })))),
        "{outcomes:#?}"
    );
    let mut undelivered = Vec::new();
    for (record, outcome) in records.iter().zip(&outcomes) {
        match outcome {
            Outcome::Delivered => {}
            Outcome::Retriable(_) => undelivered.push(record.clone()),
            Outcome::Permanent(e) => panic!("record {}: permanent: {e}", record.id),
        }
    }

    // The new producer delivers the rest.
    let calls = publish_until_delivered(&sink, undelivered, Duration::from_secs(30)).await;
    assert_eq!(calls, 1);
    let messages = kafka.read_topic(&topic, 1).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_record_holds_back_its_key_only() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(2).await;
    let sink = kafka.sink_with("message.max.bytes", "1000");

    let order = |order_id, seq, note: String| OrderPlaced {
        order_id,
        seq,
        note,
    };
    // Key 1's first record is too large for the producer.
    let records = vec![
        record(1, &topic, &order(1, 0, "x".repeat(5_000))),
        record(2, &topic, &order(2, 0, "a".into())),
        record(3, &topic, &order(1, 1, "b".into())),
        record(4, &topic, &order(2, 1, "c".into())),
        record(5, &topic, &order(1, 2, "d".into())),
        record(6, &topic, &order(3, 0, "e".into())),
    ];
    let outcomes = sink.publish(&records).await;

    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
    for held in [2, 4] {
        assert!(
            matches!(outcomes[held], Outcome::Retriable(_)),
            "{}",
            outcomes[held]
        );
        match error_of(&outcomes[held]) {
            Error::HeldBack { behind, key, .. } => {
                assert_eq!(*behind, records[0].event_id);
                assert_eq!(key, "1");
            }
            other => panic!("{other}"),
        }
    }
    for delivered in [1, 3, 5] {
        assert!(
            outcomes[delivered].is_delivered(),
            "{}",
            outcomes[delivered]
        );
    }
    let mut in_topic = event_ids(&kafka.read_topic(&topic, 2).await);
    let mut expected: Vec<_> = [1, 3, 5].iter().map(|&i| records[i].event_id).collect();
    in_topic.sort();
    expected.sort();
    assert_eq!(in_topic, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_side_failure_holds_back_its_key_only() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("a_broker_side_failure_holds_back_its_key_only") else {
        return;
    };
    let topic = kafka.topic(2).await;
    let denied = kafka.topic(1).await;
    mock.topic_error(
        &denied,
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
    )
    .unwrap();
    let sink = kafka.sink();

    let order = |order_id, seq| OrderPlaced {
        order_id,
        seq,
        note: String::new(),
    };
    // Key 1's first record goes to a topic the producer may not write to.
    let records = vec![
        record(1, &denied, &order(1, 0)),
        record(2, &topic, &order(2, 0)),
        record(3, &topic, &order(1, 1)),
        record(4, &topic, &order(2, 1)),
        record(5, &topic, &order(1, 2)),
    ];
    let outcomes = sink.publish(&records).await;

    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
    for held in [2, 4] {
        assert!(
            matches!(error_of(&outcomes[held]), Error::HeldBack { .. }),
            "{}",
            outcomes[held]
        );
    }
    assert!(outcomes[1].is_delivered() && outcomes[3].is_delivered());
    let in_topic = event_ids(&kafka.read_topic(&topic, 2).await);
    assert_eq!(in_topic.len(), 2);
    assert!(!in_topic.contains(&records[2].event_id));
    assert!(!in_topic.contains(&records[4].event_id));
}
