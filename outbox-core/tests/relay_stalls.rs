//! The relay when something is slow or stuck: a settlement that waits on
//! the database, records that take long to publish, a settlement that
//! fails, a batch that outlives its lease, a key's head that fails while
//! later records of the key are still in the sink's hands. Over the
//! in-memory store, with wrappers that stall or fail on purpose.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_engine::testkit::record;
use outbox_engine::{
    ClaimRequest, ExponentialBackoff, InMemorySink, InMemoryStore, NewRecord, OutboxRecord,
    OutboxStore, Outcome, Relay, Settled, Settlement, Sink, Status, StoreError,
};
use tokio::sync::watch;
use tokio::time::Instant;

/// A store whose settlements wait while its gate is closed, and fail while
/// `failures` is above zero (counting down).
#[derive(Clone)]
struct StallingStore {
    inner: InMemoryStore,
    gate: watch::Sender<bool>,
    failures: Arc<AtomicU32>,
    settles: Arc<AtomicU32>,
}

impl StallingStore {
    fn new(inner: InMemoryStore) -> Self {
        Self {
            inner,
            gate: watch::channel(true).0,
            failures: Arc::default(),
            settles: Arc::default(),
        }
    }

    fn close(&self) {
        self.gate.send_replace(false);
    }

    fn open(&self) {
        self.gate.send_replace(true);
    }
}

#[async_trait]
impl OutboxStore for StallingStore {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        self.inner.enqueue(records).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        self.inner.claim(request).await
    }

    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
        self.settles.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gate.subscribe();
        let _ = gate.wait_for(|open| *open).await;
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err(StoreError::retriable(std::io::Error::other(
                "lock wait timeout exceeded (injected)",
            )));
        }
        self.inner.settle(owner, settlement).await
    }

    async fn renew(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        self.inner.renew(owner, ids, lease).await
    }
}

/// Runs `relay` until `done` resolves, then shuts it down and waits for it.
async fn run_while<St: OutboxStore, Si: Sink>(
    relay: &Relay<St, Si>,
    done: impl Future<Output = ()>,
) {
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

/// Waits until `condition` holds, failing after `within`.
async fn until(what: &str, within: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A sink that reports the first record at once and each next one after
/// a timer of its own, noting when each report was made.
#[derive(Clone, Default)]
struct TimerSink {
    reported: Arc<Mutex<Vec<Instant>>>,
}

#[async_trait]
impl Sink for TimerSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        for index in 0..records.len() {
            if index > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            self.reported.lock().unwrap().push(Instant::now());
            report(index, Outcome::Delivered);
        }
    }
}

/// The relay polls the sink's publish while a settlement waits on the
/// store: a sink's own timers (Kafka's purges before librdkafka times
/// records out) fire on time, not after the database answers.
#[tokio::test(start_paused = true)]
async fn the_sink_keeps_working_while_a_settlement_waits() {
    let memory = InMemoryStore::new();
    let records: Vec<NewRecord> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(n, key)| record(Some(key), n as u32))
        .collect();
    memory.enqueue(&records).await.unwrap();
    let store = StallingStore::new(memory.clone());
    store.close();
    let sink = TimerSink::default();
    let relay = Relay::builder(store.clone(), sink.clone()).build().unwrap();
    let started = Instant::now();
    let opened = Arc::new(Mutex::new(None));
    run_while(&relay, async {
        // The first settlement (of the first record) waits 2 s.
        until("the first settlement", Duration::from_secs(60), || {
            store.settles.load(Ordering::SeqCst) > 0
        })
        .await;
        tokio::time::sleep_until(started + Duration::from_secs(2)).await;
        *opened.lock().unwrap() = Some(Instant::now());
        store.open();
        until("every record published", Duration::from_secs(60), || {
            memory.records_with_status(Status::Published).len() == 3
        })
        .await;
    })
    .await;
    let opened = opened.lock().unwrap().expect("the gate opened");
    let reported = sink.reported.lock().unwrap().clone();
    assert_eq!(reported.len(), 3);
    for (n, at) in reported.iter().enumerate() {
        assert!(
            *at < opened,
            "the sink's report {n} came {:?} after the start, after the stalled settlement \
             ended at {:?}: the sink was not driven while the relay settled",
            *at - started,
            opened - started
        );
    }
    assert_eq!(
        reported[2] - reported[0],
        Duration::from_millis(600),
        "the sink's timers fired on time"
    );
}

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
        outbox_engine::publish_by_key(records, report, |record| async move {
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

/// Records that take long to publish hold their own room only: with a slow
/// record in each of the first two batches (which used to pin both batch
/// slots), the relay goes on claiming and delivering every other record.
#[tokio::test]
async fn slow_records_take_up_only_their_own_room() {
    let store = InMemoryStore::new();
    let first: Vec<NewRecord> = ["s0", "h0", "h1", "h2", "s1", "h3", "h4", "h5"]
        .iter()
        .enumerate()
        .map(|(n, key)| record(Some(key), n as u32))
        .collect();
    store.enqueue(&first).await.unwrap();
    let sink = SlowKeysSink {
        inner: InMemorySink::new(),
        gate: watch::channel(false).0,
    };
    let relay = Relay::builder(store.clone(), sink.clone())
        .batch_size(4)
        .max_in_flight(8)
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(20)).unwrap(),
        )
        .build()
        .unwrap();
    run_while(&relay, async {
        until("the first two batches", Duration::from_secs(10), || {
            sink.inner.delivered().len() >= 6
        })
        .await;
        let healthy: Vec<NewRecord> = (0..40)
            .map(|n| record(Some(&format!("h{}", n % 10)), 100 + n))
            .collect();
        store.enqueue(&healthy).await.unwrap();
        until(
            "every healthy record, while the slow ones are in flight",
            Duration::from_secs(10),
            || store.records_with_status(Status::Published).len() == 46,
        )
        .await;
        // The slow records are still in the sink's hands, leased.
        let pending = store.records_with_status(Status::Pending);
        assert_eq!(pending.len(), 2);
        sink.gate.send_replace(true);
    })
    .await;
    let slow = store.records_with_status(Status::Pending);
    assert_eq!(slow.len(), 2, "the slow records wait for a retry");
    assert!(slow.iter().all(|r| r.attempts >= 1), "{slow:?}");
}

