//! `outbox migrate`: the outbox migrations, applied on their own
//! (`outbox_migration::migrate`).
//!
//! They are recorded in a table of their own, `outbox_migrations`, never in
//! the service's `seaql_migrations`, whose `Migrator` would refuse to run
//! beside versions it does not know. A service may list the outbox
//! migrations in its own `Migrator` as well, before or after: each one
//! creates only what does not exist yet.

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};

/// `outbox migrate`.
#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Only list the outbox migrations, applied or pending; change nothing.
    #[arg(long)]
    status: bool,
    /// Also the consumer's inbox table (`outbox_sea_orm::inbox`), for a
    /// service that handles outbox events.
    #[arg(long)]
    inbox: bool,
}

pub(crate) async fn run(
    url: &str,
    tables: &migration::Tables,
    args: &MigrateArgs,
) -> anyhow::Result<ExitCode> {
    let db = connect(url).await?;
    let mut migrations = migration::migrations_for(tables);
    if args.inbox {
        migrations.extend(migration::inbox_migrations_for(tables));
    }
    if args.status {
        let applied = applied(&db, tables).await.unwrap_or_default();
        for migration in &migrations {
            let state = if applied.contains(migration.name()) {
                "applied"
            } else {
                "pending"
            };
            println!("{state:<8} {}", migration.name());
        }
        return Ok(ExitCode::SUCCESS);
    }
    let migrated = migration::migrate_tables(&db, tables, args.inbox)
        .await
        .context("the outbox migrations failed")?;
    for name in &migrated.taken_over {
        println!(
            "moved    {name} (from seaql_migrations to {})",
            tables.migrations()
        );
    }
    for name in &migrated.applied {
        println!("applied  {name}");
    }
    if migrated.applied.is_empty() {
        println!(
            "the outbox tables are up to date ({} migrations applied)",
            migrated.up_to_date.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn connect(url: &str) -> anyhow::Result<DatabaseConnection> {
    // A SQLite file is created by the migration when it does not exist.
    let url = if url.starts_with("sqlite:") && !url.contains("mode=") && !url.contains(":memory:") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}mode=rwc")
    } else {
        url.to_owned()
    };
    outbox_sea_orm::SeaOrmStore::check_url(&url).map_err(anyhow::Error::new)?;
    Database::connect(crate::db::options(&url, 1))
        .await
        .with_context(|| {
            format!(
                "cannot connect to the database at {} (is the server running, and the URL right?)",
                outbox_sea_orm::redact_url(&url)
            )
        })
}

/// The versions recorded in `outbox_migrations` (`<outbox>_migrations`) or
/// in `seaql_migrations` (by a service's own `Migrator`).
async fn applied(
    db: &DatabaseConnection,
    tables: &migration::Tables,
) -> Result<HashSet<String>, sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let mut applied = HashSet::new();
    let journal = tables.qualified(backend, &tables.migrations());
    for table in [journal.as_str(), "seaql_migrations"] {
        let statement = Statement::from_string(
            db.get_database_backend(),
            format!("SELECT version FROM {table}"),
        );
        // A table that does not exist lists nothing.
        if let Ok(rows) = db.query_all_raw(statement).await {
            for row in rows {
                applied.insert(row.try_get::<String>("", "version")?);
            }
        }
    }
    Ok(applied)
}
