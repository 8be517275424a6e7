//! The consumer's `inbox`: which events a consumer has handled, so a
//! redelivered event is skipped.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

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
    Table,
    Consumer,
    EventId,
    ProcessedAt,
}

impl Migration {
    /// The `CREATE TABLE inbox` statement for `backend`.
    pub fn create_table(backend: DbBackend) -> TableCreateStatement {
        let mut processed_at = ColumnDef::new(Inbox::ProcessedAt);
        match backend {
            DbBackend::MySql => processed_at.custom(Alias::new("datetime(6)")),
            _ => processed_at.timestamp_with_time_zone(),
        };
        let mut table = Table::create();
        table
            .table(Inbox::Table)
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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// Creates the table and its index, those that do not exist yet.
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        if !crate::existing::has_table(manager, "inbox").await? {
            manager.create_table(Self::create_table(backend)).await?;
        }
        let index = Index::create()
            .name("idx_inbox_processed")
            .table(Inbox::Table)
            .col(Inbox::ProcessedAt)
            .to_owned();
        crate::existing::create_missing_indexes(manager, vec![index]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Inbox::Table).to_owned())
            .await
    }
}
