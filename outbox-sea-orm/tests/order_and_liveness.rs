//! Per-key order and a relay that keeps going, on real databases: commit
//! order whatever the relay's timing, outages that make nothing dead,
//! poison records and unreadable rows set aside, relays with skewed clocks,
//! keys that differ by trailing spaces, large events, empty keys.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use common::TestDb;
use outbox_engine::testkit::TestStore;
use outbox_engine::{
    Clock, DeadFilter, FailureKind, InMemorySink, NewRecord, OutboxAdmin, OutboxEvent, Relay,
    RunReport, Sink, error_chain,
};
use outbox_sea_orm::{Error, SeaOrmStore, enqueue, enqueue_all};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order)]
struct Step {
    order: String,
    n: u32,
}

fn step(order: &str, n: u32) -> Step {
    Step {
        order: order.to_owned(),
        n,
    }
}

fn relay<Si: Sink>(store: &SeaOrmStore, sink: Si) -> Relay<SeaOrmStore, Si> {
    Relay::builder(store.clone(), sink)
        .batch_size(50)
        .backoff(
            outbox_engine::ExponentialBackoff::new(
                Duration::from_millis(5),
                Duration::from_millis(20),
            )
            .unwrap(),
        )
        .build()
        .unwrap()
}

/// Runs batches until `done` holds, failing after a while.
async fn run_until<Si: Sink>(
    relay: &Relay<SeaOrmStore, Si>,
    what: &str,
    done: impl Fn() -> bool,
) -> RunReport {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut total = RunReport::default();
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what}: not done in time, {total:?}"
        );
        total += relay.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    total
}

/// Per key, the `n` of each delivered `Step`, in delivery order.
fn steps_by_key(sink: &InMemorySink) -> HashMap<String, Vec<u32>> {
    let mut by_key: HashMap<String, Vec<u32>> = HashMap::new();
    for event in sink.events::<Step>() {
        by_key.entry(event.order).or_default().push(event.n);
    }
    by_key
}

// --- Commit order ---------------------------------------------------------

/// Transaction A enqueues for key `k` first; B enqueues for `k` after it and
/// tries to commit at once, before A. Whatever the relay's timing, the
/// relay must publish `k` in the order the two commits happened.
async fn commit_order(db: TestDb, relay_between_commits: bool) {
    let store = db.store();
    let sink = InMemorySink::new();
    let relay = relay(&store, sink.clone());
    let commits: Arc<Mutex<Vec<u32>>> = Arc::default();

    let a = db.db.begin().await.unwrap();
    enqueue(&a, &step("k", 1)).await.unwrap();
    let b = tokio::spawn({
        let (db, commits) = (db.db.clone(), commits.clone());
        async move {
            let b = db.begin().await.unwrap();
            enqueue(&b, &step("k", 2)).await.unwrap();
            b.commit().await.unwrap();
            commits.lock().unwrap().push(2);
        }
    });
    // Give B every chance to overtake A.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if relay_between_commits {
        relay.run_once().await.unwrap();
    }
    // Recorded just before the commit: B, waiting on A's key, can only
    // finish (and record itself) after A's commit, and recording after it
    // would race B's record. Had B not waited, it would have committed
    // and recorded itself during the pause above.
    commits.lock().unwrap().push(1);
    a.commit().await.unwrap();
    if relay_between_commits {
        relay.run_once().await.unwrap();
    }
    b.await.unwrap();
    run_until(&relay, "both published", || sink.delivered().len() == 2).await;

    let committed = commits.lock().unwrap().clone();
    assert_eq!(
        steps_by_key(&sink)["k"],
        committed,
        "the relay published k out of commit order"
    );
}

async fn commit_order_holds_when_the_relay_runs_after_both_commits(db: TestDb) {
    commit_order(db, false).await;
}

async fn commit_order_holds_when_the_relay_runs_between_the_commits(db: TestDb) {
    commit_order(db, true).await;
}

on!(commit_order_holds_when_the_relay_runs_after_both_commits: Postgres, MySql);

