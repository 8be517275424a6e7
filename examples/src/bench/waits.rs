//! `long-writer` and `slow-keys`: whether the outbox makes anyone wait
//! who should not.
//!
//! - `long-writer`: six committed events over keys `a`, `k` and `m`, and
//!   a sink that takes 400 ms per record (each key's records one after
//!   the other, the keys at once). Once the relay (default settings) has
//!   claimed them, a business transaction enqueues one more event for `k`
//!   and stays open 8 s (`--seconds`). From 1.5 s in, other writers
//!   commit one event each, 20 a second, for keys `a`, `m` and keys of
//!   their own, until the long transaction commits. Figures:
//!   `other-writers`, how long those transactions took (begin to commit);
//!   `marked-after-ack`, from the broker's acknowledgement of each record
//!   of `a` and `m` to the moment it reads as published in the table;
//!   `held-key`, from the long transaction's commit to the
//!   acknowledgement of its event.
//! - `slow-keys`: 50 keys, two pending events each, whose sends take 20 s
//!   to fail retriably (a partition without a leader), beside a steady
//!   load of 200 events a second over 100 other keys for 25 s (`--seconds`
//!   sets both), one relay with the default settings. Figures: the
//!   healthy events delivered 5 s after the load ended, and the p50/p99
//!   of their commit to acknowledgement once all are delivered; the slow
//!   keys' records still pending (none dead) and their attempts.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use outbox_engine::{NewRecord, OutboxRecord, Outcome, Relay, Sink, error_chain, publish_by_key};
use outbox_rdkafka::KafkaSink;
use outbox_sea_orm::SeaOrmStore;
use sea_orm::{ConnectionTrait, DbBackend, Statement, TransactionTrait};
use uuid::Uuid;

use super::db::BenchDb;
use super::load::BenchEvent;
use super::report::Figures;
use super::{Bench, Stop, drain};

/// Transactions of the other writers under way at once, at most.
const IN_FLIGHT: usize = 8;

/// A new record of key `key` for `topic`.
fn record(seq: u64, key: &str, topic: &str) -> NewRecord {
    let mut record = BenchEvent::record(seq, 1, topic);
    record.key = Some(key.to_owned());
    record
}

/// When each event was acknowledged by the broker, and when its writer
/// committed it.
#[derive(Default)]
struct Times {
    state: Mutex<TimesState>,
}

#[derive(Default)]
struct TimesState {
    acked: HashMap<Uuid, Instant>,
    committed: HashMap<Uuid, Instant>,
    /// Records handed to the sink so far.
    received: usize,
}

impl Times {
    fn lock(&self) -> std::sync::MutexGuard<'_, TimesState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn acked(&self, id: Uuid) -> Option<Instant> {
        self.lock().acked.get(&id).copied()
    }

    fn committed(&self, id: Uuid, at: Instant) {
        self.lock().committed.insert(id, at);
    }

    /// Commit to acknowledgement of the events committed through
    /// [`committed`](Self::committed) and acknowledged.
    fn latencies(&self) -> Vec<Duration> {
        let state = self.lock();
        state
            .committed
            .iter()
            .filter_map(|(id, committed)| {
                let acked = state.acked.get(id)?;
                Some(acked.saturating_duration_since(*committed))
            })
            .collect()
    }

    /// How many of the committed events are acknowledged.
    fn delivered(&self) -> usize {
        let state = self.lock();
        state
            .committed
            .keys()
            .filter(|id| state.acked.contains_key(id))
            .count()
    }
}

/// The Kafka sink, with a pause before each record (`pace`), and records
/// of the keys in `slow` that fail retriably after `slow_for` instead of
/// being sent; notes each acknowledgement in `times`.
struct TestedSink {
    inner: KafkaSink,
    pace: Duration,
    slow: HashSet<String>,
    slow_for: Duration,
    times: Arc<Times>,
}

