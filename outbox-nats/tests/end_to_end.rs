//! End to end: events enqueued in SQLite transactions, the relay, the NATS
//! sink, and a JetStream consumer reading them back.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::TestNats;
use migration::{Migrator, MigratorTrait};
use outbox_engine::{OutboxEvent, Relay};
use outbox_nats::NatsSink;
use outbox_sea_orm::SeaOrmStore;
use sea_orm::{Database, TransactionTrait};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order, event_type = "e2e.Step")]
struct Step {
    order: String,
    n: u32,
}

const ORDERS: u32 = 6;
const STEPS: u32 = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_committed_event_arrives_once_in_per_key_order() {
    let Some(nats) = TestNats::connect("every_committed_event_arrives_once_in_per_key_order").await
    else {
        return;
    };
    // A stream of this run's own: subjects under a fresh prefix.
    let run = Uuid::now_v7().simple().to_string();
    let prefix = format!("e2e-{run}.");
    let stream = format!("OUTBOX_E2E_{run}");
    nats.js
        .create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{prefix}>")],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            max_age: Duration::from_secs(600),
            ..Default::default()
        })
        .await
        .expect("stream");

    let dir = tempfile::Builder::new()
        .prefix(&format!("outbox-nats-e2e-{run}-"))
        .tempdir()
        .unwrap();
    let url = format!(
        "sqlite://{}?mode=rwc",
        dir.path().join("outbox.db").display()
    );
    let db = Database::connect(&url).await.expect("SQLite");
    Migrator::up(&db, None).await.expect("migrations");

    // Steps of every order, a transaction each, interleaved; every third
    // transaction of order 0 rolls back.
    let mut committed: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for n in 0..STEPS {
        for order in 0..ORDERS {
            let order = format!("order {order}.{}", order * 7);
            let txn = db.begin().await.unwrap();
            outbox_sea_orm::enqueue(
                &txn,
                &Step {
                    order: order.clone(),
                    n,
                },
            )
            .await
            .unwrap();
            if order.starts_with("order 0.") && n % 3 == 2 {
                txn.rollback().await.unwrap();
            } else {
                txn.commit().await.unwrap();
                committed.entry(order).or_default().push(n);
            }
        }
    }
    let total: usize = committed.values().map(Vec::len).sum();

    let sink = NatsSink::builder(nats.js.clone())
        .subject_prefix(prefix.clone())
        .build()
        .unwrap();
    let relay = Relay::builder(SeaOrmStore::new(db.clone()), sink)
        .batch_size(10)
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut published = 0;
    while published < total {
        assert!(
            Instant::now() < deadline,
            "{published} of {total} published"
        );
        let report = relay.run_once().await.expect("relay");
        assert_eq!((report.dead, report.retried), (0, 0), "{report:?}");
        published += report.published;
    }

    let messages = nats.read(&stream).await;
    assert_eq!(messages.len(), total, "each committed event once");
    let mut arrived: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for message in &messages {
        let key = common::key(message).expect("a keyed event");
        assert_eq!(
            message.subject.as_str(),
            format!("{prefix}orders.{}", outbox_nats::key_token(&key))
        );
        let step: Step = serde_json::from_slice(&message.payload).expect("a Step");
        assert_eq!(step.order, key);
        arrived.entry(key).or_default().push(step.n);
    }
    assert_eq!(
        arrived, committed,
        "per-key commit order, nothing rolled back"
    );

    db.close().await.unwrap();
    drop(dir);
}
