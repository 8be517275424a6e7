//! `publish_each`: each record's outcome as soon as it is known, the same
//! outcomes `publish` returns.

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{OrderPlaced, TestKafka, error_of, publish_all, record};
use outbox_engine::{OutboxRecord, Outcome, Sink};
use outbox_rdkafka::{Error, KafkaSink};

fn order(order_id: u64, seq: u32, note: impl Into<String>) -> OrderPlaced {
    OrderPlaced {
        order_id,
        seq,
        note: note.into(),
    }
}

/// Calls `publish_each` and returns, per record, every outcome reported for
/// it with the time since the call.
async fn publish_each(sink: &KafkaSink, records: &[OutboxRecord]) -> Vec<Vec<(Duration, Outcome)>> {
    let reported: Mutex<Vec<Vec<(Duration, Outcome)>>> =
        Mutex::new(records.iter().map(|_| Vec::new()).collect());
    let started = Instant::now();
    sink.publish_each(records, &|index, outcome| {
        reported.lock().unwrap()[index].push((started.elapsed(), outcome));
    })
    .await;
    reported.into_inner().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_to_a_missing_topic_does_not_delay_the_other_reports() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(3).await;
    let missing = format!("outbox-test-missing-{}", uuid::Uuid::now_v7());
    let mut config = kafka.config();
    // librdkafka holds a record to a topic it does not know until
    // `message.timeout.ms` (`topic.metadata.propagation.max.ms`, 30 s by
    // default, is longer).
    config
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", "4000");
    let sink = KafkaSink::new(config).unwrap();
    // Connect and learn the topic's partitions first, so that the healthy
    // records' times measure their publishing only.
    publish_all(&sink, &[record(1000, &topic, &order(1000, 0, "warm-up"))]).await;

    // 12 keys with 3 records each, and one record of a key of its own to
    // the missing topic in the middle.
    let mut records = Vec::new();
    for seq in 0..3 {
        for order_id in 0..12 {
            let id = records.len() as i64 + 1;
            records.push(record(id, &topic, &order(order_id, seq, "")));
        }
    }
    let slow = 18;
    records.insert(slow, record(100, &missing, &order(100, 0, "lost")));

    let started = Instant::now();
    let reported = publish_each(&sink, &records).await;
    let call = started.elapsed();

    for (index, outcomes) in reported.iter().enumerate() {
        assert_eq!(outcomes.len(), 1, "record {index}: {outcomes:?}");
    }
    let (at, outcome) = &reported[slow][0];
    assert!(matches!(outcome, Outcome::Retriable(_)), "{outcome}");
    assert!(
        *at >= Duration::from_millis(3500),
        "the missing topic's record was reported after {at:?}, before its message.timeout.ms"
    );
    for (index, outcomes) in reported.iter().enumerate() {
        if index == slow {
            continue;
        }
        let (at, outcome) = &outcomes[0];
        assert!(outcome.is_delivered(), "record {index}: {outcome}");
        assert!(
            *at < Duration::from_millis(1500),
            "record {index} was reported after {at:?}, with the missing topic's record"
        );
    }
    assert!(call >= *at, "publish_each returned before its last report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_and_publish_each_give_the_same_outcomes() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(2).await;
    let sink = kafka.sink_with("message.max.bytes", "1000");

    // Key 1's head is too large and key 2's head has an invalid topic: the
    // rest of both keys is held back; keys 3 and 4 are delivered.
    let records = vec![
        record(1, &topic, &order(1, 0, "x".repeat(5_000))),
        record(2, "not a topic", &order(2, 0, "")),
        record(3, &topic, &order(3, 0, "")),
        record(4, &topic, &order(1, 1, "")),
        record(5, &topic, &order(2, 1, "")),
        record(6, &topic, &order(4, 0, "")),
        record(7, &topic, &order(1, 2, "")),
        record(8, &topic, &order(3, 1, "")),
    ];

    let returned: Vec<String> = sink
        .publish(&records)
        .await
        .iter()
        .map(Outcome::to_string)
        .collect();
    let reported = publish_each(&sink, &records).await;

    assert_eq!(returned.len(), records.len());
    let reported: Vec<String> = reported
        .into_iter()
        .enumerate()
        .map(|(index, mut outcomes)| {
            assert_eq!(outcomes.len(), 1, "record {index}: {outcomes:?}");
            outcomes.remove(0).1.to_string()
        })
        .collect();
    assert_eq!(reported, returned);

    let outcomes = sink.publish(&records).await;
    assert!(
        matches!(outcomes[0], Outcome::Permanent(_)),
        "{}",
        outcomes[0]
    );
    assert!(
        matches!(error_of(&outcomes[1]), Error::InvalidTopic { .. }),
        "{}",
        outcomes[1]
    );
    for held in [3, 4, 6] {
        assert!(
            matches!(error_of(&outcomes[held]), Error::HeldBack { .. }),
            "{}",
            outcomes[held]
        );
    }
    for delivered in [2, 5, 7] {
        assert!(
            outcomes[delivered].is_delivered(),
            "{}",
            outcomes[delivered]
        );
    }
}