/// A writer that waits for another transaction's key draws its record's id
/// only once it holds the key: a third writer committing meanwhile on
/// another key takes the lower id. Were the id drawn before the wait, the
/// waiting writer's record would sort before one committed earlier.
async fn a_writer_waiting_for_its_key_draws_its_id_after_the_wait(db: TestDb) {
    let ids = async |db: &sea_orm::DatabaseConnection| {
        db.query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id, partition_key FROM outbox ORDER BY id",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| {
            (
                row.try_get::<i64>("", "id").unwrap(),
                row.try_get::<String>("", "partition_key").unwrap(),
            )
        })
        .collect::<Vec<_>>()
    };
    let a = db.db.begin().await.unwrap();
    enqueue(&a, &step("k", 1)).await.unwrap();
    let b = tokio::spawn({
        let db = db.db.clone();
        async move {
            let b = db.begin().await.unwrap();
            enqueue(&b, &step("k", 2)).await.unwrap();
            b.commit().await.unwrap();
        }
    });
    // B is waiting for A's key now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b.is_finished(), "B did not wait for A's key");
    let c = db.db.begin().await.unwrap();
    enqueue(&c, &step("other", 1)).await.unwrap();
    c.commit().await.unwrap();
    a.commit().await.unwrap();
    b.await.unwrap();
    let order: Vec<String> = ids(&db.db).await.into_iter().map(|(_, key)| key).collect();
    assert_eq!(
        order,
        ["k", "other", "k"],
        "B's id was drawn before it held its key"
    );
}

on!(a_writer_waiting_for_its_key_draws_its_id_after_the_wait: Postgres, MySql);

on!(commit_order_holds_when_the_relay_runs_between_the_commits: Postgres, MySql);

/// Many writers enqueue for a few keys at once, with no lock of their own;
/// some roll back. Each key is published in the order its transactions
/// committed.
async fn concurrent_writers_publish_in_commit_order(db: TestDb) {
    const WRITERS: u32 = 6;
    const EACH: u32 = 15;
    let store = db.store();
    let sink = InMemorySink::new();
    // Per key, the `n` of each committed event, in commit order: commits
    // happen one at a time under this lock, so its order is theirs.
    let committed: Arc<tokio::sync::Mutex<HashMap<String, Vec<u32>>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (db, committed) = (db.db.clone(), committed.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..EACH {
                let key = format!("k{}", (w + i) % 3);
                let n = w * 1000 + i;
                let txn = db.begin().await.unwrap();
                enqueue(&txn, &step(&key, n)).await.unwrap();
                // A business change takes a moment.
                tokio::time::sleep(Duration::from_millis(2)).await;
                if i % 5 == 4 {
                    txn.rollback().await.unwrap();
                    continue;
                }
                let mut log = committed.lock().await;
                txn.commit().await.unwrap();
                log.entry(key).or_default().push(n);
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let relay = relay(&store, sink.clone());
    let committed = committed.lock().await.clone();
    let total: usize = committed.values().map(Vec::len).sum();
    assert_eq!(total, (WRITERS * EACH * 4 / 5) as usize);
    run_until(&relay, "every committed event", || {
        sink.delivered().len() == total
    })
    .await;
    let published = steps_by_key(&sink);
    for (key, order) in &committed {
        assert_eq!(&published[key], order, "order of {key}");
    }
}

on!(concurrent_writers_publish_in_commit_order: Postgres, MySql, SqliteFile);

// --- Outages and poison records -------------------------------------------

async fn a_thirty_minute_outage_makes_nothing_dead_and_keeps_order(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    for n in 0..3 {
        enqueue_all(&db.db, [&step("a", n), &step("b", n)])
            .await
            .unwrap();
    }
    // The broker is down (or the topic missing) for 30 minutes of the
    // database's clock, with the default retry policy and backoff.
    sink.fail_topic("orders", FailureKind::Retriable);
    let relay = Relay::builder(store.clone(), sink.clone()).build().unwrap();
    let mut during = RunReport::default();
    for _ in 0..180 {
        during += relay.run_once().await.unwrap();
        store.advance_clock(Duration::from_secs(10));
    }
    assert_eq!(during.dead, 0);
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.dead, stats.pending), (0, 6));
    assert!(during.retried >= 10, "{during:?}");

    sink.heal_topic("orders");
    store.advance_clock(Duration::from_secs(301));
    run_until(&relay, "all published after the outage", || {
        sink.delivered().len() == 6
    })
    .await;
    for key in ["a", "b"] {
        assert_eq!(steps_by_key(&sink)[key], vec![0, 1, 2], "order of {key}");
    }
}

