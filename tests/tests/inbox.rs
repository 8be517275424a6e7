//! The consumer's inbox: every message delivered twice, and a consumer
//! that crashes between its database commit and its offset commit; each
//! event is still handled exactly once, on PostgreSQL, MariaDB and SQLite.

#[path = "../../outbox-sea-orm/tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{Backend, TestDb};
use migration::{MigrationTrait, SchemaManager};
use outbox_engine::{NewRecord, OutboxEvent, OutboxRecord, Sink};
use outbox_rdkafka::rdkafka::consumer::{Consumer, StreamConsumer};
use outbox_rdkafka::rdkafka::mocking::MockCluster;
use outbox_rdkafka::rdkafka::{ClientConfig, Message};
use outbox_rdkafka::{Handled, KafkaSink, decode_message_as, handle_message};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbErr, Statement};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "inbox-steps", key = order)]
struct Step {
    order: String,
    n: u32,
}

const EVENTS: u32 = 40;
const PARTITIONS: i32 = 2;
const CONSUMER: &str = "inbox-test";

/// The handler: one row per handling, in the inbox's transaction.
async fn handle(db: &DatabaseConnection, event_id: uuid::Uuid, step: Step) -> Result<bool, DbErr> {
    let handled = outbox_sea_orm::inbox::handle(db, CONSUMER, event_id, move |txn| {
        Box::pin(async move {
            let backend = txn.get_database_backend();
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                match backend {
                    sea_orm::DbBackend::Postgres => {
                        "INSERT INTO handled (event_id, n) VALUES ($1, $2)"
                    }
                    _ => "INSERT INTO handled (event_id, n) VALUES (?, ?)",
                },
                [event_id.to_string().into(), i64::from(step.n).into()],
            ))
            .await?;
            Ok::<_, DbErr>(())
        })
    })
    .await
    .map_err(|error| DbErr::Custom(error.to_string()))?;
    Ok(handled.is_some())
}

fn consumer(brokers: &str, topic: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", format!("inbox-{topic}"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        // A crashed consumer leaves the group when its session runs out.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

async fn each_event_is_handled_once(db: TestDb) {
    migration::Inbox
        .up(&SchemaManager::new(&db.db))
        .await
        .unwrap();
    db.exec("CREATE TABLE handled (event_id VARCHAR(36) NOT NULL, n BIGINT NOT NULL)")
        .await;

    let cluster = MockCluster::new(1).unwrap();
    let topic = format!("inbox-{}", uuid::Uuid::now_v7().simple());
    cluster.create_topic(&topic, PARTITIONS, 1).unwrap();
    let brokers = cluster.bootstrap_servers();

    // Every event published twice, as a relay that crashed before marking
    // would.
    let records: Vec<OutboxRecord> = (0..EVENTS)
        .map(|n| {
            let mut record = NewRecord::from_event(&Step {
                order: format!("order-{}", n % 4),
                n,
            })
            .unwrap();
            record.topic = topic.clone();
            OutboxRecord::from_new(i64::from(n) + 1, record)
        })
        .collect();
    let sink = KafkaSink::from_brokers(&brokers).unwrap();
    for _ in 0..2 {
        let outcomes = sink.publish(&records).await;
        assert!(outcomes.iter().all(|o| o.is_delivered()), "{outcomes:?}");
    }
    let total = (EVENTS * 2) as usize;

    // The first consumer handles 30 messages, then handles one more in
    // the database and crashes before committing its offset.
    let first = consumer(&brokers, &topic);
    let mut consumed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the first consumer got stuck");
        let message = first.recv().await.unwrap();
        if consumed == 30 {
            let (event_id, step) = decode_message_as::<Step, _>(&message).unwrap().unwrap();
            handle(&db.db, event_id, step).await.unwrap();
            break;
        }
        let outcome = handle_message(&first, &message, |event_id, step: Step| {
            let db = db.db.clone();
            async move { handle(&db, event_id, step).await.map(|_| ()) }
        })
        .await
        .unwrap();
        assert!(matches!(outcome, Handled::Event(_)));
        consumed += 1;
    }
    drop(first);

    // A second consumer of the group starts at the first uncommitted
    // offset: the crashed message comes again, and every duplicate.
    let second = consumer(&brokers, &topic);
    let mut skipped = 0;
    let mut next: HashMap<i32, i64> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumed < total {
        assert!(
            Instant::now() < deadline,
            "consumed {consumed} of {total} messages"
        );
        let message = second.recv().await.unwrap();
        next.insert(message.partition(), message.offset() + 1);
        let mut first_time = false;
        handle_message(&second, &message, |event_id, step: Step| {
            let db = db.db.clone();
            let first_time = &mut first_time;
            async move {
                *first_time = handle(&db, event_id, step).await?;
                Ok::<_, DbErr>(())
            }
        })
        .await
        .unwrap();
        if !first_time {
            skipped += 1;
        }
        consumed += 1;
    }
    let redelivered = total - 30;

    let rows = db
        .db
        .query_all_raw(Statement::from_string(
            db.db_backend(),
            "SELECT event_id, COUNT(*) AS times FROM handled GROUP BY event_id",
        ))
        .await
        .unwrap();
    let mut handled: HashMap<String, i64> = HashMap::new();
    for row in rows {
        handled.insert(
            row.try_get("", "event_id").unwrap(),
            row.try_get("", "times").unwrap(),
        );
    }
    assert_eq!(handled.len(), EVENTS as usize, "every event handled");
    assert!(
        handled.values().all(|times| *times == 1),
        "an event was handled twice: {handled:?}"
    );
    assert!(skipped >= EVENTS as usize + 1 - 30, "skipped {skipped}");
    println!(
        "{:?}: {total} messages ({EVENTS} events, each twice), one crash between the database \
         commit and the offset commit; {redelivered} read by the second consumer, {skipped} \
         skipped by the inbox; every event handled once",
        db.backend
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_handled_once_on_postgres() {
    if let Some(db) = TestDb::new(Backend::Postgres).await {
        each_event_is_handled_once(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_handled_once_on_mariadb() {
    if let Some(db) = TestDb::new(Backend::MySql).await {
        each_event_is_handled_once(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_is_handled_once_on_sqlite() {
    if let Some(db) = TestDb::new(Backend::SqliteFile).await {
        each_event_is_handled_once(db).await;
    }
}
