//! The Kafka the tests run against: librdkafka's in-process mock cluster by
//! default, or the brokers named by `KAFKA_BROKERS`; plus the events, record
//! builders and checks the suites share.

// Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::time::{Duration, Instant};

use outbox_engine::{NewRecord, OutboxEvent, OutboxRecord, Outcome, Sink};
use outbox_rdkafka::{Error, KafkaSink};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An ordered event with a key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, outbox_engine::OutboxEvent)]
#[outbox(topic = "orders", key = order_id, event_type = "test.OrderPlaced", version = 2)]
pub(crate) struct OrderPlaced {
    pub(crate) order_id: u64,
    pub(crate) seq: u32,
    pub(crate) note: String,
}

/// An event without a key.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, outbox_engine::OutboxEvent)]
#[outbox(topic = "heartbeats", event_type = "test.Heartbeat")]
pub(crate) struct Heartbeat {
    pub(crate) beat: u32,
}

/// A Kafka cluster to publish to.
pub(crate) struct TestKafka {
    bootstrap: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    admin: Option<AdminClient<DefaultClientContext>>,
}

impl TestKafka {
    /// The brokers of `KAFKA_BROKERS` if set, else a fresh mock cluster of
    /// three brokers.
    pub(crate) fn start() -> Self {
        match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.trim().is_empty() => {
                let admin = ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create()
                    .expect("admin client for KAFKA_BROKERS");
                Self {
                    bootstrap: brokers,
                    mock: None,
                    admin: Some(admin),
                }
            }
            _ => {
                let mock = MockCluster::new(3).expect("mock cluster");
                Self {
                    bootstrap: mock.bootstrap_servers(),
                    mock: Some(mock),
                    admin: None,
                }
            }
        }
    }

    /// The bootstrap servers.
    pub(crate) fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// The mock cluster, if the tests run against one.
    pub(crate) fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.mock.as_ref()
    }

    /// The mock cluster's fault injection; `None` (with a note printed)
    /// against a real broker, where the calling test should return.
    pub(crate) fn faults(
        &self,
        test: &str,
    ) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        if self.mock.is_none() {
            println!(
                "{test}: skipped, fault injection needs the mock cluster (KAFKA_BROKERS is set)"
            );
        }
        self.mock.as_ref()
    }

    /// A new topic with a random name and `partitions` partitions.
    pub(crate) async fn topic(&self, partitions: i32) -> String {
        let name = format!("outbox-test-{}", Uuid::now_v7());
        self.create_topic(&name, partitions).await;
        name
    }

    /// Creates the topic `name`.
    pub(crate) async fn create_topic(&self, name: &str, partitions: i32) {
        if let Some(mock) = &self.mock {
            mock.create_topic(name, partitions, 1)
                .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
            return;
        }
        let admin = self.admin.as_ref().expect("admin client");
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let new = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let results = admin
            .create_topics([&new], &options)
            .await
            .unwrap_or_else(|e| panic!("creating topic {name}: {e}"));
        for result in results {
            result.unwrap_or_else(|(topic, code)| panic!("creating topic {topic}: {code}"));
        }
    }

    /// A producer configuration for these brokers.
    pub(crate) fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    /// A sink with the default settings.
    pub(crate) fn sink(&self) -> KafkaSink {
        KafkaSink::new(self.config()).expect("sink")
    }

    /// A sink with one setting of librdkafka's changed.
    #[allow(dead_code)]
    pub(crate) fn sink_with(&self, key: &str, value: &str) -> KafkaSink {
        let mut config = self.config();
        config.set(key, value);
        KafkaSink::new(config).expect("sink")
    }

    /// How many messages the topic holds (the sum of its high watermarks).
    pub(crate) async fn message_count(&self, topic: &str, partitions: i32) -> i64 {
        let config = self.consumer_config();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().expect("consumer");
            (0..partitions)
                .map(|p| {
                    consumer
                        .fetch_watermarks(&topic, p, Duration::from_secs(10))
                        .map(|(low, high)| high - low)
                        .unwrap_or(0)
                })
                .sum()
        })
        .await
        .expect("watermark task")
    }

    /// Every message of the topic, by partition and offset, read with a
    /// manual assignment from the beginning.
    ///
    /// To know where the topic ends without trusting high watermarks (some
    /// brokers report them late), it first writes an end marker to every
    /// partition and reads until it has seen them all; the markers are left
    /// out of the result.
    pub(crate) async fn read_topic(&self, topic: &str, partitions: i32) -> Vec<OwnedMessage> {
        let marker = Uuid::now_v7().to_string();
        let producer: FutureProducer = self.config().create().expect("marker producer");
        for partition in 0..partitions {
            let headers = OwnedHeaders::new().insert(Header {
                key: END_MARKER_HEADER,
                value: Some(&marker),
            });
            let record = FutureRecord::<str, str>::to(topic)
                .partition(partition)
                .payload("")
                .headers(headers);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap_or_else(|(e, _)| panic!("end marker for {topic}/{partition}: {e}"));
        }
        let config = self.consumer_config();
        let topic = topic.to_owned();
        tokio::task::spawn_blocking(move || read_all(&config, &topic, partitions, &marker))
            .await
            .expect("reader task")
    }

    fn consumer_config(&self) -> ClientConfig {
        let mut config = self.config();
        config
            .set("group.id", format!("outbox-test-reader-{}", Uuid::now_v7()))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        config
    }
}

/// The header of the end markers `read_topic` writes.
const END_MARKER_HEADER: &str = "outbox-test-end-marker";

