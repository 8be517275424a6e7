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

/// Whether `kind` (`table` or `index`) `name` exists in the connection's
/// schema (PostgreSQL), database (MySQL/MariaDB) or file (SQLite).
async fn exists(manager: &SchemaManager<'_>, kind: &str, name: &str) -> Result<bool, DbErr> {
    let backend = manager.get_database_backend();
    let sql = match (backend, kind) {
        (DbBackend::Postgres, "table") => {
            "SELECT 1 FROM information_schema.tables WHERE table_schema = current_schema() \
             AND table_name = $1"
        }
        (DbBackend::Postgres, _) => {
            "SELECT 1 FROM pg_indexes WHERE schemaname = current_schema() AND indexname = $1"
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
    let found = manager
        .get_connection()
        .query_one_raw(Statement::from_sql_and_values(backend, sql, [name.into()]))
        .await?;
    Ok(found.is_some())
}

/// Whether the table `name` exists.
pub(crate) async fn has_table(manager: &SchemaManager<'_>, name: &str) -> Result<bool, DbErr> {
    exists(manager, "table", name).await
}

/// Creates those of `indexes` whose names do not exist yet.
pub(crate) async fn create_missing_indexes(
    manager: &SchemaManager<'_>,
    indexes: Vec<IndexCreateStatement>,
) -> Result<(), DbErr> {
    for index in indexes {
        let name = index
            .get_index_spec()
            .get_name()
            .expect("the outbox's indexes are named")
            .to_owned();
        if !exists(manager, "index", &name).await? {
            manager.create_index(index).await?;
        }
    }
    Ok(())
}
