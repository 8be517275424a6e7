//! Row changes built with sea-query: the same on every database but for
//! quoting and placeholders, shaped by the data (a `CASE` branch per
//! record, a row per event). Columns are never qualified with a table
//! name, so the statements hold for any table [`Names`] names.

use chrono::{DateTime, Utc};
use outbox_engine::{DeadLetter, NewRecord, RecordRef, Settlement, Status};
use sea_orm::sea_query::{
    Alias, CaseStatement, CommonTableExpression, DeleteStatement, Expr, ExprTrait, InsertStatement,
    Query, SelectStatement, SimpleExpr, UnionType, UpdateStatement, WithClause, WithQuery,
};
use sea_orm::{Iterable, Value};

use super::{Dialect, IDS_PER_STATEMENT, Names};
use crate::entity::Column;
use crate::error::Error;

/// Records per `CASE` statement (three parameters each).
const CASES_PER_STATEMENT: usize = 5_000;

fn col(column: Column) -> Expr {
    Expr::col(column)
}

fn update(n: &Names) -> UpdateStatement {
    Query::update().table(n.tables.outbox_ref()).to_owned()
}

/// Leases claimed records under `owner` until `until`. An unkeyed record's
/// lease is also its `available_at` (`fold`: the unkeyed claim reads that
/// index alone); a keyed record's `available_at` stays, so the update
/// touches no indexed column (a HOT update on PostgreSQL): its key's
/// `next_at` holds the lease for it.
pub(crate) fn lease(
    n: &Names,
    owner: &str,
    now: DateTime<Utc>,
    until: DateTime<Utc>,
    ids: &[i64],
    fold: bool,
) -> UpdateStatement {
    let mut update = update(n);
    update
        .value(Column::LockedBy, owner)
        .value(Column::LockedUntil, until)
        .value(Column::UpdatedAt, now)
        .and_where(col(Column::Status).eq(Status::Pending.as_str()))
        .and_where(col(Column::Id).is_in(ids.iter().copied()));
    if fold {
        update.value(Column::AvailableAt, until);
    }
    update
}

/// Moves an unreadable row to dead letters with the reason.
pub(crate) fn set_aside(n: &Names, id: i64, reason: &str, now: DateTime<Utc>) -> UpdateStatement {
    update(n)
        .value(Column::Status, Status::Dead.as_str())
        .value(
            Column::LastError,
            format!("set aside by the relay: {reason}"),
        )
        .value(Column::UpdatedAt, now)
        .and_where(col(Column::Id).eq(id))
        .to_owned()
}

/// `UPDATE outbox SET <lease cleared>, updated_at WHERE status = 'pending'
/// AND locked_by = owner AND id IN (ids)`, to which callers add their own
/// values.
fn leased_update(
    n: &Names,
    owner: &str,
    now: DateTime<Utc>,
    ids: impl IntoIterator<Item = i64>,
) -> UpdateStatement {
    update(n)
        .value(Column::LockedBy, Value::String(None))
        .value(Column::LockedUntil, Value::ChronoDateTimeUtc(None))
        .value(Column::UpdatedAt, now)
        .and_where(col(Column::Status).eq(Status::Pending.as_str()))
        .and_where(col(Column::LockedBy).eq(owner))
        .and_where(col(Column::Id).is_in(ids))
        .to_owned()
}

/// `CASE WHEN id = ... THEN ... END`, one branch per item.
fn case_by_id<T, V: Into<Expr>>(
    items: &[T],
    id: impl Fn(&T) -> i64,
    value: impl Fn(&T) -> V,
) -> Expr {
    let mut case = CaseStatement::new();
    for item in items {
        case = case.case(col(Column::Id).eq(id(item)), value(item));
    }
    case.into()
}

fn failed_attempt(
    n: &Names,
    owner: &str,
    now: DateTime<Utc>,
    ids: impl IntoIterator<Item = i64>,
) -> UpdateStatement {
    let mut update = leased_update(n, owner, now, ids);
    update.value(Column::Attempts, col(Column::Attempts).add(1));
    update
}

