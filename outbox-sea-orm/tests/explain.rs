//! The claim reads only what it returns, however large the backlog behind
//! blocked keys: with 30,000 pending records behind one hot key's head in
//! backoff, 20,000 behind 2,000 other keys' heads in backoff, and 1,000
//! healthy records enqueued last, every statement of the claim (and of the
//! operators' dead letters, counts and purge) reads through an index, with
//! no full scan of the outbox and no sort, on PostgreSQL, MariaDB and
//! SQLite; and the claims return the healthy records, then nothing.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use common::{Backend, TestDb};
use outbox_engine::testkit::record;
use outbox_engine::{ClaimRequest, NewRecord, OutboxStore};
use sea_orm::{ConnectionTrait, DbBackend, QueryResult, Statement};

const HOT: usize = 30_000;
const BLOCKED_KEYS: usize = 2_000;
const PER_BLOCKED_KEY: usize = 10;
const HEALTHY_KEYS: usize = 100;
const PER_HEALTHY_KEY: usize = 10;

/// Fills the outbox: the blocked backlog first, the healthy records last
/// (the worst case for a claim that scans in id order), then puts every
/// blocked key's head in backoff for an hour.
async fn blocked_backlog(db: &TestDb) {
    let store = db.store();
    let mut records: Vec<NewRecord> = (0..HOT).map(|n| record(Some("hot"), n as u32)).collect();
    for n in 0..PER_BLOCKED_KEY {
        for k in 0..BLOCKED_KEYS {
            records.push(record(Some(&format!("blocked-{k}")), n as u32));
        }
    }
    for n in 0..PER_HEALTHY_KEY {
        for k in 0..HEALTHY_KEYS {
            records.push(record(Some(&format!("ok-{k}")), n as u32));
        }
    }
    for chunk in records.chunks(10_000) {
        store.enqueue(chunk).await.unwrap();
    }
    let backend = db.db_backend();
    let placeholder = match backend {
        DbBackend::Postgres => "$1",
        _ => "?",
    };
    let later = Utc::now() + TimeDelta::hours(1);
    for sql in [
        format!(
            "UPDATE outbox SET available_at = {placeholder} WHERE id IN (SELECT id FROM (
               SELECT MIN(id) AS id FROM outbox WHERE partition_key NOT LIKE 'ok-%'
               GROUP BY partition_key) heads)"
        ),
        format!(
            "UPDATE outbox_keys SET next_at = {placeholder} WHERE partition_key NOT LIKE 'ok-%'"
        ),
    ] {
        db.db
            .execute_raw(Statement::from_sql_and_values(backend, sql, [later.into()]))
            .await
            .unwrap();
    }
    db.exec(match backend {
        DbBackend::Postgres => "ANALYZE outbox; ANALYZE outbox_keys",
        DbBackend::MySql => "ANALYZE TABLE outbox, outbox_keys",
        _ => "ANALYZE",
    })
    .await;
}

/// The claims take the healthy records, fairly over their keys, never a
/// record of a blocked key; once every healthy key is leased a claim finds
/// nothing, and once the leased records are published the keys move on.
async fn claims_take_the_healthy_records(db: &TestDb) {
    let store = db.store();
    let request = |owner: &str| ClaimRequest {
        owner: owner.to_owned(),
        limit: 500,
        lease: Duration::from_secs(60),
        dead_holds_key: true,
    };
    let mut seen = HashSet::new();
    for owner in ["a", "b"] {
        let claimed = store.claim(&request(owner)).await.unwrap();
        assert_eq!(claimed.len(), 500, "{owner}");
        let mut keys = HashSet::new();
        for record in &claimed {
            let key = record.key.as_deref().unwrap();
            assert!(key.starts_with("ok-"), "{key} is blocked");
            assert!(seen.insert(record.id), "claimed twice");
            keys.insert(key.to_owned());
        }
        assert_eq!(
            keys.len(),
            HEALTHY_KEYS,
            "the batch is shared by every healthy key"
        );
        assert!(
            store.claim(&request("idle")).await.unwrap().is_empty(),
            "every healthy key is leased"
        );
        let ids: Vec<i64> = claimed.iter().map(|r| r.id).collect();
        assert_eq!(store.mark_published(owner, &ids).await.unwrap(), 500);
    }
    assert!(store.claim(&request("c")).await.unwrap().is_empty());
}

/// `EXPLAIN` (or `EXPLAIN QUERY PLAN`) of each statement, as rows.
async fn explain(db: &TestDb, prefix: &str) -> Vec<(&'static str, Vec<QueryResult>)> {
    let mut plans = Vec::new();
    for (name, statement) in db.store().explained_statements(Utc::now()) {
        let explain = Statement {
            sql: format!("{prefix} {}", statement.sql),
            ..statement
        };
        let rows = db
            .db
            .query_all_raw(explain)
            .await
            .unwrap_or_else(|error| panic!("EXPLAIN {name}: {error}"));
        plans.push((name, rows));
    }
    plans
}

