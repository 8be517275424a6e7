//! `blocked`: claim times over a large blocked backlog. Of the pending
//! records, all but 10,000 wait behind blocked key heads; the 10,000
//! healthy ones, over 1,000 keys, were enqueued after them. Two layouts:
//!
//! - `hot-key`: the blocked records belong to one key whose head is in
//!   backoff;
//! - `every-head`: they belong to 9,900 keys, every head in backoff (a
//!   broker outage).
//!
//! For each, it times claims of 500 healthy records (each released again
//! before the next), then, with every healthy key leased, claims that find
//! nothing.

use std::time::{Duration, Instant};

use outbox_engine::{ClaimRequest, OutboxStore, Settlement};
use outbox_sea_orm::SeaOrmStore;
use sea_orm::DbBackend;

use super::Bench;
use super::db::BenchDb;
use super::load::{self, Generated};
use super::report::{self, Figures};

const HEALTHY: u64 = 10_000;
const HEALTHY_KEYS: u64 = 1_000;
const BLOCKED_KEYS: u64 = 9_900;
const BATCH: usize = 500;
const ROUNDS: usize = 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    HotKey,
    EveryHead,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::HotKey => "hot-key",
            Layout::EveryHead => "every-head",
        }
    }

    /// The SQL of blocked record `{n}`'s key.
    fn key_sql(self, backend: DbBackend) -> String {
        match self {
            Layout::HotKey => "'hot'".to_owned(),
            Layout::EveryHead => {
                load::concat(backend, &["'b-'", &format!("({{n}} % {BLOCKED_KEYS})")])
            }
        }
    }

    fn keys(self) -> u64 {
        match self {
            Layout::HotKey => 1 + HEALTHY_KEYS,
            Layout::EveryHead => BLOCKED_KEYS + HEALTHY_KEYS,
        }
    }
}

/// Runs both layouts over 1,000,000 pending records (`--quick`: 20,000),
/// each in a database of its own.
pub(crate) async fn run(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let blocked = bench.events(1_000_000, 20_000).saturating_sub(HEALTHY);
    let mut figures = Vec::new();
    for layout in [Layout::HotKey, Layout::EveryHead] {
        let run = async |db: &BenchDb| {
            let started = Instant::now();
            fill(db, layout, blocked).await?;
            eprintln!(
                "  {} {}: {} records written in {:.1?}",
                db.label(),
                layout.name(),
                blocked + HEALTHY,
                started.elapsed()
            );
            measure(&SeaOrmStore::new(db.db.clone())).await
        };
        let (mut full, mut empty) = bench
            .with_database(url, 4, run)
            .await
            .map_err(|error| format!("layout {}: {error}", layout.name()))?;
        let label = super::db::label(url);
        for (relay, times, claimed) in [
            ("claim-500", &mut full, BATCH),
            ("claim-empty", &mut empty, 0),
        ] {
            let mut row = Figures::throughput(
                "blocked",
                label,
                "none",
                format!("{relay}/{}", layout.name()),
                (blocked + HEALTHY, layout.keys(), 1),
                Duration::ZERO,
            )
            .percentiles(times);
            // The figures of one claim: its median time, and the records
            // it took per second of it.
            let p50 = row.p50_ms.unwrap_or_default() / 1000.0;
            row.seconds = report::round(p50, 6);
            row.events_per_s = if p50 > 0.0 {
                (claimed as f64 / p50).round()
            } else {
                0.0
            };
            figures.push(row);
        }
    }
    Ok(figures)
}

/// Inserts the backlog with the database's own row generator: `blocked`
/// records of the layout's keys, then the healthy ones; registers their
/// keys, and puts every blocked head in backoff for a day.
async fn fill(bench: &BenchDb, layout: Layout, blocked: u64) -> Result<(), String> {
    let backend = bench.db.get_database_backend();
    let later = match backend {
        DbBackend::Postgres => "now() + interval '1 day'",
        DbBackend::MySql => "UTC_TIMESTAMP(6) + INTERVAL 1 DAY",
        _ => "'2999-01-01T00:00:00+00:00'",
    };
    let healthy_key = load::concat(backend, &["'ok-'", &format!("({{n}} % {HEALTHY_KEYS})")]);
    let rows = |count, key| {
        load::generate(
            backend,
            &Generated {
                count,
                key,
                topic: "orders",
            },
        )
    };
    let mut statements = Vec::new();
    if blocked > 0 {
        statements.push(rows(blocked, layout.key_sql(backend)));
    }
    statements.extend([
        rows(HEALTHY, healthy_key),
        load::REGISTER_KEYS.to_owned(),
        format!(
            "UPDATE outbox SET available_at = {later} WHERE id IN (SELECT id FROM (
               SELECT MIN(id) AS id FROM outbox WHERE partition_key NOT LIKE 'ok-%'
               GROUP BY partition_key) heads)"
        ),
        format!("UPDATE outbox_keys SET next_at = {later} WHERE partition_key NOT LIKE 'ok-%'"),
    ]);
    for sql in statements {
        bench.execute(&sql).await?;
    }
    bench.analyze().await
}

fn request(owner: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit,
        lease: Duration::from_secs(3600),
        dead_holds_key: true,
    }
}

/// The times of full claims and of empty ones.
async fn measure(store: &SeaOrmStore) -> Result<(Vec<Duration>, Vec<Duration>), String> {
    let mut full = Vec::new();
    for round in 0..ROUNDS {
        let owner = format!("bench#{round}");
        let started = Instant::now();
        let claimed = store
            .claim(&request(&owner, BATCH))
            .await
            .map_err(|e| e.to_string())?;
        full.push(started.elapsed());
        if claimed.len() != BATCH
            || claimed
                .iter()
                .any(|r| !r.key.as_deref().unwrap_or("").starts_with("ok-"))
        {
            return Err(format!(
                "claim {round} took {} records, or a blocked one",
                claimed.len()
            ));
        }
        let released = Settlement {
            released: claimed.iter().map(|r| r.id).collect(),
            ..Settlement::default()
        };
        store
            .settle(&owner, &released)
            .await
            .map_err(|e| e.to_string())?;
    }
    // Lease every healthy key, then time claims that find nothing.
    loop {
        let claimed = store
            .claim(&request("holder", BATCH))
            .await
            .map_err(|e| e.to_string())?;
        if claimed.is_empty() {
            break;
        }
    }
    let mut empty = Vec::new();
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let claimed = store
            .claim(&request("idle", BATCH))
            .await
            .map_err(|e| e.to_string())?;
        empty.push(started.elapsed());
        if !claimed.is_empty() {
            return Err("a claim found records while every healthy key was leased".to_owned());
        }
    }
    Ok((full, empty))
}