fn read_all(
    config: &ClientConfig,
    topic: &str,
    partitions: i32,
    marker: &str,
) -> Vec<OwnedMessage> {
    let consumer: BaseConsumer = config.create().expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Beginning)
            .expect("assignment");
    }
    consumer.assign(&assignment).expect("assign");
    let mut unfinished: HashSet<i32> = (0..partitions).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut messages = Vec::new();
    while !unfinished.is_empty() {
        assert!(
            Instant::now() < deadline,
            "timed out reading {topic}; no end marker yet in partitions {unfinished:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let end_marker = message.headers().and_then(|headers| {
                    headers
                        .iter()
                        .find(|h| h.key == END_MARKER_HEADER)
                        .and_then(|h| h.value)
                });
                match end_marker {
                    Some(value) if value == marker.as_bytes() => {
                        unfinished.remove(&message.partition());
                    }
                    // An earlier read's marker.
                    Some(_) => {}
                    None => messages.push(message.detach()),
                }
            }
            Some(Err(error)) => panic!("reading {topic}: {error}"),
            None => {}
        }
    }
    messages.sort_by_key(|m| (m.partition(), m.offset()));
    messages
}

/// A stored record of `event`, published to `topic`.
pub(crate) fn record(id: i64, topic: &str, event: &dyn OutboxEvent) -> OutboxRecord {
    OutboxRecord::from_new(id, new_record(topic, event))
}

/// A record of `event` to enqueue, published to `topic`.
pub(crate) fn new_record(topic: &str, event: &dyn OutboxEvent) -> NewRecord {
    let mut new = NewRecord::from_event(event).expect("event serializes");
    new.topic = topic.to_owned();
    new
}

/// `keys` × `per_key` order events, interleaved by key as a relay would
/// claim them (ids from 1).
pub(crate) fn interleaved_orders(topic: &str, keys: u64, per_key: u32) -> Vec<OutboxRecord> {
    stored(&interleaved_new_orders(topic, keys, per_key))
}

/// `keys` × `per_key` order events to enqueue, interleaved by key.
pub(crate) fn interleaved_new_orders(topic: &str, keys: u64, per_key: u32) -> Vec<NewRecord> {
    let mut records = Vec::new();
    for seq in 0..per_key {
        for order_id in 0..keys {
            let event = OrderPlaced {
                order_id,
                seq,
                note: format!("order {order_id} step {seq}"),
            };
            records.push(new_record(topic, &event));
        }
    }
    records
}

/// `records` as a store holds them once enqueued (ids from 1).
pub(crate) fn stored(records: &[NewRecord]) -> Vec<OutboxRecord> {
    records
        .iter()
        .zip(1..)
        .map(|(new, id)| OutboxRecord::from_new(id, new.clone()))
        .collect()
}

/// This crate's error inside an outcome.
pub(crate) fn error_of(outcome: &Outcome) -> &Error {
    outcome
        .error()
        .expect("not delivered")
        .downcast_ref::<Error>()
        .expect("an outbox_rdkafka::Error")
}

/// Publishes `records` again and again, as the relay would, keeping the
/// ones not delivered (in order), until all are delivered. Panics on a
/// permanent outcome or when `timeout` passes. Returns the number of
/// publish calls.
pub(crate) async fn publish_until_delivered(
    sink: &KafkaSink,
    mut records: Vec<OutboxRecord>,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut calls = 0;
    while !records.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} records still undelivered after {timeout:?}",
            records.len()
        );
        calls += 1;
        let outcomes = sink.publish(&records).await;
        assert_eq!(outcomes.len(), records.len());
        let mut left = Vec::new();
        for (record, outcome) in records.into_iter().zip(outcomes) {
            match outcome {
                Outcome::Delivered => {}
                Outcome::Retriable(_) => left.push(record),
                Outcome::Permanent(error) => panic!("record {}: permanent: {error}", record.id),
            }
        }
        records = left;
    }
    calls
}

/// Asserts that every record is in `messages` and that, per key, the first
/// copy of each record comes in the records' order (`messages` by
/// partition and offset; a key lives in one partition).
pub(crate) fn assert_first_copies_in_order(records: &[OutboxRecord], messages: &[OwnedMessage]) {
    let mut expected: BTreeMap<Option<String>, Vec<Uuid>> = BTreeMap::new();
    for record in records {
        expected
            .entry(record.key.clone())
            .or_default()
            .push(record.event_id);
    }
    let mut seen: BTreeMap<Option<String>, Vec<Uuid>> = BTreeMap::new();
    for message in messages {
        let decoded = outbox_rdkafka::decode_message(message).expect("an outbox message");
        let ids = seen.entry(decoded.key).or_default();
        if !ids.contains(&decoded.event_id) {
            ids.push(decoded.event_id);
        }
    }
    for (key, ids) in &expected {
        let got = seen.get(key).cloned().unwrap_or_default();
        if key.is_some() {
            assert_eq!(
                &got, ids,
                "first copies of key {key:?} out of order or missing"
            );
        } else {
            let mut got = got;
            let mut ids = ids.clone();
            got.sort();
            ids.sort();
            assert_eq!(got, ids, "keyless records missing");
        }
    }
}

/// Polls `check` until it holds; panics after `timeout`.
pub(crate) async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The event ids of `messages`.
pub(crate) fn event_ids(messages: &[OwnedMessage]) -> Vec<Uuid> {
    messages
        .iter()
        .map(|m| {
            outbox_rdkafka::decode_message(m)
                .expect("an outbox message")
                .event_id
        })
        .collect()
}

/// Publishes and checks that every record was delivered.
pub(crate) async fn publish_all(sink: &KafkaSink, records: &[OutboxRecord]) {
    let outcomes = sink.publish(records).await;
    for (record, outcome) in records.iter().zip(&outcomes) {
        assert!(outcome.is_delivered(), "record {}: {outcome}", record.id);
    }
}
