//! `outbox migrate` beside a service's own sea-orm-migration `Migrator`,
//! on PostgreSQL, MariaDB and SQLite: in either order, and after switching
//! from one way to the other. The service's migrator is a real one, with a
//! migration of its own (an `orders` table) and, in one form, the outbox
//! migrations listed after it as the crate's docs say.

#[path = "../../outbox-sea-orm/tests/common/mod.rs"]
mod common;

use std::process::Output;

use assert_cmd::cargo::CommandCargoExt;
use common::{Backend, TestDb};
use outbox_engine::{ClaimRequest, NewRecord, OutboxStore};
use sea_orm::{ConnectionTrait, DatabaseConnection, Statement};
use sea_orm_migration::prelude::*;

/// The service's own migration: an `orders` table.
struct ServiceTables;

impl MigrationName for ServiceTables {
    fn name(&self) -> &str {
        "m20250101_000001_service_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for ServiceTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Alias::new("orders"))
                    .col(
                        ColumnDef::new(Alias::new("id"))
                            .big_integer()
                            .not_null()
                            .primary_key(),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Alias::new("orders")).to_owned())
            .await
    }
}

/// A service's migrator with its own migration only: the outbox's come
/// from `outbox migrate`.
struct OwnMigrator;

#[async_trait::async_trait]
impl MigratorTrait for OwnMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![Box::new(ServiceTables)]
    }
}

/// A service's migrator that lists the outbox migrations after its own,
/// as the outbox migration crate's docs show.
struct MigratorWithOutbox;

#[async_trait::async_trait]
impl MigratorTrait for MigratorWithOutbox {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        let mut migrations: Vec<Box<dyn MigrationTrait>> = vec![Box::new(ServiceTables)];
        migrations.extend(migration::migrations());
        migrations
    }
}

/// Runs `outbox migrate` (the binary) on `url`, printing what it says.
async fn outbox_migrate(url: &str) {
    let mut command = std::process::Command::cargo_bin("outbox").expect("the outbox binary");
    command
        .env("DATABASE_URL", url)
        .env_remove("RUST_LOG")
        .arg("migrate");
    let output: Output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let out = String::from_utf8_lossy(&output.stdout);
    let err = String::from_utf8_lossy(&output.stderr);
    for line in out.lines().chain(err.lines()) {
        println!("    outbox migrate: {line}");
    }
    assert!(
        output.status.success(),
        "outbox migrate failed:\n{out}{err}"
    );
}