/// Deletes the published records among `ids` still pending and leased
/// under `owner`: what a settlement does with them unless the store keeps
/// a history. A row version and no index entry, where marking them writes
/// a new version of the row and of its index entries.
pub(crate) fn delete_published(n: &Names, owner: &str, ids: &[i64]) -> DeleteStatement {
    Query::delete()
        .from_table(n.tables.outbox_ref())
        .and_where(col(Column::Status).eq(Status::Pending.as_str()))
        .and_where(col(Column::LockedBy).eq(owner))
        .and_where(col(Column::Id).is_in(ids.iter().copied()))
        .to_owned()
}

/// One statement of a settlement.
pub(crate) enum Change {
    Update(UpdateStatement),
    Delete(DeleteStatement),
}

/// The row statements of a settlement at `now`, one per kind of outcome,
/// but for the dead letters `deferred` says wait for their key. Published
/// records are marked (`history`) or deleted.
pub(crate) fn settlement(
    n: &Names,
    owner: &str,
    now: DateTime<Utc>,
    settlement: &Settlement,
    history: bool,
    deferred: impl Fn(i64) -> bool,
) -> Vec<Change> {
    let mut statements = Vec::new();
    for chunk in settlement.published.chunks(IDS_PER_STATEMENT) {
        if !history {
            statements.push(Change::Delete(delete_published(n, owner, chunk)));
            continue;
        }
        let mut update = leased_update(n, owner, now, chunk.iter().copied());
        update
            .value(Column::Status, Status::Published.as_str())
            .value(Column::PublishedAt, now);
        statements.push(Change::Update(update));
    }
    for chunk in settlement.retries.chunks(CASES_PER_STATEMENT) {
        let mut update = failed_attempt(n, owner, now, chunk.iter().map(|r| r.id));
        update
            .value(
                Column::LastError,
                case_by_id(chunk, |r| r.id, |r| r.error.clone()),
            )
            .value(
                Column::AvailableAt,
                case_by_id(chunk, |r| r.id, |r| crate::clock::later(now, r.delay)),
            );
        statements.push(Change::Update(update));
    }
    let dead: Vec<&DeadLetter> = settlement
        .dead
        .iter()
        .filter(|dead| !deferred(dead.id))
        .collect();
    for chunk in dead.chunks(CASES_PER_STATEMENT) {
        let mut update = failed_attempt(n, owner, now, chunk.iter().map(|d| d.id));
        update
            .value(
                Column::LastError,
                case_by_id(chunk, |d| d.id, |d| d.error.clone()),
            )
            .value(Column::Status, Status::Dead.as_str());
        statements.push(Change::Update(update));
    }
    for chunk in settlement.released.chunks(IDS_PER_STATEMENT) {
        let mut update = leased_update(n, owner, now, chunk.iter().copied());
        update.value(Column::AvailableAt, now);
        statements.push(Change::Update(update));
    }
    statements
}

/// Extends the leases of `ids` still leased under `owner` to `until`:
/// `locked_until`, and an unkeyed record's `available_at`, which is its
/// lease.
pub(crate) fn renew(
    n: &Names,
    owner: &str,
    ids: &[i64],
    now: DateTime<Utc>,
    until: DateTime<Utc>,
) -> UpdateStatement {
    update(n)
        .value(Column::LockedUntil, until)
        .value(
            Column::AvailableAt,
            Expr::case(col(Column::PartitionKey).is_null(), until)
                .finally(col(Column::AvailableAt)),
        )
        .value(Column::UpdatedAt, now)
        .and_where(col(Column::Status).eq(Status::Pending.as_str()))
        .and_where(col(Column::LockedBy).eq(owner))
        .and_where(col(Column::Id).is_in(ids.iter().copied()))
        .to_owned()
}

/// Moves dead records back to pending, available `now`, attempts reset,
/// last error kept.
pub(crate) fn requeue(n: &Names, ids: &[i64], now: DateTime<Utc>) -> UpdateStatement {
    update(n)
        .value(Column::Status, Status::Pending.as_str())
        .value(Column::Attempts, 0)
        .value(Column::AvailableAt, now)
        .value(Column::LockedBy, Value::String(None))
        .value(Column::LockedUntil, Value::ChronoDateTimeUtc(None))
        .value(Column::UpdatedAt, now)
        .and_where(col(Column::Status).eq(Status::Dead.as_str()))
        .and_where(col(Column::Id).is_in(ids.iter().copied()))
        .to_owned()
}

