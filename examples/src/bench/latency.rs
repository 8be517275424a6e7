//! `latency`: from a writer's commit to the broker's acknowledgement of
//! its event. A writer commits transactions (a business row and one
//! event) at 20 and at 1,000 a second for 30 s (`--quick`: 3 s) while one
//! relay runs; a sink wrapped around the `KafkaSink` notes when each event
//! is acknowledged. Each rate runs with the relay polling alone
//! (`outbox`), woken after each commit in this process (`outbox+wakeup`)
//! and, on PostgreSQL, woken by `LISTEN`/`NOTIFY` (`outbox+notify`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use outbox_engine::{OutboxRecord, Outcome, Relay, Sink, Wakeup, error_chain};
use outbox_rdkafka::KafkaSink;
use outbox_sea_orm::{Outbox, SeaOrmStore};
use uuid::Uuid;

use super::db::{BenchDb, ORDERS_TABLE};
use super::enqueue::{KEYS, commit_order};
use super::load::BenchEvent;
use super::report::Figures;
use super::{Bench, Stop, drain};

/// Commits per second.
const RATES: [u32; 2] = [20, 1_000];

/// Transactions under way at once, at most: a database slower than the
/// rate makes the writer fall behind (the figures say the rate it kept)
/// instead of queueing without bound.
const IN_FLIGHT: usize = 8;

/// Connections of the pool the writer and the relay share; SQLite's
/// writers take turns, and more connections only wait in its busy
/// handler.
fn pool(url: &str) -> u32 {
    match super::db::label(url) {
        "sqlite" => 1,
        _ => IN_FLIGHT as u32 + 2,
    }
}

/// How the relay learns of a commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// Polling every default poll interval.
    Polling,
    /// Woken in this process after each commit.
    Wakeup,
    /// Woken by PostgreSQL's `NOTIFY`, sent by each committing transaction.
    Notify,
}

impl Variant {
    fn relay(self) -> &'static str {
        match self {
            Variant::Polling => "outbox",
            Variant::Wakeup => "outbox+wakeup",
            Variant::Notify => "outbox+notify",
        }
    }
}

/// Each rate with each variant, `--seconds` (30, `--quick` 3) each.
pub(crate) async fn run(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let seconds = bench.seconds(30, 3);
    let mut variants = vec![Variant::Polling, Variant::Wakeup];
    if super::db::label(url) == "postgres" {
        variants.push(Variant::Notify);
    }
    let mut figures = Vec::new();
    for rate in RATES {
        for &variant in &variants {
            let duration = Duration::from_secs(seconds);
            let run = async |db: &BenchDb| measure(bench, db, rate, duration, variant).await;
            let result = bench.with_database(url, pool(url), run).await;
            figures.push(result.map_err(|e| format!("{} at {rate}/s: {e}", variant.relay()))?);
        }
    }
    Ok(figures)
}

async fn measure(
    bench: &Bench,
    db: &BenchDb,
    rate: u32,
    duration: Duration,
    variant: Variant,
) -> Result<Figures, String> {
    db.execute(ORDERS_TABLE).await?;
    let topic = bench.broker.new_topic("latency").await?;
    let store = SeaOrmStore::new(db.db.clone());
    let outbox = Outbox::new(store.clone()).notify_on_commit(variant == Variant::Notify);
    let latencies = Arc::new(Latencies::default());
    let sink = TimedSink {
        inner: drain::sink(bench)?,
        latencies: latencies.clone(),
    };
    let builder = Relay::builder(store.clone(), sink);
    let (builder, listener) = match variant {
        Variant::Polling => (builder, None),
        Variant::Wakeup => (builder.wakeup(outbox.wakeup()), None),
        Variant::Notify => {
            // Fed by LISTEN only: the writer's own wake-ups go nowhere.
            let wakeup = Wakeup::new();
            let listener = outbox_sea_orm::listen(&store, wakeup.clone())
                .await
                .map_err(|e| error_chain(&e))?;
            (builder.wakeup(wakeup), Some(listener))
        }
    };
    let relay = builder.build().map_err(|e| error_chain(&e))?;
    let stop = Stop::new();
    let relay_run = relay.run(stop.stopped());
    let writer = async {
        let result = write(&outbox, &topic, &latencies, rate, duration).await;
        stop.stop();
        result
    };
    let ((), written) = tokio::join!(relay_run, writer);
    if let Some(listener) = listener {
        listener.abort();
    }
    let (events, elapsed) = written?;
    let mut times = latencies.take();
    Ok(Figures::throughput(
        "latency",
        db.label(),
        bench.broker.label(),
        variant.relay(),
        (events, KEYS, 1),
        elapsed,
    )
    .percentiles(&mut times))
}

