//! Four relays drain 10,000 records at once: each published exactly once,
//! every key in enqueue order.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{Backend, TestDb, wait_until};
use outbox_engine::{InMemorySink, NewRecord, OutboxAdmin, OutboxEvent, OutboxStore, Relay};
use outbox_sea_orm::enqueue_all;
use sea_orm::{ConnectionTrait, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "steps", key = key)]
struct Step {
    key: String,
    seq: u32,
}

const KEYS: u32 = 500;
const PER_KEY: u32 = 20;
const RELAYS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_drain_10000_records_on_postgres() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    drain(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_drain_10000_records_on_mariadb() {
    let Some(db) = TestDb::new(Backend::MySql).await else {
        return;
    };
    drain(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_relays_drain_10000_records_on_sqlite_file() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    drain(db).await;
}

async fn drain(db: TestDb) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let total = (KEYS * PER_KEY) as usize;
    // Keys interleave: every batch holds many keys, and each key's records
    // spread over several batches.
    let events: Vec<Step> = (0..PER_KEY)
        .flat_map(|seq| {
            (0..KEYS).map(move |k| Step {
                key: format!("key-{k}"),
                seq,
            })
        })
        .collect();
    let started = Instant::now();
    for chunk in events.chunks(1_000) {
        let txn = db.db.begin().await.unwrap();
        enqueue_all(&txn, chunk).await.unwrap();
        txn.commit().await.unwrap();
    }
    let enqueued_in = started.elapsed();

    let store = db.store();
    let sink = InMemorySink::new();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let relays: Vec<_> = (0..RELAYS)
        .map(|i| {
            let relay = Relay::builder(store.clone(), sink.clone())
                .relay_id(format!("relay-{i}"))
                .batch_size(100)
                .lease(Duration::from_secs(30))
                .poll_interval(Duration::from_millis(20))
                .build()
                .unwrap();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                let shutdown = async move {
                    stopped.wait_for(|stop| *stop).await.ok();
                };
                relay.run(shutdown).await;
                relay.status()
            })
        })
        .collect();
    wait_until(
        "every record published",
        Duration::from_secs(300),
        || async { store.stats(Utc::now()).await.unwrap().pending == 0 },
    )
    .await;
    let drained_in = started.elapsed();
    stop.send(true).unwrap();
    let mut per_relay = Vec::new();
    for relay in relays {
        let status = relay.await.unwrap();
        assert_eq!(status.consecutive_failures, 0, "a relay failed: {status:?}");
        per_relay.push(status.totals.published);
    }
    eprintln!(
        "{:?}: enqueued {total} records in {enqueued_in:?}; {RELAYS} relays drained them in \
         {drained_in:?} ({:.0} records/s); published per relay: {per_relay:?}",
        db.backend,
        total as f64 / drained_in.as_secs_f64()
    );

    let delivered = sink.delivered();
    assert_eq!(delivered.len(), total, "each record published exactly once");
    let unique: HashSet<_> = delivered.iter().map(|r| r.event_id).collect();
    assert_eq!(unique.len(), total, "no record published twice");
    assert_eq!(per_relay.iter().sum::<usize>(), total);

    let mut seen: HashMap<String, Vec<u32>> = HashMap::new();
    for record in &delivered {
        let step = record.decode_as::<Step>().unwrap().unwrap();
        assert_eq!(record.key.as_deref(), Some(step.key.as_str()));
        seen.entry(step.key).or_default().push(step.seq);
    }
    assert_eq!(seen.len(), KEYS as usize);
    let in_order: Vec<u32> = (0..PER_KEY).collect();
    for (key, seqs) in &seen {
        assert_eq!(seqs, &in_order, "{key} was published out of enqueue order");
    }

    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!(
        (stats.published, stats.pending, stats.leased, stats.dead),
        (
            if store.keeps_published() {
                total as u64
            } else {
                0
            },
            0,
            0,
            0
        ),
        "published records deleted (or kept, on MySQL/MariaDB)"
    );
}

/// A relay with `retain_published` purges what it published (2,500
/// records, more than one purge batch) and tidies the keys left idle.
async fn retention(db: TestDb) {
    let store = db.store().keep_published();
    let records: Vec<NewRecord> = (0..2500)
        .map(|seq| {
            NewRecord::from_event(&Step {
                key: format!("k{}", seq % 50),
                seq,
            })
            .unwrap()
        })
        .collect();
    for chunk in records.chunks(500) {
        store.enqueue(chunk).await.unwrap();
    }
    let sink = InMemorySink::new();
    let relay = Relay::builder(store.clone(), sink.clone())
        .batch_size(500)
        .poll_interval(Duration::from_millis(20))
        .retain_published(Duration::ZERO)
        .purge_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let idle_keys = || {
        let db = db.db.clone();
        async move {
            db.query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT COUNT(*) AS n FROM outbox_keys",
            ))
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap()
        }
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let check = async {
        // The purge deletes the records, then tidies the keys left idle.
        wait_until(
            "published records purged and idle keys deleted",
            Duration::from_secs(60),
            || {
                let store = store.clone();
                let sink = sink.clone();
                let idle_keys = idle_keys();
                async move {
                    let stats = store.stats(Utc::now()).await.unwrap();
                    sink.delivered().len() >= 2500
                        && stats.pending == 0
                        && stats.published == 0
                        && idle_keys.await == 0
                }
            },
        )
        .await;
        stop.send(()).unwrap();
    };
    tokio::join!(
        relay.run(async {
            stopped.await.ok();
        }),
        check
    );
    let keys = idle_keys().await;
    assert_eq!(keys, 0, "the keys left idle are deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_in_batches_on_postgres() {
    if let Some(db) = TestDb::new(Backend::Postgres).await {
        retention(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_in_batches_on_mariadb() {
    if let Some(db) = TestDb::new(Backend::MySql).await {
        retention(db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_purges_in_batches_on_sqlite_file() {
    if let Some(db) = TestDb::new(Backend::SqliteFile).await {
        retention(db).await;
    }
}