/// Frees the keys held by the dead records `ids` (of `key` only, when
/// given).
pub(crate) fn free_keys(n: &Names, ids: &[i64], key: Option<&str>) -> UpdateStatement {
    let mut free = Query::update();
    free.table(n.tables.keys_ref())
        .value(Alias::new("held_by"), Value::BigInt(None))
        .and_where(Expr::col(Alias::new("held_by")).is_in(ids.iter().copied()));
    if let Some(key) = key {
        free.and_where(Expr::col(Alias::new("partition_key")).eq(key));
    }
    free
}

/// Notes in a dead record's last error that it was discarded.
pub(crate) fn note_discard(
    n: &Names,
    id: i64,
    note: String,
    now: DateTime<Utc>,
) -> UpdateStatement {
    update(n)
        .value(Column::LastError, note)
        .value(Column::UpdatedAt, now)
        .and_where(col(Column::Id).eq(id))
        .to_owned()
}

/// One record by id or event id, every column.
pub(crate) fn find(n: &Names, record: RecordRef) -> SelectStatement {
    let mut select = Query::select();
    select.columns(Column::iter()).from(n.tables.outbox_ref());
    match record {
        RecordRef::Id(id) => select.and_where(col(Column::Id).eq(id)),
        RecordRef::EventId(event_id) => select.and_where(col(Column::EventId).eq(event_id)),
    };
    select
}

/// The dead record `id`, or those of a topic and/or key, with their keys.
pub(crate) fn dead_records(
    n: &Names,
    id: Option<i64>,
    topic: Option<&str>,
    key: Option<&str>,
) -> SelectStatement {
    let mut select = Query::select();
    select
        .columns([Column::Id, Column::PartitionKey])
        .from(n.tables.outbox_ref())
        .and_where(col(Column::Status).eq(Status::Dead.as_str()));
    if let Some(id) = id {
        select.and_where(col(Column::Id).eq(id));
    }
    if let Some(topic) = topic {
        select.and_where(col(Column::Topic).eq(topic));
    }
    if let Some(key) = key {
        select.and_where(col(Column::PartitionKey).eq(key));
    }
    select
}

/// The columns an insert sets, in [`row_values`]' order.
const INSERT_COLUMNS: [Column; 12] = [
    Column::EventId,
    Column::Topic,
    Column::PartitionKey,
    Column::EventType,
    Column::SchemaVersion,
    Column::Payload,
    Column::Headers,
    Column::Status,
    Column::Attempts,
    Column::AvailableAt,
    Column::CreatedAt,
    Column::UpdatedAt,
];

/// A record's values for [`INSERT_COLUMNS`].
fn row_values(
    record: &NewRecord,
    available: &dyn Fn(&NewRecord) -> SimpleExpr,
) -> Result<[SimpleExpr; 12], Error> {
    let headers = serde_json::to_string(&record.headers)
        .map_err(|e| Error::InvalidArgument(format!("headers do not serialize: {e}")))?;
    Ok([
        record.event_id.into(),
        record.topic.clone().into(),
        record.key.clone().into(),
        record.event_type.clone().into(),
        // Checked to fit before.
        (record.schema_version as i32).into(),
        record.payload.clone().into(),
        headers.into(),
        Status::Pending.as_str().into(),
        0_i32.into(),
        available(record),
        record.created_at.into(),
        Utc::now().into(),
    ])
}

/// Inserts `records`, each available when `available` says.
pub(crate) fn insert(
    n: &Names,
    records: &[NewRecord],
    available: &dyn Fn(&NewRecord) -> SimpleExpr,
) -> Result<InsertStatement, Error> {
    let mut insert = Query::insert();
    insert
        .into_table(n.tables.outbox_ref())
        .columns(INSERT_COLUMNS);
    for record in records {
        insert
            .values(row_values(record, available)?)
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    }
    Ok(insert)
}

