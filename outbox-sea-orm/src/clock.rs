//! The database's clock: leases, availability and backoff follow it, not
//! the clock of the host a relay or writer runs on.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::sea_query::{Expr, SimpleExpr};
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

/// The database server's time now, plus `offset`. SQLite runs in this
/// process, so its clock is this host's.
pub(crate) async fn now(
    db: &impl ConnectionTrait,
    offset: TimeDelta,
) -> Result<DateTime<Utc>, DbErr> {
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT now() AS now",
        DbBackend::MySql => "SELECT UTC_TIMESTAMP(6) AS now",
        _ => return Ok(Utc::now() + offset),
    };
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the database returned no time".to_owned()))?;
    Ok(row.try_get::<DateTime<Utc>>("", "now")? + offset)
}

/// An expression for the database's time `after` from now, as the value of
/// a column written by the statement (on SQLite, this host's time).
pub(crate) fn after(backend: DbBackend, after: TimeDelta) -> SimpleExpr {
    let micros = after.num_microseconds().unwrap_or(i64::MAX);
    match backend {
        DbBackend::Postgres if micros == 0 => Expr::cust("now()"),
        DbBackend::Postgres => Expr::cust(format!("now() + interval '{micros} microseconds'")),
        DbBackend::MySql if micros == 0 => Expr::cust("UTC_TIMESTAMP(6)"),
        DbBackend::MySql => Expr::cust(format!(
            "TIMESTAMPADD(MICROSECOND, {micros}, UTC_TIMESTAMP(6))"
        )),
        _ => (Utc::now() + after).into(),
    }
}

/// `at + delay`, at most the last second of year 9999: MySQL's `datetime`
/// ends there, and SQLite compares times as text, where a year past 9999
/// sorts before ours.
pub(crate) fn later(at: DateTime<Utc>, delay: std::time::Duration) -> DateTime<Utc> {
    let end = DateTime::<Utc>::from_naive_utc_and_offset(
        chrono::NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|day| day.and_hms_opt(23, 59, 59))
            .expect("a valid date"),
        Utc,
    );
    TimeDelta::from_std(delay)
        .ok()
        .and_then(|delay| at.checked_add_signed(delay))
        .map_or(end, |t| t.min(end))
}