on!(a_thirty_minute_outage_makes_nothing_dead_and_keeps_order: Postgres, MySql, SqliteFile);

async fn a_poison_record_is_dead_and_holds_only_its_key(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    for n in 0..3 {
        enqueue_all(&db.db, [&step("poison", n), &step("fine", n)])
            .await
            .unwrap();
    }
    // The first record handed over (poison #0) is refused for good.
    sink.fail_next(1, FailureKind::Permanent);
    let relay = relay(&store, sink.clone());
    run_until(&relay, "fine flows", || {
        steps_by_key(&sink).get("fine").map(Vec::len) == Some(3)
    })
    .await;
    enqueue_all(&db.db, [&step("fine", 3), &step("poison", 3)])
        .await
        .unwrap();
    run_until(&relay, "fine goes on", || {
        steps_by_key(&sink)["fine"].len() == 4
    })
    .await;
    store.advance_clock(Duration::from_secs(3600));
    relay.run_once().await.unwrap();
    assert!(
        !steps_by_key(&sink).contains_key("poison"),
        "its key is held"
    );
    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);

    // Requeued, it goes first, then the rest of its key.
    assert!(store.requeue(dead[0].id).await.unwrap());
    run_until(&relay, "poison flows", || {
        steps_by_key(&sink).get("poison").map(Vec::len) == Some(4)
    })
    .await;
    assert_eq!(steps_by_key(&sink)["poison"], vec![0, 1, 2, 3]);
}

on!(a_poison_record_is_dead_and_holds_only_its_key: Postgres, MySql, SqliteFile);

// --- Unreadable rows --------------------------------------------------------

