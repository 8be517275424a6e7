//! What `enqueue` adds to a business transaction: transactions that insert
//! one business row, against the same transactions that also enqueue one
//! event (which locks its key in `outbox_keys`, then inserts the record);
//! the difference per event. One writer, one event per transaction, 200-byte
//! payloads, 100 keys. Run it on a release build:
//!
//! ```text
//! cargo run --release -p outbox-examples --bin enqueue_bench
//! cargo run --release -p outbox-examples --bin enqueue_bench -- --database-url postgres://postgres@127.0.0.1/postgres --events 5000 --json
//! ```
//!
//! Without `--database-url` it runs on PostgreSQL (127.0.0.1:5432), MariaDB
//! (127.0.0.1:3306) and SQLite (a temporary file), skipping a server it
//! cannot reach, each in a database of its own that it drops afterwards.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use bench_db::BenchDb;
use migration::{Migrator, MigratorTrait};
use outbox_core::OutboxEvent;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "bench.orders", key = order)]
struct OrderPlaced {
    order: String,
    note: String,
}

#[path = "../bench_db.rs"]
mod bench_db;

/// The next business row's id.
static NEXT_ID: AtomicI64 = AtomicI64::new(1);

/// Seconds per transaction of `events` transactions, each inserting a
/// business row and, with `outbox`, enqueueing one event.
async fn run(db: &DatabaseConnection, events: u32, outbox: bool) -> Result<f64, String> {
    let backend = db.get_database_backend();
    let insert = match backend {
        DbBackend::Postgres => "INSERT INTO orders (id, note) VALUES ($1, $2)",
        _ => "INSERT INTO orders (id, note) VALUES (?, ?)",
    };
    let note = "x".repeat(200);
    let started = Instant::now();
    for n in 0..events {
        let txn = db.begin().await.map_err(|e| e.to_string())?;
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            insert,
            [
                NEXT_ID.fetch_add(1, Ordering::Relaxed).into(),
                note.clone().into(),
            ],
        ))
        .await
        .map_err(|e| e.to_string())?;
        if outbox {
            let event = OrderPlaced {
                order: format!("order-{}", n % 100),
                note: note.clone(),
            };
            outbox_sea_orm::enqueue(&txn, &event)
                .await
                .map_err(|e| outbox_core::error_chain(&e))?;
        }
        txn.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed().as_secs_f64() / f64::from(events))
}

#[tokio::main]
async fn main() {
    let mut urls = Vec::new();
    let mut events: u32 = 5_000;
    let mut json = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--database-url" => urls.push(args.next().expect("--database-url takes a URL")),
            "--events" => {
                events = args
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--events takes a number")
            }
            "--json" => json = true,
            other => panic!("unknown argument {other}: --database-url URL, --events N, --json"),
        }
    }
    if urls.is_empty() {
        urls = bench_db::DEFAULT_URLS.map(str::to_owned).to_vec();
    }
    for url in urls {
        let name = format!("outbox_enqueue_bench_{}", std::process::id());
        let bench = match BenchDb::create(&url, &name, 2).await {
            Ok(made) => made,
            Err(error) => {
                eprintln!("SKIPPED {url}: {error}");
                continue;
            }
        };
        let (db, label) = (bench.db.clone(), bench.label());
        Migrator::up(&db, None)
            .await
            .expect("the outbox migration failed");
        db.execute_unprepared("CREATE TABLE orders (id BIGINT PRIMARY KEY, note TEXT NOT NULL)")
            .await
            .expect("cannot create the business table");
        // A warm-up of each, then the measured runs, alternating.
        run(&db, events / 10, false).await.expect("warm-up");
        run(&db, events / 10, true).await.expect("warm-up");
        let alone = run(&db, events, false).await.expect("business inserts");
        let with = run(&db, events, true).await.expect("inserts with enqueue");
        bench.drop().await;
        let per_event_ms = (with - alone) * 1000.0;
        if json {
            println!(
                "{{\"scenario\":\"enqueue\",\"backend\":\"{label}\",\"sink\":\"none\",\
                 \"relay\":\"none\",\"events\":{events},\"keys\":100,\"relays\":0,\
                 \"seconds\":{:.6},\"events_per_s\":{:.0},\"per_event_ms\":{per_event_ms:.3}}}",
                with * f64::from(events),
                1.0 / with,
            );
        } else {
            println!(
                "{label:<8} business insert alone {:.3} ms/txn, with enqueue {:.3} ms/txn: \
                 enqueue adds {per_event_ms:.3} ms per event ({events} transactions each)",
                alone * 1000.0,
                with * 1000.0
            );
        }
    }
}