/// A settlement that fails is tried again, also the last of a batch: no
/// outcome is dropped, nothing is published twice.
#[tokio::test]
async fn a_failed_settlement_is_tried_again_and_nothing_is_published_twice() {
    let memory = InMemoryStore::new();
    let records: Vec<NewRecord> = (0..10)
        .map(|n| record(Some(&format!("k{}", n % 3)), n))
        .collect();
    memory.enqueue(&records).await.unwrap();
    let store = StallingStore::new(memory.clone());
    store.failures.store(3, Ordering::SeqCst);
    let sink = InMemorySink::new();
    let relay = Relay::builder(store.clone(), sink.clone())
        .batch_size(10)
        .build()
        .unwrap();
    run_while(&relay, async {
        until("every record published", Duration::from_secs(10), || {
            memory.records_with_status(Status::Published).len() == 10
        })
        .await;
    })
    .await;
    assert_eq!(store.failures.load(Ordering::SeqCst), 0, "three failed");
    assert_eq!(sink.delivered().len(), 10, "each delivered once");
    assert_eq!(relay.status().totals.published, 10);

    // One batch on its own: its only settlement fails three times.
    let memory = InMemoryStore::new();
    memory.enqueue(&records).await.unwrap();
    let store = StallingStore::new(memory.clone());
    store.failures.store(3, Ordering::SeqCst);
    let sink = InMemorySink::new();
    let relay = Relay::builder(store.clone(), sink.clone()).build().unwrap();
    let report = relay.run_once().await.expect("settled in the end");
    assert_eq!(report.published, 10);
    assert_eq!(memory.records_with_status(Status::Published).len(), 10);
}

/// Which relay has which key in its sink's hands, and whether two ever
/// held one key at once.
#[derive(Clone, Default)]
struct Holders {
    state: Arc<Mutex<HoldersState>>,
}

#[derive(Default)]
struct HoldersState {
    holding: HashMap<String, HashSet<String>>,
    shared: Vec<String>,
    sent: Vec<(String, i64)>,
}

/// A sink that takes `per_record` for each record, one key at a time, and
/// notes in [`Holders`] the keys it holds.
#[derive(Clone)]
struct SlowSink {
    name: String,
    per_record: Duration,
    holders: Holders,
}

#[async_trait]
impl Sink for SlowSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        let keys: HashSet<String> = records.iter().filter_map(|r| r.key.clone()).collect();
        {
            let mut state = self.holders.state.lock().unwrap();
            for key in &keys {
                let holders = state.holding.entry(key.clone()).or_default();
                if !holders.is_empty() {
                    state.shared.push(key.clone());
                }
                let holders = state.holding.entry(key.clone()).or_default();
                holders.insert(self.name.clone());
            }
        }
        outbox_engine::publish_by_key(records, report, |record| async move {
            tokio::time::sleep(self.per_record).await;
            self.holders
                .state
                .lock()
                .unwrap()
                .sent
                .push((self.name.clone(), record.id));
            Outcome::Delivered
        })
        .await;
        let mut state = self.holders.state.lock().unwrap();
        for key in &keys {
            state
                .holding
                .entry(key.clone())
                .or_default()
                .remove(&self.name);
        }
    }
}

