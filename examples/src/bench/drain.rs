//! `drain` and `hot-keys`: a backlog of pending events drained by one
//! relay with the default settings, and, on the same data and broker, by
//! the seed article's reader. Also the helper every scenario that drains
//! uses: run relays until every record is published.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_engine::{Relay, Sink, error_chain};
use outbox_rdkafka::KafkaSink;
use outbox_sea_orm::SeaOrmStore;

use super::db::{self, BenchDb};
use super::report::Figures;
use super::{Bench, Stop, load, seed};

/// Connections of the benchmark's pool: the relay needs two at most; the
/// seed's delivery callbacks run this many `UPDATE`s at once. SQLite gets
/// one: its writers take turns anyway, and several connections make them
/// wait in SQLite's busy handler, which sleeps up to 100 ms at a time.
fn pool(url: &str) -> u32 {
    match db::label(url) {
        "sqlite" => 1,
        _ => 10,
    }
}

/// Drains `events` (100,000, `--quick` 1,000) over `keys` keys with the
/// relay, then with the seed's reader, each on freshly loaded data.
pub(crate) async fn run(
    bench: &Bench,
    url: &str,
    scenario: &'static str,
    keys: u64,
) -> Result<Vec<Figures>, String> {
    let events = bench.events(100_000, 1_000);
    let mut figures = Vec::new();
    for relay in ["outbox", "seed"] {
        let topic = bench.broker.new_topic(scenario).await?;
        let run = async |db: &BenchDb| {
            load::enqueue_events(db, &topic, events, keys).await?;
            let elapsed = match relay {
                "outbox" => {
                    let relay = Relay::builder(SeaOrmStore::new(db.db.clone()), sink(bench)?)
                        .build()
                        .map_err(|e| error_chain(&e))?;
                    drain(db, &[relay], events).await?
                }
                _ => drain_seed(bench, db, events).await?,
            };
            Ok(Figures::throughput(
                scenario,
                db.label(),
                bench.broker.label(),
                relay,
                (events, keys, 1),
                elapsed,
            ))
        };
        let result = bench.with_database(url, pool(url), run).await;
        figures.push(result.map_err(|e| format!("{relay}: {e}"))?);
    }
    Ok(figures)
}

/// A `KafkaSink` with its defaults, to the benchmark's broker.
pub(crate) fn sink(bench: &Bench) -> Result<KafkaSink, String> {
    KafkaSink::new(bench.broker.config()).map_err(|e| error_chain(&e))
}

/// Runs `relays` until `events` records are published; returns the time
/// from their start to the last record marked published.
pub(crate) async fn drain<Si: Sink>(
    db: &BenchDb,
    relays: &[Relay<SeaOrmStore, Si>],
    events: u64,
) -> Result<Duration, String> {
    let stop = Stop::new();
    let started = Instant::now();
    let run = futures::future::join_all(relays.iter().map(|relay| relay.run(stop.stopped())));
    let watch = async {
        let published = || {
            relays
                .iter()
                .map(|relay| relay.status().totals.published as u64)
                .sum()
        };
        let result = until_published(db, events, published).await;
        stop.stop();
        result.map(|done| done - started)
    };
    let (_, result) = tokio::join!(run, watch);
    result.map_err(|error| {
        let status = relays.iter().find_map(|relay| relay.status().last_error);
        match status {
            Some(last) => format!("{error} (a relay's last error: {last})"),
            None => error,
        }
    })
}

/// Runs the seed's reader until `events` records are published.
async fn drain_seed(bench: &Bench, db: &BenchDb, events: u64) -> Result<Duration, String> {
    let producer = seed::producer(bench.broker.config())?;
    let published = AtomicU64::new(0);
    let stop = Stop::new();
    let started = Instant::now();
    let watch = async {
        let result = until_published(db, events, || published.load(Ordering::Relaxed)).await;
        stop.stop();
        result.map(|done| done - started)
    };
    let (ran, result) = tokio::join!(seed::run(&db.db, &producer, &published, &stop), watch);
    ran.map_err(|e| format!("the seed's reader failed: {e}"))?;
    result
}

/// Waits until `published()` (counted in this process, so waiting costs
/// the database nothing) reaches `events` and the table has no pending
/// record left; says how far it got every 10 s. Returns when the count
/// reached `events`, or, if records were left (some counted twice), when
/// the table had none left.
async fn until_published(
    db: &BenchDb,
    events: u64,
    published: impl Fn() -> u64,
) -> Result<Instant, String> {
    let started = Instant::now();
    // Generous: the slowest run (the seed on SQLite) writes 100,000 rows
    // one commit each.
    let deadline = started + Duration::from_secs(1800).max(Duration::from_millis(20 * events));
    let mut next_note = started + Duration::from_secs(10);
    loop {
        let now = Instant::now();
        if published() >= events {
            let (pending, _) = db.counts().await?;
            if pending == 0 {
                return Ok(now);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        } else {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if now > next_note {
            eprintln!(
                "  ... {} of {events} published after {:.0?}",
                published(),
                started.elapsed()
            );
            next_note = now + Duration::from_secs(10);
        }
        if now > deadline {
            return Err(format!(
                "only {} of {events} records were published within {:.0?}",
                published(),
                deadline - started
            ));
        }
    }
}
