//! The [`Relay`]: claims committed records, publishes them, marks them.

mod builder;
mod report;

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tracing::{Instrument, field};

pub use builder::RelayBuilder;
pub use report::{RelayStatus, RunReport};

use crate::retry::{Backoff, RetryPolicy};
use crate::sink::error_chain;
use crate::store::{ClaimRequest, DeadLetter, Retry};
use crate::{Error, OutboxRecord, OutboxStore, Outcome, Sink};

/// Moves committed records from an [`OutboxStore`] to a [`Sink`].
///
/// Each batch: claim up to `batch_size` records under a lease, publish them,
/// then mark the delivered ones published, schedule retriable failures for
/// another attempt after a backoff (or move them to dead letters once the
/// [`RetryPolicy`] gives up), move permanent failures to dead letters, and
/// release records held back behind a failed record of their key. Any
/// number of relays can share one store.
pub struct Relay<St, Si> {
    store: St,
    sink: Si,
    relay_id: String,
    batch_size: usize,
    poll_interval: Duration,
    lease: Duration,
    retry_policy: Box<dyn RetryPolicy>,
    backoff: Box<dyn Backoff>,
    status: Mutex<RelayStatus>,
}

/// What to do with each record of a published batch.
#[derive(Debug, Default)]
struct Settlement {
    published: Vec<i64>,
    retries: Vec<Retry>,
    dead: Vec<DeadLetter>,
    released: Vec<i64>,
}

impl<St: OutboxStore, Si: Sink> Relay<St, Si> {
    /// Starts configuring a relay; see [`RelayBuilder`] for the settings
    /// and their defaults.
    pub fn builder(store: St, sink: Si) -> RelayBuilder<St, Si> {
        RelayBuilder::new(store, sink)
    }

    /// The id this relay writes to the records it leases.
    pub fn relay_id(&self) -> &str {
        &self.relay_id
    }

    /// The store.
    pub fn store(&self) -> &St {
        &self.store
    }

    /// The sink.
    pub fn sink(&self) -> &Si {
        &self.sink
    }

    /// What the relay has done so far.
    pub fn status(&self) -> RelayStatus {
        self.lock_status().clone()
    }

    /// Claims, publishes and settles one batch.
    ///
    /// Returns an empty report when nothing is claimable. A store error is
    /// returned as is; records claimed before it stay leased until the
    /// lease runs out, then another attempt publishes them again (delivery
    /// is at least once).
    pub async fn run_once(&self) -> Result<RunReport, Error> {
        let started = std::time::Instant::now();
        let result = self.batch().await;
        record_metrics(&result, started.elapsed());
        let mut status = self.lock_status();
        status.last_run_at = Some(Utc::now());
        match &result {
            Ok(report) => {
                status.totals += *report;
                status.last_error = None;
            }
            Err(error) => status.last_error = Some(error_chain(error)),
        }
        result
    }

    /// Runs batches until `shutdown` resolves.
    ///
    /// While batches come back non-empty the next one starts at once;
    /// otherwise the relay sleeps `poll_interval`. A retriable store error
    /// is logged and retried after `poll_interval`; any other error ends
    /// the loop and is returned. On shutdown, the batch in progress is
    /// finished (published and marked) and no new one is claimed, so the
    /// relay holds no lease when this returns.
    pub async fn run(&self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let mut shutdown = std::pin::pin!(shutdown);
        self.lock_status().running = true;
        let result = loop {
            let pause = match self.run_once().await {
                Ok(report) if report.claimed > 0 => Duration::ZERO,
                Ok(_) => self.poll_interval,
                Err(error) if error.is_retriable() => {
                    tracing::warn!(
                        relay = %self.relay_id,
                        error = %error_chain(&error),
                        "outbox relay batch failed; retrying after the poll interval"
                    );
                    self.poll_interval
                }
                Err(error) => break Err(error),
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break Ok(()),
                () = tokio::time::sleep(pause) => {}
            }
        };
        self.lock_status().running = false;
        result
    }

    async fn batch(&self) -> Result<RunReport, Error> {
        let request = ClaimRequest {
            owner: self.relay_id.clone(),
            limit: self.batch_size,
            lease: self.lease,
            now: Utc::now(),
        };
        let span = tracing::debug_span!(
            "outbox.claim",
            relay = %self.relay_id,
            limit = self.batch_size,
            claimed = field::Empty
        );
        let records = self.store.claim(&request).instrument(span.clone()).await?;
        span.record("claimed", records.len());
        if records.is_empty() {
            return Ok(RunReport::default());
        }

        let span = tracing::debug_span!(
            "outbox.publish",
            relay = %self.relay_id,
            records = records.len(),
            delivered = field::Empty
        );
        let outcomes = self.sink.publish(&records).instrument(span.clone()).await;
        span.record(
            "delivered",
            outcomes.iter().filter(|o| o.is_delivered()).count(),
        );
        if outcomes.len() != records.len() {
            let ids: Vec<i64> = records.iter().map(|r| r.id).collect();
            self.store.release(&self.relay_id, &ids).await?;
            return Err(Error::Config(format!(
                "the sink returned {} outcomes for {} records; a Sink must return one \
                 outcome per record (the batch was released)",
                outcomes.len(),
                records.len()
            )));
        }

        let settlement = self.settle(&records, outcomes);

        let report = RunReport {
            claimed: records.len(),
            published: settlement.published.len(),
            retried: settlement.retries.len(),
            dead: settlement.dead.len(),
            released: settlement.released.len(),
        };
        let span = tracing::debug_span!(
            "outbox.mark",
            relay = %self.relay_id,
            published = report.published,
            retried = report.retried,
            dead = report.dead,
            released = report.released
        );
        self.apply(settlement).instrument(span).await?;
        Ok(report)
    }