async fn unreadable_rows_are_set_aside_and_the_rest_flows(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    for n in 0..6 {
        let key = if n < 3 { "k" } else { "l" };
        enqueue(&db.db, &step(key, n)).await.unwrap();
    }
    // Another client writes bad values: headers that are not JSON (k's
    // first record), a negative schema version (l's last).
    db.exec("UPDATE outbox SET headers = 'not json' WHERE id = (SELECT MIN(id) FROM (SELECT id FROM outbox) t)")
        .await;
    db.exec("UPDATE outbox SET schema_version = -1 WHERE id = (SELECT MAX(id) FROM (SELECT id FROM outbox) t)")
        .await;
    let relay = Arc::new(relay(&store, sink.clone()));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.delivered().len() < 2 || store.stats(Utc::now()).await.unwrap().dead < 2 {
        assert!(Instant::now() < deadline, "{:?}", relay.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    running.await.unwrap();

    // l's first two flowed; k is held by its unreadable head.
    assert_eq!(steps_by_key(&sink).get("l"), Some(&vec![3, 4]));
    assert!(!steps_by_key(&sink).contains_key("k"));
    let status = relay.status();
    assert_eq!(status.consecutive_failures, 0, "{status:?}");
    let reasons: Vec<String> = store
        .list_dead(&DeadFilter::all(), None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|record| record.last_error.unwrap_or_default())
        .collect();
    assert_eq!(reasons.len(), 2);
    assert!(
        reasons[0].contains("headers are not a JSON object"),
        "{reasons:?}"
    );
    assert!(
        reasons[1].contains("negative schema version"),
        "{reasons:?}"
    );
}

on!(unreadable_rows_are_set_aside_and_the_rest_flows: Postgres, MySql, SqliteFile);

// --- Clocks -----------------------------------------------------------------

/// A relay host's clock, off by a fixed amount.
#[derive(Debug)]
struct Skewed(TimeDelta);

impl Clock for Skewed {
    fn now(&self) -> DateTime<Utc> {
        Utc::now() + self.0
    }
}

async fn relays_whose_clocks_differ_by_ten_minutes_do_not_steal_work(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    let events: Vec<Step> = (0..200).map(|n| step(&format!("k{}", n % 20), n)).collect();
    enqueue_all(&db.db, &events).await.unwrap();
    sink.set_latency(Duration::from_millis(20));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for skew in [TimeDelta::minutes(10), TimeDelta::minutes(-10)] {
        // Each relay holds at most 5 of the 20 keys at a time, so the other
        // always finds keys to claim, on SQLite's one writer too.
        let relay = Relay::builder(store.clone(), sink.clone())
            .batch_size(5)
            .max_in_flight(5)
            .poll_interval(Duration::from_millis(5))
            .clock(Skewed(skew))
            .build()
            .unwrap();
        let mut stopped = stopped.clone();
        relays.push(tokio::spawn(async move {
            relay
                .run(async move {
                    stopped.wait_for(|s| *s).await.ok();
                })
                .await;
            relay.status()
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.delivered().len() < 200 || store.stats(Utc::now()).await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "not drained in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    let mut published = Vec::new();
    for relay in relays {
        let status = relay.await.unwrap();
        assert_eq!(status.consecutive_failures, 0, "{status:?}");
        published.push(status.totals.published);
    }
    assert_eq!(sink.delivered().len(), 200, "a record was published twice");
    assert!(
        published.iter().all(|&n| n > 0),
        "both relays worked: {published:?}"
    );
    for (key, ns) in steps_by_key(&sink) {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "order of {key}");
    }
}

on!(relays_whose_clocks_differ_by_ten_minutes_do_not_steal_work: Postgres, MySql, SqliteFile);

// --- Keys, sizes --------------------------------------------------------------

async fn keys_that_differ_by_trailing_spaces_are_two_keys(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    enqueue_all(&db.db, [&step("a", 1), &step("a ", 2), &step("a", 3)])
        .await
        .unwrap();
    let keys: Vec<String> = db
        .db
        .query_all_raw(Statement::from_string(
            db.db_backend(),
            "SELECT partition_key FROM outbox_keys ORDER BY partition_key",
        ))
        .await
        .unwrap()
        .iter()
        .map(|row| row.try_get("", "partition_key").unwrap())
        .collect();
    assert_eq!(keys, ["a", "a "], "two keys");
    // `a`'s head fails and waits an hour; `a ` is another key and flows.
    sink.fail_next(1, FailureKind::Retriable);
    let relay = Relay::builder(store.clone(), sink.clone())
        .backoff(
            outbox_engine::ExponentialBackoff::new(
                Duration::from_secs(3600),
                Duration::from_secs(3600),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    relay.run_once().await.unwrap();
    relay.run_once().await.unwrap();
    assert_eq!(sink.events::<Step>(), vec![step("a ", 2)]);
}

on!(keys_that_differ_by_trailing_spaces_are_two_keys: Postgres, MySql, SqliteFile);

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "documents", key = id)]
struct Document {
    id: u32,
    body: String,
}

async fn many_large_events_are_written_in_several_statements(db: TestDb) {
    // 2,000 events of 20 KB: 40 MB, more than MariaDB's 16 MB packet.
    let events: Vec<Document> = (0..2_000)
        .map(|id| Document {
            id,
            body: "x".repeat(20_000),
        })
        .collect();
    let txn = db.db.begin().await.unwrap();
    enqueue_all(&txn, &events).await.unwrap();
    txn.commit().await.unwrap();
    let stats = db.store().stats(Utc::now()).await.unwrap();
    assert_eq!(stats.pending, 2_000);
}

on!(many_large_events_are_written_in_several_statements: Postgres, MySql, SqliteFile);

async fn an_event_too_large_for_the_server_is_refused_clearly(db: TestDb) {
    let event = Document {
        id: 1,
        body: "x".repeat(20 << 20),
    };
    let error = enqueue(&db.db, &event).await.unwrap_err();
    let message = error_chain(&error);
    eprintln!("{message}");
    assert!(matches!(error, Error::InvalidEvent { .. }), "{error:?}");
    assert!(!error.is_retriable());
    assert!(message.contains("max_allowed_packet"), "{message}");
    // The connection pool still works, and nothing was written.
    assert_eq!(db.store().stats(Utc::now()).await.unwrap().pending, 0);
}

on!(an_event_too_large_for_the_server_is_refused_clearly: MySql);

async fn an_empty_key_is_refused_at_enqueue(db: TestDb) {
    let error = enqueue(&db.db, &step("", 1)).await.unwrap_err();
    assert!(!error.is_retriable());
    assert!(error_chain(&error).contains("empty key"), "{error:?}");
    let mut record = NewRecord::from_event(&step("k", 1)).unwrap();
    record.key = Some(String::new());
    let error = outbox_sea_orm::enqueue_records(&db.db, &[record])
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidEvent { .. }), "{error:?}");
    assert!(error.to_string().contains("key is empty"), "{error}");
    let stats = db.store().stats(Utc::now()).await.unwrap();
    assert_eq!(stats.pending, 0);
}

on!(an_empty_key_is_refused_at_enqueue: Postgres, MySql, SqliteFile);

// --- Housekeeping racing writers ------------------------------------------

/// Purging idle keys while a writer enqueues for one of them (its upsert
/// made the key busy, not yet committed) leaves that key in place: the
/// record is claimed.
async fn purging_idle_keys_spares_a_key_a_writer_is_enqueueing_for(db: TestDb) {
    let store = db.store().keep_published();
    let sink = InMemorySink::new();
    let relay = relay(&store, sink.clone());
    enqueue(&db.db, &step("k", 1)).await.unwrap();
    run_until(&relay, "the first record", || sink.delivered().len() == 1).await;
    // k is idle now. A writer enqueues for it and holds its transaction.
    let writer = db.db.begin().await.unwrap();
    enqueue(&writer, &step("k", 2)).await.unwrap();
    let purge = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .purge_published(Utc::now() + TimeDelta::hours(1), 100)
                .await
        }
    });
    // The purge waits for the writer's lock on k; then the writer commits.
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.commit().await.unwrap();
    assert_eq!(purge.await.unwrap().unwrap(), 1, "the published record");
    run_until(&relay, "the record enqueued during the purge", || {
        sink.delivered().len() == 2
    })
    .await;
    assert_eq!(steps_by_key(&sink)["k"], vec![1, 2]);
}

