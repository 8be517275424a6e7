//! The `outbox` table for [`sea-orm-migration`](sea_orm_migration).
//!
//! - [`Migration`]: creates the `outbox` table and its indexes, with column
//!   types per database (PostgreSQL, MySQL/MariaDB, SQLite); its `down`
//!   drops the table.
//! - [`KeyHeads`]: adds `outbox_keys`, the heads of the keys with pending
//!   records, which the claim reads instead of the records behind blocked
//!   keys ([`m20261201_000001_key_heads`]).
//! - [`migrations`]: both, in order.
//! - [`Inbox`]: the consumer's `inbox` table (`outbox_sea_orm::inbox`),
//!   for services that consume outbox events; not part of
//!   [`migrations`] ([`inbox_migrations`]).
//! - [`migrate`]: applies them apart from a service's own migrations,
//!   recorded in `outbox_migrations`; [`Migrator`] is the same as a
//!   `MigratorTrait`.
//!
//! Most services have a `Migrator` already; add the outbox migrations to
//! it, all of them ([`migrations`]), after your own:
//!
//! ```
//! use sea_orm_migration::prelude::*;
//!
//! pub struct Migrator;
//!
//! #[async_trait::async_trait]
//! impl MigratorTrait for Migrator {
//!     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
//!         let mut migrations: Vec<Box<dyn MigrationTrait>> = vec![
//!             // ... your own migrations ...
//!         ];
//!         migrations.extend(outbox_migration::migrations());
//!         migrations
//!     }
//! }
//! ```
//!
//! Or leave your `Migrator` alone and apply the outbox migrations apart,
//! with [`migrate`] at start-up or `outbox migrate` (the `outbox-cli`
//! crate): they record them in a table of their own, `outbox_migrations`
//! ([`MIGRATION_TABLE`]), so your `Migrator` never meets a version it does
//! not know. Both ways work on one database, in either order, and you can
//! switch from one to the other: each migration creates only what does not
//! exist yet, and [`migrate`] takes over the outbox's rows from
//! `seaql_migrations` when a service stops listing the outbox migrations.
//! This crate's command line runs [`Migrator`] (sea-orm-migration's
//! commands, recorded in `outbox_migrations` too):
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app cargo run -p outbox-migration --features cli -- up
//! ```
//!
//! # Feature flags
//!
//! - `cli`: the `outbox-migration` binary (sea-orm-migration's command line
//!   with tokio, rustls and the PostgreSQL, MySQL/MariaDB and SQLite
//!   drivers). Without it the library enables no async runtime, TLS stack
//!   or database driver: the application's own `sea-orm` features decide.

pub use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, Statement, TransactionTrait as _,
};

mod existing;
mod m20261128_000001_create_outbox_table;
pub mod m20261201_000001_key_heads;
pub mod m20261202_000001_inbox;

pub use m20261128_000001_create_outbox_table::Migration;
pub use m20261201_000001_key_heads::Migration as KeyHeads;
pub use m20261202_000001_inbox::Migration as Inbox;

/// Every outbox migration, in order: add them to your own `Migrator`.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(Migration), Box::new(KeyHeads)]
}

/// The consumer's inbox migration: add it to your `Migrator` in a service
/// that handles outbox events.
pub fn inbox_migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(Inbox)]
}

/// The table the outbox migrations are recorded in when applied apart
/// from a service's own migrations ([`migrate`], [`Migrator`], `outbox
/// migrate`): not `seaql_migrations`, where a service's `Migrator` would
/// meet versions it does not know and refuse to run.
pub const MIGRATION_TABLE: &str = "outbox_migrations";

/// The outbox migrations as a `MigratorTrait`, recorded in
/// [`MIGRATION_TABLE`]: `Migrator::up(&db, None)` applies them (prefer
/// [`migrate`], which also takes the outbox's rows over from
/// `seaql_migrations`), `Migrator::status(&db)` lists them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        migrations()
    }

    fn migration_table_name() -> DynIden {
        Alias::new(MIGRATION_TABLE).into_iden()
    }
}

/// What [`migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Migrated {
    /// The migrations it applied (their names), in order.
    pub applied: Vec<String>,
    /// Those already applied.
    pub up_to_date: Vec<String>,
    /// Rows of these migrations it moved from `seaql_migrations` to
    /// [`MIGRATION_TABLE`] (a service's `Migrator` had applied them).
    pub taken_over: Vec<String>,
}

/// Applies the outbox migrations (and the inbox's, with `inbox`) apart
/// from the service's own, recording them in [`MIGRATION_TABLE`]: what
/// `outbox migrate` runs.
///
/// Versions of these migrations that a service's own `Migrator` recorded in
/// `seaql_migrations` are moved to [`MIGRATION_TABLE`], so a service that
/// stopped listing the outbox migrations can run its `Migrator` again; one
/// that still lists them applies them again at its next run, which changes
/// nothing (each creates only what is missing).
pub async fn migrate(db: &DatabaseConnection, inbox: bool) -> Result<Migrated, DbErr> {
    let backend = db.get_database_backend();
    // One connection for the whole run, under a lock: a second `migrate`
    // (another replica starting at the same time) waits for this one, then
    // finds everything applied. On PostgreSQL and SQLite the run is one
    // transaction, DDL included; MySQL/MariaDB commit each DDL statement,
    // and each migration creates only what is missing.
    let txn = db.begin().await?;
    lock(&txn, backend).await?;
    match migrate_locked(&txn, backend, inbox).await {
        Ok(outcome) => {
            unlock(&txn, backend).await?;
            txn.commit().await?;
            Ok(outcome)
        }
        Err(error) => {
            unlock(&txn, backend).await.ok();
            txn.rollback().await.ok();
            Err(error)
        }
    }
}

