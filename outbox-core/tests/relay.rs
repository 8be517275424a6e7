//! The relay's behaviour over the in-memory store and sink.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use outbox_engine::{
    ClaimRequest, DeadFilter, Error, ExponentialBackoff, FailureKind, InMemorySink, InMemoryStore,
    NewRecord, OutboxAdmin, OutboxEvent, OutboxRecord, OutboxStore, Relay, RunReport, Settlement,
    Status, StoreError,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "orders", key = order)]
struct Step {
    order: String,
    n: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "audit")]
struct Audited {
    what: String,
}

fn step(order: &str, n: u32) -> Step {
    Step {
        order: order.to_owned(),
        n,
    }
}

async fn enqueue(store: &InMemoryStore, events: &[&dyn OutboxEvent]) {
    let records: Vec<NewRecord> = events
        .iter()
        .map(|event| NewRecord::from_event(*event).unwrap())
        .collect();
    store.enqueue(&records).await.unwrap();
}

fn fast_backoff() -> ExponentialBackoff {
    ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(20)).unwrap()
}

fn relay(store: &InMemoryStore, sink: &InMemorySink) -> Relay<InMemoryStore, InMemorySink> {
    Relay::builder(store.clone(), sink.clone())
        .batch_size(10)
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

/// Runs batches until `done` holds, failing after a few seconds.
async fn run_until<St: OutboxStore, Si: outbox_engine::Sink>(
    relay: &Relay<St, Si>,
    done: impl Fn() -> bool,
) -> RunReport {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut total = RunReport::default();
    while !done() {
        assert!(Instant::now() < deadline, "not done in time: {total:?}");
        total += relay.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
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

#[tokio::test]
async fn publishes_everything_in_enqueue_order_per_key() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    for n in 0..10 {
        enqueue(
            &store,
            &[
                &step("a", n),
                &step("b", n),
                &Audited {
                    what: format!("{n}"),
                },
            ],
        )
        .await;
    }
    let relay = relay(&store, &sink);
    let report = run_until(&relay, || sink.delivered().len() == 30).await;
    assert_eq!(
        (
            report.claimed,
            report.published,
            report.retried,
            report.dead
        ),
        (30, 30, 0, 0)
    );
    let by_key = steps_by_key(&sink);
    assert_eq!(by_key["a"], (0..10).collect::<Vec<_>>());
    assert_eq!(by_key["b"], (0..10).collect::<Vec<_>>());
    assert_eq!(sink.events::<Audited>().len(), 10);
    assert_eq!(store.records_with_status(Status::Published).len(), 30);
    // Nothing left: the next batch is empty.
    assert_eq!(relay.run_once().await.unwrap(), RunReport::default());
}

#[tokio::test]
async fn retriable_failure_is_retried_after_backoff_then_published() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    enqueue(&store, &[&step("a", 1)]).await;
    sink.fail_next(1, FailureKind::Retriable);
    let relay = Relay::builder(store.clone(), sink.clone())
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(200), Duration::from_secs(1)).unwrap(),
        )
        .build()
        .unwrap();

    let first = relay.run_once().await.unwrap();
    assert_eq!((first.claimed, first.retried), (1, 1));
    let record = &store.records()[0];
    assert_eq!(record.attempts, 1);
    assert!(
        record
            .last_error
            .as_deref()
            .unwrap()
            .contains("injected failure")
    );
    // Backing off: at least half the 200 ms ceiling.
    assert!(record.available_at >= Utc::now() + chrono::TimeDelta::milliseconds(50));
    assert_eq!(
        relay.run_once().await.unwrap().claimed,
        0,
        "still in backoff"
    );

    run_until(&relay, || sink.delivered().len() == 1).await;
    assert_eq!(sink.events::<Step>(), vec![step("a", 1)]);
    assert_eq!(store.records()[0].status, Status::Published);
}

#[tokio::test]
async fn too_many_retriable_failures_move_the_record_to_dead() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    enqueue(&store, &[&step("a", 1)]).await;
    sink.fail_topic("orders", FailureKind::Retriable);
    let relay = Relay::builder(store.clone(), sink.clone())
        .max_attempts(3)
        .backoff(fast_backoff())
        .build()
        .unwrap();
    let report = run_until(&relay, || {
        !store.records_with_status(Status::Dead).is_empty()
    })
    .await;
    assert_eq!((report.retried, report.dead, report.published), (2, 1, 0));
    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 3);
    let error = dead[0].last_error.as_deref().unwrap();
    assert!(error.starts_with("gave up after 3 attempts"), "{error}");
    assert!(
        error.contains("injected failure on topic `orders`"),
        "{error}"
    );
    assert!(sink.delivered().is_empty());
}

