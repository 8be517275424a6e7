//! `drain` and `hot-keys`: a backlog of pending events drained by one
//! relay with the default settings, and, on the same data and broker, by
//! the seed article's reader and by the floor: a loop that does only the
//! unavoidable work, each record read and removed once (one `DELETE ...
//! RETURNING` per 500) and sent once, two steps in flight at most; and by
//! the database's part of the floor alone (`floor-db`). For the relay it also says what each event cost: its
//! statements, and on PostgreSQL its row versions (`pg_stat_user_tables`),
//! from the load to the end of the drain. Also the helper every scenario
//! that drains uses: run relays until every record is published.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use outbox_engine::{Relay, Sink, error_chain};
use outbox_rdkafka::KafkaSink;
use outbox_sea_orm::SeaOrmStore;
use sea_orm::{ConnectionTrait, DbBackend, Statement};

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
    for relay in ["outbox", "seed", "floor", "floor-db"] {
        let topic = bench.broker.new_topic(scenario).await?;
        let run = async |db: &BenchDb| {
            let before = db.row_versions().await?;
            // Every run starts a checkpoint cycle with its load: one that
            // fell inside one run and not another would cost that run its
            // full-page images in the WAL.
            db.checkpoint().await?;
            load::enqueue_events(db, &topic, events, keys).await?;
            let statements = Arc::new(AtomicU64::new(0));
            let (elapsed, store) = match relay {
                "outbox" => {
                    let mut counted = db.db.clone();
                    let count = statements.clone();
                    let profile = PROFILE.clone();
                    counted.set_metric_callback(move |info| {
                        count.fetch_add(1, Ordering::Relaxed);
                        if std::env::var("BENCH_STATEMENTS").is_ok() {
                            let sql = info.statement.sql.split_whitespace().collect::<Vec<_>>();
                            let key: String = sql.join(" ").chars().take(90).collect();
                            let mut profile = profile.lock().unwrap_or_else(|e| e.into_inner());
                            let entry = profile.entry(key).or_insert((0, Duration::ZERO));
                            entry.0 += 1;
                            entry.1 += info.elapsed;
                        }
                    });
                    let store = bench.store(counted);
                    let relay = Relay::builder(store.clone(), sink(bench)?)
                        .build()
                        .map_err(|e| error_chain(&e))?;
                    (drain(db, &[relay], events).await?, Some(store))
                }
                "seed" => (drain_seed(bench, db, events).await?, None),
                "floor" => (floor(bench, db, events, true).await?, None),
                _ => (floor(bench, db, events, false).await?, None),
            };
            let mut figures = Figures::throughput(
                scenario,
                db.label(),
                bench.broker.label(),
                relay,
                (events, keys, 1),
                elapsed,
            );
            if std::env::var("BENCH_STATEMENTS").is_ok() {
                let mut profile: Vec<_> = PROFILE
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .drain()
                    .collect();
                profile.sort_by_key(|(_, (_, spent))| std::cmp::Reverse(*spent));
                for (sql, (runs, spent)) in profile.iter().take(12) {
                    eprintln!(
                        "  {:>8.1} ms {runs:>6} x  {sql}",
                        spent.as_secs_f64() * 1000.0
                    );
                }
            }
            if let Some(store) = store {
                let mut note = format!(
                    "{:.2} statements per event by the relay",
                    statements.load(Ordering::Relaxed) as f64 / events as f64
                );
                if let (Some(before), Some(after)) = (before, db.row_versions().await?) {
                    note.push_str(&format!("; {}", after.per_event(&before, events)));
                }
                if store.keeps_published() {
                    note.push_str("; published history kept");
                }
                figures.note = Some(note);
            }
            Ok(figures)
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

/// With `BENCH_STATEMENTS` set: the relay's statements (their first 90
/// characters), how often each ran and the time spent in it.
type Profile = std::sync::Mutex<std::collections::HashMap<String, (u64, Duration)>>;
static PROFILE: std::sync::LazyLock<Arc<Profile>> = std::sync::LazyLock::new(Default::default);

/// Rows per step of the floor.
const FLOOR_BATCH: u64 = 500;

/// The floor: removes the oldest records `FLOOR_BATCH` at a time (one
/// `DELETE ... RETURNING` each) until `events` are gone, and with `send`
/// sends each, two steps' deliveries awaited at most at once, as the
/// relay's default `max_in_flight`; no lease, no order under failure, no
/// key bookkeeping. Without `send` (`floor-db`), what the database alone
/// does.
async fn floor(bench: &Bench, db: &BenchDb, events: u64, send: bool) -> Result<Duration, String> {
    let producer = seed::producer(bench.broker.config())?;
    let backend = db.db.get_database_backend();
    let take = match backend {
        DbBackend::MySql => format!(
            "DELETE FROM outbox ORDER BY id LIMIT {FLOOR_BATCH} \
             RETURNING id, topic, partition_key, payload"
        ),
        _ => format!(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT {FLOOR_BATCH}) \
             RETURNING id, topic, partition_key, payload"
        ),
    };
    let started = Instant::now();
    let (mut taken, mut sent) = (0, 0);
    let mut in_flight = std::collections::VecDeque::new();
    while sent < events {
        if taken < events && in_flight.len() < 2 {
            let rows = db
                .db
                .query_all_raw(Statement::from_string(backend, take.clone()))
                .await
                .map_err(|e| format!("the floor's delete failed: {e}"))?;
            if rows.is_empty() {
                return Err(format!("the floor found {taken} records of {events}"));
            }
            taken += rows.len() as u64;
            if !send {
                sent = taken;
                continue;
            }
            let deliveries = rows
                .iter()
                .map(|row| seed::send(&producer, row))
                .collect::<Result<Vec<_>, _>>()?;
            in_flight.push_back(futures::future::join_all(deliveries));
            continue;
        }
        let Some(oldest) = in_flight.pop_front() else {
            break;
        };
        for delivery in oldest.await {
            match delivery {
                Ok(Ok(_)) => sent += 1,
                Ok(Err((error, _))) => return Err(format!("the floor's send failed: {error}")),
                Err(_) => return Err("the floor's producer went away".to_owned()),
            }
        }
    }
    Ok(started.elapsed())
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
