//! `enqueue`: what `enqueue` adds to a business transaction. Transactions
//! that insert one business row, against the same transactions that also
//! enqueue one event (which locks its key in `outbox_keys`, then inserts
//! the record); the difference per event. One writer, one event per
//! transaction, 200-byte payloads, 100 keys.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};

use super::db::{BenchDb, ORDERS_TABLE};
use super::load::BenchEvent;
use super::report::{self, Figures};
use super::{Bench, load};

/// Keys of the enqueued events.
pub(crate) const KEYS: u64 = 100;

/// The next business row's id.
static NEXT_ID: AtomicI64 = AtomicI64::new(1);

/// Inserts one business row through `db` (a transaction).
pub(crate) async fn insert_order(db: &impl ConnectionTrait) -> Result<(), String> {
    let insert = match db.get_database_backend() {
        DbBackend::Postgres => "INSERT INTO bench_orders (id, note) VALUES ($1, $2)",
        _ => "INSERT INTO bench_orders (id, note) VALUES (?, ?)",
    };
    db.execute_raw(Statement::from_sql_and_values(
        db.get_database_backend(),
        insert,
        [
            NEXT_ID.fetch_add(1, Ordering::Relaxed).into(),
            "x".repeat(load::PAYLOAD_BYTES).into(),
        ],
    ))
    .await
    .map(drop)
    .map_err(|e| e.to_string())
}

/// One business transaction: a business row and `record`, through
/// `outbox`'s pool.
pub(crate) async fn commit_order(
    outbox: &outbox_sea_orm::Outbox,
    record: outbox_engine::NewRecord,
) -> Result<(), String> {
    outbox
        .transaction(|txn| {
            Box::pin(async move {
                insert_order(txn).await.map_err(std::io::Error::other)?;
                outbox_sea_orm::enqueue_records(txn, std::slice::from_ref(&record))
                    .await
                    .map_err(|e| std::io::Error::other(outbox_engine::error_chain(&e)))
            })
        })
        .await
        .map_err(|e| e.to_string())
}

/// Times `events` transactions (5,000, `--quick` 300) each way.
pub(crate) async fn run(bench: &Bench, url: &str) -> Result<Vec<Figures>, String> {
    let events = bench.events(5_000, 300);
    let run = async |db: &BenchDb| {
        db.execute(ORDERS_TABLE).await?;
        // A warm-up of each, then the measured runs.
        time(&db.db, events / 10, false).await?;
        time(&db.db, events / 10, true).await?;
        let alone = time(&db.db, events, false).await?;
        let with = time(&db.db, events, true).await?;
        Ok((alone, with))
    };
    let (alone, with) = bench.with_database(url, 2, run).await?;
    let label = super::db::label(url);
    eprintln!(
        "  {label}: business insert alone {:.3} ms/txn, with enqueue {:.3} ms/txn",
        alone * 1000.0 / events as f64,
        with * 1000.0 / events as f64,
    );
    let mut figures = Figures::throughput(
        "enqueue",
        label,
        "none",
        "none",
        (events, KEYS, 0),
        Duration::from_secs_f64(with),
    );
    figures.per_event_ms = Some(report::round((with - alone) * 1000.0 / events as f64, 3));
    Ok(vec![figures])
}

/// Seconds taken by `events` transactions, each inserting a business row
/// and, with `outbox`, enqueueing one event.
async fn time(db: &DatabaseConnection, events: u64, outbox: bool) -> Result<f64, String> {
    let started = Instant::now();
    for n in 0..events {
        let txn = db.begin().await.map_err(|e| e.to_string())?;
        insert_order(&txn).await?;
        if outbox {
            outbox_sea_orm::enqueue(&txn, &BenchEvent::new(n, KEYS))
                .await
                .map_err(|e| outbox_engine::error_chain(&e))?;
        }
        txn.commit().await.map_err(|e| e.to_string())?;
    }
    Ok(started.elapsed().as_secs_f64())
}