#[tokio::test]
async fn permanent_failure_moves_the_record_to_dead_at_once() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    enqueue(&store, &[&step("a", 1), &step("b", 1)]).await;
    sink.fail_next(1, FailureKind::Permanent);
    let report = relay(&store, &sink).run_once().await.unwrap();
    assert_eq!((report.published, report.dead, report.retried), (1, 1, 0));
    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("injected failure")
    );
    assert_eq!(sink.events::<Step>(), vec![step("b", 1)]);
}

#[tokio::test]
async fn a_failing_key_holds_back_only_itself() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    for n in 0..3 {
        enqueue(&store, &[&step("stuck", n), &step("free", n)]).await;
    }
    // The first record handed over (stuck #0) fails.
    sink.fail_next(1, FailureKind::Retriable);
    let relay = Relay::builder(store.clone(), sink.clone())
        .backoff(ExponentialBackoff::new(Duration::from_secs(60), Duration::from_secs(60)).unwrap())
        .build()
        .unwrap();
    let report = relay.run_once().await.unwrap();
    assert_eq!(
        (report.claimed, report.published, report.retried),
        (6, 3, 1)
    );
    assert_eq!(
        report.released, 2,
        "stuck #1 and #2 were held back, not attempted"
    );
    assert_eq!(steps_by_key(&sink)["free"], vec![0, 1, 2]);
    assert!(!steps_by_key(&sink).contains_key("stuck"));

    // New events of the free key keep flowing while stuck waits out its backoff.
    enqueue(&store, &[&step("free", 3), &step("stuck", 3)]).await;
    let report = relay.run_once().await.unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(steps_by_key(&sink)["free"], vec![0, 1, 2, 3]);
    let held: Vec<u32> = store
        .records_with_status(Status::Pending)
        .iter()
        .map(|r| r.attempts)
        .collect();
    assert_eq!(held, vec![1, 0, 0, 0], "only stuck #0 counted an attempt");
}

#[tokio::test]
async fn requeued_dead_records_are_published() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    enqueue(&store, &[&step("a", 1), &step("b", 1), &step("c", 1)]).await;
    sink.fail_next(3, FailureKind::Permanent);
    let relay = relay(&store, &sink);
    assert_eq!(relay.run_once().await.unwrap().dead, 3);
    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();

    assert!(store.requeue(dead[1].id).await.unwrap());
    relay.run_once().await.unwrap();
    assert_eq!(sink.events::<Step>(), vec![step("b", 1)]);

    assert_eq!(store.requeue_all(&DeadFilter::all()).await.unwrap(), 2);
    relay.run_once().await.unwrap();
    assert_eq!(
        sink.events::<Step>(),
        vec![step("b", 1), step("a", 1), step("c", 1)]
    );
    assert_eq!(store.stats(Utc::now()).await.unwrap().dead, 0);
}

