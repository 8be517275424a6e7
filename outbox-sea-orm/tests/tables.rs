//! Tables a user names: two outboxes in one database, the default one and
//! one on tables of other names (a prefix, and a schema on PostgreSQL),
//! stay apart: each writer's events reach only its own relay, each store
//! counts, lists, purges and tidies only its own rows, each inbox records
//! apart; and names a database cannot take are refused with the reason.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDb, other_names};
use outbox_engine::testkit::record;
use outbox_engine::{ClaimRequest, DeadFilter, OutboxAdmin, OutboxEvent, OutboxStore};
use outbox_sea_orm::{Outbox, SeaOrmStore, Tables, inbox};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "invoices", key = invoice_id)]
struct InvoiceIssued {
    invoice_id: u64,
}

fn request(owner: &str) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit: 100,
        lease: Duration::from_secs(30),
        dead_holds_key: true,
    }
}

/// Rows of `table` (written as SQL, schema-qualified where it has one).
async fn rows(db: &TestDb, table: &str) -> i64 {
    let row = db
        .db
        .query_one_raw(Statement::from_string(
            db.db_backend(),
            format!("SELECT COUNT(*) AS n FROM {table}"),
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "n").unwrap()
}

async fn two_outboxes_stay_apart(backend: Backend) {
    let named = other_names(backend);
    let Some(db) = TestDb::with_tables(backend, &named).await else {
        return;
    };
    outbox_migration::migrate_tables(&db.db, &Tables::default(), true)
        .await
        .unwrap();
    let again = outbox_migration::migrate_tables(&db.db, &named, true)
        .await
        .unwrap();
    assert!(again.applied.is_empty(), "{again:?}");
    // Both keep a published history: the purge below is one of the things
    // that must stay apart.
    let plain = SeaOrmStore::new(db.db.clone()).keep_published();
    let billing = db.store().keep_published();
    assert_eq!(billing.tables(), &named);
    billing.check().await.unwrap();
    plain.check().await.unwrap();

    // Writers: the same key in both, through each outbox's own writer.
    plain
        .enqueue(&[record(Some("k"), 1), record(Some("k"), 2), record(None, 3)])
        .await
        .unwrap();
    let writer = Outbox::new(billing.clone());
    let txn = db.db.begin().await.unwrap();
    writer
        .enqueue(&txn, &InvoiceIssued { invoice_id: 7 })
        .await
        .unwrap();
    writer
        .enqueue_all(
            &txn,
            [
                InvoiceIssued { invoice_id: 7 },
                InvoiceIssued { invoice_id: 8 },
            ],
        )
        .await
        .unwrap();
    txn.commit().await.unwrap();

    let backend_sql = db.db_backend();
    let outbox_table = named.qualified(backend_sql, named.outbox());
    assert_eq!(rows(&db, &outbox_table).await, 3);
    assert_eq!(rows(&db, "outbox").await, 3);

    // Relays: each claims its own records only, in its key's order.
    let mine = billing.claim(&request("billing")).await.unwrap();
    let topics: Vec<&str> = mine.iter().map(|r| r.topic.as_str()).collect();
    assert_eq!(topics, ["invoices"; 3], "{mine:?}");
    let keys: Vec<Option<&str>> = mine.iter().map(|r| r.key.as_deref()).collect();
    assert_eq!(keys, [Some("7"), Some("7"), Some("8")]);
    let theirs = plain.claim(&request("plain")).await.unwrap();
    assert_eq!(theirs.len(), 3, "{theirs:?}");
    assert!(theirs.iter().all(|r| r.topic != "invoices"), "{theirs:?}");
    let ids: Vec<i64> = mine.iter().map(|r| r.id).collect();
    assert_eq!(billing.mark_published("billing", &ids).await.unwrap(), 3);
    // The other outbox's lease is not this one's to settle.
    let theirs_ids: Vec<i64> = theirs.iter().map(|r| r.id).collect();
    assert_eq!(
        billing.mark_published("plain", &theirs_ids).await.unwrap(),
        0
    );

    let now = Utc::now() + chrono::TimeDelta::seconds(1);
    let billing_stats = billing.stats(now).await.unwrap();
    let plain_stats = plain.stats(now).await.unwrap();
    assert_eq!(
        (billing_stats.published, billing_stats.pending),
        (3, 0),
        "{billing_stats:?}"
    );
    assert_eq!(
        (
            plain_stats.published,
            plain_stats.pending,
            plain_stats.leased
        ),
        (0, 3, 3),
        "{plain_stats:?}"
    );
    assert!(
        billing
            .list_dead(&DeadFilter::all(), None, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // Housekeeping: a purge and a tidy of one leave the other's rows.
    billing.tidy(100).await.unwrap();
    assert_eq!(billing.purge_published_batch(now, 100).await.unwrap(), 3);
    assert_eq!(rows(&db, &outbox_table).await, 0);
    assert_eq!(rows(&db, "outbox").await, 3);
    assert_eq!(
        rows(&db, &named.qualified(backend_sql, named.keys())).await,
        0,
        "idle keys deleted"
    );
    assert_eq!(rows(&db, "outbox_keys").await, 1, "the leased key stays");

    // Inboxes: the same event recorded apart in each.
    let event = uuid::Uuid::now_v7();
    let named_inbox = inbox::Inbox::new(&named);
    assert!(inbox::record(&db.db, "billing", event).await.unwrap());
    assert!(named_inbox.record(&db.db, "billing", event).await.unwrap());
    assert!(!named_inbox.record(&db.db, "billing", event).await.unwrap());
    assert_eq!(
        rows(&db, &named.qualified(backend_sql, named.inbox())).await,
        1
    );
    assert_eq!(rows(&db, "inbox").await, 1);
    assert_eq!(named_inbox.purge(&db.db, now, 10).await.unwrap(), 1);
    assert_eq!(rows(&db, "inbox").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_outboxes_stay_apart_on_postgres() {
    two_outboxes_stay_apart(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_outboxes_stay_apart_on_mariadb() {
    two_outboxes_stay_apart(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_outboxes_stay_apart_on_sqlite() {
    two_outboxes_stay_apart(Backend::SqliteFile).await;
}

/// A schema is PostgreSQL's: elsewhere the migration and the store refuse
/// it, saying why, and create nothing.
async fn a_schema_outside_postgres_is_refused(backend: Backend) {
    let Some(db) = TestDb::without_outbox(backend).await else {
        return;
    };
    let tables = Tables::default().schema("accounts").unwrap();
    let error = outbox_migration::migrate_tables(&db.db, &tables, false)
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("PostgreSQL"), "{error}");
    let error = SeaOrmStore::new(db.db.clone())
        .with_tables(&tables)
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("schemas are a PostgreSQL setting"),
        "{error}"
    );
    let missing = SeaOrmStore::new(db.db.clone()).check().await.unwrap_err();
    assert!(missing.to_string().contains("migration"), "{missing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_is_refused_on_mariadb() {
    a_schema_outside_postgres_is_refused(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_is_refused_on_sqlite() {
    a_schema_outside_postgres_is_refused(Backend::SqliteFile).await;
}

/// A store on tables that were never migrated (beside an outbox that was)
/// says which migration to run.
async fn a_store_on_unmigrated_names_says_so(backend: Backend) {
    let Some(db) = TestDb::new(backend).await else {
        return;
    };
    let store = SeaOrmStore::new(db.db.clone())
        .with_tables(&Tables::prefixed("other_").unwrap())
        .unwrap();
    let error = store.check().await.unwrap_err();
    assert!(
        matches!(error, outbox_sea_orm::Error::MissingTable { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("migration"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmigrated_names_are_named_on_postgres() {
    a_store_on_unmigrated_names_says_so(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmigrated_names_are_named_on_mariadb() {
    a_store_on_unmigrated_names_says_so(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmigrated_names_are_named_on_sqlite() {
    a_store_on_unmigrated_names_says_so(Backend::SqliteFile).await;
}

/// Each outbox notifies its own channel: a relay listening for the named
/// outbox is woken by that outbox's commits, not by the default one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_outbox_notifies_its_own_channel_on_postgres() {
    let named = other_names(Backend::Postgres);
    let Some(db) = TestDb::with_tables(Backend::Postgres, &named).await else {
        return;
    };
    outbox_migration::migrate_tables(&db.db, &Tables::default(), false)
        .await
        .unwrap();
    assert_eq!(
        outbox_sea_orm::notify_channel(&named),
        "accounts_billing_outbox"
    );
    let relay_store = SeaOrmStore::connect_with_tables(db.url.as_str(), &named)
        .await
        .unwrap();
    let wakeup = outbox_engine::Wakeup::new();
    let listening = outbox_sea_orm::listen(&relay_store, wakeup.clone())
        .await
        .unwrap();
    let woken = |within| tokio::time::timeout(within, wakeup.woken());

    let plain = Outbox::new(SeaOrmStore::new(db.db.clone())).notify_on_commit(true);
    plain
        .transaction(|txn| {
            Box::pin(async move {
                outbox_sea_orm::enqueue(txn, &InvoiceIssued { invoice_id: 1 })
                    .await
                    .map_err(sea_orm::DbErr::from)
            })
        })
        .await
        .unwrap();
    assert!(
        woken(Duration::from_millis(300)).await.is_err(),
        "woken by the other outbox's commit"
    );

    let billing = Outbox::new(db.store()).notify_on_commit(true);
    let writer = billing.clone();
    billing
        .transaction(|txn| {
            Box::pin(async move {
                writer
                    .enqueue(txn, &InvoiceIssued { invoice_id: 2 })
                    .await
                    .map_err(sea_orm::DbErr::from)
            })
        })
        .await
        .unwrap();
    assert!(
        woken(Duration::from_secs(5)).await.is_ok(),
        "the named outbox's notification did not reach its listener"
    );
    listening.abort();
}
