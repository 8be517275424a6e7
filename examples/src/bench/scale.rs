//! `scale`: 1, 2 and 4 relays, each with its own connection pool and its
//! own producer, draining one backlog on PostgreSQL; then the topic is read
//! back and the first copy of each event must come in its key's enqueue
//! order.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outbox_engine::{Relay, error_chain};
use outbox_sea_orm::SeaOrmStore;

use super::broker::payload;
use super::db::{self, BenchDb};
use super::load::BenchEvent;
use super::report::Figures;
use super::{Bench, drain, load};

const KEYS: u64 = 1_000;

/// Drains 100,000 events (`--quick` 5,000) with each number of relays.
pub(crate) async fn run(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let events = bench.events(100_000, 5_000);
    let mut figures = Vec::new();
    for relays in [1, 2, 4] {
        let topic = bench.broker.new_topic("scale").await?;
        let run = async |db: &BenchDb| {
            load::enqueue_events(db, &topic, events, KEYS).await?;
            let elapsed = drain_with(bench, db, relays, events).await?;
            check_order(bench, &topic, events)?;
            Ok(Figures::throughput(
                "scale",
                db.label(),
                bench.broker.label(),
                "outbox",
                (events, KEYS, relays),
                elapsed,
            ))
        };
        let result = bench.with_database(url, 4, run).await;
        figures.push(result.map_err(|e| format!("{relays} relays: {e}"))?);
    }
    Ok(figures)
}

async fn drain_with(
    bench: &Bench,
    db: &BenchDb,
    relays: u32,
    events: u64,
) -> Result<Duration, String> {
    let mut running = Vec::new();
    for _ in 0..relays {
        let pool = db::connect(&db.url, 4).await?;
        let relay = Relay::builder(SeaOrmStore::new(pool), drain::sink(bench)?)
            .build()
            .map_err(|e| error_chain(&e))?;
        running.push(relay);
    }
    let elapsed = drain::drain(db, &running, events).await;
    for relay in running {
        let _ = relay.store().connection().close_by_ref().await;
    }
    elapsed
}

/// Reads `topic` until every event was seen, failing when the first copy
/// of an event comes after the first copy of a later event of its key.
fn check_order(bench: &Bench, topic: &str, events: u64) -> Result<(), String> {
    let mut latest: HashMap<String, u64> = HashMap::new();
    let mut seen = HashSet::new();
    let mut broken = None;
    bench
        .broker
        .read(topic, Duration::from_secs(120), |message| {
            let event: BenchEvent = serde_json::from_str(payload(message)?)
                .map_err(|e| format!("a message is not a bench event: {e}"))?;
            // Later copies of an event say nothing about order.
            if seen.insert(event.seq) {
                let last = latest.entry(event.key.clone()).or_insert(event.seq);
                if event.seq < *last {
                    broken = Some(format!(
                        "key {}: event {} arrived after event {last}",
                        event.key, event.seq
                    ));
                }
                *last = (*last).max(event.seq);
            }
            Ok(seen.len() as u64 >= events || broken.is_some())
        })
        .map_err(|e| format!("{e} ({} of {events} events read)", seen.len()))?;
    match broken {
        Some(broken) => Err(format!("PER-KEY ORDER BROKEN in {topic}: {broken}")),
        None => Ok(()),
    }
}
