//! Delivering a claimed batch: the sink's publish beside the settlements
//! of the records whose outcome is known, the lease renewed while records
//! are left.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tracing::{Instrument, field};

use super::metrics::{LEASE_RENEWALS_TOTAL, SETTLE_ERRORS_TOTAL};
use super::tracker::Tracker;
use super::{Relay, RunReport};
use crate::sink::error_chain;
use crate::store::{DeadLetter, Settled, Settlement};
use crate::{Error, OutboxRecord, OutboxStore, Outcome, Sink, StoreError};

/// How often, at most, a batch in flight settles the records whose outcome
/// is known: delivered records are marked published this soon after their
/// acknowledgement, whatever the slowest record of the batch does.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// The longest pause between attempts at a settlement that keeps failing
/// (the pause doubles from [`SETTLE_EVERY`]).
const MAX_SETTLE_PAUSE: Duration = Duration::from_secs(5);

impl<St: OutboxStore, Si: Sink> Relay<St, Si> {
    /// Publishes a claimed batch and settles each record as its outcome
    /// becomes known.
    ///
    /// The sink's publish and the settlements run side by side, so the
    /// sink keeps working (its timers, its purges) while a settlement
    /// waits on the database. A settlement that fails is carried to the
    /// next one and tried again, with a growing pause, and the batch's
    /// lease is renewed every third of a lease while records are left, so
    /// no outcome is lost to a failed settlement or to a slow sink. Only
    /// when the lease has run out without a successful renewal (the store
    /// unreachable for a whole lease) does the batch give up what it could
    /// not settle: another claim then publishes those records again.
    ///
    /// A dead letter the store defers (its key held by a writer) is settled
    /// again until it can be, when `patient`; otherwise, and on shutdown,
    /// it is released unattempted once the rest is settled.
    pub(super) async fn deliver(&self, batch: Claimed, patient: bool) -> Result<RunReport, Error> {
        let Claimed {
            owner,
            records,
            leased_at,
        } = batch;
        let mut in_flight = InFlight {
            relay: self,
            left: records.len(),
        };
        let span = tracing::debug_span!(
            "outbox.publish",
            relay = %self.relay_id,
            records = records.len(),
            delivered = field::Empty
        );
        let tracker = Mutex::new(Tracker::new(&records));
        let report = |index: usize, outcome: Outcome| {
            let mut tracker = tracker.lock().unwrap_or_else(PoisonError::into_inner);
            if !tracker.report(index, outcome) {
                tracing::warn!(
                    relay = %self.relay_id,
                    index,
                    "the sink reported an outcome twice, or for no record of the batch; \
                     ignored (a Sink reports exactly one outcome per record)"
                );
            }
        };
        let published = AtomicBool::new(false);
        let done = tokio::sync::Notify::new();
        let publish = async {
            self.sink
                .publish_each(&records, &report)
                .instrument(span.clone())
                .await;
            published.store(true, Ordering::Release);
            done.notify_one();
        };
        let batch = Batch {
            owner: &owner,
            records: &records,
            tracker: &tracker,
            published: &published,
            done: &done,
        };
        let settling = self.settle_batch(&batch, leased_at, patient, &mut in_flight);
        // Side by side, each polled only when woken (as `join!` would not:
        // it polls both on every delivery report), so a settlement waiting
        // on the database costs nothing per report, and the sink nothing
        // per settlement.
        let mut parts: FuturesUnordered<Pin<Box<dyn Future<Output = Part> + Send + '_>>> =
            FuturesUnordered::new();
        parts.push(Box::pin(async {
            publish.await;
            Part::Published
        }));
        parts.push(Box::pin(async { Part::Settled(settling.await) }));
        let mut result = None;
        while let Some(part) = parts.next().await {
            if let Part::Settled(settled) = part {
                result = Some(settled);
            }
        }
        let result = result.expect("the settling part ends the batch");
        if let Ok(totals) = &result {
            span.record("delivered", totals.published);
        }
        result
    }