    fn settle(&self, records: &[OutboxRecord], outcomes: Vec<Outcome>) -> Settlement {
        let now = Utc::now();
        let mut settlement = Settlement::default();
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for (record, outcome) in records.iter().zip(outcomes) {
            let held_back = record
                .key
                .as_deref()
                .is_some_and(|key| failed_keys.contains(key));
            let (error, permanent) = match outcome {
                Outcome::Delivered => {
                    if held_back {
                        tracing::warn!(
                            relay = %self.relay_id,
                            id = record.id,
                            key = record.key.as_deref(),
                            "the sink delivered a record after an earlier record of its key \
                             failed; per-key order is broken in the destination"
                        );
                    }
                    let lag = (now - record.created_at).to_std().unwrap_or_default();
                    metrics::histogram!("outbox_publish_lag_seconds").record(lag.as_secs_f64());
                    settlement.published.push(record.id);
                    continue;
                }
                Outcome::Retriable(error) => (error, false),
                Outcome::Permanent(error) => (error, true),
            };
            if held_back {
                // Behind a failed record of its key: not an attempt of its own.
                settlement.released.push(record.id);
                continue;
            }
            if let Some(key) = record.key.as_deref() {
                failed_keys.insert(key);
            }
            let attempts = record.attempts.saturating_add(1);
            let message = error_chain(&*error);
            if permanent {
                settlement.dead.push(DeadLetter {
                    id: record.id,
                    error: message,
                });
            } else if self.retry_policy.should_retry(attempts, &*error) {
                let delay = chrono::Duration::from_std(self.backoff.delay(attempts))
                    .unwrap_or(chrono::Duration::MAX);
                settlement.retries.push(Retry {
                    id: record.id,
                    error: message,
                    retry_at: now + delay,
                });
            } else {
                settlement.dead.push(DeadLetter {
                    id: record.id,
                    error: format!("gave up after {attempts} attempts: {message}"),
                });
            }
        }
        settlement
    }

    async fn apply(&self, settlement: Settlement) -> Result<(), Error> {
        let owner = self.relay_id.as_str();
        let mut expected = 0;
        let mut changed = 0;
        if !settlement.published.is_empty() {
            expected += settlement.published.len();
            changed += self
                .store
                .mark_published(owner, &settlement.published)
                .await?;
        }
        if !settlement.retries.is_empty() {
            expected += settlement.retries.len();
            changed += self
                .store
                .schedule_retry(owner, &settlement.retries)
                .await?;
        }
        if !settlement.dead.is_empty() {
            expected += settlement.dead.len();
            changed += self.store.mark_dead(owner, &settlement.dead).await?;
        }
        if !settlement.released.is_empty() {
            expected += settlement.released.len();
            changed += self.store.release(owner, &settlement.released).await?;
        }
        if changed < expected as u64 {
            tracing::warn!(
                relay = %self.relay_id,
                expected,
                changed,
                "some leases ran out before the batch was settled; another relay may \
                 publish those records again (lengthen the lease)"
            );
        }
        Ok(())
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, RelayStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Reports a batch through the `metrics` facade (a no-op unless the
/// application installs a recorder).
fn record_metrics(result: &Result<RunReport, Error>, elapsed: Duration) {
    match result {
        Ok(report) => {
            metrics::counter!("outbox_claimed_total").increment(report.claimed as u64);
            metrics::counter!("outbox_published_total").increment(report.published as u64);
            metrics::counter!("outbox_retried_total").increment(report.retried as u64);
            metrics::counter!("outbox_dead_total").increment(report.dead as u64);
            metrics::counter!("outbox_released_total").increment(report.released as u64);
            if report.claimed > 0 {
                metrics::histogram!("outbox_batch_seconds").record(elapsed.as_secs_f64());
            }
        }
        Err(_) => metrics::counter!("outbox_batch_errors_total").increment(1),
    }
}

impl<St, Si> fmt::Debug for Relay<St, Si> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("relay_id", &self.relay_id)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .field("retry_policy", &self.retry_policy)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}