/// The keys' upsert and the records' insert in one statement, so an event
/// costs the writer one round trip (PostgreSQL):
///
/// ```sql
/// WITH locked AS (INSERT INTO outbox_keys ... ON CONFLICT ... DO UPDATE ... RETURNING partition_key)
/// INSERT INTO outbox (...) SELECT ... FROM (SELECT COUNT(*) FROM locked) AS l UNION ALL ...
/// ```
///
/// The count reads every row of `locked` before the first record row is
/// formed, so the keys are locked (waiting for a writer of the same key to
/// commit) before the records' ids are drawn from the sequence: ids follow
/// commit order per key, as with the two statements.
pub(crate) fn locked_insert(
    sql: &dyn Dialect,
    heads: &[(&str, &NewRecord)],
    records: &[NewRecord],
    available: &dyn Fn(&NewRecord) -> SimpleExpr,
) -> Result<WithQuery, Error> {
    let mut upsert = sql.upsert_keys(
        heads
            .iter()
            .map(|(key, record)| ((*key).to_owned(), available(record)))
            .collect(),
    );
    upsert.returning_col(Alias::new("partition_key"));
    let locked = CommonTableExpression::new()
        .query(upsert)
        .table_name(Alias::new("locked"))
        .to_owned();
    let count = Query::select()
        .expr(Expr::cust("COUNT(*)"))
        .from(Alias::new("locked"))
        .to_owned();
    let mut rows: Option<SelectStatement> = None;
    for record in records {
        let mut row = Query::select();
        row.exprs(row_values(record, available)?)
            .from_subquery(count.clone(), Alias::new("l"));
        match &mut rows {
            None => rows = Some(row),
            Some(first) => {
                first.union(UnionType::All, row);
            }
        }
    }
    let rows = rows.expect("at least one record");
    let mut insert = Query::insert();
    insert
        .into_table(sql.names().tables.outbox_ref())
        .columns(INSERT_COLUMNS)
        .select_from(rows)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    Ok(insert.with(WithClause::new().cte(locked).to_owned()))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use outbox_engine::ScheduledRetry;
    use sea_orm::DbBackend;

    use super::*;

    #[test]
    fn a_settlement_is_one_statement_per_outcome_guarded_by_the_lease() {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let settled = Settlement {
            published: vec![1, 2, 3],
            retries: vec![
                ScheduledRetry {
                    id: 4,
                    error: "timeout".into(),
                    delay: std::time::Duration::from_secs(1),
                },
                ScheduledRetry {
                    id: 5,
                    error: "timeout".into(),
                    delay: std::time::Duration::from_secs(2),
                },
            ],
            ..Settlement::default()
        };
        let tables = outbox_migration::Tables::default();
        let pg = super::super::dialect(DbBackend::Postgres, &tables);
        let statements = settlement(pg.names(), "relay-1#1", now, &settled, true, |_| false);
        assert_eq!(statements.len(), 2);
        let sql = |backend: DbBackend, statement: &Change| match statement {
            Change::Update(update) => backend.build(update).sql,
            Change::Delete(delete) => backend.build(delete).sql,
        };
        assert_eq!(
            sql(DbBackend::Postgres, &statements[0]),
            r#"UPDATE "outbox" SET "locked_by" = $1, "locked_until" = $2, "updated_at" = $3, "status" = $4, "published_at" = $5 WHERE "status" = $6 AND "locked_by" = $7 AND "id" IN ($8, $9, $10)"#
        );
        assert_eq!(
            sql(DbBackend::MySql, &statements[1]),
            "UPDATE `outbox` SET `locked_by` = ?, `locked_until` = ?, `updated_at` = ?, \
             `attempts` = `attempts` + ?, \
             `last_error` = (CASE WHEN (`id` = ?) THEN ? WHEN (`id` = ?) THEN ? END), \
             `available_at` = (CASE WHEN (`id` = ?) THEN ? WHEN (`id` = ?) THEN ? END) \
             WHERE `status` = ? AND `locked_by` = ? AND `id` IN (?, ?)"
        );
        // Without a history, the published records are deleted, under the
        // same guard.
        let statements = settlement(pg.names(), "relay-1#1", now, &settled, false, |_| false);
        assert_eq!(
            sql(DbBackend::Postgres, &statements[0]),
            r#"DELETE FROM "outbox" WHERE "status" = $1 AND "locked_by" = $2 AND "id" IN ($3, $4, $5)"#
        );
        assert!(matches!(statements[1], Change::Update(_)));
        let named = outbox_migration::Tables::prefixed("billing_")
            .unwrap()
            .schema("accounts")
            .unwrap();
        let pg = super::super::dialect(DbBackend::Postgres, &named);
        let statements = settlement(pg.names(), "relay-1#1", now, &settled, false, |_| false);
        assert!(
            sql(DbBackend::Postgres, &statements[0])
                .starts_with(r#"DELETE FROM "accounts"."billing_outbox" WHERE"#),
            "{}",
            sql(DbBackend::Postgres, &statements[0])
        );
    }
}
