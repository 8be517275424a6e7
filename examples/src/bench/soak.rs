//! `soak`: the steady state, over time. Writers commit 2,000 events a
//! second (one business row and one event per transaction, keys spread
//! over 1,000 as in the drain) for `--seconds` (1,200; `--quick` 20) while
//! one relay with its defaults publishes them. Every minute (every 5 s
//! with `--quick`) it prints the events committed and published, the
//! backlog, the relay's claim times (p50 and p99, timed around the
//! store's `claim`) and the outbox tables' size on disk; at the end, the
//! last period's claim p99 against the first's, and the largest size
//! against the first period's. Not among the scenarios run when none is
//! named: it takes twenty minutes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use outbox_engine::{
    ClaimRequest, NewRecord, OutboxRecord, OutboxStore, Relay, Settled, Settlement, StoreError,
    error_chain,
};
use outbox_sea_orm::{Outbox, SeaOrmStore};

use super::db::{BenchDb, ORDERS_TABLE};
use super::enqueue::commit_order;
use super::load::BenchEvent;
use super::report::{self, Figures};
use super::{Bench, Stop, drain};

/// Events committed per second.
const RATE: u64 = 2_000;
/// Keys of the events, as in the drain.
const KEYS: u64 = 1_000;
/// Transactions under way at once, at most.
const IN_FLIGHT: usize = 32;
/// Writers' commits per tick of their clock.
const TICK: Duration = Duration::from_millis(10);

/// Runs the soak on `url`.
pub(crate) async fn run(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let seconds = bench.seconds(1_200, 20);
    let period = if bench.quick {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(60)
    };
    let topic = bench.broker.new_topic("soak").await?;
    let run = async |db: &BenchDb| {
        db.execute(ORDERS_TABLE).await?;
        let writers = super::db::connect(&db.url, IN_FLIGHT as u32).await?;
        let outbox = Outbox::new(SeaOrmStore::new(writers));
        let store = TimedStore::new(bench.store(db.db.clone()));
        let relay = Relay::builder(store.clone(), drain::sink(bench)?)
            .build()
            .map_err(|e| error_chain(&e))?;
        let committed = AtomicU64::new(0);
        let stop = Stop::new();
        let started = Instant::now();
        let write = async {
            let result = write(&outbox, &topic, &committed, Duration::from_secs(seconds)).await;
            stop.stop();
            result
        };
        let watch = watch(db, &store, &relay, &committed, period, &stop);
        let (_, written, periods) = tokio::join!(relay.run(stop.stopped()), write, watch);
        let elapsed = started.elapsed();
        written?;
        let periods = periods?;
        Ok((
            summary(&periods),
            elapsed,
            relay.status().totals.published as u64,
        ))
    };
    let (note, elapsed, published) = bench.with_database(url, 10, run).await?;
    let mut figures = Figures::throughput(
        "soak",
        super::db::label(url),
        bench.broker.label(),
        "outbox",
        (published, KEYS, 1),
        elapsed,
    );
    figures.note = Some(note);
    Ok(vec![figures])
}

/// One period's figures.
struct Period {
    committed: u64,
    published: u64,
    backlog: u64,
    p50_ms: f64,
    p99_ms: f64,
    bytes: u64,
}

/// Every `period` until `stop`: prints the period's figures; returns them
/// all.
async fn watch(
    db: &BenchDb,
    store: &TimedStore,
    relay: &Relay<TimedStore, outbox_rdkafka::KafkaSink>,
    committed: &AtomicU64,
    period: Duration,
    stop: &Stop,
) -> Result<Vec<Period>, String> {
    let mut periods = Vec::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let (mut last_committed, mut last_published) = (0, 0);
    eprintln!(
        "  {:>6} {:>11} {:>11} {:>8} {:>9} {:>9} {:>9}",
        "period", "committed/s", "published/s", "backlog", "claim p50", "claim p99", "size MB"
    );
    loop {
        tokio::select! {
            () = stop.stopped() => return Ok(periods),
            _ = ticks.tick() => {}
        }
        let committed = committed.load(Ordering::Relaxed);
        let published = relay.status().totals.published as u64;
        let mut claims = store.take_claim_times();
        let (p50_ms, p99_ms) = report::percentiles(&mut claims).unwrap_or_default();
        let figures = Period {
            committed: committed - last_committed,
            published: published - last_published,
            backlog: committed.saturating_sub(published),
            p50_ms,
            p99_ms,
            bytes: db.size().await?,
        };
        (last_committed, last_published) = (committed, published);
        let per_s = |n: u64| n as f64 / period.as_secs_f64();
        eprintln!(
            "  {:>6} {:>11.0} {:>11.0} {:>8} {:>9.2} {:>9.2} {:>9.1}",
            periods.len() + 1,
            per_s(figures.committed),
            per_s(figures.published),
            figures.backlog,
            figures.p50_ms,
            figures.p99_ms,
            figures.bytes as f64 / 1e6,
        );
        periods.push(figures);
    }
}

/// The run in words: the claim p99 and the size, last against first.
fn summary(periods: &[Period]) -> String {
    let (Some(first), Some(last)) = (periods.first(), periods.last()) else {
        return "no full period".to_owned();
    };
    let largest = periods.iter().map(|p| p.bytes).max().unwrap_or_default();
    format!(
        "{} periods; claim p99 first {:.2} ms, last {:.2} ms ({:.2}x); size first {:.1} MB, \
         largest {:.1} MB, last {:.1} MB; backlog at the end {}",
        periods.len(),
        first.p99_ms,
        last.p99_ms,
        last.p99_ms / first.p99_ms.max(1e-9),
        first.bytes as f64 / 1e6,
        largest as f64 / 1e6,
        last.bytes as f64 / 1e6,
        last.backlog,
    )
}

/// Commits `RATE` events a second for `duration`, each in a transaction
/// of its own with a business row, at most `IN_FLIGHT` at once.
async fn write(
    outbox: &Outbox,
    topic: &str,
    committed: &AtomicU64,
    duration: Duration,
) -> Result<(), String> {
    let per_tick = (RATE as f64 * TICK.as_secs_f64()).round() as u64;
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    let mut due = 0;
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                if started.elapsed() >= duration {
                    break;
                }
                due += per_tick;
            }
            Some(result) = in_flight.next() => {
                result?;
                committed.fetch_add(1, Ordering::Relaxed);
            }
        }
        while due > 0 && in_flight.len() < IN_FLIGHT {
            due -= 1;
            seq += 1;
            in_flight.push(commit_order(outbox, BenchEvent::record(seq, KEYS, topic)));
        }
    }
    while let Some(result) = in_flight.next().await {
        result?;
        committed.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// The store, with the time each claim took noted.
#[derive(Clone)]
struct TimedStore {
    inner: SeaOrmStore,
    claims: Arc<Mutex<Vec<Duration>>>,
}

impl TimedStore {
    fn new(inner: SeaOrmStore) -> Self {
        Self {
            inner,
            claims: Arc::default(),
        }
    }

    fn take_claim_times(&self) -> Vec<Duration> {
        std::mem::take(&mut *self.claims.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[async_trait]
impl OutboxStore for TimedStore {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        self.inner.enqueue(records).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        let started = Instant::now();
        let claimed = self.inner.claim(request).await;
        self.claims
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(started.elapsed());
        claimed
    }

    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
        self.inner.settle(owner, settlement).await
    }

    async fn renew(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        self.inner.renew(owner, ids, lease).await
    }

    async fn housekeep(&self) -> Result<(), StoreError> {
        self.inner.housekeep().await
    }
}
