//! `outbox_keys`: one row per key with pending records (or a dead record
//! holding it), whose `next_at` is when the key's first pending record can
//! be claimed. The claim reads this table instead of the records, so its
//! cost does not grow with the records waiting behind blocked keys.
//!
//! A key whose records are all published stays as an idle row (no
//! `next_at`) until housekeeping deletes it with the published records.
//!
//! Writers lock the key's row; the relay never waits for one:
//!
//! - `enqueue` upserts the key **before** inserting the record, so a
//!   second transaction enqueueing for the key waits for the first to
//!   commit before its record gets an id: ids of one key are in commit
//!   order, and the relay publishes in id order.
//! - the claim locks ready keys `FOR UPDATE SKIP LOCKED`, passing over a
//!   key a writer holds, leases their first records and refreshes them;
//! - a settlement locks its records' keys `FOR UPDATE SKIP LOCKED` too: it
//!   changes the records of every key, refreshes the keys it locked, and
//!   leaves a busy key's `next_at` at its lease's end for the next claim to
//!   refresh (see `store::settle`);
//! - housekeeping deletes and repairs idle keys it can lock without
//!   waiting;
//! - only the operators' requeue and discard wait for a writer, one key
//!   per transaction, so they never hold one key while waiting for another.
//!
//! Statements here are hand-written where sea-query has no form for them:
//! the per-dialect upsert expression and the correlated head subquery.

use sea_orm::sea_query::{Alias, Expr, ExprTrait, InsertStatement, OnConflict, Query, SimpleExpr};
use sea_orm::{DbBackend, Statement};

use crate::sql::{Param, render};

/// The key table's name.
pub(crate) const TABLE: &str = "outbox_keys";

/// Upserts `keys` (sorted and deduplicated by the caller, so writers lock
/// them in one order), each with the `next_at` it gets when it has no
/// pending record yet. An existing key keeps its `next_at`, unless it has
/// neither a head nor a dead record holding it.
///
/// A key that keeps its `next_at` is locked and not written: PostgreSQL
/// and SQLite update only rows that pass the `WHERE` of `DO UPDATE` (and
/// lock all of them), MySQL/MariaDB writes nothing when the value stays.
/// So a writer leaves no new row version of a busy key behind, and on
/// PostgreSQL a second writer of the key at `REPEATABLE READ` does not
/// fail with a serialization error because the first one wrote the row.
pub(crate) fn upsert(
    backend: DbBackend,
    keys: impl IntoIterator<Item = (String, SimpleExpr)>,
) -> InsertStatement {
    let mut insert = Query::insert();
    insert
        .into_table(Alias::new(TABLE))
        .columns([Alias::new("partition_key"), Alias::new("next_at")]);
    for (key, next_at) in keys {
        insert.values_panic([key.into(), next_at]);
    }
    let idle = || {
        Expr::col((Alias::new(TABLE), Alias::new("next_at")))
            .is_null()
            .and(Expr::col((Alias::new(TABLE), Alias::new("held_by"))).is_null())
    };
    let mut on_conflict = OnConflict::column(Alias::new("partition_key"));
    match backend {
        DbBackend::MySql => on_conflict.value(
            Alias::new("next_at"),
            Expr::cust(
                "CASE WHEN outbox_keys.next_at IS NULL AND outbox_keys.held_by IS NULL \
                 THEN VALUES(next_at) ELSE outbox_keys.next_at END",
            ),
        ),
        _ => on_conflict
            .value(Alias::new("next_at"), Expr::cust("excluded.next_at"))
            .action_and_where(idle()),
    };
    insert.on_conflict(on_conflict);
    insert
}

/// Sets each key's `next_at` to when its first pending record can be
/// claimed: its `available_at`, or the end of its lease if that is later
/// (none when it has no pending record left: the key is idle). Keys held
/// by a dead record are left alone.
///
/// Idle keys stay in the table until housekeeping deletes them
/// ([`idle_keys`]): deleting them here, in every settlement, made
/// concurrent settlements deadlock on MySQL/MariaDB, whose `DELETE` locks
/// every row it reads.
pub(crate) fn refresh(backend: DbBackend, keys: &[String]) -> Statement {
    // MariaDB otherwise reads the head through the unkeyed records' index
    // and sorts what it finds.
    let hint = match backend {
        DbBackend::MySql => " FORCE INDEX (idx_outbox_key_pending)",
        _ => "",
    };
    // PostgreSQL: the key as a range and the order as the pending index's,
    // as in the claim (`key_records`), so a stale estimate of how many
    // records are pending never makes it walk the primary key.
    let (same_key, order) = match backend {
        DbBackend::Postgres => (
            "o.partition_key >= outbox_keys.partition_key \
             AND o.partition_key <= outbox_keys.partition_key",
            "o.partition_key, o.id",
        ),
        _ => ("o.partition_key = outbox_keys.partition_key", "o.id"),
    };
    render(
        backend,
        &format!(
            "UPDATE outbox_keys SET next_at = (
  SELECT CASE WHEN o.locked_until > o.available_at THEN o.locked_until ELSE o.available_at END
  FROM outbox o{hint}
  WHERE {same_key} AND o.status = 'pending'
  ORDER BY {order} LIMIT 1)
WHERE partition_key IN (:keys) AND held_by IS NULL"
        ),
        &[("keys", Param::list(keys.iter().cloned()))],
    )
}