    /// Settles a batch's records as their outcomes come in, until every
    /// one is settled; see [`deliver`](Self::deliver).
    async fn settle_batch(
        &self,
        batch: &Batch<'_>,
        mut leased_at: Instant,
        patient: bool,
        in_flight: &mut InFlight<'_, St, Si>,
    ) -> Result<RunReport, Error> {
        let mut totals = RunReport {
            claimed: batch.records.len(),
            ..RunReport::default()
        };
        // Outcomes known but not applied: a settlement that failed.
        let mut carried = Settlement::default();
        // Dead letters the store deferred: their key is held by a writer.
        let mut deferred: Vec<DeadLetter> = Vec::new();
        let mut failures: u32 = 0;
        let mut last_error: Option<Error> = None;
        loop {
            let pause = if failures == 0 {
                SETTLE_EVERY
            } else {
                (SETTLE_EVERY * 2u32.pow(failures.min(10))).min(MAX_SETTLE_PAUSE)
            };
            if batch.published.load(Ordering::Acquire) {
                if !carried.is_empty() || !deferred.is_empty() {
                    tokio::time::sleep(pause).await;
                }
            } else {
                tokio::select! {
                    () = batch.done.notified() => {}
                    () = tokio::time::sleep(pause) => {}
                }
            }
            let finished = batch.published.load(Ordering::Acquire);
            let ready = {
                let mut tracker = batch.tracker.lock().unwrap_or_else(PoisonError::into_inner);
                if finished {
                    let missing = tracker.report_missing();
                    if missing > 0 {
                        tracing::error!(
                            relay = %self.relay_id,
                            missing,
                            "the sink returned without an outcome for every record; those \
                             records count as retriable failures (a Sink reports exactly one \
                             outcome per record)"
                        );
                    }
                }
                tracker.take_settled()
            };
            merge(
                &mut carried,
                self.policy
                    .settlement(&self.relay_id, batch.records, ready, self.clock.now()),
            );
            if finished && (!patient || self.stopping.load(Ordering::Acquire)) {
                // Given back unattempted: the next claim tries them again.
                carried
                    .released
                    .extend(deferred.drain(..).map(|dead| dead.id));
            } else {
                carried.dead.append(&mut deferred);
            }
            if !carried.is_empty() {
                let attempt = std::mem::take(&mut carried);
                match self.apply(batch.owner, &attempt).await {
                    Ok(settled) => {
                        failures = 0;
                        let (applied, later) = split_deferred(attempt, &settled.deferred);
                        totals += report_of(&applied);
                        in_flight.settled(applied.len());
                        deferred = later;
                    }
                    Err(error) => {
                        failures = failures.saturating_add(1);
                        self.settle_failed(&error, failures);
                        carried = attempt;
                        last_error = Some(error);
                    }
                }
            }
            let unsettled: Vec<i64> = {
                let tracker = batch.tracker.lock().unwrap_or_else(PoisonError::into_inner);
                tracker
                    .unsettled()
                    .map(|index| batch.records[index].id)
                    .chain(ids_of(&carried))
                    .chain(deferred.iter().map(|dead| dead.id))
                    .collect()
            };
            if finished && unsettled.is_empty() {
                return Ok(totals);
            }
            let now = Instant::now();
            if now >= leased_at + self.lease / 3 && !unsettled.is_empty() {
                match self.renew(batch.owner, &unsettled).await {
                    Ok(()) => leased_at = now,
                    Err(error) => last_error = Some(error),
                }
            }
            if finished && Instant::now() >= leased_at + self.lease {
                tracing::error!(
                    relay = %self.relay_id,
                    records = unsettled.len(),
                    error = last_error.as_ref().map(|e| error_chain(e)).unwrap_or_default(),
                    "gave up settling records whose lease ran out while the store failed; \
                     another claim publishes them again"
                );
                return Err(last_error.unwrap_or_else(|| {
                    Error::Store(StoreError::retriable(
                        "the lease ran out before the batch was settled",
                    ))
                }));
            }
        }
    }

    /// Extends the lease of a batch's unsettled records.
    async fn renew(&self, owner: &str, ids: &[i64]) -> Result<(), Error> {
        let span = tracing::debug_span!(
            "outbox.renew",
            relay = %self.relay_id,
            records = ids.len()
        );
        let renewed = self
            .store
            .renew(owner, ids, self.lease)
            .instrument(span)
            .await
            .inspect_err(|error| {
                tracing::warn!(
                    relay = %self.relay_id,
                    error = %error_chain(error),
                    "renewing a batch's lease failed; trying again shortly"
                );
            })?;
        metrics::counter!(LEASE_RENEWALS_TOTAL).increment(1);
        if renewed < ids.len() as u64 {
            tracing::warn!(
                relay = %self.relay_id,
                expected = ids.len(),
                renewed,
                "some leases ran out before they were renewed; another relay may publish \
                 those records again (lengthen the lease)"
            );
        }
        Ok(())
    }

