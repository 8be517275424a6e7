//! Applying the outbox's migrations: `migrate` and `migrate_tables` (on
//! their own, under a lock, recorded in a table of their own), the
//! migrations for a [`Tables`], and the `Migrator`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{
    DatabaseConnection, DatabaseTransaction, DbBackend, Statement, TransactionTrait as _,
};

use crate::{
    Inbox, KeyHeads, Migration, Tables, existing, m20261128_000001_create_outbox_table,
    m20261201_000001_key_heads, m20261202_000001_inbox,
};

/// Implements `MigrationTrait` for a migration on the default names: its
/// module's `up` and `down` on `Tables::default()`.
macro_rules! on_default_tables {
    ($($migration:ty => $module:ident),* $(,)?) => {$(
        #[async_trait::async_trait]
        impl MigrationTrait for $migration {
            async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                $module::up(manager, &Tables::default()).await
            }

            async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
                $module::down(manager, &Tables::default()).await
            }
        }
    )*};
}

on_default_tables! {
    Migration => m20261128_000001_create_outbox_table,
    KeyHeads => m20261201_000001_key_heads,
    Inbox => m20261202_000001_inbox,
}

/// Every outbox migration, in order: add them to your own `Migrator`.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(Migration), Box::new(KeyHeads)]
}

/// The consumer's inbox migration: add it to your `Migrator` in a service
/// that handles outbox events.
pub fn inbox_migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(Inbox)]
}

/// [`migrations`] for the tables named in `tables`. With other than the
/// default names, each migration's name ends with `_<outbox table>`, so
/// two outboxes' migrations can be listed in one `Migrator`.
pub fn migrations_for(tables: &Tables) -> Vec<Box<dyn MigrationTrait>> {
    vec![
        Box::new(Named::new(Step::Outbox, tables)),
        Box::new(Named::new(Step::KeyHeads, tables)),
    ]
}

/// [`inbox_migrations`] for the inbox table named in `tables`.
pub fn inbox_migrations_for(tables: &Tables) -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(Named::new(Step::Inbox, tables))]
}

/// Which migration a [`Named`] one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Outbox,
    KeyHeads,
    Inbox,
}

/// One of the outbox's migrations for the tables named in a [`Tables`].
#[derive(Debug, Clone)]
struct Named {
    step: Step,
    tables: Tables,
    name: String,
}

impl Named {
    fn new(step: Step, tables: &Tables) -> Self {
        let base = match step {
            Step::Outbox => Migration.name().to_owned(),
            Step::KeyHeads => KeyHeads.name().to_owned(),
            Step::Inbox => Inbox.name().to_owned(),
        };
        let name = if tables.is_default() {
            base
        } else {
            format!("{base}_{}", tables.outbox())
        };
        Self {
            step,
            tables: tables.clone(),
            name,
        }
    }
}

impl MigrationName for Named {
    fn name(&self) -> &str {
        &self.name
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Named {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        self.tables
            .check_backend(manager.get_database_backend())
            .map_err(|error| DbErr::Custom(error.to_string()))?;
        if let Some(schema) = self.tables.schema_name() {
            manager
                .get_connection()
                .execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
                .await?;
        }
        match self.step {
            Step::Outbox => m20261128_000001_create_outbox_table::up(manager, &self.tables).await,
            Step::KeyHeads => m20261201_000001_key_heads::up(manager, &self.tables).await,
            Step::Inbox => m20261202_000001_inbox::up(manager, &self.tables).await,
        }
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        match self.step {
            Step::Outbox => m20261128_000001_create_outbox_table::down(manager, &self.tables).await,
            Step::KeyHeads => m20261201_000001_key_heads::down(manager, &self.tables).await,
            Step::Inbox => m20261202_000001_inbox::down(manager, &self.tables).await,
        }
    }
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
    migrate_tables(db, &Tables::default(), inbox).await
}

/// [`migrate`] for the tables named in `tables`, recorded in
/// [`Tables::migrations`] (`<outbox>_migrations`). In a PostgreSQL schema,
/// the schema is created when missing.
pub async fn migrate_tables(
    db: &DatabaseConnection,
    tables: &Tables,
    inbox: bool,
) -> Result<Migrated, DbErr> {
    let backend = db.get_database_backend();
    tables
        .check_backend(backend)
        .map_err(|error| DbErr::Custom(error.to_string()))?;
    // One connection for the whole run, under a lock: a second `migrate`
    // (another replica starting at the same time) waits for this one, then
    // finds everything applied. On PostgreSQL and SQLite the run is one
    // transaction, DDL included; MySQL/MariaDB commit each DDL statement,
    // and each migration creates only what is missing.
    let txn = db.begin().await?;
    lock(&txn, backend).await?;
    match migrate_locked(&txn, backend, tables, inbox).await {
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
    tables: &Tables,
    inbox: bool,
) -> Result<Migrated, DbErr> {
    let mut wanted = migrations_for(tables);
    if inbox {
        wanted.extend(inbox_migrations_for(tables));
    }
    install(txn, tables).await?;
    let journal = tables.qualified(backend, &tables.migrations());
    let mut outcome = Migrated::default();
    let applied = versions(txn, &journal).await?;
    let manager = SchemaManager::new(txn);
    let theirs = if existing::has_table(&manager, &Tables::default(), "seaql_migrations").await? {
        versions(txn, "seaql_migrations").await?
    } else {
        Vec::new()
    };
    for migration in &wanted {
        let name = migration.name();
        if let Some((_, at)) = theirs.iter().find(|(version, _)| version == name) {
            if !applied.iter().any(|(version, _)| version == name) {
                record(txn, &journal, name, *at).await?;
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
    let applied = versions(txn, &journal).await?;
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
        record(txn, &journal, name, now).await?;
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

/// Creates the table `migrate` records in (the columns of
/// sea-orm-migration's, so its `status` reads it), and the schema.
async fn install(txn: &DatabaseTransaction, tables: &Tables) -> Result<(), DbErr> {
    if let Some(schema) = tables.schema_name() {
        txn.execute_unprepared(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
            .await?;
    }
    let table = Table::create()
        .table(tables.migrations_ref())
        .if_not_exists()
        .col(
            ColumnDef::new(Alias::new("version"))
                .string()
                .not_null()
                .primary_key(),
        )
        .col(
            ColumnDef::new(Alias::new("applied_at"))
                .big_integer()
                .not_null(),
        )
        .to_owned();
    txn.execute(&table).await?;
    Ok(())
}

/// Records `version` in `journal`, the migrations' table.
async fn record<C: sea_orm_migration::sea_orm::ConnectionTrait>(
    db: &C,
    journal: &str,
    version: &str,
    applied_at: i64,
) -> Result<(), DbErr> {
    let backend = db.get_database_backend();
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        placeholders(
            backend,
            &format!("INSERT INTO {journal} (version, applied_at) VALUES (?, ?)"),
        ),
        [version.into(), applied_at.into()],
    ))
    .await?;
    Ok(())
}