/// The versions recorded in `table`, sorted; none when it does not exist.
async fn versions(db: &DatabaseConnection, table: &str) -> Vec<String> {
    let statement = Statement::from_string(
        db.get_database_backend(),
        format!("SELECT version FROM {table} ORDER BY version"),
    );
    match db.query_all_raw(statement).await {
        Ok(rows) => rows
            .iter()
            .map(|row| row.try_get::<String>("", "version").unwrap())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Checks the outbox works (its tables are complete: a record goes in and
/// is claimed) and the service's table exists; prints both migration
/// tables.
async fn check(db: &TestDb, step: &str) {
    let store = db.store();
    store.check().await.expect("the outbox tables are complete");
    let record = NewRecord::from_event(&Probe { n: 1 }).unwrap();
    store.enqueue(&[record]).await.expect("enqueue");
    let claimed = store
        .claim(&ClaimRequest {
            owner: "migrations".into(),
            limit: 10,
            lease: std::time::Duration::from_secs(30),
            dead_holds_key: true,
        })
        .await
        .expect("claim");
    assert!(!claimed.is_empty(), "{step}: nothing claimed");
    store
        .mark_published(
            "migrations",
            &claimed.iter().map(|r| r.id).collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    db.db
        .execute_unprepared("SELECT COUNT(*) FROM orders")
        .await
        .expect("the service's table exists");
    println!(
        "    {step}: seaql_migrations {:?}, outbox_migrations {:?}",
        versions(&db.db, "seaql_migrations").await,
        versions(&db.db, "outbox_migrations").await
    );
}

#[derive(Debug, serde::Serialize, serde::Deserialize, outbox_engine::OutboxEvent)]
#[outbox(topic = "probes", key = n)]
struct Probe {
    n: u32,
}

/// Every order and switch, each on a fresh database of `backend`.
async fn every_order(backend: Backend) {
    let label = format!("{backend:?}");

    // 1. `outbox migrate`, then the service's migrator (its own only).
    let Some(db) = TestDb::without_outbox(backend).await else {
        return;
    };
    println!("{label}: outbox migrate, then the service's Migrator");
    outbox_migrate(&db.url).await;
    OwnMigrator::up(&db.db, None)
        .await
        .expect("the service's Migrator after outbox migrate");
    check(&db, "after both").await;
    assert_eq!(
        versions(&db.db, "seaql_migrations").await,
        ["m20250101_000001_service_tables"]
    );
    drop(db);

    // 2. The service's migrator, then `outbox migrate`, then the
    //    service's migrator again (its next start).
    let db = TestDb::without_outbox(backend).await.unwrap();
    println!("{label}: the service's Migrator, then outbox migrate, then the Migrator again");
    OwnMigrator::up(&db.db, None).await.unwrap();
    outbox_migrate(&db.url).await;
    OwnMigrator::up(&db.db, None)
        .await
        .expect("the service's Migrator at its next start");
    check(&db, "after all three").await;
    drop(db);

    // 3. Switching from the service's migrator (listing the outbox's) to
    //    `outbox migrate` with a migrator of its own only.
    let db = TestDb::without_outbox(backend).await.unwrap();
    println!(
        "{label}: the Migrator listing the outbox's, then outbox migrate and the Migrator without them"
    );
    MigratorWithOutbox::up(&db.db, None).await.unwrap();
    check(&db, "with the outbox's in the Migrator").await;
    outbox_migrate(&db.url).await;
    OwnMigrator::up(&db.db, None)
        .await
        .expect("the service's Migrator once it stopped listing the outbox's");
    check(&db, "after switching").await;
    assert_eq!(
        versions(&db.db, "seaql_migrations").await,
        ["m20250101_000001_service_tables"]
    );
    drop(db);

    // 4. Switching from `outbox migrate` to the service's migrator listing
    //    the outbox's; then both again, in turn.
    let db = TestDb::without_outbox(backend).await.unwrap();
    println!("{label}: outbox migrate, then the Migrator listing the outbox's, then both again");
    outbox_migrate(&db.url).await;
    MigratorWithOutbox::up(&db.db, None)
        .await
        .expect("the service's Migrator listing the outbox's after outbox migrate");
    check(&db, "after switching").await;
    outbox_migrate(&db.url).await;
    MigratorWithOutbox::up(&db.db, None).await.unwrap();
    check(&db, "after both again").await;
    assert_eq!(
        versions(&db.db, "outbox_migrations").await.len(),
        2,
        "the outbox's own table lists both migrations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_migrate_and_a_services_migrator_in_every_order_on_postgres() {
    every_order(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_migrate_and_a_services_migrator_in_every_order_on_mariadb() {
    every_order(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_migrate_and_a_services_migrator_in_every_order_on_sqlite() {
    every_order(Backend::SqliteFile).await;
}

/// Four replicas starting at once, each running `outbox migrate` on a fresh
/// database: every one succeeds (the others wait for the first's lock, then
/// find everything applied), and each migration is recorded once.
async fn replicas_at_once(backend: Backend) {
    let Some(db) = TestDb::without_outbox(backend).await else {
        return;
    };
    println!("{backend:?}: four `outbox migrate` at once");
    tokio::join!(
        outbox_migrate(&db.url),
        outbox_migrate(&db.url),
        outbox_migrate(&db.url),
        outbox_migrate(&db.url),
    );
    OwnMigrator::up(&db.db, None)
        .await
        .expect("the service's Migrator after them");
    check(&db, "after four at once").await;
    assert_eq!(
        versions(&db.db, "outbox_migrations").await,
        [
            "m20261128_000001_create_outbox_table",
            "m20261201_000001_key_heads"
        ],
        "each migration recorded once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_at_once_on_postgres() {
    replicas_at_once(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_at_once_on_mariadb() {
    replicas_at_once(Backend::MySql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_migrating_at_once_on_sqlite() {
    replicas_at_once(Backend::SqliteFile).await;
}
