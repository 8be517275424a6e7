//! Settling claimed records: published, retried, dead or released. Each
//! touches only rows still pending and leased to the caller, and clears
//! the lease; a chunk of records is one statement (a `CASE` on `id` where
//! the values differ per record).

use chrono::Utc;
use outbox_core::{DeadLetter, Retry, Status};
use sea_orm::sea_query::{CaseStatement, Expr, ExprTrait, Query, UpdateStatement};
use sea_orm::{ColumnTrait, ConnectionTrait, Value};

use super::SeaOrmStore;
use crate::entity::{Column, Entity};
use crate::error::Error;

/// Ids per statement: far below every dialect's bound-parameter limit, and
/// above any sensible batch, so a batch is one statement.
const IDS_PER_STATEMENT: usize = 10_000;
/// Records per `CASE` statement (three parameters each).
const CASES_PER_STATEMENT: usize = 5_000;

/// `UPDATE outbox SET <lease cleared>, updated_at WHERE status = 'pending'
/// AND locked_by = owner AND id IN (ids)`, to which callers add their own
/// values.
fn leased_update(owner: &str, ids: impl IntoIterator<Item = i64>) -> UpdateStatement {
    Query::update()
        .table(Entity)
        .value(Column::LockedBy, Value::String(None))
        .value(Column::LockedUntil, Value::ChronoDateTimeUtc(None))
        .value(Column::UpdatedAt, Utc::now())
        .and_where(Column::Status.eq(Status::Pending.as_str()))
        .and_where(Column::LockedBy.eq(owner))
        .and_where(Column::Id.is_in(ids))
        .to_owned()
}

async fn run_all(
    store: &SeaOrmStore,
    operation: &'static str,
    statements: Vec<UpdateStatement>,
) -> Result<u64, Error> {
    let mut changed = 0;
    for statement in statements {
        match store.connection().execute(&statement).await {
            Ok(result) => changed += result.rows_affected(),
            Err(error) => return Err(store.fail(operation, error).await),
        }
    }
    Ok(changed)
}

pub(super) async fn mark_published(
    store: &SeaOrmStore,
    owner: &str,
    ids: &[i64],
) -> Result<u64, Error> {
    let now = Utc::now();
    let statements = ids
        .chunks(IDS_PER_STATEMENT)
        .map(|chunk| {
            let mut update = leased_update(owner, chunk.iter().copied());
            update
                .value(Column::Status, Status::Published.as_str())
                .value(Column::PublishedAt, now);
            update
        })
        .collect();
    run_all(store, "mark outbox records published", statements).await
}

pub(super) async fn release(store: &SeaOrmStore, owner: &str, ids: &[i64]) -> Result<u64, Error> {
    let statements = ids
        .chunks(IDS_PER_STATEMENT)
        .map(|chunk| leased_update(owner, chunk.iter().copied()))
        .collect();
    run_all(store, "release outbox records", statements).await
}

/// `CASE WHEN id = ... THEN ... END`, one branch per item.
fn case_by_id<T, V: Into<Expr>>(
    items: &[T],
    id: impl Fn(&T) -> i64,
    value: impl Fn(&T) -> V,
) -> Expr {
    let mut case = CaseStatement::new();
    for item in items {
        case = case.case(Expr::col(Column::Id).eq(id(item)), value(item));
    }
    case.into()
}

fn failed_attempt(owner: &str, ids: impl IntoIterator<Item = i64>) -> UpdateStatement {
    let mut update = leased_update(owner, ids);
    update.value(Column::Attempts, Expr::col(Column::Attempts).add(1));
    update
}

pub(super) async fn schedule_retry(
    store: &SeaOrmStore,
    owner: &str,
    retries: &[Retry],
) -> Result<u64, Error> {
    let statements = retries
        .chunks(CASES_PER_STATEMENT)
        .map(|chunk| {
            let mut update = failed_attempt(owner, chunk.iter().map(|r| r.id));
            update
                .value(
                    Column::LastError,
                    case_by_id(chunk, |r| r.id, |r| r.error.clone()),
                )
                .value(
                    Column::AvailableAt,
                    case_by_id(chunk, |r| r.id, |r| r.retry_at),
                );
            update
        })
        .collect();
    run_all(store, "schedule outbox records for retry", statements).await
}

pub(super) async fn mark_dead(
    store: &SeaOrmStore,
    owner: &str,
    dead: &[DeadLetter],
) -> Result<u64, Error> {
    let statements = dead
        .chunks(CASES_PER_STATEMENT)
        .map(|chunk| {
            let mut update = failed_attempt(owner, chunk.iter().map(|d| d.id));
            update
                .value(
                    Column::LastError,
                    case_by_id(chunk, |d| d.id, |d| d.error.clone()),
                )
                .value(Column::Status, Status::Dead.as_str());
            update
        })
        .collect();
    run_all(store, "move outbox records to dead letters", statements).await
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use sea_orm::DbBackend;

    use super::*;

    fn sql(backend: DbBackend, statement: &UpdateStatement) -> String {
        backend.build(statement).sql
    }

    #[test]
    fn a_batch_is_one_statement_guarded_by_the_lease() {
        let mut published = leased_update("relay-1", [1, 2, 3]);
        published
            .value(Column::Status, Status::Published.as_str())
            .value(Column::PublishedAt, Utc::now());
        let at = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let retries = [
            Retry {
                id: 1,
                error: "timeout".into(),
                retry_at: at,
            },
            Retry {
                id: 2,
                error: "timeout".into(),
                retry_at: at,
            },
        ];
        let mut retry = failed_attempt("relay-1", retries.iter().map(|r| r.id));
        retry
            .value(
                Column::LastError,
                case_by_id(&retries, |r| r.id, |r| r.error.clone()),
            )
            .value(
                Column::AvailableAt,
                case_by_id(&retries, |r| r.id, |r| r.retry_at),
            );
        for backend in [DbBackend::Postgres, DbBackend::MySql, DbBackend::Sqlite] {
            eprintln!(
                "{backend:?}:\n{}\n{}",
                sql(backend, &published),
                sql(backend, &retry)
            );
        }
        assert_eq!(
            sql(DbBackend::Postgres, &published),
            r#"UPDATE "outbox" SET "locked_by" = $1, "locked_until" = $2, "updated_at" = $3, "status" = $4, "published_at" = $5 WHERE "outbox"."status" = $6 AND "outbox"."locked_by" = $7 AND "outbox"."id" IN ($8, $9, $10)"#
        );
        assert_eq!(
            sql(DbBackend::MySql, &retry),
            "UPDATE `outbox` SET `locked_by` = ?, `locked_until` = ?, `updated_at` = ?, \
             `attempts` = `attempts` + ?, \
             `last_error` = (CASE WHEN (`id` = ?) THEN ? WHEN (`id` = ?) THEN ? END), \
             `available_at` = (CASE WHEN (`id` = ?) THEN ? WHEN (`id` = ?) THEN ? END) \
             WHERE `outbox`.`status` = ? AND `outbox`.`locked_by` = ? AND `outbox`.`id` IN (?, ?)"
        );
    }
}
