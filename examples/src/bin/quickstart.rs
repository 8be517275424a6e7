//! The quickstart: an order service in miniature, written against the
//! one `outbox` crate as a service would be.
//!
//! It places orders in database transactions, each order writing its
//! events to the outbox in the same transaction (some orders are rolled
//! back on purpose), runs the relay (`Relay::run`) until every committed
//! event is published, reads the topic back and checks that every
//! committed event arrived, once, in order per order, and that no
//! rolled-back event did.
//!
//! ```text
//! cargo run -p outbox-examples --bin quickstart
//! DATABASE_URL=postgres://postgres@127.0.0.1/test KAFKA_BROKERS=127.0.0.1:9092 cargo run -p outbox-examples --bin quickstart
//! ```
//!
//! By default it needs no server: a SQLite file in a temp directory and
//! librdkafka's in-process mock cluster. It exits non-zero when anything it
//! promised did not happen.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::error::Error;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use outbox::kafka::rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use outbox::kafka::rdkafka::client::DefaultClientContext;
use outbox::kafka::rdkafka::consumer::{BaseConsumer, Consumer};
use outbox::kafka::rdkafka::mocking::MockCluster;
use outbox::kafka::rdkafka::producer::DefaultProducerContext;
use outbox::kafka::rdkafka::{ClientConfig, Offset, TopicPartitionList};
use outbox::kafka::{DecodedEvent, KafkaSink, decode_message};
use outbox::sea_orm::{SeaOrmStore, enqueue_all};
use outbox::{OutboxAdmin, OutboxEvent, Relay};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, Schema, Set, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

type BoxError = Box<dyn Error + Send + Sync>;

const ORDERS: usize = 12;
const PARTITIONS: i32 = 3;

/// The business table. (SeaORM's derives want `pub` items.)
#[allow(unreachable_pub)]
mod order {
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
    #[sea_orm(table_name = "quickstart_orders")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub id: Uuid,
        pub customer: String,
        pub total_cents: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id)]
struct OrderPlaced {
    order_id: Uuid,
    customer: String,
    total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id)]
struct OrderPaid {
    order_id: Uuid,
    amount_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id, event_type = "order.shipped", version = 2)]
struct OrderShipped {
    order_id: Uuid,
    carrier: String,
}

/// One order's committed events, by key, in enqueue order.
type Expected = BTreeMap<String, Vec<Uuid>>;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,librdkafka=off,rdkafka=off".into()),
        )
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\nFAILED: {error}");
            let mut source = error.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    let run_id = Uuid::now_v7().simple().to_string()[20..].to_owned();
    let database = Db::open(&run_id).await?;
    let kafka = Kafka::start()?;
    let topic = format!("quickstart-{run_id}.orders");
    kafka.create_topic(&topic).await?;
    println!("outbox quickstart");
    println!("  database: {}", database.description);
    println!("  kafka:    {}", kafka.description);

    // 1. The outbox tables (recorded apart from the service's own
    // migrations) and the business table.
    let db = &database.connection;
    outbox::migration::migrate(db, false).await?;
    let schema = Schema::new(db.get_database_backend());
    db.execute(
        schema
            .create_table_from_entity(order::Entity)
            .if_not_exists(),
    )
    .await?;

    // 2. Orders, each in a transaction with its events.
    let mut expected = Expected::new();
    let mut rolled_back = HashSet::new();
    for n in 0..ORDERS {
        let (key, ids, committed) = place_order(db, n).await?;
        if committed {
            expected.insert(key, ids);
        } else {
            rolled_back.extend(ids);
        }
    }
    let committed_events: usize = expected.values().map(Vec::len).sum();
    println!(
        "\nplaced {ORDERS} orders: {} committed with {committed_events} events, {} rolled back \
         on purpose (payment declined) with their {} events",
        expected.len(),
        ORDERS - expected.len(),
        rolled_back.len()
    );

    // 3. The relay, run until every committed event is published: its
    // shutdown future resolves once nothing is pending.
    let store = SeaOrmStore::new(db.clone());
    let sink = KafkaSink::builder(kafka.config())
        .topic_prefix(format!("quickstart-{run_id}."))
        .build()?;
    let relay = Relay::builder(store.clone(), sink).batch_size(16).build()?;
    let started = Instant::now();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async {
        stopped.await.ok();
    };
    let watch = async {
        let drained = drained(&store).await;
        let _ = stop.send(());
        drained
    };
    let ((), drained) = tokio::join!(relay.run(shutdown), watch);
    drained?;
    let totals = relay.status().totals;
    println!(
        "relay: {} published in {:.0?} ({} retried, {} dead)",
        totals.published,
        started.elapsed(),
        totals.retried,
        totals.dead
    );

    // 4. Read the topic back.
    let consumed = kafka.consume(&topic, &expected, &rolled_back)?;
    check(&expected, &rolled_back, &consumed)?;
    println!(
        "consumed {} messages from `{topic}` across {PARTITIONS} partitions",
        consumed.len()
    );
    println!("a few decoded events:");
    for decoded in consumed.iter().take(4) {
        println!(
            "  {} v{} key={} {:?}",
            decoded.event_type,
            decoded.schema_version,
            decoded.key.as_deref().unwrap_or("-"),
            decoded.event
        );
    }
    println!(
        "\nOK: all {committed_events} committed events reached Kafka once, in order per \
         order; none of the {} rolled-back events did.",
        rolled_back.len()
    );
    database.close().await;
    Ok(())
}

