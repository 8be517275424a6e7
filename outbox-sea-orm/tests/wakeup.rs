//! `Outbox::transaction` wakes the relay after a commit, not after a
//! rollback; on PostgreSQL, `notify_on_commit` and `listen` carry the
//! wake-up to another connection pool (another process).

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDb};
use outbox_engine::{OutboxAdmin, OutboxEvent, Wakeup};
use outbox_sea_orm::{Outbox, SeaOrmStore, enqueue, listen};
use sea_orm::{DbErr, TransactionError};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = id)]
struct OrderPlaced {
    id: u64,
}

/// Whether `wakeup` is woken within `within`.
async fn woken(wakeup: &Wakeup, within: Duration) -> bool {
    tokio::time::timeout(within, wakeup.woken()).await.is_ok()
}

async fn pending(store: &SeaOrmStore) -> u64 {
    store.stats(Utc::now()).await.unwrap().pending
}

async fn commit_wakes_and_rollback_does_not(db: TestDb) {
    let outbox = Outbox::new(db.store());
    let wakeup = outbox.wakeup();

    let failed = outbox
        .transaction(|txn| {
            Box::pin(async move {
                enqueue(txn, &OrderPlaced { id: 1 }).await?;
                Err::<(), DbErr>(DbErr::Custom("the business change failed".into()))
            })
        })
        .await;
    assert!(
        matches!(failed, Err(TransactionError::Transaction(DbErr::Custom(ref m))) if m.contains("business")),
        "{failed:?}"
    );
    assert_eq!(pending(outbox.store()).await, 0, "rolled back");
    assert!(
        !woken(&wakeup, Duration::from_millis(200)).await,
        "a rollback woke the relay"
    );

    let id = outbox
        .transaction(|txn| {
            Box::pin(async move { Ok::<_, DbErr>(enqueue(txn, &OrderPlaced { id: 2 }).await?) })
        })
        .await
        .unwrap();
    assert!(!id.is_nil());
    assert_eq!(pending(outbox.store()).await, 1, "committed");
    assert!(
        woken(&wakeup, Duration::from_secs(5)).await,
        "the commit did not wake the relay"
    );
}

backend_tests!(commit_wakes_and_rollback_does_not);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_on_commit_wakes_a_listener_on_another_pool() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    // The relay's process: a pool of its own, listening.
    let relay_store = SeaOrmStore::connect(db.url.as_str()).await.unwrap();
    let relay_wakeup = Wakeup::new();
    let listening = listen(&relay_store, relay_wakeup.clone()).await.unwrap();

    let quiet = Outbox::new(db.store());
    quiet
        .transaction(|txn| {
            Box::pin(async move { Ok::<_, DbErr>(enqueue(txn, &OrderPlaced { id: 1 }).await?) })
        })
        .await
        .unwrap();
    assert!(
        !woken(&relay_wakeup, Duration::from_millis(300)).await,
        "woken without notify_on_commit"
    );

    let notifying = Outbox::new(db.store()).notify_on_commit(true);
    notifying
        .transaction(|txn| {
            Box::pin(async move { Ok::<_, DbErr>(enqueue(txn, &OrderPlaced { id: 2 }).await?) })
        })
        .await
        .unwrap();
    assert!(
        woken(&relay_wakeup, Duration::from_secs(5)).await,
        "the notification did not reach the other pool"
    );
    assert_eq!(pending(&relay_store).await, 2);
    listening.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_refuses_other_databases_and_says_why() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    let error = listen(&db.store(), Wakeup::new()).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("needs PostgreSQL") && message.contains("notify_on_commit off"),
        "{message}"
    );
}

/// An error type that is not `std::error::Error` (as `anyhow::Error` is
/// not) still rolls the transaction back and comes back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_error_type_rolls_back() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    let outbox = Outbox::new(db.store());
    let failed = outbox
        .transaction(|txn| {
            Box::pin(async move {
                enqueue(txn, &OrderPlaced { id: 1 })
                    .await
                    .map_err(|e| format!("enqueue: {e}"))?;
                Err::<(), String>("the business change failed".to_owned())
            })
        })
        .await;
    assert!(
        matches!(failed, Err(TransactionError::Transaction(ref m)) if m == "the business change failed"),
        "{failed:?}"
    );
    assert_eq!(pending(outbox.store()).await, 0, "rolled back");
}