#[tokio::test]
async fn shutdown_leaves_no_claim_behind() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    for n in 0..50 {
        enqueue(&store, &[&step(&format!("k{}", n % 5), n)]).await;
    }
    sink.set_latency(Duration::from_millis(50));
    let relay = Arc::new(
        Relay::builder(store.clone(), sink.clone())
            .batch_size(5)
            .build()
            .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run(async { stopped.await.unwrap_or(()) }).await }
    });
    // Stop while a batch is in the sink.
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.stats(Utc::now()).await.unwrap().leased == 0 {
        assert!(Instant::now() < deadline, "the relay never claimed");
        tokio::task::yield_now().await;
    }
    assert!(relay.status().running);
    stop.send(()).unwrap();
    running.await.unwrap();

    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!(stats.leased, 0, "a claim outlived the relay: {stats:?}");
    assert!(stats.published >= 5, "the batch in flight was finished");
    assert!(stats.pending > 0, "the relay stopped claiming");
    assert_eq!(stats.published as usize, sink.delivered().len());
    let status = relay.status();
    assert!(!status.running);
    assert_eq!(status.totals.published as u64, stats.published);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_relays_publish_everything_once() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    let keys = 40;
    let per_key = 25;
    for n in 0..per_key {
        let events: Vec<Step> = (0..keys).map(|k| step(&format!("k{k}"), n)).collect();
        let refs: Vec<&dyn OutboxEvent> = events.iter().map(|e| e as &dyn OutboxEvent).collect();
        enqueue(&store, &refs).await;
    }
    // Some transient failures along the way.
    sink.fail_next(30, FailureKind::Retriable);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut relays = Vec::new();
    for i in 0..4 {
        let relay = Relay::builder(store.clone(), sink.clone())
            .relay_id(format!("relay-{i}"))
            .batch_size(16)
            .poll_interval(Duration::from_millis(5))
            .backoff(fast_backoff())
            .build()
            .unwrap();
        let mut stopped = stopped.clone();
        relays.push(tokio::spawn(async move {
            relay
                .run(async move { stopped.wait_for(|s| *s).await.map(drop).unwrap_or(()) })
                .await
        }));
    }
    let total = (keys * per_key) as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.records_with_status(Status::Published).len() < total {
        assert!(Instant::now() < deadline, "not drained in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    for relay in relays {
        relay.await.unwrap();
    }
    let delivered = sink.delivered();
    assert_eq!(
        delivered.len(),
        total,
        "every record delivered exactly once"
    );
    let by_key = steps_by_key(&sink);
    for (key, ns) in by_key {
        assert_eq!(ns, (0..per_key).collect::<Vec<_>>(), "order of {key}");
    }
}

#[tokio::test]
async fn builder_validates_its_settings() {
    let build = |f: fn(_) -> _| {
        let builder = Relay::builder(InMemoryStore::new(), InMemorySink::new());
        f(builder)
    };
    type Built = Result<Relay<InMemoryStore, InMemorySink>, Error>;
    let cases: Vec<(Built, &str)> = vec![
        (build(|b| b.batch_size(0).build()), "batch size"),
        (
            build(|b| b.lease(Duration::from_millis(10)).build()),
            "lease",
        ),
        (
            build(|b| b.poll_interval(Duration::ZERO).build()),
            "poll interval",
        ),
        (build(|b| b.max_attempts(0).build()), "max attempts"),
        (build(|b| b.relay_id(" ").build()), "relay id"),
    ];
    for (result, needle) in cases {
        let error = result.expect_err(needle);
        assert!(matches!(error, Error::Config(_)));
        assert!(error.to_string().contains(needle), "{error}");
    }
    let relay = Relay::builder(InMemoryStore::new(), InMemorySink::new())
        .build()
        .unwrap();
    assert!(relay.relay_id().starts_with("relay-"));
}

/// A store whose claims fail, retriably or not, and counts them.
#[derive(Debug, Clone)]
struct BrokenStore {
    retriable: bool,
    claims: Arc<std::sync::atomic::AtomicU32>,
}

impl BrokenStore {
    fn new(retriable: bool) -> Self {
        Self {
            retriable,
            claims: Arc::default(),
        }
    }

