//! Adds `outbox_keys`, the head of each key with pending records, so that a
//! claim reads only the keys that can move, however many records wait
//! behind blocked ones.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

use crate::Tables;

/// Adds the `outbox_keys` table, the index of claimable unkeyed records,
/// and (MySQL/MariaDB) a no-pad binary collation for keys.
///
/// `outbox_keys` has one row per key that has pending records, or a dead
/// record holding it:
///
/// | column | type | meaning |
/// |---|---|---|
/// | `partition_key` | `varchar(255)`, primary key | the key |
/// | `next_at` (null) | timestamp, as in `outbox` | when the key's first pending record can be claimed: its `available_at` (a lease's end, a retry's time, a delayed record's time) |
/// | `held_by` (null) | `bigint` | the dead record holding the key, if any |
///
/// Index `idx_outbox_keys_next` on `next_at` serves the claim; the store
/// keeps the rows up to date in the transactions that change the outbox
/// (enqueue, claim, settle, requeue), and `up` fills them from the pending
/// records already there.
///
/// `idx_outbox_keyless` serves the claim of records without a key: `(available_at,
/// id) WHERE status = 'pending' AND partition_key IS NULL` on PostgreSQL and
/// SQLite, `(partition_key, status, available_at)` on MySQL/MariaDB.
///
/// On MySQL/MariaDB, `outbox.partition_key` and `outbox_keys.partition_key`
/// use a binary collation without padding (`utf8mb4_nopad_bin` on MariaDB,
/// `utf8mb4_0900_bin` on MySQL 8), so that keys `a` and `a ` are two keys;
/// `utf8mb4_bin` compares them equal.
///
/// On PostgreSQL and SQLite, `idx_outbox_dead` (`(id) WHERE status =
/// 'dead'`) serves listing and requeueing dead records.
///
/// `down` drops the table and the indexes.
#[derive(DeriveMigrationName, Debug, Clone, Copy, Default)]
pub struct Migration;

#[derive(DeriveIden)]
enum OutboxKeys {
    PartitionKey,
    NextAt,
    HeldBy,
}

#[derive(DeriveIden)]
enum Outbox {
    PartitionKey,
    Status,
    AvailableAt,
    Id,
}

impl Migration {
    /// The `CREATE TABLE outbox_keys` statement for `backend`, with
    /// `collation` for the key on MySQL/MariaDB.
    /// The `CREATE TABLE` of the keys' table named in `tables`.
    pub fn create_table(
        backend: DbBackend,
        tables: &Tables,
        collation: &str,
    ) -> TableCreateStatement {
        let mut next_at = ColumnDef::new(OutboxKeys::NextAt);
        match backend {
            DbBackend::MySql => next_at.custom(Alias::new("datetime(6)")),
            _ => next_at.timestamp_with_time_zone(),
        };
        let mut table = Table::create();
        table
            .table(tables.keys_ref())
            .col(
                ColumnDef::new(OutboxKeys::PartitionKey)
                    .string_len(255)
                    .not_null()
                    .primary_key(),
            )
            .col(next_at.null())
            .col(ColumnDef::new(OutboxKeys::HeldBy).big_integer().null());
        if backend == DbBackend::MySql {
            table
                .engine("InnoDB")
                .character_set("utf8mb4")
                .collate(collation);
        }
        table.take()
    }

    /// The `CREATE INDEX` statements for `backend`.
    /// The keys' table's index, and the outbox's indexes of unkeyed and dead
    /// records.
    pub fn create_indexes(backend: DbBackend, tables: &Tables) -> Vec<IndexCreateStatement> {
        let next = Index::create()
            .name("idx_outbox_keys_next")
            .table(tables.keys_ref())
            .col(OutboxKeys::NextAt)
            .take();
        let keyless = match backend {
            DbBackend::MySql => Index::create()
                .name(tables.index_keyless())
                .table(tables.outbox_ref())
                .col(Outbox::PartitionKey)
                .col(Outbox::Status)
                .col(Outbox::AvailableAt)
                .take(),
            _ => Index::create()
                .name(tables.index_keyless())
                .table(tables.outbox_ref())
                .col(Outbox::AvailableAt)
                .col(Outbox::Id)
                .and_where(Expr::col(Outbox::Status).eq("pending"))
                .and_where(Expr::col(Outbox::PartitionKey).is_null())
                .take(),
        };
        let mut indexes = vec![next, keyless];
        // MySQL/MariaDB's `(status, id)` index serves dead records already.
        if backend != DbBackend::MySql {
            indexes.push(
                Index::create()
                    .name(tables.index_dead())
                    .table(tables.outbox_ref())
                    .col(Outbox::Id)
                    .and_where(Expr::col(Outbox::Status).eq("dead"))
                    .take(),
            );
        }
        indexes
    }
}

/// The binary, no-pad collation of this MySQL or MariaDB server.
async fn no_pad_collation(manager: &SchemaManager<'_>) -> Result<&'static str, DbErr> {
    let db = manager.get_connection();
    let version = db
        .query_one_raw(sea_orm_migration::sea_orm::Statement::from_string(
            DbBackend::MySql,
            "SELECT VERSION() AS version",
        ))
        .await?
        .map(|row| row.try_get::<String>("", "version"))
        .transpose()?
        .unwrap_or_default();
    Ok(if version.contains("MariaDB") {
        "utf8mb4_nopad_bin"
    } else {
        "utf8mb4_0900_bin"
    })
}

/// Creates the keys' table named in `tables` and fills it from the
/// pending records, or creates its missing indexes when it exists.
pub(crate) async fn up(manager: &SchemaManager<'_>, tables: &Tables) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    let indexes = Migration::create_indexes(backend, tables);
    if crate::existing::has_table(manager, tables, tables.keys()).await? {
        return crate::existing::create_missing_indexes(manager, tables, indexes).await;
    }
    let db = manager.get_connection();
    let outbox = tables.qualified(backend, tables.outbox());
    let keys = tables.qualified(backend, tables.keys());
    let mut collation = "";
    if backend == DbBackend::MySql {
        collation = no_pad_collation(manager).await?;
        db.execute_unprepared(&format!(
            "ALTER TABLE {outbox} MODIFY partition_key varchar(255) \
             CHARACTER SET utf8mb4 COLLATE {collation} NULL"
        ))
        .await?;
    }
    manager
        .create_table(Migration::create_table(backend, tables, collation))
        .await?;
    crate::existing::create_missing_indexes(manager, tables, indexes).await?;
    // Every key with pending records starts at its first one.
    db.execute_unprepared(&format!(
        "INSERT INTO {keys} (partition_key, next_at)
SELECT o.partition_key, o.available_at FROM {outbox} o
WHERE o.status = 'pending' AND o.partition_key IS NOT NULL
  AND o.id = (SELECT MIN(i.id) FROM {outbox} i
              WHERE i.partition_key = o.partition_key AND i.status = 'pending')"
    ))
    .await?;
    Ok(())
}

/// Drops the keys' table named in `tables` and the two indexes `up` adds
/// to the outbox table.
pub(crate) async fn down(manager: &SchemaManager<'_>, tables: &Tables) -> Result<(), DbErr> {
    let backend = manager.get_database_backend();
    let mut indexes = vec![tables.index_keyless()];
    if backend != DbBackend::MySql {
        indexes.push(tables.index_dead());
    }
    for index in indexes {
        crate::existing::drop_index(manager, tables, &index).await?;
    }
    manager
        .drop_table(Table::drop().table(tables.keys_ref()).to_owned())
        .await
}
