//! The [`Relay`]: claims committed records, publishes them, marks them.

mod builder;
mod chores;
mod report;
mod tracker;
mod wakeup;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tracing::{Instrument, field};

pub use builder::{DeadKeyPolicy, RelayBuilder};
pub use report::{RelayStatus, RunReport};
pub use wakeup::Wakeup;

use self::chores::Chores;
use self::tracker::Tracker;
use crate::clock::Clock;
use crate::retry::{Backoff, ExponentialBackoff, RetryPolicy};
use crate::sink::error_chain;
use crate::store::{ClaimRequest, DeadLetter, Retry, Settled, Settlement};
use crate::{Error, OutboxRecord, OutboxStore, Outcome, Sink, StoreError};

/// How often, at most, a batch in flight settles the records whose outcome
/// is known: delivered records are marked published this soon after their
/// acknowledgement, whatever the slowest record of the batch does.
const SETTLE_EVERY: Duration = Duration::from_millis(100);

/// The longest pause between attempts at a settlement that keeps failing
/// (the pause doubles from [`SETTLE_EVERY`]).
const MAX_SETTLE_PAUSE: Duration = Duration::from_secs(5);

/// The first pause after an empty claim that followed work: the pause
/// doubles with each empty claim in a row, up to the poll interval, so a
/// relay that just drained its backlog picks up new records within
/// milliseconds, and an idle one polls at the configured interval.
const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause after consecutive failed batches (the poll interval
/// doubles from one failure to the next, with jitter, up to this).
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(30);

/// Moves committed records from an [`OutboxStore`] to a [`Sink`].
///
/// Each batch: claim up to `batch_size` records under a lease (with a token
/// of its own), publish them, and settle each record as soon as its outcome
/// is known: delivered records are marked published; the first failure of
/// a key is retried after a backoff or, when permanent (or past a limit set
/// with [`RelayBuilder::max_attempts`]), moved to dead letters, where by
/// default it holds its key ([`DeadKeyPolicy`]); the records held back
/// behind it are released. Any number of relays can share one store.
pub struct Relay<St, Si> {
    store: St,
    sink: Si,
    relay_id: String,
    batch_size: usize,
    max_in_flight: usize,
    poll_interval: Duration,
    lease: Duration,
    wakeup: Wakeup,
    retry_policy: Box<dyn RetryPolicy>,
    backoff: Box<dyn Backoff>,
    dead_key_policy: DeadKeyPolicy,
    clock: Box<dyn Clock>,
    chores: Chores,
    claims: AtomicU64,
    status: Mutex<RelayStatus>,
    /// Records claimed and not yet settled, over every batch in flight.
    in_flight: AtomicUsize,
    /// Woken when records in flight are settled, so a claim waiting for
    /// room starts.
    room: tokio::sync::Notify,
    /// Set while [`Relay::run`] shuts down: batches give back what they
    /// cannot settle rather than wait for it.
    stopping: AtomicBool,
}

impl<St: OutboxStore, Si: Sink> Relay<St, Si> {
    /// Starts configuring a relay; see [`RelayBuilder`] for the settings
    /// and their defaults.
    pub fn builder(store: St, sink: Si) -> RelayBuilder<St, Si> {
        RelayBuilder::new(store, sink)
    }

    /// The id this relay's claim tokens start with (`<id>#<n>` in
    /// `locked_by`).
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

    /// What the relay has done so far, and how its last batches went.
    pub fn status(&self) -> RelayStatus {
        self.lock_status().clone()
    }

    /// Claims, publishes and settles one batch.
    ///
    /// Returns an empty report when nothing is claimable. A store error is
    /// returned as is; records claimed and not settled before it stay
    /// leased until the lease runs out, then another attempt publishes them
    /// again (delivery is at least once).
    pub async fn run_once(&self) -> Result<RunReport, Error> {
        let started = Instant::now();
        let result = match self.claim(self.batch_size).await {
            Ok(batch) if batch.records.is_empty() => Ok(RunReport::default()),
            Ok(batch) => self.deliver(batch, false).await,
            Err(error) => Err(error),
        };
        self.finish(&result, started);
        result
    }

    /// A clone of the relay's [`Wakeup`]: call [`Wakeup::wake`] after
    /// committing outbox records in this process and [`run`](Self::run)
    /// claims them at once.
    pub fn wakeup(&self) -> Wakeup {
        self.wakeup.clone()
    }

    /// Records a batch's end in the metrics and the status.
    fn finish(&self, result: &Result<RunReport, Error>, started: Instant) {
        record_metrics(result, started.elapsed());
        let now = self.clock.now();
        let mut status = self.lock_status();
        status.last_run_at = Some(now);
        match result {
            Ok(report) => {
                status.totals += *report;
                status.last_error = None;
                status.last_success_at = Some(now);
                status.consecutive_failures = 0;
                metrics::gauge!("outbox_relay_last_success_timestamp_seconds")
                    .set(now.timestamp_millis() as f64 / 1000.0);
            }
            Err(error) => {
                status.last_error = Some(error_chain(error));
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            }
        }
        metrics::gauge!("outbox_relay_consecutive_failures")
            .set(f64::from(status.consecutive_failures));
    }

    /// Runs batches until `shutdown` resolves; returns only then.
    ///
    /// Up to [`max_in_flight`](RelayBuilder::max_in_flight) records are
    /// being published and settled at once, in as many batches as that
    /// takes: the next batch is claimed while earlier ones are published
    /// and settled, as soon as there is room for half a batch, and it asks
    /// for no more records than there is room for. Room is counted in
    /// records, so a slow record takes up its own room only: a batch whose
    /// other records are settled no longer holds theirs. A key whose
    /// records are leased is never claimed again before they all settle,
    /// so batches in flight never share a key. While claims find records
    /// the next one starts at once.
    /// After an empty claim the relay waits, 5 ms at first and twice as
    /// long after each empty claim in a row, up to `poll_interval`; a
    /// [`Wakeup`] ends the wait at once. No error stops it: a failed batch
    /// (the database or the sink down, a statement refused) is logged,
    /// counted in [`RelayStatus::consecutive_failures`], and the next claim
    /// waits a pause that doubles with each failure in a row, with jitter,
    /// from the poll interval up to 30 s. A settlement that fails is tried
    /// again (the lease renewed meanwhile) until it succeeds. On shutdown,
    /// the batches in progress are finished (published and settled) and no
    /// new one is claimed, so the relay holds no lease when this returns;
    /// a dead letter waiting for its key (held by a business transaction)
    /// is given back instead, unattempted.
    ///
    /// Beside the batches it purges published records and reports the
    /// backlog, when the builder set
    /// [`retain_published`](RelayBuilder::retain_published) and
    /// [`report_backlog`](RelayBuilder::report_backlog).
    pub async fn run(&self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let batches = async {
            self.run_batches(shutdown).await;
            let _ = stop.send(true);
        };
        let chores = self
            .chores
            .run(&self.relay_id, || self.clock.now(), stopped);
        tokio::join!(batches, chores);
    }

    async fn run_batches(&self, shutdown: impl Future<Output = ()>) {
        let mut shutdown = std::pin::pin!(shutdown);
        let error_backoff =
            ExponentialBackoff::new(self.poll_interval, MAX_ERROR_PAUSE.max(self.poll_interval))
                .expect("the poll interval is checked to be positive by the builder");
        self.lock_status().running = true;
        self.stopping.store(false, Ordering::Release);
        let mut stopping = false;
        // The claim in progress, if any; at most one at a time.
        let mut claiming: Option<ClaimFuture<'_>> = None;
        // The batches being published and settled.
        let mut delivering = FuturesUnordered::new();
        // When the next claim may start.
        let mut next_claim = Instant::now();
        let mut empty_claims: u32 = 0;
        // A claim starts once half a batch fits.
        let enough = self.batch_size.min(self.max_in_flight.div_ceil(2)).max(1);
        loop {
            let room = self
                .max_in_flight
                .saturating_sub(self.in_flight.load(Ordering::Acquire));
            let has_room = room >= enough;
            if !stopping && claiming.is_none() && has_room && Instant::now() >= next_claim {
                let limit = self.batch_size.min(room);
                claiming = Some(Box::pin(async move {
                    let started = Instant::now();
                    (self.claim(limit).await, started)
                }));
            }
            if stopping && claiming.is_none() && delivering.is_empty() {
                break;
            }
            let waiting = !stopping && claiming.is_none() && has_room;
            tokio::select! {
                biased;
                () = &mut shutdown, if !stopping => {
                    stopping = true;
                    self.stopping.store(true, Ordering::Release);
                }
                (claimed, started) = async { claiming.as_mut().expect("checked").await },
                    if claiming.is_some() =>
                {
                    claiming = None;
                    match claimed {
                        Ok(batch) if batch.records.is_empty() => {
                            self.finish(&Ok(RunReport::default()), started);
                            empty_claims = empty_claims.saturating_add(1);
                            next_claim = Instant::now() + self.idle_pause(empty_claims);
                        }
                        Ok(batch) => {
                            empty_claims = 0;
                            delivering
                                .push(async move { (self.deliver(batch, true).await, started) });
                        }
                        Err(error) => {
                            let result = Err(error);
                            self.finish(&result, started);
                            next_claim = Instant::now() + self.failed(&result, &error_backoff);
                        }
                    }
                }
                Some((result, started)) = delivering.next(), if !delivering.is_empty() => {
                    self.finish(&result, started);
                    if result.is_err() {
                        next_claim = Instant::now() + self.failed(&result, &error_backoff);
                    }
                }
                () = self.room.notified(), if !stopping && !has_room => {}
                () = tokio::time::sleep_until(next_claim), if waiting => {}
                () = self.wakeup.woken(), if waiting && empty_claims > 0 => {
                    empty_claims = 0;
                    next_claim = Instant::now();
                }
            }
        }
        self.lock_status().running = false;
    }

    /// How long to wait after `empty_claims` empty claims in a row.
    fn idle_pause(&self, empty_claims: u32) -> Duration {
        let doublings = empty_claims.saturating_sub(1).min(20);
        (FIRST_IDLE_PAUSE * 2u32.pow(doublings)).min(self.poll_interval)
    }

    /// Logs a failed batch; returns the pause before the next claim.
    fn failed(
        &self,
        result: &Result<RunReport, Error>,
        error_backoff: &ExponentialBackoff,
    ) -> Duration {
        let Err(error) = result else {
            return Duration::ZERO;
        };
        let failures = self.lock_status().consecutive_failures;
        let pause = error_backoff.delay(failures);
        tracing::warn!(
            relay = %self.relay_id,
            error = %error_chain(error),
            retriable = error.is_retriable(),
            consecutive_failures = failures,
            pause_ms = pause.as_millis() as u64,
            "outbox relay batch failed; trying again after a pause"
        );
        pause
    }

    /// Claims a batch (possibly empty) of at most `limit` records under a
    /// token of its own; counts its records in flight.
    async fn claim(&self, limit: usize) -> Result<Claimed, Error> {
        let token = format!(
            "{}#{}",
            self.relay_id,
            self.claims.fetch_add(1, Ordering::Relaxed) + 1
        );
        let request = ClaimRequest {
            owner: token,
            limit,
            lease: self.lease,
            dead_holds_key: self.dead_key_policy == DeadKeyPolicy::Hold,
        };
        let span = tracing::debug_span!(
            "outbox.claim",
            relay = %self.relay_id,
            limit,
            claimed = field::Empty
        );
        let started = Instant::now();
        let records = self.store.claim(&request).instrument(span.clone()).await?;
        span.record("claimed", records.len());
        self.in_flight.fetch_add(records.len(), Ordering::AcqRel);
        Ok(Claimed {
            owner: request.owner,
            records,
            leased_at: started,
        })
    }

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
    async fn deliver(&self, batch: Claimed, patient: bool) -> Result<RunReport, Error> {
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
            merge(&mut carried, self.settlement(batch.records, ready));
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
        metrics::counter!("outbox_lease_renewals_total").increment(1);
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
        metrics::counter!("outbox_settle_errors_total").increment(1);
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

    /// What to do with records whose outcome is known.
    fn settlement(&self, records: &[OutboxRecord], ready: Vec<tracker::Ready>) -> Settlement {
        let now = self.clock.now();
        let mut settlement = Settlement::default();
        for tracker::Ready {
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
            if behind {
                // Behind a failed record of its key: not an attempt of its own.
                settlement.released.push(record.id);
                continue;
            }
            let attempts = record.attempts.saturating_add(1);
            let message = error_chain(&*error);
            let holds_key = self.dead_key_policy == DeadKeyPolicy::Hold;
            if permanent {
                settlement.dead.push(DeadLetter {
                    id: record.id,
                    error: message,
                    holds_key,
                });
            } else if self.retry_policy.should_retry(attempts, &*error) {
                settlement.retries.push(Retry {
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

    fn lock_status(&self) -> std::sync::MutexGuard<'_, RelayStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A claimed batch and the token it was claimed under.
struct Claimed {
    owner: String,
    records: Vec<OutboxRecord>,
    /// When the claim started: its lease lasts at least until then plus
    /// the lease (the store counts from a later moment).
    leased_at: Instant,
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

/// A claim in progress and when it started.
type ClaimFuture<'a> = Pin<Box<dyn Future<Output = (Result<Claimed, Error>, Instant)> + Send + 'a>>;

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

/// Describes every metric the relay reports (type, unit, meaning) to the
/// installed `metrics` recorder, so an exporter prints them with help
/// text. Call it once after installing the recorder; without it the
/// metrics are reported all the same.
pub fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "outbox_claimed_total",
        Unit::Count,
        "Records claimed by the relay."
    );
    describe_counter!(
        "outbox_published_total",
        Unit::Count,
        "Records delivered and marked published."
    );
    describe_counter!(
        "outbox_retried_total",
        Unit::Count,
        "Failed records scheduled for another attempt."
    );
    describe_counter!(
        "outbox_dead_total",
        Unit::Count,
        "Records moved to dead letters."
    );
    describe_counter!(
        "outbox_released_total",
        Unit::Count,
        "Records released unattempted behind a failed record of their key."
    );
    describe_counter!(
        "outbox_batch_errors_total",
        Unit::Count,
        "Batches that failed (the store or the sink down)."
    );
    describe_counter!(
        "outbox_purged_total",
        Unit::Count,
        "Published records deleted by retention."
    );
    describe_counter!(
        "outbox_settle_errors_total",
        Unit::Count,
        "Settlements (marking records) that failed and were tried again."
    );
    describe_counter!(
        "outbox_lease_renewals_total",
        Unit::Count,
        "Leases of slow batches renewed."
    );
    describe_histogram!(
        "outbox_batch_seconds",
        Unit::Seconds,
        "Time from claim to the last settlement of a non-empty batch."
    );
    describe_histogram!(
        "outbox_publish_lag_seconds",
        Unit::Seconds,
        "Time from enqueue to delivery, per record."
    );
    describe_gauge!(
        "outbox_pending_records",
        Unit::Count,
        "Pending records, by topic."
    );
    describe_gauge!(
        "outbox_dead_records",
        Unit::Count,
        "Dead records, by topic."
    );
    describe_gauge!(
        "outbox_oldest_pending_age_seconds",
        Unit::Seconds,
        "Age of the oldest pending record, by topic."
    );
    describe_gauge!(
        "outbox_held_records",
        Unit::Count,
        "Pending records waiting behind a dead record of their key."
    );
    describe_gauge!(
        "outbox_leased_records",
        Unit::Count,
        "Pending records under a relay's lease."
    );
    describe_gauge!(
        "outbox_relay_consecutive_failures",
        Unit::Count,
        "Batches this relay failed in a row (0 after a success)."
    );
    describe_gauge!(
        "outbox_relay_last_success_timestamp_seconds",
        Unit::Seconds,
        "Unix time of this relay's last successful batch or empty poll."
    );
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
            .field("max_in_flight", &self.max_in_flight)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .field("retry_policy", &self.retry_policy)
            .field("backoff", &self.backoff)
            .field("dead_key_policy", &self.dead_key_policy)
            .field("chores", &self.chores)
            .finish_non_exhaustive()
    }
}