    fn claims(&self) -> u32 {
        self.claims.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl OutboxStore for BrokenStore {
    async fn enqueue(&self, _: &[NewRecord]) -> Result<(), StoreError> {
        unreachable!()
    }
    async fn claim(&self, _: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        self.claims
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let error = std::io::Error::other("database unreachable");
        Err(if self.retriable {
            StoreError::retriable(error)
        } else {
            StoreError::permanent(error)
        })
    }
    async fn settle(&self, _: &str, _: &Settlement) -> Result<outbox_engine::Settled, StoreError> {
        unreachable!()
    }
    async fn renew(&self, _: &str, _: &[i64], _: Duration) -> Result<u64, StoreError> {
        unreachable!()
    }
}

#[tokio::test]
async fn store_errors_show_in_the_status_and_never_stop_the_loop() {
    for retriable in [true, false] {
        let store = BrokenStore::new(retriable);
        let relay = Relay::builder(store.clone(), InMemorySink::new())
            .poll_interval(Duration::from_millis(5))
            .build()
            .unwrap();
        let error = relay.run_once().await.unwrap_err();
        assert_eq!(error.is_retriable(), retriable);
        let status = relay.status();
        assert_eq!(status.last_error.as_deref(), Some("database unreachable"));
        assert_eq!(status.consecutive_failures, 1);
        assert_eq!(status.last_success_at, None);

        // Whatever the error, `run` goes on until shutdown, pausing longer
        // after each failure in a row: 5 ms doubling (with jitter) fits a
        // handful of claims in 400 ms, where a fixed 5 ms pause fits ~80.
        tokio::time::timeout(
            Duration::from_secs(5),
            relay.run(tokio::time::sleep(Duration::from_millis(400))),
        )
        .await
        .expect("run returns on shutdown");
        let claims = store.claims();
        assert!(
            (4..=16).contains(&claims),
            "retriable={retriable}: {claims} claims in 400 ms"
        );
        let status = relay.status();
        assert_eq!(status.consecutive_failures, claims);
        assert!(!status.running);
    }
}

/// Runs batches, moving the store's clock forward a little each time, until
/// `minutes` of store time have passed.
async fn outage<St: OutboxStore, Si: outbox_engine::Sink>(
    relay: &Relay<St, Si>,
    store: &InMemoryStore,
    minutes: u64,
) -> RunReport {
    let mut total = RunReport::default();
    for _ in 0..minutes * 6 {
        total += relay.run_once().await.unwrap();
        store.advance_clock(Duration::from_secs(10));
    }
    total
}

#[tokio::test]
async fn a_thirty_minute_outage_makes_nothing_dead_and_keeps_order() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    for n in 0..3 {
        enqueue(&store, &[&step("a", n), &step("b", n)]).await;
    }
    // The broker is down (or the topic missing) for 30 minutes of the
    // store's clock, with the default backoff (1 s doubling to 5 min).
    sink.fail_topic("orders", FailureKind::Retriable);
    let relay = Relay::builder(store.clone(), sink.clone()).build().unwrap();
    let during = outage(&relay, &store, 30).await;
    assert!(
        during.retried >= 2 * 5,
        "the heads kept being retried: {during:?}"
    );
    assert_eq!(during.dead, 0);
    assert_eq!(store.stats(Utc::now()).await.unwrap().dead, 0);
    let attempts: Vec<u32> = store.records().iter().map(|r| r.attempts).collect();
    assert!(
        attempts.iter().any(|&a| a > 10),
        "attempts are recorded, past the old limit of 10: {attempts:?}"
    );

    sink.heal_topic("orders");
    store.advance_clock(Duration::from_secs(301));
    run_until(&relay, || sink.delivered().len() == 6).await;
    for key in ["a", "b"] {
        assert_eq!(steps_by_key(&sink)[key], vec![0, 1, 2], "order of {key}");
    }
}

#[tokio::test]
async fn a_poison_record_is_dead_and_holds_only_its_own_key() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    for n in 0..3 {
        enqueue(&store, &[&step("poison", n), &step("fine", n)]).await;
    }
    // The first record handed over (poison #0) is too large.
    sink.fail_next(1, FailureKind::Permanent);
    let relay = relay(&store, &sink);
    run_until(&relay, || {
        steps_by_key(&sink).get("fine").map(Vec::len) == Some(3)
    })
    .await;
    enqueue(&store, &[&step("fine", 3), &step("poison", 3)]).await;
    run_until(&relay, || steps_by_key(&sink)["fine"].len() == 4).await;
    store.advance_clock(Duration::from_secs(3600));
    relay.run_once().await.unwrap();

    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    assert_eq!(dead.len(), 1, "only the poison record is dead");
    assert!(
        !steps_by_key(&sink).contains_key("poison"),
        "its key is held"
    );
    assert_eq!(steps_by_key(&sink)["fine"], vec![0, 1, 2, 3]);

    // An operator gives up on it: the rest of its key flows, in order.
    assert!(store.discard(dead[0].id).await.unwrap());
    run_until(&relay, || {
        steps_by_key(&sink).get("poison").map(Vec::len) == Some(3)
    })
    .await;
    assert_eq!(steps_by_key(&sink)["poison"], vec![1, 2, 3]);
    assert_eq!(store.stats(Utc::now()).await.unwrap().dead, 1);
}

#[tokio::test]
async fn a_requeued_poison_record_is_published_before_the_rest_of_its_key() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    enqueue(&store, &[&step("k", 0), &step("k", 1), &step("k", 2)]).await;
    sink.fail_next(1, FailureKind::Permanent);
    let relay = relay(&store, &sink);
    relay.run_once().await.unwrap();
    relay.run_once().await.unwrap();
    assert!(sink.delivered().is_empty(), "the dead head holds its key");
    let dead = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    assert!(store.requeue(dead[0].id).await.unwrap());
    run_until(&relay, || sink.delivered().len() == 3).await;
    assert_eq!(steps_by_key(&sink)["k"], vec![0, 1, 2]);
}