/// Places order number `n`: the order row and its events in one transaction,
/// rolled back for every fourth order. Returns the key, the event ids, and
/// whether it committed.
async fn place_order(
    db: &DatabaseConnection,
    n: usize,
) -> Result<(String, Vec<Uuid>, bool), BoxError> {
    let order_id = Uuid::now_v7();
    let total_cents = 1_000 + 250 * n as i64;
    let txn = db.begin().await?;
    order::ActiveModel {
        id: Set(order_id),
        customer: Set(format!("customer-{}", n % 5)),
        total_cents: Set(total_cents),
    }
    .insert(&txn)
    .await?;
    let events: Vec<Box<dyn OutboxEvent>> = vec![
        Box::new(OrderPlaced {
            order_id,
            customer: format!("customer-{}", n % 5),
            total_cents,
        }),
        Box::new(OrderPaid {
            order_id,
            amount_cents: total_cents,
        }),
        Box::new(OrderShipped {
            order_id,
            carrier: ["post", "courier"][n % 2].to_owned(),
        }),
    ];
    let ids = enqueue_all(&txn, &events).await?;
    let committed = n % 4 != 3;
    if committed {
        txn.commit().await?;
    } else {
        txn.rollback().await?;
    }
    Ok((order_id.to_string(), ids, committed))
}

