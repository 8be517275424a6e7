//! Filling the outbox: through the store's own `enqueue` in large
//! transactions, or with the database's row generator for millions of
//! records (keys registered in `outbox_keys` as the migration does).

use outbox_engine::{NewRecord, OutboxEvent};
use sea_orm::{DbBackend, TransactionTrait};
use serde::{Deserialize, Serialize};

use super::db::BenchDb;

/// The size of every event's JSON payload, in bytes.
pub(crate) const PAYLOAD_BYTES: usize = 200;

/// Events per transaction when loading through `enqueue`.
const EVENTS_PER_TRANSACTION: u64 = 10_000;

/// The benchmark's event: its key, its number in enqueue order, and
/// padding up to [`PAYLOAD_BYTES`].
#[derive(Debug, Serialize, Deserialize, OutboxEvent)]
#[outbox(topic = "bench", key = key, event_type = "bench.Event")]
pub(crate) struct BenchEvent {
    pub(crate) key: String,
    pub(crate) seq: u64,
    pub(crate) note: String,
}

impl BenchEvent {
    /// Event number `seq` of `keys` keys, its payload [`PAYLOAD_BYTES`]
    /// long.
    pub(crate) fn new(seq: u64, keys: u64) -> Self {
        let mut event = Self {
            key: format!("k{}", seq % keys),
            seq,
            note: String::new(),
        };
        let bare = serde_json::to_string(&event).expect("serializes").len();
        event.note = "x".repeat(PAYLOAD_BYTES.saturating_sub(bare));
        event
    }

    /// The record of event `seq`, for `topic`.
    pub(crate) fn record(seq: u64, keys: u64, topic: &str) -> NewRecord {
        let mut record = NewRecord::from_event(&Self::new(seq, keys)).expect("serializes");
        record.topic = topic.to_owned();
        record
    }
}

/// Enqueues events `0..events` over `keys` keys for `topic` through
/// `outbox_sea_orm::enqueue_records`, many to a transaction, then updates
/// the planner's statistics.
pub(crate) async fn enqueue_events(
    bench: &BenchDb,
    topic: &str,
    events: u64,
    keys: u64,
) -> Result<(), String> {
    let mut seq = 0;
    while seq < events {
        let end = (seq + EVENTS_PER_TRANSACTION).min(events);
        let records: Vec<NewRecord> = (seq..end)
            .map(|n| BenchEvent::record(n, keys, topic))
            .collect();
        let txn = bench.db.begin().await.map_err(|e| e.to_string())?;
        outbox_sea_orm::enqueue_records(&txn, &records)
            .await
            .map_err(|e| outbox_engine::error_chain(&e))?;
        txn.commit().await.map_err(|e| e.to_string())?;
        seq = end;
    }
    bench.analyze().await
}

/// What [`generate`] writes.
pub(crate) struct Generated<'a> {
    /// Records to insert.
    pub(crate) count: u64,
    /// The SQL of record `{n}`'s key (`{n}` is replaced by the row number).
    pub(crate) key: String,
    pub(crate) topic: &'a str,
}

/// An `INSERT ... SELECT` of pending [`BenchEvent`] records made by the
/// database's row generator: `generate_series` on PostgreSQL, the sequence engine on
/// MariaDB, a recursive CTE on SQLite.
pub(crate) fn generate(backend: DbBackend, rows: &Generated<'_>) -> String {
    let (now, uuid) = match backend {
        DbBackend::Postgres => ("now()", "gen_random_uuid()"),
        DbBackend::MySql => ("UTC_TIMESTAMP(6)", "UNHEX(REPLACE(UUID(), '-', ''))"),
        _ => ("'2026-01-01T00:00:00+00:00'", "randomblob(16)"),
    };
    let count = rows.count;
    let n = match backend {
        DbBackend::MySql => "g.seq",
        _ => "n",
    };
    let key = rows.key.replace("{n}", n);
    // A BenchEvent's JSON, padded to about its length.
    let pad = "x".repeat(PAYLOAD_BYTES - 40);
    let payload = concat(
        backend,
        &[
            "'{\"key\":\"'",
            &key,
            "'\",\"seq\":'",
            n,
            &format!("',\"note\":\"{pad}\"}}'"),
        ],
    );
    let insert = "INSERT INTO outbox (event_id, topic, partition_key, event_type, \
                  schema_version, payload, headers, status, attempts, available_at, \
                  created_at, updated_at)";
    let select = format!(
        "SELECT {uuid}, '{}', {key}, 'bench.Event', 1, {payload}, '{{}}', 'pending', 0, \
         {now}, {now}, {now}",
        rows.topic
    );
    match backend {
        DbBackend::Postgres => {
            format!("{insert} {select} FROM generate_series(1, {count}) AS g(n)")
        }
        DbBackend::MySql => format!("{insert} {select} FROM seq_1_to_{count} g"),
        _ => format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq \
             WHERE n < {count}) {insert} {select} FROM seq"
        ),
    }
}

/// What the migration does for a table that has records already: a row in
/// `outbox_keys` for every key with pending records, ready when its first
/// record is.
pub(crate) const REGISTER_KEYS: &str = "INSERT INTO outbox_keys (partition_key, next_at)
SELECT o.partition_key, o.available_at FROM outbox o
WHERE o.status = 'pending' AND o.partition_key IS NOT NULL
  AND o.id = (SELECT MIN(i.id) FROM outbox i
              WHERE i.partition_key = o.partition_key AND i.status = 'pending')";

/// Text expressions joined, in the dialect's syntax.
pub(crate) fn concat(backend: DbBackend, parts: &[&str]) -> String {
    match backend {
        DbBackend::MySql => format!("CONCAT({})", parts.join(", ")),
        _ => parts.join(" || "),
    }
}
