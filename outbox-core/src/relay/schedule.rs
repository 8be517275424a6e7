//! When the relay claims: [`Relay::run`]'s loop of claims beside the
//! batches in flight, its pauses when idle or failing, and the claim
//! itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::time::Instant;
use tracing::{Instrument, field};

use super::deliver::Claimed;
use super::{Relay, RunReport};
use crate::retry::{Backoff, ExponentialBackoff};
use crate::sink::error_chain;
use crate::store::ClaimRequest;
use crate::{Error, OutboxStore, Sink};

/// The first pause after an empty claim that followed work: the pause
/// doubles with each empty claim in a row, up to the poll interval, so a
/// relay that just drained its backlog picks up new records within
/// milliseconds, and an idle one polls at the configured interval.
const FIRST_IDLE_PAUSE: Duration = Duration::from_millis(5);

/// The longest pause after consecutive failed batches (the poll interval
/// doubles from one failure to the next, with jitter, up to this).
const MAX_ERROR_PAUSE: Duration = Duration::from_secs(30);

impl<St: OutboxStore, Si: Sink> Relay<St, Si> {
    /// Claims and delivers batches until `shutdown` resolves, then
    /// finishes those in flight: [`Relay::run`] without its chores.
    pub(super) async fn run_batches(&self, shutdown: impl Future<Output = ()>) {
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
    pub(super) async fn claim(&self, limit: usize) -> Result<Claimed, Error> {
        let token = format!(
            "{}#{}",
            self.relay_id,
            self.claims.fetch_add(1, Ordering::Relaxed) + 1
        );
        let request = ClaimRequest {
            owner: token,
            limit,
            lease: self.lease,
            dead_holds_key: self.policy.dead_holds_key(),
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
}

/// A claim in progress and when it started.
type ClaimFuture<'a> = Pin<Box<dyn Future<Output = (Result<Claimed, Error>, Instant)> + Send + 'a>>;
