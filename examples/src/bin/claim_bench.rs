//! Claim times over a large blocked backlog: 1,000,000 pending records, of
//! which 990,000 wait behind blocked key heads, and 10,000 healthy records
//! over 1,000 keys enqueued after them. Two layouts:
//!
//! - `blocked-hot-key`: the 990,000 belong to one key whose head is in
//!   backoff;
//! - `blocked-every-head`: they belong to 9,900 keys, every head in backoff
//!   (a broker outage).
//!
//! For each, it times claims of 500 healthy records (each released again
//! before the next), then, with every healthy key leased, claims that find
//! nothing. Run it on a release build:
//!
//! ```text
//! cargo run --release -p outbox-examples --bin claim_bench
//! cargo run --release -p outbox-examples --bin claim_bench -- --database-url postgres://postgres@127.0.0.1/postgres --json
//! ```
//!
//! Without `--database-url` it runs on PostgreSQL (127.0.0.1:5432), MariaDB
//! (127.0.0.1:3306) and SQLite (a temporary file), skipping a server it
//! cannot reach. It creates a database of its own on each server and drops
//! it afterwards. `--records N` scales the backlog down for a quick look.

use std::time::{Duration, Instant};

use bench_db::BenchDb;
use migration::{Migrator, MigratorTrait};
use outbox_core::{ClaimRequest, OutboxStore, Settlement};
use outbox_sea_orm::SeaOrmStore;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend};

#[path = "../bench_db.rs"]
mod bench_db;

const HEALTHY: u64 = 10_000;
const HEALTHY_KEYS: u64 = 1_000;
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
            Layout::HotKey => "blocked-hot-key",
            Layout::EveryHead => "blocked-every-head",
        }
    }

    /// The key of blocked record `n`.
    fn key_sql(self, backend: DbBackend, n: &str) -> String {
        match (self, backend) {
            (Layout::HotKey, _) => "'hot'".to_owned(),
            (Layout::EveryHead, DbBackend::MySql) => format!("CONCAT('b-', {n} % 9900)"),
            (Layout::EveryHead, _) => format!("'b-' || ({n} % 9900)"),
        }
    }

    fn keys(self) -> u64 {
        match self {
            Layout::HotKey => 1 + HEALTHY_KEYS,
            Layout::EveryHead => 9_900 + HEALTHY_KEYS,
        }
    }
}

struct Args {
    urls: Vec<String>,
    json: bool,
    blocked: u64,
}

fn args() -> Args {
    let mut urls = Vec::new();
    let mut json = false;
    let mut blocked = 990_000;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database-url" => urls.push(args.next().expect("--database-url takes a URL")),
            "--json" => json = true,
            "--records" => {
                let total: u64 = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--records takes a number");
                blocked = total.saturating_sub(HEALTHY);
            }
            "--help" | "-h" => {
                println!(
                    "claim_bench [--database-url URL]... [--records N] [--json]\n\
                     Times claims over a blocked backlog (see the source's docs)."
                );
                std::process::exit(0);
            }
            other => panic!("unknown argument {other}; see --help"),
        }
    }
    if urls.is_empty() {
        urls = bench_db::DEFAULT_URLS.map(str::to_owned).to_vec();
    }
    Args {
        urls,
        json,
        blocked,
    }
}

