//! The [`Relay`]: claims committed records, publishes them, marks them.
//!
//! Its parts: `schedule` decides when to claim, `deliver` publishes a
//! claimed batch and settles it, `settlement` says what each record's
//! outcome becomes and `tracker` when that is known; `chores` run beside
//! the batches; `metrics` names what the relay reports.

mod builder;
mod chores;
mod deliver;
mod metrics;
mod report;
mod schedule;
mod settlement;
mod tracker;
mod wakeup;

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

pub use self::builder::{DeadKeyPolicy, RelayBuilder};
pub use self::metrics::describe_metrics;
pub use self::report::{RelayStatus, RunReport};
pub use self::wakeup::Wakeup;

use self::chores::Chores;
use self::settlement::SettlementPolicy;
use crate::clock::Clock;
use crate::sink::error_chain;
use crate::{Error, OutboxStore, Sink};

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
    policy: SettlementPolicy,
    clock: Box<dyn Clock>,
    chores: Chores,
    /// How often `run` runs the store's housekeeping.
    housekeeping: Option<Duration>,
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
        metrics::record_batch(result, started.elapsed());
        let now = self.clock.now();
        let mut status = self.lock_status();
        status.last_run_at = Some(now);
        match result {
            Ok(report) => {
                status.totals += *report;
                status.last_error = None;
                status.last_success_at = Some(now);
                status.consecutive_failures = 0;
            }
            Err(error) => {
                status.last_error = Some(error_chain(error));
                status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            }
        }
        metrics::record_status(&status, result.is_ok(), now);
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
            .run(&self.relay_id, || self.clock.now(), stopped.clone());
        let housekeeping = self.housekeep(stopped);
        tokio::join!(batches, chores, housekeeping);
    }

    /// Runs the store's housekeeping every `housekeeping` interval (first
    /// after one interval) until `stop` turns true. A failure is logged
    /// and tried again at the next interval: housekeeping loses nothing by
    /// waiting.
    async fn housekeep(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let Some(every) = self.housekeeping else {
            return;
        };
        let mut interval = tokio::time::interval_at(Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => return,
                _ = interval.tick() => {}
            }
            let work = self.store.housekeep();
            let result = tokio::select! {
                biased;
                _ = stop.wait_for(|stopped| *stopped) => return,
                result = work => result,
            };
            if let Err(error) = result {
                tracing::warn!(
                    relay = %self.relay_id,
                    error = %error_chain(&error),
                    "the outbox store's housekeeping failed; trying again at the next interval"
                );
            }
        }
    }

    fn lock_status(&self) -> std::sync::MutexGuard<'_, RelayStatus> {
        self.status.lock().unwrap_or_else(PoisonError::into_inner)
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
            .field("retry_policy", &self.policy.retry_policy)
            .field("backoff", &self.policy.backoff)
            .field("dead_key_policy", &self.policy.dead_key_policy)
            .field("chores", &self.chores)
            .field("housekeeping", &self.housekeeping)
            .finish_non_exhaustive()
    }
}