#[async_trait]
impl Sink for TestedSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        self.times.lock().received += records.len();
        let is_slow = |r: &OutboxRecord| r.key.as_ref().is_some_and(|k| self.slow.contains(k));
        let (slow, fast): (Vec<usize>, Vec<usize>) =
            (0..records.len()).partition(|&i| is_slow(&records[i]));
        let fast_records: Vec<OutboxRecord> = fast.iter().map(|&i| records[i].clone()).collect();
        let slow_records: Vec<OutboxRecord> = slow.iter().map(|&i| records[i].clone()).collect();
        let noted = |index: usize, outcome: Outcome| {
            if outcome.is_delivered() {
                self.times
                    .lock()
                    .acked
                    .insert(records[index].event_id, Instant::now());
            }
            report(index, outcome);
        };
        let fast_part = async {
            if self.pace.is_zero() {
                self.inner
                    .publish_each(&fast_records, &|i, outcome| noted(fast[i], outcome))
                    .await;
            } else {
                publish_by_key(
                    &fast_records,
                    |i, outcome| noted(fast[i], outcome),
                    |record| async move {
                        tokio::time::sleep(self.pace).await;
                        let mut outcomes = self.inner.publish(std::slice::from_ref(record)).await;
                        outcomes
                            .pop()
                            .unwrap_or_else(|| Outcome::retriable("no outcome"))
                    },
                )
                .await;
            }
        };
        let slow_part = publish_by_key(
            &slow_records,
            |i, outcome| noted(slow[i], outcome),
            |_| async move {
                tokio::time::sleep(self.slow_for).await;
                Outcome::retriable("the partition has no leader (a slow key of the benchmark)")
            },
        );
        tokio::join!(fast_part, slow_part);
    }
}

