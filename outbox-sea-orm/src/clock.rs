//! The database's clock: leases, availability and backoff follow it, not
//! the clock of the host a relay or writer runs on.

use chrono::{DateTime, TimeDelta, Utc};
use sea_orm::{ConnectionTrait, DbErr};

use crate::sql::Dialect;

/// The database server's time now, plus `offset`. SQLite runs in this
/// process, so its clock is this host's.
pub(crate) async fn now(
    db: &impl ConnectionTrait,
    sql: &dyn Dialect,
    offset: TimeDelta,
) -> Result<DateTime<Utc>, DbErr> {
    let Some(statement) = sql.now() else {
        return Ok(Utc::now() + offset);
    };
    let row = db
        .query_one_raw(statement)
        .await?
        .ok_or_else(|| DbErr::RecordNotFound("the database returned no time".to_owned()))?;
    Ok(row.try_get::<DateTime<Utc>>("", "now")? + offset)
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
