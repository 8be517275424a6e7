//! What each record's [`Outcome`] becomes in its batch's [`Settlement`]:
//! published, retried after a backoff, dead, or released unattempted.

use chrono::{DateTime, Utc};

use super::DeadKeyPolicy;
use super::metrics::PUBLISH_LAG_SECONDS;
use super::tracker::Ready;
use crate::retry::{Backoff, RetryPolicy};
use crate::sink::error_chain;
use crate::store::{DeadLetter, ScheduledRetry, Settlement};
use crate::{OutboxRecord, Outcome};

/// The relay's rules for failed records: whether a retriable failure is
/// retried ([`RetryPolicy`]), how long it waits first ([`Backoff`]), and
/// whether a dead record holds its key ([`DeadKeyPolicy`]).
pub(super) struct SettlementPolicy {
    pub(super) retry_policy: Box<dyn RetryPolicy>,
    pub(super) backoff: Box<dyn Backoff>,
    pub(super) dead_key_policy: DeadKeyPolicy,
}

impl SettlementPolicy {
    /// Whether a dead record holds its key.
    pub(super) fn dead_holds_key(&self) -> bool {
        self.dead_key_policy == DeadKeyPolicy::Hold
    }

    /// What to do with records of `records` whose outcome is known, at
    /// `now` on the relay's clock (for the publish lag).
    ///
    /// A delivered record is published. A failure behind a failed record
    /// of its key is no attempt of its own: it is released. Otherwise the
    /// attempt counts: a permanent failure is dead, a retriable one is
    /// retried after the backoff while the retry policy allows, then dead.
    pub(super) fn settlement(
        &self,
        relay_id: &str,
        records: &[OutboxRecord],
        ready: Vec<Ready>,
        now: DateTime<Utc>,
    ) -> Settlement {
        let mut settlement = Settlement::default();
        for Ready {
            index,
            outcome,
            behind,
        } in ready
        {
            let record = &records[index];
            let (error, permanent) = match outcome {
                Outcome::Delivered => {
                    if behind {
                        tracing::warn!(
                            relay = %relay_id,
                            id = record.id,
                            key = record.key.as_deref(),
                            "the sink delivered a record after an earlier record of its key \
                             failed; per-key order is broken in the destination"
                        );
                    }
                    let lag = (now - record.created_at).to_std().unwrap_or_default();
                    metrics::histogram!(PUBLISH_LAG_SECONDS).record(lag.as_secs_f64());
                    settlement.published.push(record.id);
                    continue;
                }
                Outcome::Retriable(error) => (error, false),
                Outcome::Permanent(error) => (error, true),
            };
            if behind {
                // Behind a failed record of its key: not an attempt of its own.
                settlement.released.push(record.id);
                continue;
            }
            let attempts = record.attempts.saturating_add(1);
            let message = error_chain(&*error);
            let holds_key = self.dead_holds_key();
            if permanent {
                settlement.dead.push(DeadLetter {
                    id: record.id,
                    error: message,
                    holds_key,
                });
            } else if self.retry_policy.should_retry(attempts, &*error) {
                settlement.retries.push(ScheduledRetry {
                    id: record.id,
                    error: message,
                    delay: self.backoff.delay(attempts),
                });
            } else {
                settlement.dead.push(DeadLetter {
                    id: record.id,
                    error: format!("gave up after {attempts} attempts: {message}"),
                    holds_key,
                });
            }
        }
        settlement
    }
}