    /// Logs and counts a failed settlement (tried again after a pause).
    fn settle_failed(&self, error: &Error, failures: u32) {
        metrics::counter!(SETTLE_ERRORS_TOTAL).increment(1);
        tracing::warn!(
            relay = %self.relay_id,
            error = %error_chain(error),
            failures,
            "settling part of a batch failed; trying again shortly"
        );
        let mut status = self.lock_status();
        status.last_error = Some(error_chain(error));
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
    }

    async fn apply(&self, owner: &str, settlement: &Settlement) -> Result<Settled, Error> {
        let span = tracing::debug_span!(
            "outbox.mark",
            relay = %self.relay_id,
            published = settlement.published.len(),
            retried = settlement.retries.len(),
            dead = settlement.dead.len(),
            released = settlement.released.len()
        );
        let expected = settlement.len();
        let settled = self
            .store
            .settle(owner, settlement)
            .instrument(span)
            .await?;
        let accounted = settled.changed + settled.deferred.len() as u64;
        if accounted < expected as u64 {
            tracing::warn!(
                relay = %self.relay_id,
                expected,
                changed = settled.changed,
                "some leases ran out before the batch was settled; another relay may \
                 publish those records again (lengthen the lease)"
            );
        }
        if !settled.deferred.is_empty() {
            tracing::info!(
                relay = %self.relay_id,
                deferred = settled.deferred.len(),
                "dead letters wait for their key, held by a business transaction; \
                 settled again shortly"
            );
        }
        Ok(settled)
    }
}

/// A claimed batch and the token it was claimed under.
pub(super) struct Claimed {
    pub(super) owner: String,
    pub(super) records: Vec<OutboxRecord>,
    /// When the claim started: its lease lasts at least until then plus
    /// the lease (the store counts from a later moment).
    pub(super) leased_at: Instant,
}

/// A part of a batch's delivery that ended.
enum Part {
    /// The sink's publish returned.
    Published,
    /// Every record is settled, or the batch gave up.
    Settled(Result<RunReport, Error>),
}

/// A batch being delivered, as its settlements see it.
struct Batch<'a> {
    owner: &'a str,
    records: &'a [OutboxRecord],
    tracker: &'a Mutex<Tracker>,
    /// Set once the sink's publish returned.
    published: &'a AtomicBool,
    /// Woken when it returns.
    done: &'a tokio::sync::Notify,
}

/// A batch's records still counted in flight; whatever is left when it
/// drops (settled, given up, or the batch dropped) is let go then.
struct InFlight<'r, St, Si> {
    relay: &'r Relay<St, Si>,
    left: usize,
}

impl<St, Si> InFlight<'_, St, Si> {
    fn settled(&mut self, count: usize) {
        let count = count.min(self.left);
        if count > 0 {
            self.left -= count;
            self.relay.in_flight.fetch_sub(count, Ordering::AcqRel);
            self.relay.room.notify_one();
        }
    }
}

impl<St, Si> Drop for InFlight<'_, St, Si> {
    fn drop(&mut self) {
        let left = self.left;
        self.settled(left);
    }
}

/// The ids a settlement names.
fn ids_of(settlement: &Settlement) -> impl Iterator<Item = i64> + '_ {
    settlement
        .published
        .iter()
        .copied()
        .chain(settlement.retries.iter().map(|r| r.id))
        .chain(settlement.dead.iter().map(|d| d.id))
        .chain(settlement.released.iter().copied())
}

/// Splits what a store settled from the dead letters it deferred.
fn split_deferred(mut settlement: Settlement, deferred: &[i64]) -> (Settlement, Vec<DeadLetter>) {
    if deferred.is_empty() {
        return (settlement, Vec::new());
    }
    let (later, now): (Vec<DeadLetter>, Vec<DeadLetter>) = settlement
        .dead
        .into_iter()
        .partition(|dead| deferred.contains(&dead.id));
    settlement.dead = now;
    (settlement, later)
}

fn report_of(settlement: &Settlement) -> RunReport {
    RunReport {
        claimed: 0,
        published: settlement.published.len(),
        retried: settlement.retries.len(),
        dead: settlement.dead.len(),
        released: settlement.released.len(),
    }
}

fn merge(into: &mut Settlement, more: Settlement) {
    into.published.extend(more.published);
    into.retries.extend(more.retries);
    into.dead.extend(more.dead);
    into.released.extend(more.released);
}