/// Up to `limit` idle keys (no pending record, no dead one holding them)
/// that no transaction holds, locked for [`delete_keys`] to delete, read
/// through the `next_at` index. A key a writer is enqueueing for is never
/// among them: the writer holds its row (and its upsert gave it a
/// `next_at`), so it is passed over rather than waited for.
pub(crate) fn idle_keys(backend: DbBackend, limit: i64) -> Statement {
    let lock = match backend {
        DbBackend::Sqlite => "",
        _ => "\nFOR UPDATE SKIP LOCKED",
    };
    render(
        backend,
        &format!(
            "SELECT partition_key FROM outbox_keys WHERE next_at IS NULL AND held_by IS NULL
LIMIT :limit{lock}"
        ),
        &[("limit", Param::one(limit))],
    )
}

/// Deletes `keys` (locked by [`idle_keys`] in the same transaction) that
/// are still idle.
pub(crate) fn delete_keys(backend: DbBackend, keys: &[String]) -> Statement {
    render(
        backend,
        "DELETE FROM outbox_keys
WHERE partition_key IN (:keys) AND next_at IS NULL AND held_by IS NULL",
        &[("keys", Param::list(keys.iter().cloned()))],
    )
}

/// Sets the `next_at` of keys whose first records a claim just leased to
/// the lease's end (their refresh, known without reading the records).
/// Keys held by a dead record are left alone.
pub(crate) fn lease<'k>(
    backend: DbBackend,
    keys: impl Iterator<Item = &'k str>,
    until: chrono::DateTime<chrono::Utc>,
) -> Statement {
    render(
        backend,
        "UPDATE outbox_keys SET next_at = :until
WHERE partition_key IN (:keys) AND held_by IS NULL",
        &[
            ("until", Param::one(until)),
            ("keys", Param::list(keys.map(str::to_owned))),
        ],
    )
}

/// Registers the keys of pending records that have no key row: records
/// inserted into `outbox` by another client (not through `enqueue`), whose
/// keys the claim would otherwise never read. They get a `next_at` of
/// `now`; the next claim that reads them sets the right one. Reads every
/// pending record: for housekeeping, not for the hot path. (It waits for a
/// writer inserting the very same new key at that moment, as any insert
/// of a key does.)
pub(crate) fn register_missing(
    backend: DbBackend,
    now: chrono::DateTime<chrono::Utc>,
) -> Statement {
    let insert = match backend {
        DbBackend::MySql => "INSERT IGNORE INTO outbox_keys (partition_key, next_at)",
        _ => "INSERT INTO outbox_keys (partition_key, next_at)",
    };
    let conflict = match backend {
        DbBackend::MySql => "",
        _ => "\nON CONFLICT (partition_key) DO NOTHING",
    };
    render(
        backend,
        &format!(
            "{insert}
SELECT DISTINCT o.partition_key, :now FROM outbox o
WHERE o.status = 'pending' AND o.partition_key IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM outbox_keys k WHERE k.partition_key = o.partition_key){conflict}"
        ),
        &[("now", Param::one(now))],
    )
}

/// Idle keys (no `next_at`, not held) that have pending records all the
/// same (inserted by another client), locked without waiting, for
/// [`ready_now`].
pub(crate) fn idle_with_records(backend: DbBackend) -> Statement {
    let lock = match backend {
        DbBackend::Sqlite => "",
        _ => "\nFOR UPDATE SKIP LOCKED",
    };
    render(
        backend,
        &format!(
            "SELECT partition_key FROM outbox_keys
WHERE next_at IS NULL AND held_by IS NULL AND EXISTS (
  SELECT 1 FROM outbox o
  WHERE o.partition_key = outbox_keys.partition_key AND o.status = 'pending'){lock}"
        ),
        &[],
    )
}

/// Makes `keys` (locked by [`idle_with_records`]) ready at `now`, if they
/// are still idle.
pub(crate) fn ready_now(
    backend: DbBackend,
    keys: &[String],
    now: chrono::DateTime<chrono::Utc>,
) -> Statement {
    render(
        backend,
        "UPDATE outbox_keys SET next_at = :now
WHERE partition_key IN (:keys) AND next_at IS NULL AND held_by IS NULL",
        &[
            ("now", Param::one(now)),
            ("keys", Param::list(keys.iter().cloned())),
        ],
    )
}

/// Makes the dead record `id` hold its key (it must be dead already),
/// unless an earlier dead record holds it: the earliest holds.
pub(crate) fn hold(backend: DbBackend, id: i64) -> Statement {
    render(
        backend,
        "UPDATE outbox_keys SET held_by = :id, next_at = NULL
WHERE (held_by IS NULL OR held_by > :id) AND partition_key = (
  SELECT o.partition_key FROM outbox o WHERE o.id = :id AND o.status = 'dead')",
        &[("id", Param::one(id))],
    )
}
