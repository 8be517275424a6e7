//! Creates the `outbox` table and its indexes.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DbBackend;

use crate::Tables;

/// Creates the `outbox` table.
///
/// The same columns on every database, with types per dialect:
///
/// | column | PostgreSQL | MySQL / MariaDB | SQLite |
/// |---|---|---|---|
/// | `id` | `bigint` identity, primary key | `bigint` auto-increment, primary key | `integer` primary key autoincrement |
/// | `event_id` (unique) | `uuid` | `binary(16)` | `uuid_text` (a 16-byte blob) |
/// | `topic` | `varchar(249)` | `varchar(249)` | `varchar(249)` |
/// | `partition_key` (null) | `varchar(255)` | `varchar(255)` | `varchar(255)` |
/// | `event_type` | `varchar(255)` | `varchar(255)` | `varchar(255)` |
/// | `schema_version` | `integer` | `int` | `integer` |
/// | `payload`, `headers` | `text` | `longtext` | `text` |
/// | `status` | `varchar(16)` | `varchar(16)` | `varchar(16)` |
/// | `attempts` | `integer` default 0 | `int` default 0 | `integer` default 0 |
/// | `available_at`, `created_at`, `updated_at` | `timestamp with time zone` | `datetime(6)` (UTC) | `timestamp_with_timezone_text` (RFC 3339) |
/// | `locked_by` (null) | `varchar(255)` | `varchar(255)` | `varchar(255)` |
/// | `locked_until`, `published_at` (null) | as the timestamps above | | |
/// | `last_error` (null) | `text` | `longtext` | `text` |
///
/// MySQL/MariaDB get `datetime(6)`, not `timestamp`: a `timestamp` ends in
/// 2038 and is converted to the connection's time zone; the outbox stores UTC.
/// The table uses `utf8mb4` with the binary collation there, so ordering
/// keys compare exactly.
///
/// Indexes, so the claim query reads in `id` order without a sort or a full
/// scan however many published rows are kept:
///
/// - PostgreSQL and SQLite (partial indexes): `(id) WHERE status =
///   'pending'`, `(partition_key, id) WHERE status = 'pending'`,
///   `(published_at) WHERE status = 'published'`;
/// - MySQL/MariaDB: `(status, id)`, `(partition_key, status, id)`,
///   `(status, published_at)`.
///
/// `down` drops the table.
#[derive(DeriveMigrationName, Debug, Clone, Copy, Default)]
pub struct Migration;

#[derive(DeriveIden)]
enum Outbox {
    Id,
    EventId,
    Topic,
    PartitionKey,
    EventType,
    SchemaVersion,
    Payload,
    Headers,
    Status,
    Attempts,
    AvailableAt,
    LockedBy,
    LockedUntil,
    LastError,
    CreatedAt,
    UpdatedAt,
    PublishedAt,
}

impl Migration {
    /// The `CREATE TABLE` statement of the outbox table named in `tables`
    /// for `backend`.
    pub fn create_table(backend: DbBackend, tables: &Tables) -> TableCreateStatement {
        let timestamp = |column: Outbox| {
            let mut def = ColumnDef::new(column);
            match backend {
                DbBackend::MySql => def.custom(Alias::new("datetime(6)")),
                _ => def.timestamp_with_time_zone(),
            };
            def
        };
        let long_text = |column: Outbox| {
            let mut def = ColumnDef::new(column);
            match backend {
                DbBackend::MySql => def.custom(Alias::new("longtext")),
                _ => def.text(),
            };
            def
        };

        let mut table = Table::create();
        table
            .table(tables.outbox_ref())
            .col(
                ColumnDef::new(Outbox::Id)
                    .big_integer()
                    .not_null()
                    .auto_increment()
                    .primary_key(),
            )
            .col(
                ColumnDef::new(Outbox::EventId)
                    .uuid()
                    .not_null()
                    .unique_key(),
            )
            .col(ColumnDef::new(Outbox::Topic).string_len(249).not_null())
            .col(ColumnDef::new(Outbox::PartitionKey).string_len(255).null())
            .col(ColumnDef::new(Outbox::EventType).string_len(255).not_null())
            .col(ColumnDef::new(Outbox::SchemaVersion).integer().not_null())
            .col(long_text(Outbox::Payload).not_null())
            .col(long_text(Outbox::Headers).not_null())
            .col(
                ColumnDef::new(Outbox::Status)
                    .string_len(16)
                    .not_null()
                    .check(Expr::col(Outbox::Status).is_in(["pending", "published", "dead"])),
            )
            .col(
                ColumnDef::new(Outbox::Attempts)
                    .integer()
                    .not_null()
                    .default(0),
            )
            .col(timestamp(Outbox::AvailableAt).not_null())
            .col(ColumnDef::new(Outbox::LockedBy).string_len(255).null())
            .col(timestamp(Outbox::LockedUntil).null())
            .col(long_text(Outbox::LastError).null())
            .col(timestamp(Outbox::CreatedAt).not_null())
            .col(timestamp(Outbox::UpdatedAt).not_null())
            .col(timestamp(Outbox::PublishedAt).null());
        if backend == DbBackend::MySql {
            table
                .engine("InnoDB")
                .character_set("utf8mb4")
                .collate("utf8mb4_bin");
        }
        table.take()
    }

    /// The `CREATE INDEX` statements for `backend`.
    /// The outbox table's indexes.
    pub fn create_indexes(backend: DbBackend, tables: &Tables) -> Vec<IndexCreateStatement> {
        let pending = || Expr::col(Outbox::Status).eq("pending");
        let published = || Expr::col(Outbox::Status).eq("published");
        let index = |name: String| Index::create().name(name).table(tables.outbox_ref()).take();
        match backend {
            DbBackend::MySql => vec![
                index(tables.index_pending())
                    .col(Outbox::Status)
                    .col(Outbox::Id)
                    .take(),
                index(tables.index_key_pending())
                    .col(Outbox::PartitionKey)
                    .col(Outbox::Status)
                    .col(Outbox::Id)
                    .take(),
                index(tables.index_published())
                    .col(Outbox::Status)
                    .col(Outbox::PublishedAt)
                    .take(),
            ],
            _ => vec![
                index(tables.index_pending())
                    .col(Outbox::Id)
                    .and_where(pending())
                    .take(),
                index(tables.index_key_pending())
                    .col(Outbox::PartitionKey)
                    .col(Outbox::Id)
                    .and_where(pending())
                    .take(),
                index(tables.index_published())
                    .col(Outbox::PublishedAt)
                    .and_where(published())
                    .take(),
            ],
        }
    }
}

/// Creates the outbox table named in `tables` and its indexes, those
/// missing.
pub(crate) async fn up(manager: &SchemaManager<'_>, tables: &Tables) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    if !crate::existing::has_table(manager, tables, tables.outbox()).await? {
        manager
            .create_table(Migration::create_table(backend, tables))
            .await?;
    }
    crate::existing::create_missing_indexes(
        manager,
        tables,
        Migration::create_indexes(backend, tables),
    )
    .await
}

/// Drops the outbox table named in `tables`.
pub(crate) async fn down(manager: &SchemaManager<'_>, tables: &Tables) -> Result<(), DbErr> {
    manager
        .drop_table(Table::drop().table(tables.outbox_ref()).to_owned())
        .await
}
