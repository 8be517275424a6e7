//! Bad input gets a clear error: an unknown URL scheme, a server that is
//! down, a database without the outbox table.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::{Duration, Instant};

use common::{Backend, TestDb};
use outbox_engine::{ClaimRequest, OutboxEvent, OutboxStore};
use outbox_sea_orm::{Error, SeaOrmStore, enqueue};
use sea_orm::{ConnectOptions, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order_id)]
struct OrderPlaced {
    order_id: u64,
}

/// The whole chain, as an error report prints it.
fn report(error: &(dyn std::error::Error + 'static)) -> String {
    outbox_engine::error_chain(error)
}

#[tokio::test]
async fn an_unknown_url_scheme_names_the_supported_ones() {
    let error = SeaOrmStore::connect("redis://127.0.0.1:6379/0")
        .await
        .unwrap_err();
    assert!(
        matches!(&error, Error::UnsupportedScheme { scheme } if scheme == "redis"),
        "{error:?}"
    );
    assert!(!error.is_retriable());
    let message = error.to_string();
    for word in ["`redis`", "postgres://", "mysql://", "sqlite://", "enabled"] {
        assert!(message.contains(word), "{word} missing from: {message}");
    }
}

async fn connect_to_a_closed_port(url: &str) {
    let started = Instant::now();
    let mut options = ConnectOptions::new(url);
    options.connect_timeout(Duration::from_secs(2));
    let error = SeaOrmStore::connect(options).await.unwrap_err();
    eprintln!(
        "{url} failed after {:?}: {}",
        started.elapsed(),
        report(&error)
    );
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(
        error.is_retriable(),
        "a server that is down may come back: {error:?}"
    );
    let message = report(&error);
    assert!(
        message.contains("cannot connect") && message.contains("127.0.0.1:1"),
        "{message}"
    );
    assert!(
        !message.contains("secret"),
        "the password leaked: {message}"
    );
}

#[tokio::test]
async fn a_postgres_server_that_is_down_is_a_retriable_error() {
    connect_to_a_closed_port("postgres://postgres:secret@127.0.0.1:1/x").await;
}

#[tokio::test]
async fn a_mysql_server_that_is_down_is_a_retriable_error() {
    connect_to_a_closed_port("mysql://root:secret@127.0.0.1:1/x").await;
}

#[tokio::test]
async fn a_database_that_does_not_exist_is_a_permanent_error() {
    // Reached the server, which refused: retrying will not help.
    let Some(_server) = TestDb::without_outbox(Backend::Postgres).await else {
        return;
    };
    let url = common::postgres_url();
    let (base, _) = url.rsplit_once('/').unwrap();
    let error = SeaOrmStore::connect(format!("{base}/no_such_database_here"))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(!error.is_retriable(), "{error:?}");
    assert!(
        report(&error).contains("no_such_database_here"),
        "{}",
        report(&error)
    );
}

#[tokio::test]
async fn a_sqlite_file_that_cannot_be_opened_is_a_permanent_error() {
    let error = SeaOrmStore::connect("sqlite:///no/such/dir/outbox.db")
        .await
        .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(!error.is_retriable(), "{error:?}");
}

backend_tests!(a_missing_table_names_the_database_and_the_migration);

async fn a_missing_table_names_the_database_and_the_migration(db: TestDb) {
    // The fixture migrated; this test wants the table gone.
    db.exec("DROP TABLE outbox").await;
    let expect_missing = |error: &Error, database: Option<&str>| {
        assert!(matches!(error, Error::MissingTable { .. }), "{error:?}");
        assert!(!error.is_retriable());
        let message = error.to_string();
        eprintln!("{message}");
        assert!(
            message.contains("the outbox table does not exist in"),
            "{message}"
        );
        assert!(message.contains("run the outbox migration"), "{message}");
        assert!(message.contains("outbox_migration::Migrator"), "{message}");
        if let Some(database) = database {
            assert!(
                message.contains(database),
                "{database} missing from: {message}"
            );
        }
    };
    let name = match db.backend {
        Backend::Postgres | Backend::MySql => Some(db.url.rsplit('/').next().unwrap().to_owned()),
        Backend::SqliteFile => Some("outbox.db".to_owned()),
        Backend::SqliteMemory => Some("in-memory".to_owned()),
    };

    // At start-up.
    if db.backend != Backend::SqliteMemory {
        let error = SeaOrmStore::connect(db.url.clone()).await.unwrap_err();
        expect_missing(&error, name.as_deref());
    }
    let store = db.store();
    expect_missing(&store.check().await.unwrap_err(), name.as_deref());

    // On first use, through the relay's trait.
    let request = ClaimRequest {
        owner: "relay".to_owned(),
        limit: 10,
        lease: Duration::from_secs(30),
        dead_holds_key: true,
    };
    let error = store.claim(&request).await.unwrap_err();
    assert!(!error.is_retriable());
    assert!(
        error.to_string().contains("run the outbox migration"),
        "{error}"
    );

    // When enqueueing on the pool, and in a transaction.
    let event = OrderPlaced { order_id: 1 };
    expect_missing(&enqueue(&db.db, &event).await.unwrap_err(), name.as_deref());
    let txn = db.db.begin().await.unwrap();
    expect_missing(&enqueue(&txn, &event).await.unwrap_err(), None);
}