/// Waits until nothing is pending, for 60 s at most.
async fn drained(store: &SeaOrmStore) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let backlog = store.backlog(chrono::Utc::now()).await?;
        if backlog.pending == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("the outbox was not drained in 60 s: {backlog:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every committed event consumed exactly once, per key in enqueue order,
/// and no rolled-back event.
fn check(
    expected: &Expected,
    rolled_back: &HashSet<Uuid>,
    consumed: &[DecodedEvent],
) -> Result<(), BoxError> {
    let mut by_key: HashMap<&str, Vec<Uuid>> = HashMap::new();
    for decoded in consumed {
        if rolled_back.contains(&decoded.event_id) {
            return Err(format!("rolled-back event {} reached Kafka", decoded.event_id).into());
        }
        let key = decoded.key.as_deref().ok_or("a message without key")?;
        by_key.entry(key).or_default().push(decoded.event_id);
    }
    for (key, ids) in expected {
        let got = by_key.remove(key.as_str()).unwrap_or_default();
        if &got != ids {
            return Err(format!(
                "order {key}: expected events {ids:?} in this order, consumed {got:?}"
            )
            .into());
        }
    }
    if let Some((key, ids)) = by_key.into_iter().next() {
        return Err(format!("unexpected events {ids:?} of key {key}").into());
    }
    Ok(())
}

/// The database: `DATABASE_URL`, or a SQLite file in a temp directory.
struct Db {
    connection: DatabaseConnection,
    description: String,
    temp_dir: Option<std::path::PathBuf>,
}

impl Db {
    async fn open(run_id: &str) -> Result<Self, BoxError> {
        let (url, description, temp_dir) = match std::env::var("DATABASE_URL") {
            Ok(url) => (
                url.clone(),
                format!("DATABASE_URL ({})", scheme(&url)),
                None,
            ),
            Err(_) => {
                let dir = std::env::temp_dir().join(format!("outbox-quickstart-{run_id}"));
                std::fs::create_dir_all(&dir)?;
                let file = dir.join("quickstart.db");
                let url = format!("sqlite://{}?mode=rwc", file.display());
                (url, format!("SQLite file {}", file.display()), Some(dir))
            }
        };
        let connection = Database::connect(&url)
            .await
            .map_err(|error| format!("cannot connect to {description}: {error}"))?;
        Ok(Self {
            connection,
            description,
            temp_dir,
        })
    }

    async fn close(self) {
        let _ = self.connection.close().await;
        if let Some(dir) = self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn scheme(url: &str) -> &str {
    url.split("://").next().unwrap_or("?")
}

/// Kafka: `KAFKA_BROKERS`, or librdkafka's in-process mock cluster.
struct Kafka {
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    bootstrap: String,
    description: String,
}

impl Kafka {
    fn start() -> Result<Self, BoxError> {
        match std::env::var("KAFKA_BROKERS") {
            Ok(bootstrap) => Ok(Self {
                mock: None,
                description: format!("broker(s) {bootstrap} (KAFKA_BROKERS)"),
                bootstrap,
            }),
            Err(_) => {
                let mock = MockCluster::new(3)?;
                let bootstrap = mock.bootstrap_servers();
                Ok(Self {
                    mock: Some(mock),
                    description: format!("in-process mock cluster of 3 brokers at {bootstrap}"),
                    bootstrap,
                })
            }
        }
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        config
    }

    async fn create_topic(&self, topic: &str) -> Result<(), BoxError> {
        if let Some(mock) = &self.mock {
            mock.create_topic(topic, PARTITIONS, 1)?;
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = self.config().create()?;
        let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
        let new_topic = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1));
        for result in admin.create_topics([&new_topic], &options).await? {
            result.map_err(|(topic, code)| format!("cannot create topic {topic}: {code}"))?;
        }
        Ok(())
    }

    /// Reads `topic` from the beginning until every expected event id was
    /// seen (and a little longer, to catch duplicates and strays).
    fn consume(
        &self,
        topic: &str,
        expected: &Expected,
        rolled_back: &HashSet<Uuid>,
    ) -> Result<Vec<DecodedEvent>, BoxError> {
        let consumer: BaseConsumer = self
            .config()
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut partitions = TopicPartitionList::new();
        for partition in 0..PARTITIONS {
            partitions.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&partitions)?;
        let mut wanted: HashSet<Uuid> = expected.values().flatten().copied().collect();
        let total = wanted.len() + rolled_back.len();
        let mut consumed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut quiet_until = None;
        while Instant::now() < deadline && quiet_until.is_none_or(|until| Instant::now() < until) {
            let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                continue;
            };
            let decoded = decode_message(&message?)?;
            wanted.remove(&decoded.event_id);
            consumed.push(decoded);
            if wanted.is_empty() && quiet_until.is_none() {
                quiet_until = Some(Instant::now() + Duration::from_millis(500));
            }
            if consumed.len() > total {
                break;
            }
        }
        if !wanted.is_empty() {
            return Err(format!(
                "{} committed events never reached `{topic}` within 30 s",
                wanted.len()
            )
            .into());
        }
        Ok(consumed)
    }
}
