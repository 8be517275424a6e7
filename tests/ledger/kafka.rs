//! The broker of a scenario, its topics, and a consumer that decodes what
//! the relays published on its own: the outbox headers and the JSON
//! payload, read with rdkafka and serde_json only.

use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use uuid::Uuid;

use super::Entry;

/// How long [`Kafka::read_log`] waits for the expected messages.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// After the expected messages, how long the consumer keeps reading for
/// copies already in the log.
const QUIET: Duration = Duration::from_millis(700);

/// The Kafka broker of a scenario: librdkafka's mock cluster (in this
/// process, with fault injection), or the broker at `KAFKA_BROKERS`.
pub struct Kafka {
    brokers: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    /// The topics made so far, with their partition counts.
    topics: Vec<(String, i32)>,
}

impl fmt::Debug for Kafka {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kafka")
            .field("brokers", &self.brokers)
            .field("mock", &self.mock.is_some())
            .field("topics", &self.topics)
            .finish()
    }
}

impl Kafka {
    /// The broker at `KAFKA_BROKERS` when it is set, else a new mock
    /// cluster of one broker.
    pub async fn start() -> Self {
        match std::env::var("KAFKA_BROKERS") {
            Ok(brokers) if !brokers.trim().is_empty() => Self::real(&brokers),
            _ => Self::mock(),
        }
    }

    /// A new mock cluster of one broker (id 1).
    pub fn mock() -> Self {
        let cluster = MockCluster::new(1).expect("a mock Kafka cluster");
        Self {
            brokers: cluster.bootstrap_servers(),
            mock: Some(cluster),
            topics: Vec::new(),
        }
    }

    /// The broker at `brokers`.
    pub fn real(brokers: &str) -> Self {
        Self {
            brokers: brokers.trim().to_owned(),
            mock: None,
            topics: Vec::new(),
        }
    }

    /// The bootstrap servers.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The mock cluster, for fault injection; `None` on a real broker.
    pub fn mock_cluster(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.mock.as_ref()
    }

    /// A producer configuration for this broker: the bootstrap servers and
    /// `message.timeout.ms`.
    pub fn producer_config(&self, message_timeout: Duration) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers).set(
            "message.timeout.ms",
            message_timeout.as_millis().to_string(),
        );
        config
    }

    /// Creates a topic of its own for this scenario, `{name}-{uuid}`, with
    /// `partitions` partitions (a real broker may not create topics on
    /// first use), and returns its name.
    pub async fn topic(&mut self, name: &str, partitions: i32) -> String {
        let topic = format!("{name}-{}", Uuid::now_v7().simple());
        match &self.mock {
            Some(cluster) => cluster
                .create_topic(&topic, partitions, 1)
                .expect("create a topic on the mock cluster"),
            None => create_real_topic(&self.brokers, &topic, partitions).await,
        }
        self.topics.push((topic.clone(), partitions));
        topic
    }

    /// Reads every message of `topics` (made with [`topic`](Self::topic))
    /// from the beginning until `expected` distinct event ids arrived (or a
    /// minute passed), then for a moment more for copies: per partition,
    /// in log order.
    pub async fn read_log(&self, topics: &[&str], expected: usize) -> Vec<Delivered> {
        let brokers = self.brokers.clone();
        let topics: Vec<(String, i32)> = topics
            .iter()
            .map(|topic| {
                let partitions = self
                    .topics
                    .iter()
                    .find(|(name, _)| name == topic)
                    .map(|(_, partitions)| *partitions)
                    .unwrap_or_else(|| panic!("{topic} was not made with Kafka::topic"));
                ((*topic).to_owned(), partitions)
            })
            .collect();
        tokio::task::spawn_blocking(move || consume(&brokers, &topics, expected))
            .await
            .expect("the consumer thread")
    }
}

async fn create_real_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("an admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(20)));
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        )
        .await
        .unwrap_or_else(|error| panic!("create topic {topic} at {brokers}: {error}"));
    for result in results {
        if let Err((name, code)) = result {
            panic!("create topic {name} at {brokers}: {code}");
        }
    }
}

