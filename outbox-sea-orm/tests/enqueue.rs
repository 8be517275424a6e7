//! `enqueue` inside the caller's transaction: atomic with the business
//! write, and bad events rejected before anything is written.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDb};
use outbox_engine::{ClaimRequest, OutboxAdmin, OutboxEvent, OutboxStore};
use outbox_sea_orm::{Error, enqueue, enqueue_all};
use sea_orm::sea_query::{Alias, Query};
use sea_orm::{ConnectionTrait, DatabaseTransaction, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id)]
struct OrderPlaced {
    order_id: u64,
    total_cents: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id)]
struct OrderShipped {
    order_id: u64,
}

/// Serializes to no JSON: map keys must be strings.
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "grids")]
struct GridPainted {
    cells: HashMap<(i32, i32), String>,
}

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "names", key = name)]
struct NameChosen {
    name: String,
}

backend_tests!(
    commit_makes_the_order_and_its_event_visible,
    rollback_leaves_neither,
    an_event_that_does_not_serialize_fails_before_the_database,
    a_key_longer_than_the_column_is_rejected_before_the_insert,
    enqueue_all_takes_every_shape_of_event_list,
    thousands_of_records_are_written_in_a_few_inserts,
);

async fn create_orders(db: &TestDb) {
    db.exec("CREATE TABLE orders (id BIGINT NOT NULL PRIMARY KEY, total_cents BIGINT NOT NULL)")
        .await;
}

async fn insert_order(txn: &DatabaseTransaction, id: u64, total_cents: i64) {
    let insert = Query::insert()
        .into_table(Alias::new("orders"))
        .columns([Alias::new("id"), Alias::new("total_cents")])
        .values_panic([(id as i64).into(), total_cents.into()])
        .to_owned();
    txn.execute(&insert).await.expect("insert order");
}

async fn count(db: &impl ConnectionTrait, table: &str) -> i64 {
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .expect("count")
        .expect("a row");
    row.try_get("", "n").expect("a count")
}

fn claim_all(owner: &str) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit: 1_000,
        lease: Duration::from_secs(30),
        dead_holds_key: true,
    }
}

async fn commit_makes_the_order_and_its_event_visible(db: TestDb) {
    create_orders(&db).await;
    let event = OrderPlaced {
        order_id: 7,
        total_cents: 990,
    };

    let txn = db.db.begin().await.unwrap();
    insert_order(&txn, 7, 990).await;
    let event_id = enqueue(&txn, &event).await.unwrap();
    // Not visible outside the transaction before the commit (in-memory
    // SQLite has one connection, which the transaction holds).
    if db.backend != Backend::SqliteMemory {
        assert_eq!(db.store().stats(Utc::now()).await.unwrap().pending, 0);
    }
    txn.commit().await.unwrap();

    assert_eq!(count(&db.db, "orders").await, 1);
    let claimed = db.store().claim(&claim_all("relay")).await.unwrap();
    assert_eq!(claimed.len(), 1);
    let record = &claimed[0];
    assert_eq!(record.event_id, event_id);
    assert_eq!(record.topic, "orders");
    assert_eq!(record.key.as_deref(), Some("7"));
    assert_eq!(record.event_type, "OrderPlaced");
    assert_eq!(
        record.payload, r#"{"order_id":7,"total_cents":990}"#,
        "the exact JSON text"
    );
    assert_eq!(record.decode_as::<OrderPlaced>().unwrap(), Some(event));
}

async fn rollback_leaves_neither(db: TestDb) {
    create_orders(&db).await;
    let txn = db.db.begin().await.unwrap();
    insert_order(&txn, 8, 100).await;
    enqueue(
        &txn,
        &OrderPlaced {
            order_id: 8,
            total_cents: 100,
        },
    )
    .await
    .unwrap();
    txn.rollback().await.unwrap();

    assert_eq!(count(&db.db, "orders").await, 0);
    assert_eq!(count(&db.db, "outbox").await, 0);
    assert!(
        db.store()
            .claim(&claim_all("relay"))
            .await
            .unwrap()
            .is_empty()
    );
}

