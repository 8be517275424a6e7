//! The Kafka sink passes the sink conformance suite, pipelined and one
//! record at a time per key: against librdkafka's mock cluster, or the
//! brokers of `KAFKA_BROKERS`.

mod common;

use async_trait::async_trait;
use common::TestKafka;
use outbox_engine::OutboxRecord;
use outbox_engine::testkit::sink::{Destination, Message};
use outbox_rdkafka::{EVENT_ID_HEADER, KafkaSink};
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

/// A sink and a fresh topic; `extra` adds producer properties.
async fn kafka_sink(extra: &[(&str, &str)]) -> (KafkaSink, Topic) {
    let kafka = TestKafka::start();
    let topic = kafka.topic(PARTITIONS).await;
    let mut config = kafka.config();
    config.set("message.max.bytes", MAX_BYTES.to_string());
    for (key, value) in extra {
        config.set(*key, *value);
    }
    let sink = KafkaSink::new(config).expect("sink");
    (sink, Topic { kafka, topic })
}

/// The default: a key's records handed to the producer together.
///
/// The suite checks that outcomes are reported while a long run of one
/// key is still being delivered. Pipelined, a key's 20 records travel in
/// one produce request, so every report comes at once; one record per
/// request and a round trip of 20 ms (on the mock cluster) keep them
/// apart, as a large batch over a slow link would.
mod pipelined {
    use super::*;

    async fn sink() -> Option<(KafkaSink, Topic)> {
        let (sink, topic) = kafka_sink(&[("batch.num.messages", "1")]).await;
        assert!(sink.is_pipelined());
        if let Some(mock) = topic.kafka.mock() {
            mock.broker_round_trip_time(-1, std::time::Duration::from_millis(20))
                .expect("round trip time");
        }
        Some((sink, topic))
    }

    outbox_engine::sink_conformance_tests!(sink);
}

/// A key's records one at a time, each once the previous one is
/// acknowledged (`enable.gapless.guarantee=false`).
mod one_at_a_time {
    use super::*;

    async fn sink() -> Option<(KafkaSink, Topic)> {
        let (sink, topic) = kafka_sink(&[("enable.gapless.guarantee", "false")]).await;
        assert!(!sink.is_pipelined());
        Some((sink, topic))
    }

    outbox_engine::sink_conformance_tests!(sink);
}
