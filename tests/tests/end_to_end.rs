//! The whole path: business transactions on SQLite enqueue events, the relay
//! publishes them through `KafkaSink` to librdkafka's mock cluster (over
//! TCP), and a consumer decodes them back into typed events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};
use outbox_engine::{OutboxAdmin, OutboxEvent, Relay};
use outbox_rdkafka::{KafkaSink, decode_message, decode_message_as};
use outbox_sea_orm::SeaOrmStore;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sea_orm::{Database, DatabaseConnection, TransactionTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "e2e.accounts", key = account)]
struct Deposited {
    account: String,
    seq: u32,
    cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "e2e.accounts", key = account, event_type = "account.withdrawn", version = 2)]
struct Withdrawn {
    account: String,
    seq: u32,
    cents: i64,
}

const PARTITIONS: i32 = 4;
const ACCOUNTS: u32 = 8;
const PER_ACCOUNT: u32 = 25;

/// A SQLite file in its own temp directory, removed on drop (also when the
/// test panics).
struct TempDb {
    _dir: tempfile::TempDir,
}

impl TempDb {
    async fn open() -> (Self, DatabaseConnection) {
        let dir = tempfile::Builder::new()
            .prefix("outbox-e2e-")
            .tempdir()
            .unwrap();
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("outbox.db").display()
        );
        let db = Database::connect(&url).await.unwrap();
        Migrator::up(&db, None).await.unwrap();
        (Self { _dir: dir }, db)
    }
}