/// Inserts the backlog with the database's own row generator: `blocked`
/// records of the layout's keys, then the healthy ones; registers their
/// keys, and puts every blocked head in backoff for a day.
async fn fill(db: &DatabaseConnection, layout: Layout, blocked: u64) -> Result<(), String> {
    let backend = db.get_database_backend();
    let (now, later, uuid) = match backend {
        DbBackend::Postgres => ("now()", "now() + interval '1 day'", "gen_random_uuid()"),
        DbBackend::MySql => (
            "UTC_TIMESTAMP(6)",
            "UTC_TIMESTAMP(6) + INTERVAL 1 DAY",
            "UNHEX(REPLACE(UUID(), '-', ''))",
        ),
        _ => (
            "'2026-01-01T00:00:00+00:00'",
            "'2999-01-01T00:00:00+00:00'",
            "randomblob(16)",
        ),
    };
    let payload = "'".to_owned() + &"x".repeat(200) + "'";
    let rows = |count: u64, key: String| -> String {
        let (from, n) = match backend {
            DbBackend::Postgres => (format!("generate_series(1, {count}) AS g(n)"), "n"),
            DbBackend::MySql => (format!("seq_1_to_{count} g"), "g.seq"),
            _ => (String::new(), "n"),
        };
        let key = key.replace("{n}", n);
        let select = format!(
            "SELECT {uuid}, 'orders', {key}, 'Bench', 1, {payload}, '{{}}', 'pending', 0, \
             {now}, {now}, {now}"
        );
        let insert = "INSERT INTO outbox (event_id, topic, partition_key, event_type, \
                      schema_version, payload, headers, status, attempts, available_at, \
                      created_at, updated_at) ";
        match backend {
            DbBackend::Sqlite => format!(
                "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq \
                 WHERE n < {count}) {insert} {select} FROM seq"
            ),
            _ => format!("{insert} {select} FROM {from}"),
        }
    };
    let blocked_key = layout.key_sql(backend, "{n}");
    let healthy_key = match backend {
        DbBackend::MySql => format!("CONCAT('ok-', {{n}} % {HEALTHY_KEYS})"),
        _ => format!("'ok-' || ({{n}} % {HEALTHY_KEYS})"),
    };
    let statements = [
        rows(blocked, blocked_key),
        rows(HEALTHY, healthy_key),
        // What the migration does for a table that has records already.
        "INSERT INTO outbox_keys (partition_key, next_at)
SELECT o.partition_key, o.available_at FROM outbox o
WHERE o.status = 'pending' AND o.partition_key IS NOT NULL
  AND o.id = (SELECT MIN(i.id) FROM outbox i
              WHERE i.partition_key = o.partition_key AND i.status = 'pending')"
            .to_owned(),
        format!(
            "UPDATE outbox SET available_at = {later} WHERE id IN (SELECT id FROM (
               SELECT MIN(id) AS id FROM outbox WHERE partition_key NOT LIKE 'ok-%'
               GROUP BY partition_key) heads)"
        ),
        format!("UPDATE outbox_keys SET next_at = {later} WHERE partition_key NOT LIKE 'ok-%'"),
        match backend {
            DbBackend::Postgres => "VACUUM ANALYZE outbox".to_owned(),
            DbBackend::MySql => "ANALYZE TABLE outbox, outbox_keys".to_owned(),
            _ => "ANALYZE".to_owned(),
        },
    ];
    for sql in statements {
        db.execute_unprepared(&sql)
            .await
            .map_err(|e| format!("{e}: {sql}"))?;
    }
    if backend == DbBackend::Postgres {
        db.execute_unprepared("VACUUM ANALYZE outbox_keys")
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn request(owner: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit,
        lease: Duration::from_secs(3600),
        dead_holds_key: true,
    }
}

/// Median and 99th percentile, in milliseconds.
fn percentiles(mut times: Vec<Duration>) -> (f64, f64) {
    times.sort();
    let at = |q: f64| {
        let i = ((times.len() as f64 - 1.0) * q).round() as usize;
        times[i].as_secs_f64() * 1000.0
    };
    (at(0.5), at(0.99))
}

async fn measure(store: &SeaOrmStore) -> Result<((f64, f64), (f64, f64)), String> {
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
    Ok((percentiles(full), percentiles(empty)))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = args();
    for url in &args.urls {
        for layout in [Layout::HotKey, Layout::EveryHead] {
            let name = format!("outbox_bench_{}", std::process::id());
            let bench = match BenchDb::create(url, &name, 4).await {
                Ok(made) => made,
                Err(error) => {
                    eprintln!("SKIPPED {url}: {error}");
                    break;
                }
            };
            let (db, label) = (bench.db.clone(), bench.label());
            let result = async {
                Migrator::up(&db, None).await.map_err(|e| e.to_string())?;
                let started = Instant::now();
                fill(&db, layout, args.blocked).await?;
                eprintln!(
                    "{label} {}: {} records written in {:.1?}",
                    layout.name(),
                    args.blocked + HEALTHY,
                    started.elapsed()
                );
                measure(&SeaOrmStore::new(db.clone())).await
            }
            .await;
            drop(db);
            if std::env::var("CLAIM_BENCH_KEEP").is_err() {
                bench.drop().await;
            }
            let ((full_p50, full_p99), (empty_p50, empty_p99)) = match result {
                Ok(figures) => figures,
                Err(error) => {
                    eprintln!("FAILED {label} {}: {error}", layout.name());
                    std::process::exit(1);
                }
            };
            let events = args.blocked + HEALTHY;
            for (what, p50, p99, claimed) in [
                ("claim-500", full_p50, full_p99, BATCH),
                ("claim-empty", empty_p50, empty_p99, 0),
            ] {
                if args.json {
                    println!(
                        "{{\"scenario\":\"{}/{what}\",\"backend\":\"{label}\",\"sink\":\"none\",\
                         \"relay\":\"claim\",\"events\":{events},\"keys\":{},\"relays\":1,\
                         \"seconds\":{:.6},\"events_per_s\":{:.0},\"p50_ms\":{p50:.2},\
                         \"p99_ms\":{p99:.2}}}",
                        layout.name(),
                        layout.keys(),
                        p50 / 1000.0,
                        claimed as f64 / (p50 / 1000.0),
                    );
                } else {
                    println!(
                        "{label:<8} {:<19} {what:<12} p50 {p50:>8.2} ms   p99 {p99:>8.2} ms   \
                         ({events} pending, {ROUNDS} claims)",
                        layout.name()
                    );
                }
            }
        }
    }
}
