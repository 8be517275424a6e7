//! The relay's housekeeping on PostgreSQL (`OutboxStore::housekeep`): it
//! vacuums the outbox tables so that the room settled records leave is
//! used again where autovacuum does not run (it is off on this server), and
//! a vacuum interrupted in the middle loses nothing and publishes nothing
//! twice. Deleting on publish: no published record is left behind, and
//! the keys' table keeps only keys with work. On MariaDB, where settlements
//! mark what they publish, the housekeeping purges it, and a history asked
//! for stays.

#![cfg(all(feature = "postgres", feature = "mysql"))]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Backend, TestDb};
use outbox_engine::testkit::record;
use outbox_engine::{
    ClaimRequest, InMemorySink, NewRecord, OutboxAdmin, OutboxStore, Relay, Settlement,
};
use outbox_sea_orm::SeaOrmStore;
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};

fn request(owner: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit,
        lease: Duration::from_secs(30),
        dead_holds_key: true,
    }
}

/// `count` records over 20 keys, numbered from `from`.
fn records(from: u64, count: u64) -> Vec<NewRecord> {
    (from..from + count)
        .map(|n| record(Some(&format!("k{}", n % 20)), n as u32))
        .collect()
}

async fn scalar(db: &TestDb, sql: &str) -> i64 {
    db.db
        .query_one_raw(Statement::from_string(db.db_backend(), sql))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index(0)
        .unwrap()
}

/// The outbox tables' size on disk, indexes included.
async fn size(db: &TestDb) -> i64 {
    scalar(
        db,
        "SELECT CAST(pg_total_relation_size('outbox') + pg_total_relation_size('outbox_keys') \
         AS BIGINT)",
    )
    .await
}

/// Enqueues `count` records and publishes them all through the store, as
/// a relay does: claim, settle published.
async fn publish_round(store: &SeaOrmStore, from: u64, count: u64) {
    store.enqueue(&records(from, count)).await.unwrap();
    let mut published = 0;
    while published < count {
        let claimed = store.claim(&request("r", 500)).await.unwrap();
        assert!(!claimed.is_empty(), "records were left unclaimed");
        let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
        let settlement = Settlement {
            published: ids.clone(),
            ..Settlement::default()
        };
        assert_eq!(
            store.settle("r", &settlement).await.unwrap().changed,
            ids.len() as u64
        );
        published += ids.len() as u64;
    }
}

/// Rounds of 5,000 records published, and the size after each.
async fn sizes_over_rounds(store: &SeaOrmStore, db: &TestDb, housekeeping: bool) -> Vec<i64> {
    let mut sizes = Vec::new();
    for round in 0..4 {
        publish_round(store, round * 5_000, 5_000).await;
        if housekeeping {
            store.housekeep().await.unwrap();
        }
        sizes.push(size(db).await);
    }
    sizes
}

#[tokio::test]
async fn housekeeping_keeps_the_tables_from_growing_without_autovacuum() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store();
    assert!(!store.keeps_published(), "publishing deletes by default");
    let kept = sizes_over_rounds(&store, &db, true).await;
    // Nothing published is left, and no key without work.
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox").await, 0);
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox_keys").await, 0);
    // The first rounds find the room their leases need; from then on the
    // room is used again.
    assert!(
        kept[3] <= kept[1] + kept[1] / 10,
        "with housekeeping the room is used again: sizes {kept:?}"
    );

    // The same rounds without it: the tables grow with every round (what
    // the housekeeping prevents, so the check above can fail).
    let Some(other) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = other.store().vacuum(false);
    let grown = sizes_over_rounds(&store, &other, false).await;
    assert!(
        grown[3] > grown[1] + grown[1] / 2 && grown[3] > kept[3] * 2,
        "without housekeeping the tables grow: sizes {grown:?} (with it: {kept:?})"
    );
}

#[tokio::test]
async fn housekeeping_does_nothing_when_off_or_with_nothing_settled() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let count = async || {
        // The statistics of this backend's own vacuums are in at once.
        db.db
            .execute_unprepared("SELECT pg_stat_clear_snapshot()")
            .await
            .unwrap();
        scalar(
            &db,
            "SELECT CAST(vacuum_count AS BIGINT) FROM pg_stat_user_tables \
             WHERE relname = 'outbox'",
        )
        .await
    };
    let store = db.store();
    store.housekeep().await.unwrap();
    let before = count().await;
    publish_round(&store, 0, 100).await;
    store.housekeep().await.unwrap();
    assert_eq!(
        count().await,
        before,
        "100 settled rows are not worth a vacuum"
    );
    publish_round(&store, 100, 1_000).await;
    let off = store.clone().vacuum(false);
    off.housekeep().await.unwrap();
    assert_eq!(count().await, before, "turned off, it does not vacuum");
    let on = off.vacuum(true);
    wait_for_vacuum(&on, before, count).await;
}