fn consume(brokers: &str, topics: &[(String, i32)], expected: usize) -> Vec<Delivered> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("ledger-{}", Uuid::now_v7()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("a consumer");
    let mut assignment = TopicPartitionList::new();
    for (topic, partitions) in topics {
        for partition in 0..*partitions {
            assignment
                .add_partition_offset(topic, partition, Offset::Beginning)
                .expect("a partition to read");
        }
    }
    consumer.assign(&assignment).expect("assign the partitions");
    let mut log = Vec::new();
    let mut distinct = std::collections::HashSet::new();
    let deadline = Instant::now() + READ_DEADLINE;
    let mut quiet_since: Option<Instant> = None;
    loop {
        if distinct.len() >= expected {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > QUIET {
                break;
            }
        }
        if Instant::now() > deadline {
            break;
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let delivered = Delivered::read(&message);
                if let Ok(id) = delivered.event_id {
                    distinct.insert(id);
                }
                log.push(delivered);
            }
            Some(Err(error)) => eprintln!("consumer: {error}"),
            None => {}
        }
    }
    log
}

/// One message read back, decoded on its own terms.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its key, as UTF-8.
    pub key: Option<String>,
    /// The `outbox-event-id` header, or what is wrong with it.
    pub event_id: Result<Uuid, &'static str>,
    /// The `outbox-event-type` header.
    pub event_type: Option<String>,
    /// The payload as JSON, or why it is not.
    pub payload: Result<Value, String>,
}

impl Delivered {
    fn read<M: Message>(message: &M) -> Self {
        let header = |name: &str| -> Option<String> {
            let headers = message.headers()?;
            headers
                .iter()
                .find(|header| header.key == name)
                .and_then(|header| header.value)
                .map(|value| String::from_utf8_lossy(value).into_owned())
        };
        let event_id = match header("outbox-event-id") {
            None => Err("no outbox-event-id header"),
            Some(text) => Uuid::parse_str(&text).map_err(|_| "outbox-event-id is not a UUID"),
        };
        let payload = match message.payload() {
            None => Err("no payload".to_owned()),
            Some(bytes) => serde_json::from_slice(bytes)
                .map_err(|error| format!("the payload is not JSON: {error}")),
        };
        Self {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message
                .key()
                .map(|key| String::from_utf8_lossy(key).into_owned()),
            event_id,
            event_type: header("outbox-event-type"),
            payload,
        }
    }

    /// A message as a consumer would read it for the ledger event `key`,
    /// `seq`: for tests of the check itself.
    pub fn for_test(
        topic: &str,
        partition: i32,
        offset: i64,
        key: &str,
        event_id: Uuid,
        seq: u64,
    ) -> Self {
        Self {
            topic: topic.to_owned(),
            partition,
            offset,
            key: Some(key.to_owned()),
            event_id: Ok(event_id),
            event_type: Some(super::LedgerEvent::TYPE.to_owned()),
            payload: Ok(serde_json::json!({"key": key, "seq": seq})),
        }
    }

    /// `topic/partition@offset`.
    pub fn position(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }

    /// Whether the message says what the ledger committed: its key, event
    /// type, and the payload's `key` and `seq`.
    pub(super) fn matches(&self, entry: &Entry) -> Result<(), String> {
        let payload = self.payload.as_ref().map_err(Clone::clone)?;
        if self.key.as_deref() != Some(entry.key.as_str()) {
            return Err(format!(
                "message key {:?}, committed with key {}",
                self.key, entry.key
            ));
        }
        if self.event_type.as_deref() != Some(super::LedgerEvent::TYPE) {
            return Err(format!("event type {:?}", self.event_type));
        }
        let key = payload.get("key").and_then(Value::as_str);
        let seq = payload.get("seq").and_then(Value::as_u64);
        if key != Some(entry.key.as_str()) || seq != Some(entry.seq) {
            return Err(format!(
                "the payload is {payload}, committed as key {} seq {}",
                entry.key, entry.seq
            ));
        }
        Ok(())
    }
}
