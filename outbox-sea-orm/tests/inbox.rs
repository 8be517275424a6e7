//! The inbox: an event is new once per consumer, a rolled-back handling
//! leaves it new, and old entries are purged.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use chrono::{TimeDelta, Utc};
use common::{Backend, TestDb};
use outbox_migration::{MigrationTrait, SchemaManager};
use outbox_sea_orm::{Error, inbox};
use sea_orm::{DbErr, TransactionTrait};
use uuid::Uuid;

async fn inbox_semantics(db: TestDb) {
    outbox_migration::Inbox
        .up(&SchemaManager::new(&db.db))
        .await
        .unwrap();
    let event = Uuid::now_v7();

    // Rolled back: still new afterwards.
    let txn = db.db.begin().await.unwrap();
    assert!(inbox::record(&txn, "billing", event).await.unwrap());
    txn.rollback().await.unwrap();

    let txn = db.db.begin().await.unwrap();
    assert!(inbox::record(&txn, "billing", event).await.unwrap());
    assert!(!inbox::record(&txn, "billing", event).await.unwrap());
    txn.commit().await.unwrap();
    assert!(!inbox::record(&db.db, "billing", event).await.unwrap());
    // Another consumer handles it on its own.
    assert!(inbox::record(&db.db, "shipping", event).await.unwrap());

    // `handle` runs the handler the first time only; its error rolls back
    // the inbox entry too.
    let other = Uuid::now_v7();
    let failed = inbox::handle(&db.db, "billing", other, |_txn| {
        Box::pin(async { Err::<(), _>(DbErr::Custom("handler failed".into())) })
    })
    .await;
    assert!(failed.is_err());
    let ran = inbox::handle(&db.db, "billing", other, |_txn| {
        Box::pin(async { Ok::<_, DbErr>(7) })
    })
    .await
    .unwrap();
    assert_eq!(ran, Some(7));
    let again = inbox::handle(&db.db, "billing", other, |_txn| {
        Box::pin(async { Ok::<_, DbErr>(8) })
    })
    .await
    .unwrap();
    assert_eq!(again, None);

    match inbox::record(&db.db, "", event).await {
        Err(Error::InvalidArgument(message)) => assert!(message.contains("consumer name")),
        other => panic!("{other:?}"),
    }

    // Purge: nothing recorded an hour ago; everything before now.
    let hour_ago = Utc::now() - TimeDelta::hours(1);
    assert_eq!(inbox::purge(&db.db, hour_ago, 1).await.unwrap(), 0);
    let later = Utc::now() + TimeDelta::seconds(1);
    assert_eq!(inbox::purge(&db.db, later, 1).await.unwrap(), 3);
    assert!(inbox::record(&db.db, "billing", event).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_on_postgres() {
    if let Some(db) = TestDb::new(Backend::Postgres).await {
        inbox_semantics(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_on_mariadb() {
    if let Some(db) = TestDb::new(Backend::MySql).await {
        inbox_semantics(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_on_sqlite() {
    if let Some(db) = TestDb::new(Backend::SqliteFile).await {
        inbox_semantics(db).await;
    }
}
