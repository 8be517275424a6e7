//! A claim running while another transaction holds a key (a claimer
//! between its `SELECT ... FOR UPDATE SKIP LOCKED` and its commit, or a
//! writer enqueueing for the key) passes over that key, and takes it once
//! it is free.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::Duration;

use common::{Backend, TestDb};
use outbox_engine::testkit::record;
use outbox_engine::{ClaimRequest, OutboxStore};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_locked_by_a_claim_in_flight_holds_back_its_key_on_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    locked_record_holds_back_its_key(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_locked_by_a_claim_in_flight_holds_back_its_key_on_mariadb() {
    let Some(db) = TestDb::new(Backend::MySql).await else {
        return;
    };
    locked_record_holds_back_its_key(db).await;
}

async fn locked_record_holds_back_its_key(db: TestDb) {
    let store = db.store();
    store
        .enqueue(&[
            record(Some("k"), 1),
            record(Some("k"), 2),
            record(Some("l"), 3),
        ])
        .await
        .unwrap();
    let ids: Vec<i64> = {
        let rows = db
            .db
            .query_all_raw(Statement::from_string(
                db.db_backend(),
                "SELECT id FROM outbox ORDER BY id",
            ))
            .await
            .unwrap();
        rows.iter().map(|r| r.try_get("", "id").unwrap()).collect()
    };

    // Another transaction holds k and has not committed yet: the claim
    // below passes over k, without waiting for it.
    let other = db.db.begin().await.unwrap();
    other
        .execute_raw(Statement::from_string(
            db.db_backend(),
            "SELECT partition_key FROM outbox_keys WHERE partition_key = 'k' FOR UPDATE",
        ))
        .await
        .unwrap();

    let request = ClaimRequest {
        owner: "b".to_owned(),
        limit: 10,
        lease: Duration::from_secs(30),
        dead_holds_key: true,
    };
    let claimed = store.claim(&request).await.unwrap();
    let claimed_ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
    assert_eq!(
        claimed_ids,
        vec![ids[2]],
        "k's second record must wait for its first"
    );

    other.rollback().await.unwrap();
    let claimed = store
        .claim(&ClaimRequest {
            owner: "c".to_owned(),
            ..request
        })
        .await
        .unwrap();
    let claimed_ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
    assert_eq!(
        claimed_ids,
        vec![ids[0], ids[1]],
        "k flows once nothing holds it"
    );
}