#[tokio::test]
async fn with_the_skip_policy_a_dead_record_lets_its_key_flow() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    enqueue(&store, &[&step("k", 0), &step("k", 1), &step("k", 2)]).await;
    sink.fail_next(1, FailureKind::Permanent);
    let relay = Relay::builder(store.clone(), sink.clone())
        .dead_key_policy(outbox_engine::DeadKeyPolicy::Skip)
        .build()
        .unwrap();
    run_until(&relay, || sink.delivered().len() == 2).await;
    assert_eq!(steps_by_key(&sink)["k"], vec![1, 2]);
    assert_eq!(store.stats(Utc::now()).await.unwrap().dead, 1);
}

/// A sink that delivers every record at once except those of `slow_key`,
/// which it reports only when `release` fires.
#[derive(Debug, Clone)]
struct SlowKeySink {
    slow_key: &'static str,
    release: Arc<tokio::sync::Notify>,
    outcome: FailureKind,
    /// Batches waiting for `release`.
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl SlowKeySink {
    fn new(slow_key: &'static str) -> Self {
        Self {
            slow_key,
            release: Arc::default(),
            outcome: FailureKind::Retriable,
            waiting: Arc::default(),
        }
    }

    fn waiting(&self) -> usize {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl outbox_engine::Sink for SlowKeySink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, outbox_engine::Outcome) + Send + Sync),
    ) {
        let mut slow = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if record.key.as_deref() == Some(self.slow_key) {
                slow.push(index);
            } else {
                report(index, outbox_engine::Outcome::Delivered);
            }
        }
        let released = self.release.notified();
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        released.await;
        self.waiting
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        for index in slow {
            report(
                index,
                match self.outcome {
                    FailureKind::Permanent => outbox_engine::Outcome::permanent("slow and failed"),
                    _ => outbox_engine::Outcome::retriable("slow and failed"),
                },
            );
        }
    }
}

#[tokio::test]
async fn delivered_records_are_marked_while_a_slow_record_is_in_flight() {
    let store = InMemoryStore::new();
    for n in 0..5 {
        enqueue(&store, &[&step("slow", n), &step(&format!("fast-{n}"), n)]).await;
    }
    let sink = SlowKeySink::new("slow");
    let relay = Arc::new(relay_over(&store, sink.clone()));
    let batch = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run_once().await }
    });
    // The fast records are marked published well within a second of their
    // acknowledgement, while the slow key's records are still in flight.
    let deadline = Instant::now() + Duration::from_secs(1);
    while store.records_with_status(Status::Published).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "the fast records were not marked in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!batch.is_finished());
    assert_eq!(store.stats(Utc::now()).await.unwrap().leased, 5);
    sink.release.notify_one();
    let report = batch.await.unwrap().unwrap();
    assert_eq!(
        (
            report.claimed,
            report.published,
            report.retried,
            report.released
        ),
        (10, 5, 1, 4)
    );
}

