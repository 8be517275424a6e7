//! What exists already, so that each migration creates only what is
//! missing: the outbox migrations may run twice on one database, once from
//! `outbox migrate` (or this crate's `Migrator`) and once from a service's
//! own `Migrator`, and the second run must change nothing.
//!
//! Plain catalog queries per database, rather than `SchemaManager::has_*`,
//! which answer only for the drivers `sea-orm-migration` itself was built
//! with (an application may enable them on `sea-orm` alone).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

use crate::Tables;

/// Whether `kind` (`table` or `index`) `name` exists in the schema of
/// `tables` or else the connection's (PostgreSQL), the database
/// (MySQL/MariaDB) or the file (SQLite).
async fn exists(
    manager: &SchemaManager<'_>,
    tables: &Tables,
    kind: &str,
    name: &str,
) -> Result<bool, DbErr> {
    let backend = manager.get_database_backend();
    let sql = match (backend, kind) {
        (DbBackend::Postgres, "table") => {
            "SELECT 1 FROM information_schema.tables \
             WHERE table_schema = COALESCE($2, current_schema()) AND table_name = $1"
        }
        (DbBackend::Postgres, _) => {
            "SELECT 1 FROM pg_indexes \
             WHERE schemaname = COALESCE($2, current_schema()) AND indexname = $1"
        }
        (DbBackend::MySql, "table") => {
            "SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() \
             AND table_name = ?"
        }
        (DbBackend::MySql, _) => {
            "SELECT 1 FROM information_schema.statistics WHERE table_schema = DATABASE() \
             AND index_name = ?"
        }
        (_, "table") => "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
        _ => "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?",
    };
    let mut values = vec![name.into()];
    if backend == DbBackend::Postgres {
        values.push(tables.schema_name().map(str::to_owned).into());
    }
    let found = manager
        .get_connection()
        .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    Ok(found.is_some())
}

/// Whether the table `name` exists (in the schema of `tables`).
pub(crate) async fn has_table(
    manager: &SchemaManager<'_>,
    tables: &Tables,
    name: &str,
) -> Result<bool, DbErr> {
    exists(manager, tables, "table", name).await
}

/// Creates those of `indexes` whose names do not exist yet.
pub(crate) async fn create_missing_indexes(
    manager: &SchemaManager<'_>,
    tables: &Tables,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    for index in indexes {
        let name = index
            .get_index_spec()
            .get_name()
            .expect("the outbox's indexes are named")
            .to_owned();
        if !exists(manager, tables, "index", &name).await? {
            manager.create_index(index).await?;
        }
    }
    Ok(())
}

/// Drops the index `name` of the outbox table, in the schema of `tables`.
pub(crate) async fn drop_index(
    manager: &SchemaManager<'_>,
    tables: &Tables,
    name: &str,
) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    let sql = match backend {
        DbBackend::MySql => format!(
            "DROP INDEX `{name}` ON {}",
            tables.qualified(backend, tables.outbox())
        ),
        _ => format!("DROP INDEX {}", tables.qualified(backend, name)),
    };
    manager.get_connection().execute_unprepared(&sql).await?;
    Ok(())
}