/// A PostgreSQL plan's lines, joined.
fn plan_text(rows: &[QueryResult]) -> String {
    let lines: Vec<String> = rows
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).unwrap())
        .collect();
    lines.join("\n")
}

fn is_claim(name: &str) -> bool {
    name.starts_with("claim")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_only_what_it_claims() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    blocked_backlog(&db).await;
    for (name, rows) in explain(&db, "EXPLAIN").await {
        let plan = plan_text(&rows);
        eprintln!("PostgreSQL, {name}:\n{plan}\n");
        if name == "stats" {
            // Counting pending records reads them all (a scan is right when
            // most rows are pending); published and dead are counted
            // through their own indexes, whatever the history kept.
            assert!(plan.contains("idx_outbox_published"), "{plan}");
            assert!(plan.contains("idx_outbox_dead"), "{plan}");
            continue;
        }
        if name == "stats for the gauges" {
            // The gauges cost what the backlog costs: the published
            // history is not read at all.
            assert!(!plan.contains("idx_outbox_published"), "{plan}");
            assert!(!plan.contains("'published'"), "{plan}");
            assert!(plan.contains("idx_outbox_dead"), "{plan}");
            continue;
        }
        if name == "stats by topic" {
            // Pending records read whole, as above; dead ones by index.
            assert!(plan.contains("idx_outbox_dead"), "{plan}");
            continue;
        }
        assert!(
            !plan.contains("Seq Scan on outbox "),
            "{name}: a full scan:\n{plan}"
        );
        if is_claim(name) {
            assert!(!plan.contains("Seq Scan"), "{name}: a full scan:\n{plan}");
            assert!(!plan.contains("Sort"), "{name}: a sort:\n{plan}");
        }
    }
    claims_take_the_healthy_records(&db).await;
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
async fn mariadb_reads_only_what_it_claims() {
    let Some(db) = TestDb::new(Backend::MySql).await else {
        return;
    };
    blocked_backlog(&db).await;
    for (name, rows) in explain(&db, "EXPLAIN").await {
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
            let derived = get("table").starts_with('<');
            // Counting pending records reads them all; the other counts go
            // through the `(status, id)` index.
            if !derived && !name.starts_with("stats") {
                assert_ne!(get("type"), "ALL", "{name}: a full scan: {line}");
            }
            if is_claim(name) {
                assert!(!get("Extra").contains("filesort"), "{name}: a sort: {line}");
            }
            lines.push(line);
        }
        eprintln!("MariaDB, {name}:\n{}\n", lines.join("\n"));
    }
    claims_take_the_healthy_records(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_only_what_it_claims() {
    let Some(db) = TestDb::new(Backend::SqliteFile).await else {
        return;
    };
    blocked_backlog(&db).await;
    for (name, rows) in explain(&db, "EXPLAIN QUERY PLAN").await {
        let plan: Vec<String> = rows
            .iter()
            .map(|row| row.try_get::<String>("", "detail").unwrap())
            .collect();
        eprintln!("SQLite, {name}:\n{}\n", plan.join("\n"));
        if name.starts_with("stats") {
            continue;
        }
        for line in &plan {
            // `SCAN k0` reads a branch's own result, not a table.
            let branch = line.starts_with("SCAN k");
            let full_scan = line.starts_with("SCAN") && !line.contains("INDEX") && !branch;
            assert!(!full_scan, "{name}: a full scan: {line}");
            if is_claim(name) {
                assert!(!line.contains("TEMP B-TREE"), "{name}: a sort: {line}");
            }
        }
    }
    claims_take_the_healthy_records(&db).await;
}

/// A drain over few keys, with statistics taken while every record was
/// pending (autovacuum behind): the statements that read a key's first
/// pending records still go through the pending index, never walking the
/// primary key over the published records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_first_records_by_the_pending_index_with_stale_statistics() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    db.exec("ALTER TABLE outbox SET (autovacuum_enabled = false)")
        .await;
    let store = db.store();
    let records: Vec<NewRecord> = (0..20_000)
        .map(|n| record(Some(&format!("k{}", n % 10)), n as u32))
        .collect();
    for chunk in records.chunks(10_000) {
        store.enqueue(chunk).await.unwrap();
    }
    db.exec("ANALYZE outbox").await;
    db.exec(
        "UPDATE outbox SET status = 'published', published_at = now() WHERE id <= \
         (SELECT MIN(id) + 18000 FROM outbox)",
    )
    .await;
    for (name, rows) in explain(&db, "EXPLAIN").await {
        if name != "claim: first records of keys" && name != "refresh keys" {
            continue;
        }
        let plan = plan_text(&rows);
        eprintln!("PostgreSQL, {name}:\n{plan}\n");
        assert!(plan.contains("idx_outbox_key_pending"), "{name}:\n{plan}");
        assert!(!plan.contains("outbox_pkey"), "{name}:\n{plan}");
    }
}
