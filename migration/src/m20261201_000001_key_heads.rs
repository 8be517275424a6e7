//! Adds `outbox_keys`, the head of each key with pending records, so that a
//! claim reads only the keys that can move, however many records wait
//! behind blocked ones.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

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
    Table,
    PartitionKey,
    NextAt,
    HeldBy,
}

#[derive(DeriveIden)]
enum Outbox {
    Table,
    PartitionKey,
    Status,
    AvailableAt,
    Id,
}

impl Migration {
    /// The `CREATE TABLE outbox_keys` statement for `backend`, with
    /// `collation` for the key on MySQL/MariaDB.
    pub fn create_table(backend: DbBackend, collation: &str) -> TableCreateStatement {
        let mut next_at = ColumnDef::new(OutboxKeys::NextAt);
        match backend {
            DbBackend::MySql => next_at.custom(Alias::new("datetime(6)")),
            _ => next_at.timestamp_with_time_zone(),
        };
        let mut table = Table::create();
        table
            .table(OutboxKeys::Table)
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
    pub fn create_indexes(backend: DbBackend) -> Vec<IndexCreateStatement> {
        let next = Index::create()
            .name("idx_outbox_keys_next")
            .table(OutboxKeys::Table)
            .col(OutboxKeys::NextAt)
            .take();
        let keyless = match backend {
            DbBackend::MySql => Index::create()
                .name("idx_outbox_keyless")
                .table(Outbox::Table)
                .col(Outbox::PartitionKey)
                .col(Outbox::Status)
                .col(Outbox::AvailableAt)
                .take(),
            _ => Index::create()
                .name("idx_outbox_keyless")
                .table(Outbox::Table)
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
                    .name("idx_outbox_dead")
                    .table(Outbox::Table)
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

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// Creates `outbox_keys` and fills it, unless it exists already (the
    /// migration ran, from `outbox migrate` or the service's own
    /// `Migrator`): then it only creates the indexes that are missing.
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let backend = manager.get_database_backend();
        if crate::existing::has_table(manager, "outbox_keys").await? {
            return crate::existing::create_missing_indexes(manager, Self::create_indexes(backend))
                .await;
        }
        let db = manager.get_connection();
        let mut collation = "";
        if backend == DbBackend::MySql {
            collation = no_pad_collation(manager).await?;
            db.execute_unprepared(&format!(
                "ALTER TABLE outbox MODIFY partition_key varchar(255) \
                 CHARACTER SET utf8mb4 COLLATE {collation} NULL"
            ))
            .await?;
        }
        manager
            .create_table(Self::create_table(backend, collation))
            .await?;
        crate::existing::create_missing_indexes(manager, Self::create_indexes(backend)).await?;
        // Every key with pending records starts at its first one.
        db.execute_unprepared(
            "INSERT INTO outbox_keys (partition_key, next_at)
SELECT o.partition_key, o.available_at FROM outbox o
WHERE o.status = 'pending' AND o.partition_key IS NOT NULL
  AND o.id = (SELECT MIN(i.id) FROM outbox i
              WHERE i.partition_key = o.partition_key AND i.status = 'pending')",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::MySql {
            manager
                .drop_index(
                    Index::drop()
                        .name("idx_outbox_dead")
                        .table(Outbox::Table)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_index(
                Index::drop()
                    .name("idx_outbox_keyless")
                    .table(Outbox::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(OutboxKeys::Table).to_owned())
            .await
    }
}