on!(purging_idle_keys_spares_a_key_a_writer_is_enqueueing_for: Postgres, MySql, SqliteFile);

/// A record another client inserted into `outbox` directly (not through
/// `enqueue`, so with no key row) is picked up once housekeeping runs.
async fn housekeeping_registers_the_key_of_a_record_inserted_by_another_client(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    let relay = relay(&store, sink.clone());
    enqueue(&db.db, &step("k", 1)).await.unwrap();
    // Another client copies the row as a new event of a new key.
    let copy = "INSERT INTO outbox (event_id, topic, partition_key, event_type, schema_version, \
                payload, headers, status, attempts, available_at, created_at, updated_at) \
                SELECT event_id, topic, 'foreign', event_type, schema_version, \
                REPLACE(payload, '\"k\"', '\"foreign\"'), headers, status, attempts, \
                available_at, created_at, updated_at FROM outbox";
    let copy = match db.db_backend() {
        sea_orm::DbBackend::Postgres => {
            copy.replace("SELECT event_id,", "SELECT gen_random_uuid(),")
        }
        sea_orm::DbBackend::MySql => copy.replace(
            "SELECT event_id,",
            "SELECT UNHEX(REPLACE(UUID(), '-', '')),",
        ),
        _ => copy.replace("SELECT event_id,", "SELECT randomblob(16),"),
    };
    db.exec(&copy).await;
    run_until(&relay, "the enqueued record", || {
        sink.delivered().len() == 1
    })
    .await;
    relay.run_once().await.unwrap();
    assert_eq!(
        sink.delivered().len(),
        1,
        "the foreign record has no key row yet"
    );
    store
        .purge_published(Utc::now() - TimeDelta::hours(1), 100)
        .await
        .unwrap();
    run_until(&relay, "the foreign record", || sink.delivered().len() == 2).await;
    assert_eq!(steps_by_key(&sink)["foreign"], vec![1]);
}

