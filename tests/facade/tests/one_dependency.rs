//! The README's setup works with the one `outbox` dependency: enqueue in a
//! SeaORM transaction, relay to Kafka, decode what arrives.

use std::time::{Duration, Instant};

use outbox::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use outbox::kafka::rdkafka::mocking::MockCluster;
use outbox::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use outbox::kafka::{KafkaSink, decode_message_as};
use outbox::migration::{Migrator, MigratorTrait};
use outbox::sea_orm::{SeaOrmStore, enqueue};
use outbox::{Relay, TypedEvent};
use outbox_facade_user::OrderPlaced;
use sea_orm::{Database, TransactionTrait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_uses_the_outbox_through_one_crate() {
    let db = Database::connect("sqlite::memory:").await.unwrap();
    Migrator::up(&db, None).await.unwrap();
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("orders", 1, 1).unwrap();

    let placed = OrderPlaced {
        order_id: 7,
        total_cents: 1250,
    };
    let txn = db.begin().await.unwrap();
    enqueue(&txn, &placed).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(OrderPlaced::EVENT_TYPE, "OrderPlaced");

    let sink = KafkaSink::from_brokers(&cluster.bootstrap_servers()).unwrap();
    let relay = Relay::builder(SeaOrmStore::new(db), sink).build().unwrap();
    assert_eq!(relay.run_once().await.unwrap().published, 1);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "facade")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("orders", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert!(Instant::now() < deadline, "nothing arrived");
        if let Some(message) = consumer.poll(Duration::from_millis(100)) {
            let (_, event) = decode_message_as::<OrderPlaced, _>(&message.unwrap())
                .unwrap()
                .expect("an OrderPlaced");
            assert_eq!(event, placed);
            break;
        }
    }
}