fn event(account: u32, seq: u32) -> Box<dyn OutboxEvent> {
    let account = format!("acct-{account}");
    let cents = i64::from(seq) * 100 + 1;
    if seq % 3 == 2 {
        Box::new(Withdrawn {
            account,
            seq,
            cents,
        })
    } else {
        Box::new(Deposited {
            account,
            seq,
            cents,
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_reach_kafka_typed_and_in_order_per_key() {
    let (_guard, db) = TempDb::open().await;
    let cluster = MockCluster::new(3).unwrap();
    cluster.create_topic("e2e.accounts", PARTITIONS, 1).unwrap();

    // Each round a transaction per account; one in five rolled back.
    let mut committed: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut rolled_back = HashSet::new();
    // Each committed event as JSON with its type tag, by event id.
    let mut sent = HashMap::new();
    for seq in 0..PER_ACCOUNT {
        for account in 0..ACCOUNTS {
            let txn = db.begin().await.unwrap();
            let event = event(account, seq);
            let ids = outbox_sea_orm::enqueue_all(&txn, [&event]).await.unwrap();
            if (seq + account) % 5 == 4 {
                txn.rollback().await.unwrap();
                rolled_back.extend(ids);
            } else {
                txn.commit().await.unwrap();
                sent.insert(ids[0], serde_json::to_value(&event).unwrap());
                committed
                    .entry(format!("acct-{account}"))
                    .or_default()
                    .extend(ids);
            }
        }
    }
    let expected_total: usize = committed.values().map(Vec::len).sum();

    // Transient produce errors on the way: librdkafka retries them.
    cluster.request_errors(
        rdkafka::types::RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 3],
    );

    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", cluster.bootstrap_servers());
    // The mock cluster does not check an idempotent producer's sequence
    // numbers: a failed request followed by a successful one for the same
    // partition makes librdkafka count the failed request's records as
    // delivered. A real broker would refuse the later request. Per-key
    // order does not rest on idempotence: the sink sends a key's records
    // one at a time.
    let mut sink_config = config.clone();
    sink_config.set("enable.idempotence", "false");
    let sink = KafkaSink::new(sink_config).unwrap();
    let store = SeaOrmStore::new(db.clone());
    let relay = Relay::builder(store.clone(), sink)
        .batch_size(40)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let report = relay.run_once().await.unwrap();
        let stats = store.stats(chrono::Utc::now()).await.unwrap();
        if report.claimed == 0 && stats.pending == 0 {
            assert_eq!(stats.published, 0, "publishing deleted every record");
            assert_eq!(stats.dead, 0);
            break;
        }
        assert!(Instant::now() < deadline, "not drained: {stats:?}");
    }

    // Read everything back.
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "e2e-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset("e2e.accounts", partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut consumed: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut deposits = Vec::new();
    let mut withdrawals = Vec::new();
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while count < expected_total {
        assert!(
            Instant::now() < deadline,
            "consumed only {count} of {expected_total}"
        );
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message.unwrap();
        let decoded = decode_message(&message).unwrap();
        assert!(
            !rolled_back.contains(&decoded.event_id),
            "a rolled-back event was published"
        );
        assert_eq!(
            serde_json::to_value(&decoded.event).unwrap(),
            sent[&decoded.event_id],
            "the decoded event equals the enqueued one"
        );
        consumed
            .entry(decoded.key.clone().unwrap())
            .or_default()
            .push(decoded.event_id);
        if let Some((_, deposit)) = decode_message_as::<Deposited, _>(&message).unwrap() {
            deposits.push(deposit);
        }
        if let Some((_, withdrawal)) = decode_message_as::<Withdrawn, _>(&message).unwrap() {
            assert_eq!(decoded.schema_version, 2);
            assert_eq!(decoded.event_type, "account.withdrawn");
            withdrawals.push(withdrawal);
        }
        count += 1;
    }
    assert_eq!(
        consumed, committed,
        "each key's events, once each, in enqueue order"
    );
    assert_eq!(deposits.len() + withdrawals.len(), expected_total);
    // Each type decodes as itself, and only as itself.
    assert!(
        deposits
            .iter()
            .all(|d| d.seq % 3 != 2 && d.cents == i64::from(d.seq) * 100 + 1)
    );
    assert!(withdrawals.iter().all(|w| w.seq % 3 == 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_loses_nothing_and_marks_nothing_published() {
    let (_guard, db) = TempDb::open().await;
    let store = SeaOrmStore::new(db.clone());
    let events: Vec<Box<dyn OutboxEvent>> = (0..6).map(|seq| event(seq % 2, seq)).collect();
    let ids = outbox_sea_orm::enqueue_all(&db, &events).await.unwrap();
    let backoff = outbox_engine::ExponentialBackoff::new(
        Duration::from_millis(50),
        Duration::from_millis(50),
    )
    .unwrap();

    // Nothing listens on port 1.
    let mut down = ClientConfig::new();
    down.set("bootstrap.servers", "127.0.0.1:1")
        .set("message.timeout.ms", "1500");
    let relay = Relay::builder(store.clone(), KafkaSink::new(down).unwrap())
        .backoff(backoff)
        .build()
        .unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.published, report.dead), (6, 0, 0));
    assert_eq!(report.retried, 2, "the head of each key counted an attempt");
    assert_eq!(report.released, 4, "the rest waited behind their heads");
    let stats = store.stats(chrono::Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.leased), (6, 0, 0));

    // The broker comes back: everything is published, in order per key.
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("e2e.accounts", 1, 1).unwrap();
    let mut up = ClientConfig::new();
    up.set("bootstrap.servers", cluster.bootstrap_servers());
    let relay = Relay::builder(store.clone(), KafkaSink::new(up.clone()).unwrap())
        .backoff(backoff)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats(chrono::Utc::now()).await.unwrap().pending > 0 {
        assert!(
            Instant::now() < deadline,
            "not published after the broker came back"
        );
        relay.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let consumer: BaseConsumer = up
        .set("group.id", "e2e-recovery")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("e2e.accounts", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let mut consumed: BTreeMap<String, Vec<Uuid>> = BTreeMap::new();
    let mut count = 0;
    while count < ids.len() {
        assert!(Instant::now() < deadline, "consumed {consumed:?}");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let decoded = decode_message(&message.unwrap()).unwrap();
            consumed
                .entry(decoded.key.unwrap())
                .or_default()
                .push(decoded.event_id);
            count += 1;
        }
    }
    // Every event once; per key in enqueue order (events alternate keys).
    let expected = BTreeMap::from([
        (
            "acct-0".to_owned(),
            ids.iter().step_by(2).copied().collect::<Vec<_>>(),
        ),
        (
            "acct-1".to_owned(),
            ids.iter().skip(1).step_by(2).copied().collect(),
        ),
    ]);
    assert_eq!(consumed, expected);
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "e2e.not-created", key = account)]
struct Misrouted {
    account: String,
}

/// One record to a topic the broker does not have (librdkafka holds it
/// until `message.timeout.ms`) does not hold up the marking of the
/// healthy records of the same batch: they are marked published while it
/// is still in flight, and only its own key waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_to_a_missing_topic_does_not_hold_up_the_rest_of_its_batch() {
    let (_guard, db) = TempDb::open().await;
    let store = SeaOrmStore::new(db.clone());
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("e2e.accounts", 1, 1).unwrap();
    let mut events: Vec<Box<dyn OutboxEvent>> = vec![Box::new(Misrouted {
        account: "lost".to_owned(),
    })];
    events.extend((0..20).map(|seq| event(seq % 5, seq)));
    outbox_sea_orm::enqueue_all(&db, &events).await.unwrap();

    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("allow.auto.create.topics", "false")
        .set("message.timeout.ms", "6000");
    let relay = std::sync::Arc::new(
        Relay::builder(store.clone(), KafkaSink::new(config).unwrap())
            .batch_size(100)
            .build()
            .unwrap(),
    );
    let started = Instant::now();
    let batch = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run_once().await }
    });
    // The 20 healthy records settled (deleted); the misrouted one waits.
    while store.stats(chrono::Utc::now()).await.unwrap().pending > 1 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the healthy records were not marked while the missing topic's record waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let marked_after = started.elapsed();
    assert!(
        !batch.is_finished(),
        "the missing topic's record is still in flight"
    );
    let report = batch.await.unwrap().unwrap();
    eprintln!(
        "healthy records marked after {marked_after:?}; the batch ended after {:?}: {report:?}",
        started.elapsed()
    );
    assert_eq!(
        (report.claimed, report.published, report.retried),
        (21, 20, 1)
    );
    assert_eq!(store.stats(chrono::Utc::now()).await.unwrap().dead, 0);
}