/// When each of `ids` first read as published, polling every 5 ms until
/// all have or `deadline` has passed.
async fn watch_published(db: &BenchDb, ids: &[i64], deadline: Instant) -> HashMap<i64, Instant> {
    let mut seen = HashMap::new();
    let list = ids
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!("SELECT id FROM outbox WHERE status = 'published' AND id IN ({list})");
    while seen.len() < ids.len() && Instant::now() < deadline {
        let statement = Statement::from_string(db.db.get_database_backend(), sql.clone());
        if let Ok(rows) = db.db.query_all_raw(statement).await {
            let now = Instant::now();
            for row in rows {
                if let Ok(id) = row.try_get_by_index::<i64>(0) {
                    seen.entry(id).or_insert(now);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

async fn ids_of(db: &BenchDb, events: &[Uuid]) -> Result<Vec<i64>, String> {
    let mut ids = Vec::new();
    for event in events {
        let sql = match db.db.get_database_backend() {
            DbBackend::Postgres => "SELECT id FROM outbox WHERE event_id = $1",
            _ => "SELECT id FROM outbox WHERE event_id = ?",
        };
        let value: sea_orm::Value = (*event).into();
        let row = db
            .db
            .query_one_raw(Statement::from_sql_and_values(
                db.db.get_database_backend(),
                sql,
                [value],
            ))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("an enqueued event is missing")?;
        ids.push(row.try_get_by_index(0).map_err(|e| e.to_string())?);
    }
    Ok(ids)
}

/// Waits until `done()` or `within` has passed; false if it timed out.
async fn wait(within: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    true
}

/// `long-writer`; see the module docs.
pub(crate) async fn long_writer(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let hold = Duration::from_secs(bench.seconds(8, 3));
    let run = async |db: &BenchDb| long_writer_on(bench, db, hold).await;
    bench.with_database(url, IN_FLIGHT as u32 + 4, run).await
}

async fn long_writer_on(
    bench: &Bench,
    db: &BenchDb,
    hold: Duration,
) -> Result<Vec<Figures>, String> {
    let topic = bench.broker.new_topic("long-writer").await?;
    let store = SeaOrmStore::new(db.db.clone());
    let first: Vec<NewRecord> = ["a", "k", "m", "a", "k", "m"]
        .iter()
        .enumerate()
        .map(|(seq, key)| record(seq as u64, key, &topic))
        .collect();
    outbox_sea_orm::enqueue_records(&db.db, &first)
        .await
        .map_err(|e| error_chain(&e))?;
    let others: Vec<&NewRecord> = first
        .iter()
        .filter(|r| r.key.as_deref() != Some("k"))
        .collect();
    let other_ids = ids_of(db, &others.iter().map(|r| r.event_id).collect::<Vec<_>>()).await?;

    let times = Arc::new(Times::default());
    let sink = TestedSink {
        inner: drain::sink(bench)?,
        pace: Duration::from_millis(400),
        slow: HashSet::new(),
        slow_for: Duration::ZERO,
        times: times.clone(),
    };
    let relay = Relay::builder(store, sink)
        .build()
        .map_err(|e| error_chain(&e))?;
    let stop = Stop::new();
    let relay_run = relay.run(stop.stopped());

    let scenario = async {
        let result = async {
            if !wait(Duration::from_secs(30), || times.lock().received >= 1).await {
                return Err("the relay claimed nothing within 30 s".to_owned());
            }
            let started = Instant::now();
            let held = record(100, "k", &topic);
            let held_id = held.event_id;
            let txn = db.db.begin().await.map_err(|e| e.to_string())?;
            outbox_sea_orm::enqueue_records(&txn, std::slice::from_ref(&held))
                .await
                .map_err(|e| error_chain(&e))?;
            let writers_stop = Stop::new();
            let long = async {
                tokio::time::sleep_until((started + hold).into()).await;
                let result = txn.commit().await.map_err(|e| e.to_string());
                let committed = Instant::now();
                writers_stop.stop();
                result.map(|()| committed)
            };
            let writers = async {
                tokio::time::sleep_until((started + Duration::from_millis(1500)).into()).await;
                other_writers(db, &topic, &writers_stop).await
            };
            let deadline = started + hold + Duration::from_secs(60);
            let (committed, written, seen) =
                tokio::join!(long, writers, watch_published(db, &other_ids, deadline));
            let committed = committed?;
            let (waits, failed) = written;
            if !wait(Duration::from_secs(120), || times.acked(held_id).is_some()).await {
                return Err(
                    "the long transaction's event was not delivered within 120 s".to_owned(),
                );
            }
            let held_latency = times
                .acked(held_id)
                .expect("acked")
                .saturating_duration_since(committed);
            let mut marks = Vec::new();
            for (record, id) in others.iter().zip(&other_ids) {
                let (Some(acked), Some(seen)) = (times.acked(record.event_id), seen.get(id)) else {
                    return Err(format!(
                        "record {id} was not both delivered and marked published"
                    ));
                };
                marks.push(seen.saturating_duration_since(acked));
            }
            Ok((waits, failed, marks, held_latency))
        }
        .await;
        stop.stop();
        result
    };
    let ((), result) = tokio::join!(relay_run, scenario);
    let (mut waits, failed, mut marks, held_latency) = result?;
    let label = db.label();
    let sink = bench.broker.label();
    let mut other = Figures::throughput(
        "long-writer",
        label,
        sink,
        "other-writers",
        (waits.len() as u64, 0, 1),
        hold,
    )
    .percentiles(&mut waits);
    if failed > 0 {
        other.note = Some(format!("{failed} of them failed"));
    }
    let marked = Figures::throughput(
        "long-writer",
        label,
        sink,
        "marked-after-ack",
        (marks.len() as u64, 2, 1),
        hold,
    )
    .percentiles(&mut marks);
    let held = Figures::throughput("long-writer", label, sink, "held-key", (1, 1, 1), hold)
        .percentiles(&mut [held_latency]);
    Ok(vec![other, marked, held])
}

/// Commits one event a transaction, 20 a second, for keys `a`, `m` and
/// keys of their own, until `stop`; returns how long each transaction took
/// and how many failed.
async fn other_writers(db: &BenchDb, topic: &str, stop: &Stop) -> (Vec<Duration>, usize) {
    let mut ticks = tokio::time::interval(Duration::from_millis(50));
    let mut in_flight = FuturesUnordered::new();
    let mut seq = 1_000;
    let mut waits = Vec::new();
    let mut failed = 0;
    let one = async |seq: u64| {
        let key = match seq % 3 {
            0 => "a".to_owned(),
            1 => "m".to_owned(),
            _ => format!("o{seq}"),
        };
        let record = record(seq, &key, topic);
        let started = Instant::now();
        let result = async {
            let txn = db.db.begin().await.map_err(|e| e.to_string())?;
            outbox_sea_orm::enqueue_records(&txn, std::slice::from_ref(&record))
                .await
                .map_err(|e| error_chain(&e))?;
            txn.commit().await.map_err(|e| e.to_string())
        }
        .await;
        (started.elapsed(), result)
    };
    loop {
        tokio::select! {
            _ = ticks.tick(), if in_flight.len() < IN_FLIGHT && !stop.is_stopped() => {
                seq += 1;
                in_flight.push(one(seq));
            }
            Some((took, result)) = in_flight.next() => {
                waits.push(took);
                if let Err(error) = result {
                    failed += 1;
                    eprintln!("  a writer failed after {took:.0?}: {error}");
                }
            }
            () = tokio::time::sleep(Duration::from_millis(10)), if stop.is_stopped() => {
                if in_flight.is_empty() {
                    break;
                }
            }
        }
    }
    (waits, failed)
}

/// `slow-keys`; see the module docs.
pub(crate) async fn slow_keys(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let seconds = bench.seconds(25, 5);
    let run = async |db: &BenchDb| slow_keys_on(bench, db, Duration::from_secs(seconds)).await;
    bench.with_database(url, IN_FLIGHT as u32 + 4, run).await
}

async fn slow_keys_on(bench: &Bench, db: &BenchDb, load: Duration) -> Result<Vec<Figures>, String> {
    const SLOW_KEYS: usize = 50;
    const HEALTHY_KEYS: u64 = 100;
    const RATE: u64 = 200;
    let slow_for = Duration::from_secs(20).min(load);
    let topic = bench.broker.new_topic("slow-keys").await?;
    let store = SeaOrmStore::new(db.db.clone());
    let slow: HashSet<String> = (0..SLOW_KEYS).map(|i| format!("s{i}")).collect();
    let slow_records: Vec<NewRecord> = (0..2 * SLOW_KEYS)
        .map(|i| record(i as u64, &format!("s{}", i % SLOW_KEYS), &topic))
        .collect();
    outbox_sea_orm::enqueue_records(&db.db, &slow_records)
        .await
        .map_err(|e| error_chain(&e))?;
    let times = Arc::new(Times::default());
    let sink = TestedSink {
        inner: drain::sink(bench)?,
        pace: Duration::ZERO,
        slow,
        slow_for,
        times: times.clone(),
    };
    let relay = Relay::builder(store, sink)
        .build()
        .map_err(|e| error_chain(&e))?;
    let stop = Stop::new();
    let relay_run = relay.run(stop.stopped());
    let events = RATE * load.as_secs();
    let scenario = async {
        let result = async {
            // Let the slow keys' records be claimed first.
            if !wait(Duration::from_secs(30), || {
                times.lock().received >= SLOW_KEYS
            })
            .await
            {
                return Err("the relay did not claim the slow keys within 30 s".to_owned());
            }
            let mut ticks = tokio::time::interval(Duration::from_secs(1) / RATE as u32);
            let mut in_flight = FuturesUnordered::new();
            let mut seq = 0;
            let one = async |seq: u64| {
                let record = record(seq, &format!("h{}", seq % HEALTHY_KEYS), &topic);
                let id = record.event_id;
                let txn = db.db.begin().await.map_err(|e| e.to_string())?;
                outbox_sea_orm::enqueue_records(&txn, std::slice::from_ref(&record))
                    .await
                    .map_err(|e| error_chain(&e))?;
                txn.commit().await.map_err(|e| e.to_string())?;
                times.committed(id, Instant::now());
                Ok::<_, String>(())
            };
            while seq < events {
                tokio::select! {
                    _ = ticks.tick(), if in_flight.len() < IN_FLIGHT => {
                        seq += 1;
                        in_flight.push(one(seq));
                    }
                    Some(result) = in_flight.next() => result?,
                }
            }
            while let Some(result) = in_flight.next().await {
                result?;
            }
            let ended = Instant::now();
            tokio::time::sleep_until((ended + Duration::from_secs(5)).into()).await;
            let after_5s = times.delivered();
            let all = wait(Duration::from_secs(120), || {
                times.delivered() as u64 >= events
            })
            .await;
            let drained = ended.elapsed();
            Ok((after_5s, all, drained))
        }
        .await;
        stop.stop();
        result
    };
    let ((), result) = tokio::join!(relay_run, scenario);
    let (after_5s, all, drained) = result?;
    let (dead, pending, attempts) = slow_state(db).await?;
    eprintln!(
        "  {}: {after_5s} of {events} healthy events delivered 5 s after the load ended; all \
         {}; slow keys: {pending} records pending, {dead} dead, {attempts} attempts counted",
        db.label(),
        if all {
            format!("delivered {drained:.1?} after it ended")
        } else {
            "NOT delivered within 120 s".to_owned()
        },
    );
    let mut latencies = times.latencies();
    let mut figures = Figures::throughput(
        "slow-keys",
        db.label(),
        bench.broker.label(),
        "healthy",
        (events, HEALTHY_KEYS, 1),
        load,
    )
    .percentiles(&mut latencies);
    figures.note = Some(format!(
        "{after_5s} of {events} delivered 5 s after the load; slow keys {pending} pending, {dead} dead"
    ));
    Ok(vec![figures])
}

/// The slow keys' records: dead, pending, and attempts counted.
async fn slow_state(db: &BenchDb) -> Result<(i64, i64, i64), String> {
    let sql = "SELECT \
        CAST(COALESCE(SUM(CASE WHEN status = 'dead' THEN 1 ELSE 0 END), 0) AS BIGINT), \
        CAST(COALESCE(SUM(CASE WHEN status = 'pending' THEN 1 ELSE 0 END), 0) AS BIGINT), \
        CAST(COALESCE(SUM(attempts), 0) AS BIGINT) \
        FROM outbox WHERE partition_key LIKE 's%'";
    let sql = match db.db.get_database_backend() {
        DbBackend::MySql => sql.replace("AS BIGINT", "AS SIGNED"),
        _ => sql.to_owned(),
    };
    let row = db
        .db
        .query_one_raw(Statement::from_string(db.db.get_database_backend(), sql))
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no row")?;
    let get = |i: usize| row.try_get_by_index::<i64>(i).map_err(|e| e.to_string());
    Ok((get(0)?, get(1)?, get(2)?))
}
