//! The metrics the relay reports through the `metrics` facade (a no-op
//! unless the application installs a recorder): every name, what each
//! means ([`describe_metrics`]), and the figures of a batch.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

use super::{RelayStatus, RunReport};
use crate::Error;

/// Records claimed by the relay.
pub(crate) const CLAIMED_TOTAL: &str = "outbox_claimed_total";
/// Records delivered and marked published.
pub(crate) const PUBLISHED_TOTAL: &str = "outbox_published_total";
/// Failed records scheduled for another attempt.
pub(crate) const RETRIED_TOTAL: &str = "outbox_retried_total";
/// Records moved to dead letters.
pub(crate) const DEAD_TOTAL: &str = "outbox_dead_total";
/// Records released unattempted behind a failed record of their key.
pub(crate) const RELEASED_TOTAL: &str = "outbox_released_total";
/// Batches that failed.
pub(crate) const BATCH_ERRORS_TOTAL: &str = "outbox_batch_errors_total";
/// Published records deleted by retention.
pub(crate) const PURGED_TOTAL: &str = "outbox_purged_total";
/// Settlements that failed and were tried again.
pub(crate) const SETTLE_ERRORS_TOTAL: &str = "outbox_settle_errors_total";
/// Leases of slow batches renewed.
pub(crate) const LEASE_RENEWALS_TOTAL: &str = "outbox_lease_renewals_total";
/// Time from claim to the last settlement of a non-empty batch.
pub(crate) const BATCH_SECONDS: &str = "outbox_batch_seconds";
/// Time from enqueue to delivery, per record.
pub(crate) const PUBLISH_LAG_SECONDS: &str = "outbox_publish_lag_seconds";
/// Pending records, by topic.
pub(crate) const PENDING_RECORDS: &str = "outbox_pending_records";
/// Dead records, by topic.
pub(crate) const DEAD_RECORDS: &str = "outbox_dead_records";
/// Age of the oldest pending record, by topic.
pub(crate) const OLDEST_PENDING_AGE_SECONDS: &str = "outbox_oldest_pending_age_seconds";
/// Pending records waiting behind a dead record of their key.
pub(crate) const HELD_RECORDS: &str = "outbox_held_records";
/// Pending records under a relay's lease.
pub(crate) const LEASED_RECORDS: &str = "outbox_leased_records";
/// Batches this relay failed in a row.
pub(crate) const RELAY_CONSECUTIVE_FAILURES: &str = "outbox_relay_consecutive_failures";
/// Unix time of this relay's last successful batch or empty poll.
pub(crate) const RELAY_LAST_SUCCESS_TIMESTAMP_SECONDS: &str =
    "outbox_relay_last_success_timestamp_seconds";

/// Describes every metric the relay reports (type, unit, meaning) to the
/// installed `metrics` recorder, so an exporter prints them with help
/// text. Call it once after installing the recorder; without it the
/// metrics are reported all the same.
pub fn describe_metrics() {
    describe_counter!(CLAIMED_TOTAL, Unit::Count, "Records claimed by the relay.");
    describe_counter!(
        PUBLISHED_TOTAL,
        Unit::Count,
        "Records delivered and marked published."
    );
    describe_counter!(
        RETRIED_TOTAL,
        Unit::Count,
        "Failed records scheduled for another attempt."
    );
    describe_counter!(DEAD_TOTAL, Unit::Count, "Records moved to dead letters.");
    describe_counter!(
        RELEASED_TOTAL,
        Unit::Count,
        "Records released unattempted behind a failed record of their key."
    );
    describe_counter!(
        BATCH_ERRORS_TOTAL,
        Unit::Count,
        "Batches that failed (the store or the sink down)."
    );
    describe_counter!(
        PURGED_TOTAL,
        Unit::Count,
        "Published records deleted by retention."
    );
    describe_counter!(
        SETTLE_ERRORS_TOTAL,
        Unit::Count,
        "Settlements (marking records) that failed and were tried again."
    );
    describe_counter!(
        LEASE_RENEWALS_TOTAL,
        Unit::Count,
        "Leases of slow batches renewed."
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "Time from claim to the last settlement of a non-empty batch."
    );
    describe_histogram!(
        PUBLISH_LAG_SECONDS,
        Unit::Seconds,
        "Time from enqueue to delivery, per record."
    );
    describe_gauge!(PENDING_RECORDS, Unit::Count, "Pending records, by topic.");
    describe_gauge!(DEAD_RECORDS, Unit::Count, "Dead records, by topic.");
    describe_gauge!(
        OLDEST_PENDING_AGE_SECONDS,
        Unit::Seconds,
        "Age of the oldest pending record, by topic."
    );
    describe_gauge!(
        HELD_RECORDS,
        Unit::Count,
        "Pending records waiting behind a dead record of their key."
    );
    describe_gauge!(
        LEASED_RECORDS,
        Unit::Count,
        "Pending records under a relay's lease."
    );
    describe_gauge!(
        RELAY_CONSECUTIVE_FAILURES,
        Unit::Count,
        "Batches this relay failed in a row (0 after a success)."
    );
    describe_gauge!(
        RELAY_LAST_SUCCESS_TIMESTAMP_SECONDS,
        Unit::Seconds,
        "Unix time of this relay's last successful batch or empty poll."
    );
}

/// Reports a batch's counts and duration.
pub(super) fn record_batch(result: &Result<RunReport, Error>, elapsed: Duration) {
    match result {
        Ok(report) => {
            metrics::counter!(CLAIMED_TOTAL).increment(report.claimed as u64);
            metrics::counter!(PUBLISHED_TOTAL).increment(report.published as u64);
            metrics::counter!(RETRIED_TOTAL).increment(report.retried as u64);
            metrics::counter!(DEAD_TOTAL).increment(report.dead as u64);
            metrics::counter!(RELEASED_TOTAL).increment(report.released as u64);
            if report.claimed > 0 {
                metrics::histogram!(BATCH_SECONDS).record(elapsed.as_secs_f64());
            }
        }
        Err(_) => metrics::counter!(BATCH_ERRORS_TOTAL).increment(1),
    }
}

/// Reports the relay's health as its status stands after a batch that
/// ended at `now`.
pub(super) fn record_status(status: &RelayStatus, succeeded: bool, now: DateTime<Utc>) {
    if succeeded {
        metrics::gauge!(RELAY_LAST_SUCCESS_TIMESTAMP_SECONDS)
            .set(now.timestamp_millis() as f64 / 1000.0);
    }
    metrics::gauge!(RELAY_CONSECUTIVE_FAILURES).set(f64::from(status.consecutive_failures));
}
