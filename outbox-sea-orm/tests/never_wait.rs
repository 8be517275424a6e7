//! The outbox never makes the service wait, on real databases: a business
//! transaction left open delays only its own key's records, never the
//! writers of other keys, the relay's other records, the idle-key purge or
//! the operators' requeue; records slow to publish take up only their own
//! room in the relay; on SQLite, where one writer at a time is the rule,
//! the relay outlasts a long writer and loses nothing.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use common::{TestDb, wait_until};
use outbox_engine::testkit::record;
use outbox_engine::{
    DeadFilter, DeadLetter, InMemorySink, NewRecord, OutboxAdmin, OutboxRecord, OutboxStore,
    Outcome, Relay, Sink, Status, publish_by_key,
};
use outbox_sea_orm::{SeaOrmStore, enqueue_records};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, IsolationLevel, Statement, TransactionTrait,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a writer may take when it must not wait for anything but its
/// own key: far above what it takes, far below the 8 s and more it waited
/// behind a settlement.
const NO_WAIT: Duration = Duration::from_secs(5);

/// Commits `records` in a transaction of their own, within [`NO_WAIT`].
async fn commit(db: &DatabaseConnection, records: &[NewRecord], what: &str) {
    let started = Instant::now();
    let written = tokio::time::timeout(NO_WAIT, async {
        let txn = db.begin().await.unwrap();
        enqueue_records(&txn, records).await.unwrap();
        txn.commit().await.unwrap();
    })
    .await;
    assert!(
        written.is_ok(),
        "{what}: the writer waited more than {NO_WAIT:?} (for a key it does not write)"
    );
    eprintln!("{what}: committed in {:?}", started.elapsed());
}

/// Runs `relay` until `done` resolves, then shuts it down.
async fn run_while<Si: Sink>(relay: &Relay<SeaOrmStore, Si>, done: impl Future<Output = ()>) {
    let (stop, stopped) = watch::channel(false);
    let running = relay.run(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    });
    let watching = async {
        done.await;
        stop.send_replace(true);
    };
    tokio::join!(running, watching);
}

/// How many of `records` the store has published: deleted (the store's
/// default), or marked published where it keeps a history.
async fn published(store: &SeaOrmStore, records: &[NewRecord]) -> usize {
    let mut count = 0;
    for record in records {
        let found = store
            .find(outbox_engine::RecordRef::EventId(record.event_id))
            .await
            .unwrap();
        if found.is_none_or(|r| r.status == Status::Published) {
            count += 1;
        }
    }
    count
}

/// A sink that takes `pace` per record (the records of a key one after
/// the other, keys at once), delivering to an [`InMemorySink`], once its
/// gate is open.
#[derive(Clone)]
struct PacedSink {
    inner: InMemorySink,
    pace: Duration,
    gate: watch::Sender<bool>,
}

impl PacedSink {
    fn new(inner: &InMemorySink, pace: Duration) -> Self {
        Self {
            inner: inner.clone(),
            pace,
            gate: watch::channel(true).0,
        }
    }

    /// Holds every record until [`open`](Self::open).
    fn closed(self) -> Self {
        self.gate.send_replace(false);
        self
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

#[async_trait]
impl Sink for PacedSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        publish_by_key(records, report, |record| async move {
            let mut gate = self.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            tokio::time::sleep(self.pace).await;
            let mut outcomes = self.inner.publish(std::slice::from_ref(record)).await;
            outcomes.pop().expect("one outcome")
        })
        .await;
    }
}

/// The payload's `n` of each delivered record of `key`, in order.
fn delivered_of(sink: &InMemorySink, key: &str) -> Vec<String> {
    sink.delivered()
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| r.payload)
        .collect()
}

