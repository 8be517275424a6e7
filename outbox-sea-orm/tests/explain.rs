//! The claim query reads an index, without a full scan or a sort, with
//! 100,000 published and 1,000 pending records.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{Backend, TestDb};
use outbox_core::ClaimRequest;
use outbox_sea_orm::claim_statement;
use sea_orm::{ConnectionTrait, QueryResult, Statement};

fn request() -> ClaimRequest {
    ClaimRequest {
        owner: "explain".to_owned(),
        limit: 100,
        lease: Duration::from_secs(30),
        now: Utc::now() + chrono::TimeDelta::seconds(1),
    }
}

/// `EXPLAIN` of exactly the statement the store runs.
async fn explain(db: &TestDb, prefix: &str) -> Vec<QueryResult> {
    let claim = claim_statement(db.db_backend(), &request());
    let explain = Statement {
        sql: format!("{prefix} {}", claim.sql),
        ..claim
    };
    db.db.query_all_raw(explain).await.expect("EXPLAIN failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_claims_through_the_pending_index() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let insert = |status: &str, rows: u32| {
        format!(
            "INSERT INTO outbox (event_id, topic, partition_key, event_type, schema_version, \
             payload, headers, status, attempts, available_at, created_at, updated_at, published_at) \
             SELECT gen_random_uuid(), 'orders', 'key-' || (g % 500), 'OrderPlaced', 1, '{{}}', '{{}}', \
             '{status}', 0, now(), now(), now(), CASE WHEN '{status}' = 'published' THEN now() END \
             FROM generate_series(1, {rows}) g"
        )
    };
    db.exec(&insert("published", 100_000)).await;
    db.exec(&insert("pending", 1_000)).await;
    db.exec("ANALYZE outbox").await;

    let plan: Vec<String> = explain(&db, "EXPLAIN")
        .await
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).unwrap())
        .collect();
    let plan = plan.join("\n");
    eprintln!("PostgreSQL claim plan:\n{plan}");
    assert!(!plan.contains("Seq Scan"), "a sequential scan:\n{plan}");
    assert!(
        plan.contains("idx_outbox_pending"),
        "the pending index is not used:\n{plan}"
    );
    assert!(!plan.contains("Sort"), "a sort:\n{plan}");
}

/// The `rows` estimate of a MariaDB/MySQL `EXPLAIN` row (text on MariaDB,
/// a number on MySQL).
fn estimated_rows(row: &QueryResult) -> String {
    if let Ok(Some(n)) = row.try_get::<Option<String>>("", "rows") {
        return n;
    }
    match row.try_get::<Option<u64>>("", "rows") {
        Ok(Some(n)) => n.to_string(),
        Ok(None) => "NULL".to_owned(),
        Err(error) => format!("? ({error})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_claims_through_the_status_index() {
    let Some(db) = TestDb::new(Backend::MySql).await else {
        return;
    };
    // 10^5 numbers from a cross join of digits (works on MySQL and MariaDB
    // without raising the recursion limit of a recursive CTE).
    let digits = "(SELECT 0 AS d UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 \
                  UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6 UNION ALL SELECT 7 \
                  UNION ALL SELECT 8 UNION ALL SELECT 9)";
    let insert = |status: &str, published_at: &str, tables: usize| {
        let from = (0..tables)
            .map(|i| format!("{digits} t{i}"))
            .collect::<Vec<_>>()
            .join(" CROSS JOIN ");
        let n = (0..tables)
            .map(|i| format!("t{i}.d * {}", 10_u32.pow(i as u32)))
            .collect::<Vec<_>>()
            .join(" + ");
        format!(
            "INSERT INTO outbox (event_id, topic, partition_key, event_type, schema_version, \
             payload, headers, status, attempts, available_at, created_at, updated_at, published_at) \
             SELECT UNHEX(REPLACE(UUID(), '-', '')), 'orders', CONCAT('key-', ({n}) % 500), \
             'OrderPlaced', 1, '{{}}', '{{}}', '{status}', 0, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6), \
             UTC_TIMESTAMP(6), {published_at} FROM {from}"
        )
    };
    db.exec(&insert("published", "UTC_TIMESTAMP(6)", 5)).await;
    db.exec(&insert("pending", "NULL", 3)).await;
    db.exec("ANALYZE TABLE outbox").await;

    let rows = explain(&db, "EXPLAIN").await;
    let mut lines = Vec::new();
    for row in &rows {
        let get = |column: &str| -> String {
            row.try_get::<Option<String>>("", column)
                .ok()
                .flatten()
                .unwrap_or_default()
        };
        let line = format!(
            "select_type={} table={} type={} key={} rows={} Extra={}",
            get("select_type"),
            get("table"),
            get("type"),
            get("key"),
            estimated_rows(row),
            get("Extra"),
        );
        assert_ne!(get("type"), "ALL", "a full scan: {line}");
        assert!(!get("Extra").contains("filesort"), "a sort: {line}");
        if get("table") == "o" {
            assert_eq!(get("key"), "idx_outbox_pending", "{line}");
        }
        lines.push(line);
    }
    eprintln!("MariaDB claim plan:\n{}", lines.join("\n"));
    assert!(
        lines.iter().any(|l| l.contains("table=o ")),
        "no row for the outer table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_claims_through_the_partial_indexes() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    let insert = |status: &str, published_at: &str, rows: u32| {
        format!(
            "WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < {rows}) \
             INSERT INTO outbox (event_id, topic, partition_key, event_type, schema_version, \
             payload, headers, status, attempts, available_at, created_at, updated_at, published_at) \
             SELECT randomblob(16), 'orders', 'key-' || (n % 500), 'OrderPlaced', 1, '{{}}', '{{}}', \
             '{status}', 0, '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', \
             '2026-01-01T00:00:00+00:00', {published_at} FROM seq"
        )
    };
    db.exec(&insert("published", "'2026-01-01T00:00:00+00:00'", 100_000))
        .await;
    db.exec(&insert("pending", "NULL", 1_000)).await;
    db.exec("ANALYZE").await;

    let plan: Vec<String> = explain(&db, "EXPLAIN QUERY PLAN")
        .await
        .iter()
        .map(|row| row.try_get::<String>("", "detail").unwrap())
        .collect();
    let plan = plan.join("\n");
    eprintln!("SQLite claim plan:\n{plan}");
    assert!(plan.contains("USING INDEX idx_outbox_pending"), "{plan}");
    assert!(
        plan.contains("USING INDEX idx_outbox_key_pending"),
        "{plan}"
    );
    assert!(!plan.contains("TEMP B-TREE"), "a sort:\n{plan}");
}