/// Housekeeps until the vacuum count passes `before` (a vacuum's statistics
/// reach the view a little after it ends).
async fn wait_for_vacuum(store: &SeaOrmStore, before: i64, count: impl AsyncFn() -> i64) {
    store.housekeep().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count().await <= before {
        assert!(Instant::now() < deadline, "housekeeping did not vacuum");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A vacuum whose connection is killed in the middle: the housekeeping
/// fails (and tries again later), every record still to publish is
/// claimed once, no published record comes back, and the next
/// housekeeping vacuums.
#[tokio::test]
async fn a_vacuum_killed_in_the_middle_loses_nothing_and_repeats_nothing() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store();
    let mut next = 0;
    let mut interrupted = false;
    let mut waiting: BTreeSet<i64> = BTreeSet::new();
    for _ in 0..5 {
        // A large round, so that the vacuum takes long enough to catch.
        let stored = records(next, 40_000);
        next += 40_000;
        store.enqueue(&stored).await.unwrap();
        let mut settled = 0;
        while settled < 30_000 {
            let claimed = store.claim(&request("r", 1_000)).await.unwrap();
            let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
            // Most published, the rest released: still to publish.
            let (published, released) = ids.split_at(ids.len() * 3 / 4);
            let settlement = Settlement {
                published: published.to_vec(),
                released: released.to_vec(),
                ..Settlement::default()
            };
            store.settle("r", &settlement).await.unwrap();
            settled += ids.len();
        }
        let killer = async {
            // Kill the backend that runs the vacuum, once it is under way.
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                let killed = scalar(
                    &db,
                    "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_progress_vacuum \
                     WHERE datname = current_database()",
                )
                .await;
                if killed > 0 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            false
        };
        let (result, killed) = tokio::join!(store.housekeep(), killer);
        if killed && result.is_err() {
            interrupted = true;
            break;
        }
    }
    assert!(interrupted, "no vacuum was caught in the middle");

    // Every record still pending is claimed exactly once, in key order.
    let stats = store.stats(Utc::now()).await.unwrap();
    let pending = stats.pending;
    assert!(pending > 0);
    loop {
        let claimed = store.claim(&request("after", 1_000)).await.unwrap();
        if claimed.is_empty() {
            break;
        }
        for record in &claimed {
            assert!(
                waiting.insert(record.id),
                "record {} claimed twice",
                record.id
            );
        }
        let settlement = Settlement {
            published: claimed.iter().map(|r| r.id).collect(),
            ..Settlement::default()
        };
        store.settle("after", &settlement).await.unwrap();
    }
    assert_eq!(
        waiting.len() as u64,
        pending,
        "every record still to publish"
    );
    assert_eq!(scalar(&db, "SELECT COUNT(*) FROM outbox").await, 0);
    // The next housekeeping vacuums as before.
    store.housekeep().await.unwrap();
}

/// A running relay housekeeps on its own, at its interval, while it
/// publishes: the tables get vacuumed, and every event arrives once.
#[tokio::test]
async fn a_running_relay_vacuums_the_tables() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let store = db.store();
    store.enqueue(&records(0, 3_000)).await.unwrap();
    let sink = InMemorySink::new();
    let relay = Relay::builder(store.clone(), sink.clone())
        .housekeeping_interval(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let vacuumed = async {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            db.db
                .execute_unprepared("SELECT pg_stat_clear_snapshot()")
                .await
                .unwrap();
            let count = scalar(
                &db,
                "SELECT CAST(vacuum_count AS BIGINT) FROM pg_stat_user_tables \
                 WHERE relname = 'outbox'",
            )
            .await;
            if count > 0 && sink.delivered().len() >= 3_000 {
                return;
            }
            assert!(Instant::now() < deadline, "the relay never vacuumed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    relay.run(vacuumed).await;
    let delivered = sink.delivered();
    let ids: BTreeSet<_> = delivered.iter().map(|r| r.event_id).collect();
    assert_eq!(ids.len(), 3_000, "every event arrived");
    assert_eq!(delivered.len(), 3_000, "nothing published twice");
}

/// MariaDB: settlements mark, the housekeeping purges what they marked and
/// the keys left idle, never waiting for a writer that holds a key; a store
/// that keeps a history keeps it.
#[tokio::test]
async fn on_mariadb_housekeeping_purges_what_settlements_marked() {
    let Some(db) = TestDb::new(Backend::MySql).await else {
        return;
    };
    let count = async |sql: &str| scalar(&db, sql).await;
    let history = db.store().keep_published();
    let store = db.store();
    assert!(store.keeps_published(), "a settlement marks on MariaDB");
    publish_round(&store, 0, 300).await;
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox WHERE status = 'published'").await,
        300
    );
    history.housekeep().await.unwrap();
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox").await,
        300,
        "a history asked for stays"
    );

    // A writer holds key k0 open while the housekeeping runs: a writer of
    // another key commits at once all the same, and once the first commits
    // the housekeeping is done, its key spared.
    let writer = db.db.begin().await.unwrap();
    outbox_sea_orm::enqueue_records(&writer, &[record(Some("k0"), 1_000)])
        .await
        .unwrap();
    let housekeeping = tokio::spawn({
        let store = store.clone();
        async move { store.housekeep().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::time::timeout(
        Duration::from_secs(5),
        outbox_sea_orm::enqueue_records(&db.db, &[record(Some("k1"), 1_001)]),
    )
    .await
    .expect("a writer of another key waited for the housekeeping")
    .unwrap();
    writer.commit().await.unwrap();
    housekeeping.await.unwrap().unwrap();
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox").await,
        2,
        "only the pending ones"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM outbox_keys").await,
        2,
        "the idle keys went; the writers' stayed"
    );
    let claimed = store.claim(&request("r", 10)).await.unwrap();
    assert_eq!(claimed.len(), 2, "the writers' records flow");
}