/// The name of the lock `migrate` holds: PostgreSQL's advisory lock key,
/// MySQL's `GET_LOCK` name.
const LOCK_KEY: i64 = 0x6f75_7462_6f78; // "outbox"
const LOCK_NAME: &str = "outbox_migrate";
/// How long `migrate` waits for another one on MySQL/MariaDB.
const LOCK_WAIT_SECONDS: i64 = 300;

async fn lock(txn: &DatabaseTransaction, backend: DbBackend) -> Result<(), DbErr> {
    match backend {
        DbBackend::Postgres => {
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                "SELECT pg_advisory_xact_lock($1)",
                [LOCK_KEY.into()],
            ))
            .await?;
        }
        DbBackend::MySql => {
            let row = txn
                .query_one_raw(Statement::from_sql_and_values(
                    backend,
                    "SELECT GET_LOCK(?, ?) AS got",
                    [LOCK_NAME.into(), LOCK_WAIT_SECONDS.into()],
                ))
                .await?;
            let got: Option<i64> = match row {
                Some(row) => row.try_get("", "got")?,
                None => None,
            };
            if got != Some(1) {
                return Err(DbErr::Custom(format!(
                    "another `outbox migrate` has held the lock `{LOCK_NAME}` for \
                     {LOCK_WAIT_SECONDS} s; let it finish, or find the session holding it \
                     (SELECT IS_USED_LOCK('{LOCK_NAME}'))"
                )));
            }
        }
        // A write transaction: SQLite's one writer at a time.
        _ => {}
    }
    Ok(())
}

async fn unlock(txn: &DatabaseTransaction, backend: DbBackend) -> Result<(), DbErr> {
    if backend == DbBackend::MySql {
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            "SELECT RELEASE_LOCK(?)",
            [LOCK_NAME.into()],
        ))
        .await?;
    }
    Ok(())
}

async fn migrate_locked(
    txn: &DatabaseTransaction,
    backend: DbBackend,
    inbox: bool,
) -> Result<Migrated, DbErr> {
    let mut wanted = migrations();
    if inbox {
        wanted.extend(inbox_migrations());
    }
    Migrator::install(txn).await?;
    let mut outcome = Migrated::default();
    let applied = versions(txn, MIGRATION_TABLE).await?;
    let manager = SchemaManager::new(txn);
    let theirs = if existing::has_table(&manager, "seaql_migrations").await? {
        versions(txn, "seaql_migrations").await?
    } else {
        Vec::new()
    };
    for migration in &wanted {
        let name = migration.name();
        if let Some((_, at)) = theirs.iter().find(|(version, _)| version == name) {
            if !applied.iter().any(|(version, _)| version == name) {
                record(txn, name, *at).await?;
            }
            txn.execute_raw(Statement::from_sql_and_values(
                backend,
                placeholders(backend, "DELETE FROM seaql_migrations WHERE version = ?"),
                [name.into()],
            ))
            .await?;
            outcome.taken_over.push(name.to_owned());
        }
    }
    let applied = versions(txn, MIGRATION_TABLE).await?;
    for migration in &wanted {
        let name = migration.name();
        if applied.iter().any(|(version, _)| version == name) {
            outcome.up_to_date.push(name.to_owned());
            continue;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs() as i64);
        migration.up(&manager).await?;
        record(txn, name, now).await?;
        outcome.applied.push(name.to_owned());
    }
    Ok(outcome)
}

/// `sql` with `?` placeholders as `$1, $2, ...` on PostgreSQL.
fn placeholders(backend: DbBackend, sql: &str) -> String {
    if backend != DbBackend::Postgres {
        return sql.to_owned();
    }
    let mut out = String::new();
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// The versions recorded in `table`, with when they were applied.
async fn versions<C: sea_orm_migration::sea_orm::ConnectionTrait>(
    db: &C,
    table: &str,
) -> Result<Vec<(String, i64)>, DbErr> {
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            format!("SELECT version, applied_at FROM {table}"),
        ))
        .await?;
    rows.iter()
        .map(|row| Ok((row.try_get("", "version")?, row.try_get("", "applied_at")?)))
        .collect()
}

/// Records `version` in [`MIGRATION_TABLE`].
async fn record<C: sea_orm_migration::sea_orm::ConnectionTrait>(
    db: &C,
    version: &str,
    applied_at: i64,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        placeholders(
            backend,
            &format!("INSERT INTO {MIGRATION_TABLE} (version, applied_at) VALUES (?, ?)"),
        ),
        [version.into(), applied_at.into()],
    ))
    .await?;
    Ok(())
}