/// Commits at `rate` for `duration`, one event a transaction, each
/// transaction started on schedule whether or not the earlier ones are
/// done (up to [`IN_FLIGHT`] at once), then waits until every event is
/// acknowledged. Returns the
/// events committed and the time they took.
async fn write(
    outbox: &Outbox,
    topic: &str,
    latencies: &Latencies,
    rate: u32,
    duration: Duration,
) -> Result<(u64, Duration), String> {
    // One event through first, so that the producer knows the topic.
    commit(outbox, topic, latencies, 0).await?;
    latencies.wait_for(1, Duration::from_secs(30)).await?;
    latencies.take();

    let mut ticks = tokio::time::interval(Duration::from_secs(1) / rate);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut in_flight = FuturesUnordered::new();
    let started = Instant::now();
    let mut events = 0;
    loop {
        tokio::select! {
            _ = ticks.tick(), if in_flight.len() < IN_FLIGHT => {
                if started.elapsed() >= duration {
                    break;
                }
                events += 1;
                in_flight.push(commit(outbox, topic, latencies, events));
            }
            Some(result) = in_flight.next() => result?,
        }
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    let elapsed = started.elapsed();
    latencies
        .wait_for(events, Duration::from_secs(60))
        .await
        .map(|()| (events, elapsed))
}

/// One business transaction with event `seq`; notes its commit.
async fn commit(
    outbox: &Outbox,
    topic: &str,
    latencies: &Latencies,
    seq: u64,
) -> Result<(), String> {
    let record = BenchEvent::record(seq, KEYS, topic);
    let id = record.event_id;
    commit_order(outbox, record).await?;
    latencies.committed(id, Instant::now());
    Ok(())
}

/// A `KafkaSink` that notes when each record is acknowledged.
struct TimedSink {
    inner: KafkaSink,
    latencies: Arc<Latencies>,
}

#[async_trait]
impl Sink for TimedSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        let noted = |index: usize, outcome: Outcome| {
            if outcome.is_delivered() {
                self.latencies
                    .delivered(records[index].event_id, Instant::now());
            }
            report(index, outcome);
        };
        self.inner.publish_each(records, &noted).await;
    }
}

/// Commit and acknowledgement instants by event id, and the times between
/// them. Either may come first: a relay woken by the commit can publish
/// the event before the writer has noted its commit.
#[derive(Default)]
struct Latencies {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The half seen so far: `true` for a commit.
    waiting: HashMap<Uuid, (bool, Instant)>,
    times: Vec<Duration>,
}

impl Latencies {
    fn committed(&self, id: Uuid, at: Instant) {
        self.note(id, true, at);
    }

    fn delivered(&self, id: Uuid, at: Instant) {
        self.note(id, false, at);
    }

    fn note(&self, id: Uuid, commit: bool, at: Instant) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match state.waiting.remove(&id) {
            Some((first_commit, first)) if first_commit != commit => {
                let (committed, delivered) = if commit { (at, first) } else { (first, at) };
                state
                    .times
                    .push(delivered.saturating_duration_since(committed));
            }
            // A second delivery of a delivered event: the first counts.
            Some(first) => {
                state.waiting.insert(id, first);
            }
            None => {
                state.waiting.insert(id, (commit, at));
            }
        }
    }

    /// The times so far, forgetting them.
    fn take(&self) -> Vec<Duration> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::take(&mut state.times)
    }

    /// Waits until `count` events were acknowledged.
    async fn wait_for(&self, count: u64, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let done = {
                let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                state.times.len() as u64
            };
            if done >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{done} of {count} events acknowledged within {within:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