fn relay_over<Si: outbox_engine::Sink>(
    store: &InMemoryStore,
    sink: Si,
) -> Relay<InMemoryStore, Si> {
    Relay::builder(store.clone(), sink)
        .batch_size(100)
        .lease(Duration::from_secs(1))
        .backoff(fast_backoff())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_late_settlement_of_a_taken_over_claim_changes_nothing() {
    let store = InMemoryStore::new();
    enqueue(&store, &[&step("k", 0), &step("k", 1)]).await;
    let sink = SlowKeySink::new("k");
    // One relay, two batches at once: the first claim's lease runs out while
    // its records are in flight, and the second claim takes them over.
    let relay = Arc::new(relay_over(&store, sink.clone()));
    let first = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run_once().await }
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while sink.waiting() < 1 {
        assert!(Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    store.advance_clock(Duration::from_secs(2));
    let second = tokio::spawn({
        let relay = relay.clone();
        async move { relay.run_once().await }
    });
    while sink.waiting() < 2 {
        assert!(Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
    // Release the first claim only: it reports a failure for records that
    // the second claim now holds, and must not touch them.
    sink.release.notify_one();
    let report = first.await.unwrap().unwrap();
    assert_eq!((report.claimed, report.retried, report.released), (2, 1, 1));
    let records = store.records();
    assert!(
        records
            .iter()
            .all(|r| r.attempts == 0 && r.status == Status::Pending),
        "the stale claim changed records it no longer held: {records:?}"
    );
    let leased = store
        .stats(Utc::now() + chrono::TimeDelta::seconds(2))
        .await
        .unwrap()
        .leased;
    assert_eq!(leased, 2, "the second claim's lease was cleared");
    sink.release.notify_one();
    second.await.unwrap().unwrap();
}

/// With `retain_published`, a running relay deletes the records published
/// longer ago than the period, and nothing else: records published within
/// the period, pending and dead records stay.
#[tokio::test]
async fn retention_purges_old_published_records_while_the_relay_runs() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    sink.fail_topic("audit", FailureKind::Permanent);
    for n in 0..5 {
        enqueue(&store, &[&step("a", n)]).await;
    }
    enqueue(
        &store,
        &[&Audited {
            what: "dies".to_owned(),
        }],
    )
    .await;
    let relay = Relay::builder(store.clone(), sink.clone())
        .batch_size(10)
        .poll_interval(Duration::from_millis(10))
        .retain_published(Duration::ZERO)
        .purge_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = async {
        relay
            .run(async {
                stopped.await.ok();
            })
            .await;
    };
    let check = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(sink.delivered().len() == 5 && store.records().len() == 1) {
            assert!(
                Instant::now() < deadline,
                "published records not purged: {:?}",
                store.records()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).unwrap();
    };
    tokio::join!(running, check);
    let left = store.records();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].status, Status::Dead, "dead records are kept");

    // A period not yet over keeps what was just published.
    enqueue(&store, &[&step("b", 0)]).await;
    let keeping = Relay::builder(store.clone(), sink.clone())
        .poll_interval(Duration::from_millis(10))
        .retain_published(Duration::from_secs(3600))
        .purge_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    keeping
        .run(tokio::time::sleep(Duration::from_millis(200)))
        .await;
    assert_eq!(store.records_with_status(Status::Published).len(), 1);
}

/// `RelayStatus::health`: not ready before the first success, ready while
/// the last success is recent, and a reason with the failures otherwise.
#[tokio::test]
async fn health_follows_the_last_success() {
    let store = InMemoryStore::new();
    let relay = relay(&store, &InMemorySink::new());
    let window = Duration::from_secs(30);
    let reason = relay.status().health(Utc::now(), window).unwrap_err();
    assert!(
        reason.contains("has not completed a batch or poll yet"),
        "{reason}"
    );

    relay.run_once().await.unwrap();
    let status = relay.status();
    assert_eq!(status.health(Utc::now(), window), Ok(()));
    let later = Utc::now() + chrono::TimeDelta::seconds(45);
    let reason = status.health(later, window).unwrap_err();
    assert!(reason.contains("s ago"), "{reason}");
    assert!(reason.contains("more than 30.0s"), "{reason}");

    let mut failing = status;
    failing.consecutive_failures = 3;
    failing.last_error = Some("database down".to_owned());
    let reason = failing.health(later, window).unwrap_err();
    assert!(
        reason.contains("3 batch(es) failed in a row, the last with: database down"),
        "{reason}"
    );
}

/// A sink that publishes through an [`InMemorySink`] after a pause, and
/// records how many batches were in its hands at once and whether two of
/// them ever shared a key.
#[derive(Clone, Default)]
struct OverlapSink {
    inner: InMemorySink,
    state: Arc<std::sync::Mutex<Overlap>>,
}

#[derive(Default)]
struct Overlap {
    in_flight: Vec<Vec<String>>,
    most_at_once: usize,
    shared_keys: Vec<String>,
}

#[async_trait::async_trait]
impl outbox_engine::Sink for OverlapSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, outbox_engine::Outcome) + Send + Sync),
    ) {
        let keys: Vec<String> = records.iter().filter_map(|r| r.key.clone()).collect();
        {
            let mut state = self.state.lock().unwrap();
            for key in &keys {
                if state.in_flight.iter().any(|batch| batch.contains(key)) {
                    state.shared_keys.push(key.clone());
                }
            }
            state.in_flight.push(keys.clone());
            state.most_at_once = state.most_at_once.max(state.in_flight.len());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.inner.publish_each(records, report).await;
        let mut state = self.state.lock().unwrap();
        let index = state.in_flight.iter().position(|b| *b == keys).unwrap();
        state.in_flight.remove(index);
    }
}