async fn an_event_that_does_not_serialize_fails_before_the_database(db: TestDb) {
    create_orders(&db).await;
    let bad = GridPainted {
        cells: HashMap::from([((1, 2), "red".to_owned())]),
    };

    let txn = db.db.begin().await.unwrap();
    insert_order(&txn, 9, 5).await;
    let error = enqueue(&txn, &bad).await.unwrap_err();
    assert!(matches!(error, Error::Event(_)), "{error:?}");
    assert!(!error.is_retriable());
    let message = error.to_string();
    assert!(
        message.contains("GridPainted") && message.contains("JSON"),
        "{message}"
    );
    // Nothing reached the database: the transaction is still healthy (on
    // PostgreSQL a failed statement would have aborted it).
    assert_eq!(count(&txn, "orders").await, 1);
    // The caller's `?` drops the transaction: nothing is written.
    drop(txn);

    let error = enqueue_all(
        &db.db,
        [
            &OrderPlaced {
                order_id: 1,
                total_cents: 1,
            } as &dyn OutboxEvent,
            &bad,
        ],
    )
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Event(_)), "{error:?}");
    assert_eq!(count(&db.db, "orders").await, 0);
    assert_eq!(
        count(&db.db, "outbox").await,
        0,
        "no event of the failed list was written"
    );
}

async fn a_key_longer_than_the_column_is_rejected_before_the_insert(db: TestDb) {
    let long = NameChosen {
        name: "é".repeat(256),
    };
    let txn = db.db.begin().await.unwrap();
    let error = enqueue(&txn, &long).await.unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, Error::InvalidEvent { .. }), "{error:?}");
    assert!(
        message.contains("NameChosen") && message.contains("key"),
        "{message}"
    );
    assert!(
        message.contains("256") && message.contains("255"),
        "{message}"
    );
    // The transaction saw no failed statement.
    assert_eq!(count(&txn, "outbox").await, 0);
    // 255 characters (510 bytes of UTF-8) fit.
    enqueue(
        &txn,
        &NameChosen {
            name: "é".repeat(255),
        },
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    assert_eq!(count(&db.db, "outbox").await, 1);
}

async fn enqueue_all_takes_every_shape_of_event_list(db: TestDb) {
    let placed = [
        OrderPlaced {
            order_id: 1,
            total_cents: 10,
        },
        OrderPlaced {
            order_id: 2,
            total_cents: 20,
        },
    ];
    let shipped = OrderShipped { order_id: 1 };
    let boxed: Vec<Box<dyn OutboxEvent>> =
        vec![Box::new(placed[0].clone()), Box::new(shipped.clone())];

    let txn = db.db.begin().await.unwrap();
    let mut ids = Vec::new();
    ids.extend(enqueue_all(&txn, &placed).await.unwrap());
    ids.extend(enqueue_all(&txn, [&placed[0], &placed[1]]).await.unwrap());
    ids.extend(enqueue_all(&txn, &[&placed[0], &placed[1]]).await.unwrap());
    ids.extend(
        enqueue_all(&txn, [&placed[0] as &dyn OutboxEvent, &shipped])
            .await
            .unwrap(),
    );
    ids.extend(enqueue_all(&txn, &boxed).await.unwrap());
    ids.extend(enqueue_all(&txn, boxed).await.unwrap());
    ids.extend(enqueue_all(&txn, placed.to_vec()).await.unwrap());
    ids.extend(enqueue_all(&txn, Vec::<OrderPlaced>::new()).await.unwrap());
    txn.commit().await.unwrap();
    assert_eq!(ids.len(), 14);

    let claimed = db.store().claim(&claim_all("relay")).await.unwrap();
    let claimed_ids: Vec<_> = claimed.iter().map(|r| r.event_id).collect();
    assert_eq!(claimed_ids, ids, "every event, in enqueue order");
    let types: Vec<_> = claimed.iter().map(|r| r.event_type.as_str()).collect();
    assert_eq!(
        &types[6..10],
        ["OrderPlaced", "OrderShipped", "OrderPlaced", "OrderShipped"]
    );
}

async fn thousands_of_records_are_written_in_a_few_inserts(db: TestDb) {
    // More rows than one insert takes (2,000), through the store's own
    // enqueue (one transaction) and through enqueue_records on the pool.
    let records: Vec<_> = (0..4_500)
        .map(|n| outbox_engine::testkit::record(Some(&format!("k{}", n % 7)), n))
        .collect();
    db.store().enqueue(&records).await.unwrap();
    outbox_sea_orm::enqueue_records(
        &db.db,
        &records[..10]
            .iter()
            .map(|r| {
                let mut copy = r.clone();
                copy.event_id = uuid::Uuid::now_v7();
                copy
            })
            .collect::<Vec<_>>(),
    )
    .await
    .unwrap();
    assert_eq!(count(&db.db, "outbox").await, 4_510);
    // Event ids are unique: a record written twice is refused, and
    // nothing of its statement is written.
    let error = outbox_sea_orm::enqueue_records(&db.db, &records[..3])
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Database { .. }), "{error:?}");
    assert!(!error.is_retriable());
    assert_eq!(count(&db.db, "outbox").await, 4_510);
}
