//! The seed article's reader, as written there, for comparison: a loop
//! that selects pending rows, sends each with an rdkafka `FutureProducer`
//! and, when its delivery completes, marks that row published with an
//! `UPDATE` of its own. It keeps no per-key order under failures, takes no
//! lease (two of them would publish everything twice) and knows no
//! `outbox_keys`; it is here only to show what the relay's design costs or
//! saves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use super::Stop;

/// Rows per `SELECT`.
const BATCH: u64 = 100;
/// The wait when no row is pending.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

/// A producer as the article makes it: the broker, idempotence on, and
/// librdkafka's defaults for the rest.
pub(crate) fn producer(mut config: ClientConfig) -> Result<FutureProducer, String> {
    config
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| format!("cannot make the seed's producer: {e}"))
}

/// Sends a row read with its `topic`, `partition_key` and `payload`.
pub(crate) fn send(
    producer: &FutureProducer,
    row: &sea_orm::QueryResult,
) -> Result<rdkafka::producer::DeliveryFuture, String> {
    let get = |e: sea_orm::DbErr| e.to_string();
    let topic: String = row.try_get("", "topic").map_err(get)?;
    let key: Option<String> = row.try_get("", "partition_key").map_err(get)?;
    let payload: String = row.try_get("", "payload").map_err(get)?;
    let mut record = FutureRecord::to(&topic).payload(&payload);
    if let Some(key) = &key {
        record = record.key(key);
    }
    producer
        .send_result(record)
        .map_err(|(e, _)| format!("cannot queue a message: {e}"))
}

/// Runs the reader until `stop`, counting the rows it marked
/// published in `published`.
pub(crate) async fn run(
    db: &DatabaseConnection,
    producer: &FutureProducer,
    published: &AtomicU64,
    stop: &Stop,
) -> Result<(), String> {
    let backend = db.get_database_backend();
    let select = Statement::from_string(
        backend,
        format!(
            "SELECT id, topic, partition_key, payload FROM outbox WHERE status = 'pending' \
             ORDER BY id LIMIT {BATCH}"
        ),
    );
    let update = match backend {
        DbBackend::Postgres => {
            "UPDATE outbox SET status = 'published', published_at = $1 WHERE id = $2"
        }
        _ => "UPDATE outbox SET status = 'published', published_at = ? WHERE id = ?",
    };
    while !stop.is_stopped() {
        let rows = db
            .query_all_raw(select.clone())
            .await
            .map_err(|e| e.to_string())?;
        if rows.is_empty() {
            tokio::select! {
                () = stop.stopped() => {}
                () = tokio::time::sleep(POLL_INTERVAL) => {}
            }
            continue;
        }
        let mut deliveries = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get("", "id").map_err(|e| e.to_string())?;
            let delivery = send(producer, &row)?;
            // The delivery callback: mark this row published.
            deliveries.push(async move {
                if let Ok(Ok(_)) = delivery.await {
                    let now = chrono::Utc::now();
                    db.execute_raw(Statement::from_sql_and_values(
                        backend,
                        update,
                        [now.into(), id.into()],
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                    published.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<(), String>(())
            });
        }
        // The next SELECT after this batch's callbacks, or it would read
        // the rows in flight again and send them twice.
        for result in futures::future::join_all(deliveries).await {
            result?;
        }
    }
    Ok(())
}
