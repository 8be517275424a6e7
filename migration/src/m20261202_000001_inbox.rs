//! The consumer's `inbox`: which events a consumer has handled, so a
//! redelivered event is skipped.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::Tables;

/// Creates the `inbox` table, for services that consume outbox events
/// (`outbox_sea_orm::inbox`):
///
/// | column | PostgreSQL | MySQL/MariaDB | SQLite |
/// |---|---|---|---|
/// | `consumer` | `varchar(255)` | `varchar(255)` | `varchar(255)` |
/// | `event_id` | `uuid` | `binary(16)` | `uuid_text` (a 16-byte blob) |
/// | `processed_at` | `timestamptz` | `datetime(6)` | `timestamp_with_timezone_text` |
///
/// The primary key is `(consumer, event_id)`: each consumer (a name of
/// your choosing, one per handler) handles an event once. Index
/// `idx_inbox_processed` on `processed_at` serves purging old entries.
/// `down` drops the table.
#[derive(DeriveMigrationName, Debug, Clone, Copy, Default)]
pub struct Migration;

#[derive(DeriveIden)]
enum Inbox {
    Consumer,
    EventId,
    ProcessedAt,
}

impl Migration {
    /// The `CREATE TABLE inbox` statement for `backend`.
    /// The `CREATE TABLE` of the inbox table named in `tables`.
    pub fn create_table(backend: DbBackend, tables: &Tables) -> TableCreateStatement {
        let mut processed_at = ColumnDef::new(Inbox::ProcessedAt);
        match backend {
            DbBackend::MySql => processed_at.custom(Alias::new("datetime(6)")),
            _ => processed_at.timestamp_with_time_zone(),
        };
        let mut table = Table::create();
        table
            .table(tables.inbox_ref())
            .col(ColumnDef::new(Inbox::Consumer).string_len(255).not_null())
            .col(ColumnDef::new(Inbox::EventId).uuid().not_null())
            .col(processed_at.not_null())
            .primary_key(Index::create().col(Inbox::Consumer).col(Inbox::EventId));
        if backend == DbBackend::MySql {
            table
                .engine("InnoDB")
                .character_set("utf8mb4")
                .collate("utf8mb4_bin");
        }
        table.take()
    }
}

/// Creates the inbox table named in `tables` and its index, if missing.
pub(crate) async fn up(manager: &SchemaManager<'_>, tables: &Tables) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    if !crate::existing::has_table(manager, tables, tables.inbox()).await? {
        manager
            .create_table(Migration::create_table(backend, tables))
            .await?;
    }
    let index = Index::create()
        .name(tables.index_inbox_processed())
        .table(tables.inbox_ref())
        .col(Inbox::ProcessedAt)
        .to_owned();
    crate::existing::create_missing_indexes(manager, tables, vec![index]).await
}

/// Drops the inbox table named in `tables`.
pub(crate) async fn down(manager: &SchemaManager<'_>, tables: &Tables) -> Result<(), DbErr> {
    manager
        .drop_table(Table::drop().table(tables.inbox_ref()).to_owned())
        .await
}
