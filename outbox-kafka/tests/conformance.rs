//! The Kafka sink passes the sink conformance suite: against librdkafka's
//! mock cluster, or the brokers of `KAFKA_BROKERS`.

mod common;

use async_trait::async_trait;
use common::TestKafka;
use outbox_core::OutboxRecord;
use outbox_core::testkit::sink::{Destination, Message};
use outbox_kafka::{EVENT_ID_HEADER, KafkaSink};
use rdkafka::Message as _;
use rdkafka::message::Headers as _;

const PARTITIONS: i32 = 3;
/// The producer's `message.max.bytes` in these tests.
const MAX_BYTES: usize = 100_000;

/// A fresh topic of the test cluster.
struct Topic {
    kafka: TestKafka,
    topic: String,
}

#[async_trait(?Send)]
impl Destination for Topic {
    fn topic(&self) -> String {
        self.topic.clone()
    }

    /// Larger than the producer's `message.max.bytes`.
    fn fail_permanently(&self, record: &mut OutboxRecord) {
        record.payload = "x".repeat(2 * MAX_BYTES);
    }

    async fn messages(&self) -> Vec<Message> {
        self.kafka
            .read_topic(&self.topic, PARTITIONS)
            .await
            .iter()
            .map(|message| {
                let event_id = message
                    .headers()
                    .and_then(|headers| headers.iter().find(|h| h.key == EVENT_ID_HEADER))
                    .and_then(|header| header.value)
                    .map(|value| String::from_utf8_lossy(value).parse().expect("a UUID"))
                    .expect("an event id header");
                Message {
                    key: message
                        .key()
                        .map(|key| String::from_utf8(key.to_vec()).expect("a UTF-8 key")),
                    event_id,
                    payload: String::from_utf8(message.payload().unwrap_or_default().to_vec())
                        .expect("a UTF-8 payload"),
                }
            })
            .collect()
    }
}

async fn kafka_sink() -> Option<(KafkaSink, Topic)> {
    let kafka = TestKafka::start();
    let topic = kafka.topic(PARTITIONS).await;
    let mut config = kafka.config();
    config.set("message.max.bytes", MAX_BYTES.to_string());
    let sink = KafkaSink::new(config).expect("sink");
    Some((sink, Topic { kafka, topic }))
}

outbox_core::sink_conformance_tests!(kafka_sink);