async fn drain_with_overlap(batches_in_flight: usize) -> (OverlapSink, InMemoryStore) {
    let store = InMemoryStore::new();
    for n in 0..300 {
        enqueue(&store, &[&step(&format!("k{}", n % 100), n)]).await;
    }
    let sink = OverlapSink::default();
    let relay = Relay::builder(store.clone(), sink.clone())
        .batch_size(20)
        .max_in_flight(batches_in_flight * 20)
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = async {
        relay
            .run(async move {
                let mut stopped = stopped;
                stopped.wait_for(|s| *s).await.map(drop).unwrap_or(());
            })
            .await;
    };
    let watch = async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.inner.delivered().len() < 300 {
            assert!(Instant::now() < deadline, "not drained in time");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.send(true).unwrap();
    };
    tokio::join!(running, watch);
    (sink, store)
}

#[tokio::test]
async fn batches_overlap_up_to_the_limit_and_never_share_a_key() {
    let (sink, store) = drain_with_overlap(3).await;
    {
        let state = sink.state.lock().unwrap();
        assert_eq!(
            state.most_at_once, 3,
            "the relay kept three batches in flight"
        );
        assert!(
            state.shared_keys.is_empty(),
            "batches in flight shared keys {:?}",
            state.shared_keys
        );
    }
    for (key, steps) in steps_by_key(&sink.inner) {
        let mut sorted = steps.clone();
        sorted.sort_unstable();
        assert_eq!(steps, sorted, "key {key} out of order");
        assert_eq!(steps.len(), 3, "key {key} published once each");
    }
    assert_eq!(store.records_with_status(Status::Published).len(), 300);

    let (sink, _) = drain_with_overlap(1).await;
    assert_eq!(
        sink.state.lock().unwrap().most_at_once,
        1,
        "one batch at a time when told so"
    );
}

/// Runs `relay` until `stop` is set, on the test's (paused) runtime.
fn spawn_relay(
    relay: Relay<InMemoryStore, InMemorySink>,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        relay.run(async { stopped.await.unwrap_or(()) }).await;
    });
    (stop, running)
}

/// Waits (in virtual time) until the sink holds `count` records; returns
/// how long that took.
async fn until_delivered(sink: &InMemorySink, count: usize) -> Duration {
    let started = Instant::now();
    while sink.delivered().len() < count {
        tokio::time::sleep(Duration::from_micros(100)).await;
    }
    started.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_wakeup_ends_the_idle_wait_at_once_and_the_poll_remains() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    let poll = Duration::from_secs(60);
    let relay = Relay::builder(store.clone(), sink.clone())
        .poll_interval(poll)
        .build()
        .unwrap();
    let wakeup = relay.wakeup();
    let (stop, running) = spawn_relay(relay);

    // Idle for an hour of virtual time: the relay polls every minute now.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    enqueue(&store, &[&step("a", 1)]).await;
    wakeup.wake();
    let woken = until_delivered(&sink, 1).await;
    // The wait for delivery sleeps in steps of the timer's millisecond.
    assert!(
        woken <= Duration::from_millis(1),
        "a woken relay claims at once, took {woken:?}"
    );

    // Without a wake-up, the poll finds a record within one interval, not
    // at once.
    tokio::time::sleep(Duration::from_secs(3600)).await;
    enqueue(&store, &[&step("a", 2)]).await;
    let polled = until_delivered(&sink, 2).await;
    assert!(
        polled > Duration::from_millis(100) && polled <= poll + Duration::from_millis(1),
        "found by the poll within an interval, took {polled:?}"
    );
    stop.send(()).unwrap();
    running.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn right_after_work_the_relay_polls_within_milliseconds() {
    let store = InMemoryStore::new();
    let sink = InMemorySink::new();
    let relay = Relay::builder(store.clone(), sink.clone())
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let (stop, running) = spawn_relay(relay);
    enqueue(&store, &[&step("a", 1)]).await;
    // The first claim, at start, finds it.
    assert!(until_delivered(&sink, 1).await <= Duration::from_millis(1));
    // Just after a batch, empty claims come 5 ms, then 10 ms, ... apart.
    tokio::time::sleep(Duration::from_millis(1)).await;
    enqueue(&store, &[&step("a", 2)]).await;
    let found = until_delivered(&sink, 2).await;
    assert!(
        found <= Duration::from_millis(20),
        "a relay that just had work polls again soon, took {found:?}"
    );
    stop.send(()).unwrap();
    running.await.unwrap();
}
