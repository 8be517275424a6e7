//! Claiming a batch: the statement every dialect shares, the row locks of
//! PostgreSQL and MySQL/MariaDB, and the check that keeps per-key order
//! between claimers running at once.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use outbox_core::{ClaimRequest, OutboxRecord};
use sea_orm::sea_query::Query;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, FromQueryResult, IdenStatic,
    Iterable, Statement,
};

use super::{SeaOrmStore, TxError};
use crate::entity::{Column, Entity, Model};
use crate::error::Error;
use crate::sql::{Param, render};

/// Ids per lease `UPDATE`, keys per race-check `SELECT`: far below every
/// dialect's bound-parameter limit and above any sensible batch, so a
/// batch takes one statement of each.
const IDS_PER_STATEMENT: usize = 10_000;
const KEYS_PER_STATEMENT: usize = 10_000;

/// The claim query of [`SeaOrmStore`] for `backend`, as it runs: the
/// candidates of one claim, locked on PostgreSQL and MySQL/MariaDB.
///
/// Public for `EXPLAIN` in tests and by operators; not a stable API.
#[doc(hidden)]
pub fn claim_statement(backend: DbBackend, request: &ClaimRequest) -> Statement {
    let columns = Column::iter()
        .map(|column| format!("o.{}", column.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    // `FOR UPDATE ... SKIP LOCKED` passes over rows another claimer is
    // locking; SQLite has one writer and no row locks.
    let lock = match backend {
        DbBackend::Postgres => "\nFOR UPDATE OF o SKIP LOCKED",
        DbBackend::MySql => "\nFOR UPDATE SKIP LOCKED",
        _ => "",
    };
    // PostgreSQL turns a NOT EXISTS into an anti-join whose plan follows
    // the statistics: with stale ones (right after a bulk enqueue) it
    // scanned every pending row once per candidate. `OFFSET 0` keeps the
    // subquery a subplan: one probe of the key index per candidate,
    // whatever the statistics say. MySQL/MariaDB and SQLite run it that
    // way already.
    let fence = match backend {
        DbBackend::Postgres => "\n      OFFSET 0",
        _ => "",
    };
    // The status literals stay in the text so that PostgreSQL and SQLite
    // match the partial indexes (`WHERE status = 'pending'`).
    let template = format!(
        "SELECT {columns}
FROM outbox o
WHERE o.status = 'pending'
  AND o.available_at <= :now
  AND (o.locked_until IS NULL OR o.locked_until <= :now)
  AND NOT EXISTS (
    SELECT 1 FROM outbox e
    WHERE e.partition_key = o.partition_key
      AND e.status = 'pending'
      AND e.id < o.id
      AND (e.available_at > :now OR e.locked_until > :now){fence})
ORDER BY o.id
LIMIT :limit{lock}"
    );
    let limit = i64::try_from(request.limit).unwrap_or(i64::MAX);
    render(
        backend,
        &template,
        &[
            ("now", Param::one(request.now)),
            ("limit", Param::one(limit)),
        ],
    )
}

/// Claims a batch in one transaction: select and lock the candidates,
/// drop those a concurrent claimer makes unsafe, lease the rest.
pub(super) async fn claim(
    store: &SeaOrmStore,
    request: &ClaimRequest,
) -> Result<Vec<OutboxRecord>, Error> {
    if request.limit == 0 {
        return Ok(Vec::new());
    }
    let backend = store.backend();
    let records = store
        .transaction("claim outbox records", async |txn| {
            let rows = txn.query_all_raw(claim_statement(backend, request)).await?;
            let mut candidates = rows
                .iter()
                .map(|row| Model::from_query_result(row, ""))
                .collect::<Result<Vec<_>, _>>()?;
            if backend != DbBackend::Sqlite {
                let unsafe_ids = raced(txn, &candidates).await?;
                if !unsafe_ids.is_empty() {
                    tracing::debug!(
                        dropped = unsafe_ids.len(),
                        "outbox claim left records a concurrent claim holds back"
                    );
                    candidates.retain(|row| !unsafe_ids.contains(&row.id));
                }
            }
            if candidates.is_empty() {
                return Ok(Vec::new());
            }
            let now = Utc::now();
            for chunk in candidates.chunks(IDS_PER_STATEMENT) {
                let mut lease = Query::update();
                lease
                    .table(Entity)
                    .value(Column::LockedBy, request.owner.as_str())
                    .value(Column::LockedUntil, request.lease_until())
                    .value(Column::UpdatedAt, now)
                    .and_where(Column::Id.is_in(chunk.iter().map(|row| row.id)));
                txn.execute(&lease).await?;
            }
            let records = candidates
                .into_iter()
                .map(OutboxRecord::try_from)
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, TxError>(records)
        })
        .await?;
    Ok(records)
}

/// The candidates that a concurrent claim makes unsafe.
///
/// `SKIP LOCKED` hides the rows another claimer is locking at this moment,
/// and the claim query's `NOT EXISTS` sees their state before that claim:
/// both claimers could take records of one key, each skipping the other's.
/// So, per key, only candidates that form a prefix of the key's pending
/// records are safe: the key's first pending record must be ours, and no
/// pending record of the key that is not ours may come before one we keep.
async fn raced(txn: &DatabaseTransaction, candidates: &[Model]) -> Result<HashSet<i64>, TxError> {
    let keys: HashSet<&str> = candidates
        .iter()
        .filter_map(|row| row.partition_key.as_deref())
        .collect();
    let Some(max_id) = candidates.iter().map(|row| row.id).max() else {
        return Ok(HashSet::new());
    };
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let key_list: Vec<&str> = keys.iter().copied().collect();
    let mut pending: HashMap<String, Vec<i64>> = HashMap::new();
    for chunk in key_list.chunks(KEYS_PER_STATEMENT) {
        let statement = render(
            txn.get_database_backend(),
            "SELECT id, partition_key FROM outbox
WHERE status = 'pending' AND partition_key IN (:keys) AND id <= :max_id",
            &[
                ("keys", Param::list(chunk.iter().map(|key| key.to_string()))),
                ("max_id", Param::one(max_id)),
            ],
        );
        for row in txn.query_all_raw(statement).await? {
            let id: i64 = row.try_get("", "id")?;
            let key: String = row.try_get("", "partition_key")?;
            pending.entry(key).or_default().push(id);
        }
    }
    let ours: HashSet<i64> = candidates.iter().map(|row| row.id).collect();
    let mut unsafe_ids = HashSet::new();
    for (key, mut ids) in pending {
        // A collation may match more keys than asked for; only ours count.
        if !keys.contains(key.as_str()) {
            continue;
        }
        ids.sort_unstable();
        let mut blocked = false;
        for id in ids {
            if !ours.contains(&id) {
                blocked = true;
            } else if blocked {
                unsafe_ids.insert(id);
            }
        }
    }
    Ok(unsafe_ids)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_the_lock_and_the_fence_differ_by_dialect() {
        let request = ClaimRequest {
            owner: "relay".to_owned(),
            limit: 100,
            lease: Duration::from_secs(30),
            now: Utc::now(),
        };
        let pg = claim_statement(DbBackend::Postgres, &request);
        let my = claim_statement(DbBackend::MySql, &request);
        let lite = claim_statement(DbBackend::Sqlite, &request);
        for statement in [&pg, &my, &lite] {
            eprintln!("{:?}:\n{}\n", statement.db_backend, statement.sql);
            assert_eq!(
                statement.values.as_ref().unwrap().0.len(),
                5,
                "now four times, and the limit"
            );
        }
        assert!(
            pg.sql.ends_with("LIMIT $5\nFOR UPDATE OF o SKIP LOCKED"),
            "{}",
            pg.sql
        );
        assert!(pg.sql.contains("OFFSET 0)"), "{}", pg.sql);
        assert!(
            my.sql.ends_with("LIMIT ?\nFOR UPDATE SKIP LOCKED"),
            "{}",
            my.sql
        );
        assert!(lite.sql.ends_with("LIMIT ?"), "{}", lite.sql);
        assert_eq!(my.sql.replace("\nFOR UPDATE SKIP LOCKED", ""), lite.sql);
    }
}