on!(housekeeping_registers_the_key_of_a_record_inserted_by_another_client: Postgres, MySql, SqliteFile);

/// An unreadable row behind a claimed record of its key is not set aside
/// in that claim: if the earlier record then fails, it is retried (the
/// dead row does not hold the key against it), and the unreadable row is
/// set aside once it heads its key.
async fn an_unreadable_row_is_set_aside_only_as_the_head_of_its_key(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    enqueue_all(&db.db, [&step("k", 0), &step("k", 1)])
        .await
        .unwrap();
    db.exec("UPDATE outbox SET headers = 'not json' WHERE id = (SELECT MAX(id) FROM (SELECT id FROM outbox) t)")
        .await;
    sink.fail_next(1, FailureKind::Retriable);
    let relay = relay(&store, sink.clone());
    relay.run_once().await.unwrap();
    assert_eq!(store.stats(Utc::now()).await.unwrap().dead, 0);
    store.advance_clock(Duration::from_secs(60));
    run_until(&relay, "k's first record, retried", || {
        sink.delivered().len() == 1
    })
    .await;
    relay.run_once().await.unwrap();
    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("headers")
    );
    assert_eq!(steps_by_key(&sink)["k"], vec![0]);
}

on!(an_unreadable_row_is_set_aside_only_as_the_head_of_its_key: Postgres, MySql, SqliteFile);

// --- A relay killed mid-batch ----------------------------------------------

/// Delivers every record to a shared log, then (when `hang` is set) never
/// returns: a relay process killed after the broker acknowledged and
/// before anything was marked.
#[derive(Debug, Clone, Default)]
struct LogSink {
    log: Arc<Mutex<Vec<(String, u32)>>>,
    hang: Option<Arc<tokio::sync::Notify>>,
}

#[async_trait::async_trait]
impl Sink for LogSink {
    async fn publish_each(
        &self,
        records: &[outbox_engine::OutboxRecord],
        report: &(dyn Fn(usize, outbox_engine::Outcome) + Send + Sync),
    ) {
        for record in records {
            let step = record.decode_as::<Step>().unwrap().unwrap();
            self.log.lock().unwrap().push((step.order, step.n));
        }
        if let Some(delivered) = &self.hang {
            delivered.notify_one();
            std::future::pending::<()>().await;
        }
        for index in 0..records.len() {
            report(index, outbox_engine::Outcome::Delivered);
        }
    }
}

async fn a_relay_killed_after_delivery_loses_nothing_and_keeps_order(db: TestDb) {
    let store = db.store();
    let events: Vec<Step> = (0..40).map(|n| step(&format!("k{}", n % 4), n)).collect();
    enqueue_all(&db.db, &events).await.unwrap();
    let log: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let delivered = Arc::new(tokio::sync::Notify::new());
    let doomed = LogSink {
        log: log.clone(),
        hang: Some(delivered.clone()),
    };
    let killed = tokio::spawn({
        let relay = relay(&store, doomed);
        async move { relay.run_once().await }
    });
    delivered.notified().await;
    killed.abort();
    let in_flight = log.lock().unwrap().len();
    assert!(in_flight > 0);
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!(
        (stats.published, stats.pending),
        (0, 40),
        "nothing was marked"
    );

    // Its lease runs out; another relay publishes everything.
    store.advance_clock(Duration::from_secs(31));
    let rescuer = relay(
        &store,
        LogSink {
            log: log.clone(),
            hang: None,
        },
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.stats(Utc::now()).await.unwrap().pending > 0 {
        assert!(Instant::now() < deadline, "not drained after the takeover");
        rescuer.run_once().await.unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log.len(),
        40 + in_flight,
        "duplicates only for the batch in flight"
    );
    // The first copy of each event, per key, in enqueue order.
    let mut first: HashMap<String, Vec<u32>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (key, n) in log {
        if seen.insert(n) {
            first.entry(key).or_default().push(n);
        }
    }
    assert_eq!(seen.len(), 40, "every event delivered");
    for (key, ns) in first {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "first copies of {key} out of order");
    }
}

on!(a_relay_killed_after_delivery_loses_nothing_and_keeps_order: Postgres, MySql, SqliteFile);