/// A batch that takes longer than its lease renews it: another relay never
/// takes its key over while its records are in the sink's hands.
#[tokio::test]
async fn a_batch_that_outlives_its_lease_renews_it() {
    let store = InMemoryStore::new();
    let records: Vec<NewRecord> = (0..4).map(|n| record(Some("hot"), n)).collect();
    store.enqueue(&records).await.unwrap();
    let holders = Holders::default();
    let relay = |name: &str, per_record: Duration| {
        Relay::builder(
            store.clone(),
            SlowSink {
                name: name.to_owned(),
                per_record,
                holders: holders.clone(),
            },
        )
        .relay_id(name)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap()
    };
    // The first relay claims all four records and takes 2.4 s over them.
    let slow = relay("slow", Duration::from_millis(600));
    let other = relay("other", Duration::from_millis(1));
    run_while(&slow, async {
        until("the slow relay's claim", Duration::from_secs(5), || {
            !holders.state.lock().unwrap().holding.is_empty()
        })
        .await;
        run_while(&other, async {
            until("everything published", Duration::from_secs(10), || {
                store.records_with_status(Status::Published).len() == 4
            })
            .await;
        })
        .await;
    })
    .await;
    let state = holders.state.lock().unwrap();
    assert!(
        state.shared.is_empty(),
        "two relays held key {:?} at once",
        state.shared
    );
    let by_other: Vec<i64> = state
        .sent
        .iter()
        .filter(|(name, _)| name == "other")
        .map(|(_, id)| *id)
        .collect();
    assert!(by_other.is_empty(), "the other relay sent {by_other:?}");
    assert_eq!(state.sent.len(), 4, "each record sent once");
}

/// A sink that hands every record of the batch over at once (as Kafka's
/// pipelined mode does): the first record of key `k` fails at once, the
/// second completes only when the gate opens; it notes every hand-off and
/// completion.
#[derive(Clone)]
struct PipelinedSink {
    gate: watch::Sender<bool>,
    log: Arc<Mutex<Vec<String>>>,
    offers: Arc<Mutex<HashMap<i64, u32>>>,
}

#[async_trait]
impl Sink for PipelinedSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        let sends = records
            .iter()
            .enumerate()
            .map(|(index, record)| async move {
                let offer = {
                    let mut offers = self.offers.lock().unwrap();
                    let offer = offers.entry(record.id).or_default();
                    *offer += 1;
                    *offer
                };
                let name = format!("{}#{offer}", record.payload);
                self.log.lock().unwrap().push(format!("send {name}"));
                let outcome = if record.payload == r#"{"n":1}"# && offer == 1 {
                    Outcome::retriable("request timed out")
                } else {
                    if record.payload == r#"{"n":2}"# && offer == 1 {
                        let mut gate = self.gate.subscribe();
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    Outcome::Delivered
                };
                self.log.lock().unwrap().push(format!("done {name}"));
                report(index, outcome);
            });
        futures::future::join_all(sends).await;
    }
}

/// A key's head that fails is retried only once every later record of its
/// key in the batch has an outcome: never sent again while they are still
/// in the sink's hands.
#[tokio::test]
async fn a_failed_head_is_not_retried_while_its_key_is_in_the_sink() {
    let store = InMemoryStore::new();
    let records: Vec<NewRecord> = (1..=3).map(|n| record(Some("k"), n)).collect();
    store.enqueue(&records).await.unwrap();
    let sink = PipelinedSink {
        gate: watch::channel(false).0,
        log: Arc::default(),
        offers: Arc::default(),
    };
    let relay = Relay::builder(store.clone(), sink.clone())
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1)).unwrap(),
        )
        .poll_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    run_while(&relay, async {
        until("the first hand-offs", Duration::from_secs(5), || {
            sink.log.lock().unwrap().len() >= 4
        })
        .await;
        // Time for a relay that settled the head at once to claim it again.
        tokio::time::sleep(Duration::from_millis(300)).await;
        sink.gate.send_replace(true);
        until("the head published", Duration::from_secs(5), || {
            store.records_with_status(Status::Published).len() == 3
        })
        .await;
    })
    .await;
    let log = sink.log.lock().unwrap().clone();
    let second_offer = log
        .iter()
        .position(|line| line == r#"send {"n":1}#2"#)
        .expect("the head was sent again");
    let second_done = log
        .iter()
        .position(|line| line == r#"done {"n":2}#1"#)
        .expect("the second record completed");
    assert!(
        second_done < second_offer,
        "the head was sent again while a later record of its key was in the sink: {log:?}"
    );
}