/// The issue's scenario: six committed records over `a`, `k` and `m`, a
/// sink that takes 200 ms a record. Once the relay has claimed them, a
/// business transaction enqueues for `k` and stays open. Then: a writer of
/// `a` commits at once; the records of `a` and `m` are marked published;
/// the relay claims and delivers a new key; and once the long transaction
/// commits, `k`'s records come in commit order within a lease.
async fn a_long_transaction_delays_only_its_own_key(db: TestDb) {
    let store = db.store();
    let first: Vec<NewRecord> = ["a", "k", "m", "a", "k", "m"]
        .iter()
        .enumerate()
        .map(|(n, key)| record(Some(key), n as u32))
        .collect();
    commit(&db.db, &first, "the first records").await;
    let sink = InMemorySink::new();
    let relay = Relay::builder(
        store.clone(),
        PacedSink::new(&sink, Duration::from_millis(200)),
    )
    .lease(Duration::from_secs(3))
    .build()
    .unwrap();
    run_while(&relay, async {
        wait_until("the relay's first delivery", NO_WAIT, || async {
            !sink.delivered().is_empty()
        })
        .await;
        // A business transaction enqueues for k and stays open.
        let long = db.db.begin().await.unwrap();
        let held = record(Some("k"), 100);
        enqueue_records(&long, std::slice::from_ref(&held))
            .await
            .unwrap();
        // Long enough for the relay to settle the batch, which includes k.
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let a3 = record(Some("a"), 101);
        commit(&db.db, std::slice::from_ref(&a3), "a writer of key a").await;
        let others: Vec<NewRecord> = first
            .iter()
            .filter(|r| r.key.as_deref() != Some("k"))
            .cloned()
            .collect();
        wait_until(
            "the records of a and m marked published",
            NO_WAIT,
            || async { published(&store, &others).await == 4 },
        )
        .await;
        // The relay goes on with other keys all along.
        let z = record(Some("z"), 102);
        commit(&db.db, std::slice::from_ref(&z), "a writer of key z").await;
        wait_until("a new key delivered and marked", NO_WAIT, || async {
            published(&store, std::slice::from_ref(&z)).await == 1
                && published(&store, std::slice::from_ref(&a3)).await == 1
        })
        .await;
        long.commit().await.unwrap();
        let committed = Instant::now();
        wait_until(
            "k's records, within a lease of the commit",
            Duration::from_secs(3) + NO_WAIT,
            || async { published(&store, std::slice::from_ref(&held)).await == 1 },
        )
        .await;
        eprintln!(
            "k's held record published {:?} after its commit",
            committed.elapsed()
        );
    })
    .await;
    assert_eq!(
        delivered_of(&sink, "k"),
        [r#"{"n":1}"#, r#"{"n":4}"#, r#"{"n":100}"#],
        "k in commit order"
    );
    let stats = store.stats(chrono::Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
}

on!(a_long_transaction_delays_only_its_own_key: Postgres, MySql);

/// A transaction that never ends (a session idle in transaction) holding
/// a key of each of two batches in flight: the relay goes on with
/// everything else, and shuts down on time.
async fn a_transaction_left_open_never_stops_the_relay(db: TestDb) {
    let store = db.store();
    let first: Vec<NewRecord> = (0..8).map(|n| record(Some(&format!("k{n}")), n)).collect();
    commit(&db.db, &first, "the first records").await;
    let sink = InMemorySink::new();
    let paced = PacedSink::new(&sink, Duration::from_millis(50)).closed();
    let relay = Relay::builder(store.clone(), paced.clone())
        .batch_size(4)
        .max_in_flight(8)
        .build()
        .unwrap();
    let idle = db.db.begin().await.unwrap();
    let started = Instant::now();
    run_while(&relay, async {
        wait_until("both batches claimed", NO_WAIT, || async {
            store.stats(chrono::Utc::now()).await.unwrap().leased == 8
        })
        .await;
        // k0 is in the first batch, k4 in the second; the transaction
        // holds both keys while the batches settle.
        enqueue_records(&idle, &[record(Some("k0"), 100), record(Some("k4"), 101)])
            .await
            .unwrap();
        paced.open();
        let later: Vec<NewRecord> = (0..20)
            .map(|n| record(Some(&format!("x{n}")), 200 + n))
            .collect();
        commit(&db.db, &later, "writers of other keys").await;
        wait_until(
            "every other record published",
            Duration::from_secs(20),
            || async {
                published(&store, &first).await == 8 && published(&store, &later).await == 20
            },
        )
        .await;
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the relay shut down on time"
    );
    drop(idle);
}

on!(a_transaction_left_open_never_stops_the_relay: Postgres, MySql);

/// Purging idle keys never waits for a writer holding one of them, so it
/// never holds another key's row while it waits: a writer of that other
/// key commits at once.
async fn the_idle_key_purge_never_blocks_a_writer(db: TestDb) {
    let store = db.store();
    let sink = InMemorySink::new();
    let first = [record(Some("a"), 1), record(Some("k"), 2)];
    commit(&db.db, &first, "the first records").await;
    let relay = Relay::builder(store.clone(), sink.clone()).build().unwrap();
    while relay.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(
        published(&store, &first).await,
        2,
        "a and k have nothing pending now"
    );
    let long = db.db.begin().await.unwrap();
    let held = record(Some("k"), 3);
    enqueue_records(&long, std::slice::from_ref(&held))
        .await
        .unwrap();
    let tidy = tokio::spawn({
        let store = store.clone();
        async move { tokio::time::timeout(NO_WAIT, store.tidy(100)).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    commit(&db.db, &[record(Some("a"), 4)], "a writer of key a").await;
    tidy.await
        .unwrap()
        .expect("the purge of idle keys waited for the open transaction")
        .unwrap();
    long.commit().await.unwrap();
    while relay.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(
        published(&store, std::slice::from_ref(&held)).await,
        1,
        "k's key was spared"
    );
}

on!(the_idle_key_purge_never_blocks_a_writer: Postgres, MySql);

/// Requeueing every dead record takes each key in a transaction of its
/// own: while it waits for a writer holding one key, a writer of another
/// key commits at once.
async fn requeueing_all_never_blocks_a_writer_of_another_key(db: TestDb) {
    let store = db.store();
    let first = [record(Some("a"), 1), record(Some("k"), 2)];
    commit(&db.db, &first, "the first records").await;
    let claimed = store
        .claim(&outbox_engine::ClaimRequest {
            owner: "r".into(),
            limit: 10,
            lease: Duration::from_secs(30),
            dead_holds_key: true,
        })
        .await
        .unwrap();
    let dead: Vec<DeadLetter> = claimed
        .iter()
        .map(|r| DeadLetter {
            id: r.id,
            error: "too large".into(),
            holds_key: true,
        })
        .collect();
    assert_eq!(store.mark_dead("r", &dead).await.unwrap(), 2);
    let long = db.db.begin().await.unwrap();
    enqueue_records(&long, &[record(Some("k"), 3)])
        .await
        .unwrap();
    let requeue = tokio::spawn({
        let store = store.clone();
        async move { store.requeue_all(&DeadFilter::all()).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    commit(&db.db, &[record(Some("a"), 4)], "a writer of key a").await;
    long.commit().await.unwrap();
    assert_eq!(requeue.await.unwrap().unwrap(), 2);
}

on!(requeueing_all_never_blocks_a_writer_of_another_key: Postgres, MySql);

/// A sink that delivers at once, except records of keys starting with `s`,
/// which it holds until its gate opens, then fails retriably.
#[derive(Clone)]
struct SlowKeysSink {
    inner: InMemorySink,
    gate: watch::Sender<bool>,
}

#[async_trait]
impl Sink for SlowKeysSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        publish_by_key(records, report, |record| async move {
            if record
                .key
                .as_deref()
                .is_some_and(|key| key.starts_with('s'))
            {
                let mut gate = self.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
                return Outcome::retriable("the partition has no leader");
            }
            let mut outcomes = self.inner.publish(std::slice::from_ref(record)).await;
            outcomes.pop().expect("one outcome")
        })
        .await;
    }
}

/// Records that take long to publish (a partition without a leader) take
/// up only their own room: with one in each of the first batches, healthy
/// records committed meanwhile are all delivered while they hang, and the
/// slow ones are retried later, none dead.
async fn slow_records_never_pin_the_relay(db: TestDb) {
    let store = db.store();
    let first: Vec<NewRecord> = ["s0", "h0", "h1", "h2", "s1", "h3", "h4", "h5"]
        .iter()
        .enumerate()
        .map(|(n, key)| record(Some(key), n as u32))
        .collect();
    // One transaction each, so the keys are ready in this order and each
    // of the first two batches of four has a slow record.
    for record in &first {
        commit(&db.db, std::slice::from_ref(record), "the first records").await;
    }
    let sink = SlowKeysSink {
        inner: InMemorySink::new(),
        gate: watch::channel(false).0,
    };
    let relay = Relay::builder(store.clone(), sink.clone())
        .batch_size(4)
        .max_in_flight(8)
        .build()
        .unwrap();
    let healthy: Vec<NewRecord> = (0..100)
        .map(|n| record(Some(&format!("h{}", n % 20)), 100 + n))
        .collect();
    run_while(&relay, async {
        wait_until("the first two batches", NO_WAIT, || async {
            sink.inner.delivered().len() >= 6
        })
        .await;
        for chunk in healthy.chunks(10) {
            commit(&db.db, chunk, "healthy writers").await;
        }
        wait_until(
            "every healthy record, while the slow ones hang",
            Duration::from_secs(20),
            || async { published(&store, &healthy).await == healthy.len() },
        )
        .await;
        sink.gate.send_replace(true);
    })
    .await;
    let slow: Vec<OutboxRecord> = {
        let mut slow = Vec::new();
        for record in first
            .iter()
            .filter(|r| r.key.as_deref().unwrap().starts_with('s'))
        {
            let found = store
                .find(outbox_engine::RecordRef::EventId(record.event_id))
                .await
                .unwrap()
                .unwrap();
            slow.push(found);
        }
        slow
    };
    for record in &slow {
        assert_eq!(record.status, Status::Pending, "{record:?}");
        assert!(record.attempts >= 1, "{record:?}");
    }
}

on!(slow_records_never_pin_the_relay: Postgres, MySql);

/// SQLite admits one writer at a time: a business transaction left open
/// holds up every other writer, the relay's settlements included, which
/// fail with `SQLITE_BUSY` after the busy timeout. The relay tries them
/// again: once the transaction commits, everything is published once, and
/// nothing is dead.
async fn sqlite_the_relay_outlasts_a_long_writer(db: TestDb) {
    let store = db.store();
    let first: Vec<NewRecord> = (0..6)
        .map(|n| record(Some(&format!("k{}", n % 3)), n))
        .collect();
    enqueue_records(&db.db, &first).await.unwrap();
    let sink = InMemorySink::new();
    let relay = Relay::builder(
        store.clone(),
        PacedSink::new(&sink, Duration::from_millis(500)),
    )
    .build()
    .unwrap();
    run_while(&relay, async {
        wait_until("the first delivery", NO_WAIT, || async {
            !sink.delivered().is_empty()
        })
        .await;
        let long = db.db.begin().await.unwrap();
        enqueue_records(&long, &[record(Some("k0"), 100)])
            .await
            .unwrap();
        // Longer than SQLite's busy timeout (5 s).
        tokio::time::sleep(Duration::from_secs(7)).await;
        long.commit().await.unwrap();
        wait_until(
            "every record published",
            Duration::from_secs(20),
            || async { store.stats(chrono::Utc::now()).await.unwrap().pending == 0 },
        )
        .await;
    })
    .await;
    let stats = store.stats(chrono::Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    let ids: HashSet<uuid::Uuid> = sink.delivered().iter().map(|r| r.event_id).collect();
    assert_eq!(ids.len(), 7);
    assert_eq!(sink.delivered().len(), 7, "each delivered once");
}

on!(sqlite_the_relay_outlasts_a_long_writer: SqliteFile);

/// On PostgreSQL, writers of one key at `REPEATABLE READ` take turns
/// without a serialization failure: a writer locks a busy key's row
/// without writing it, so the second writer, whose snapshot predates the
/// first one's commit, finds the row as its snapshot saw it.
async fn repeatable_read_writers_of_a_busy_key_take_turns(db: TestDb) {
    let store = db.store();
    commit(&db.db, &[record(Some("k"), 1)], "the first record").await;
    let options = || sea_orm::TransactionOptions {
        isolation_level: Some(IsolationLevel::RepeatableRead),
        access_mode: Some(AccessMode::ReadWrite),
        ..Default::default()
    };
    let first = db.db.begin_with_options(options()).await.unwrap();
    enqueue_records(&first, &[record(Some("k"), 2)])
        .await
        .unwrap();
    let db2 = db.db.clone();
    let second = tokio::spawn(async move {
        let txn = db2.begin_with_options(options()).await.unwrap();
        // The snapshot is taken here, before the first writer commits.
        txn.query_one_raw(Statement::from_string(
            txn.get_database_backend(),
            "SELECT 1",
        ))
        .await
        .unwrap();
        let written = enqueue_records(&txn, &[record(Some("k"), 3)]).await;
        match written {
            Ok(()) => txn.commit().await.map_err(|e| e.to_string()),
            Err(error) => Err(outbox_engine::error_chain(&error)),
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.commit().await.unwrap();
    second
        .await
        .unwrap()
        .expect("the second writer of the key committed");
    let sink = InMemorySink::new();
    let relay = Relay::builder(store.clone(), sink.clone()).build().unwrap();
    while relay.run_once().await.unwrap().claimed > 0 {}
    assert_eq!(
        delivered_of(&sink, "k"),
        [r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#]
    );
}

on!(repeatable_read_writers_of_a_busy_key_take_turns: Postgres);
