//! `outbox migrate`: the outbox migrations, applied on their own.
//!
//! They are recorded in sea-orm-migration's `seaql_migrations` table, as a
//! service's own `Migrator` records them, so either can apply them and the
//! other sees them applied; this command leaves the service's own
//! migrations alone (sea-orm-migration's `Migrator::up` would refuse a
//! table that lists migrations it does not know).

use std::collections::HashSet;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use migration::{MigrationTrait, Migrator, MigratorTrait, SchemaManager};
use sea_orm::{
    ActiveModelTrait, Database, DatabaseConnection, DbBackend, EntityTrait, Set, TransactionTrait,
};
use sea_orm_migration::seaql_migrations;

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

pub(crate) async fn run(url: &str, args: &MigrateArgs) -> anyhow::Result<ExitCode> {
    let db = connect(url).await?;
    let mut migrations = migration::migrations();
    if args.inbox {
        migrations.extend(migration::inbox_migrations());
    }
    if args.status {
        let applied = applied(&db).await.unwrap_or_default();
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
    Migrator::install(&db)
        .await
        .context("cannot create the migrations table (seaql_migrations)")?;
    let applied = applied(&db)
        .await
        .context("cannot read the migrations table (seaql_migrations)")?;
    let mut count = 0;
    for migration in &migrations {
        if applied.contains(migration.name()) {
            continue;
        }
        apply(&db, &**migration)
            .await
            .with_context(|| format!("migration {} failed", migration.name()))?;
        println!("applied  {}", migration.name());
        count += 1;
    }
    if count == 0 {
        println!(
            "the outbox tables are up to date ({} migrations applied)",
            migrations.len()
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

/// The versions in `seaql_migrations`.
async fn applied(db: &DatabaseConnection) -> Result<HashSet<String>, sea_orm::DbErr> {
    Ok(seaql_migrations::Entity::find()
        .all(db)
        .await?
        .into_iter()
        .map(|row| row.version)
        .collect())
}

/// Runs one migration and records it, in one transaction where the
/// database can roll DDL back (PostgreSQL).
async fn apply(db: &DatabaseConnection, migration: &dyn MigrationTrait) -> anyhow::Result<()> {
    let record = seaql_migrations::ActiveModel {
        version: Set(migration.name().to_owned()),
        applied_at: Set(chrono::Utc::now().timestamp()),
    };
    if db.get_database_backend() == DbBackend::Postgres {
        let txn = db.begin().await?;
        migration.up(&SchemaManager::new(&txn)).await?;
        record.insert(&txn).await?;
        txn.commit().await?;
    } else {
        migration.up(&SchemaManager::new(db)).await?;
        record.insert(db).await?;
    }
    Ok(())
}
