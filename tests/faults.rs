//! Relays that crash and fail on purpose, in this process.
//!
//! [`FaultyStore`] and [`FaultySink`] wrap the real store and sink of a
//! relay and, at random with the odds of a shared [`Faults`], fail or
//! crash at the points where a crash can lose or reorder events:
//!
//! - after the claim committed and before anything is published (the
//!   records stay leased until the lease runs out and another relay takes
//!   them over);
//! - after the broker acknowledged a batch and before the relay marked
//!   it (part of it, or none, is marked; the rest is published again);
//! - a settlement refused before it is applied, or applied and then
//!   reported failed (the reply lost on the way back);
//! - a claim refused.
//!
//! A crash drops the relay where it is: the wrapper signals it and never
//! returns, and [`run_crashing`] drops the relay's `run_once` future, as a
//! killed process would stop, then starts a new relay in its place.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use outbox_engine::{
    ClaimRequest, NewRecord, OutboxRecord, OutboxStore, Outcome, Relay, Settled, Settlement, Sink,
    StoreError,
};
use tokio::sync::{Notify, watch};

/// The odds of each fault, per call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Odds {
    /// Crash after a claim that returned records.
    pub crash_after_claim: f64,
    /// Crash after the broker acknowledged a batch, before it is all marked.
    pub crash_after_ack: f64,
    /// Refuse a claim with a retriable error.
    pub fail_claim: f64,
    /// Refuse a settlement before applying it.
    pub fail_before_settle: f64,
    /// Apply a settlement, then report it failed.
    pub fail_after_settle: f64,
}

/// The [`Odds`] of each fault and how many happened; shared by the
/// wrappers of every relay of a scenario.
#[derive(Debug, Default)]
pub struct Faults {
    odds: Odds,
    disarmed: AtomicBool,
    crashes: AtomicU64,
    failures: AtomicU64,
}

impl Faults {
    /// Faults with these odds.
    pub fn new(odds: Odds) -> Arc<Self> {
        Arc::new(Self {
            odds,
            ..Self::default()
        })
    }

    /// Stops every fault from now on (to drain at the end of a scenario).
    pub fn disarm(&self) {
        self.disarmed.store(true, Ordering::SeqCst);
    }

    /// How many crashes happened.
    pub fn crashes(&self) -> u64 {
        self.crashes.load(Ordering::SeqCst)
    }

    /// How many failures (not crashes) were injected.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    fn roll(&self, odds: f64) -> bool {
        odds > 0.0 && !self.disarmed.load(Ordering::SeqCst) && rand::random_bool(odds.min(1.0))
    }

    fn failed(&self, what: &str) -> StoreError {
        self.failures.fetch_add(1, Ordering::SeqCst);
        StoreError::retriable(format!("injected fault: {what}"))
    }
}

/// One relay's crash signal: the wrappers fire it, [`run_crashing`] waits
/// for it.
#[derive(Debug, Default)]
pub struct Crash {
    fired: Notify,
}

impl Crash {
    /// A new signal.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Fires the signal, counts the crash, and never returns: the relay
    /// stops here.
    async fn here(&self, faults: &Faults) -> ! {
        faults.crashes.fetch_add(1, Ordering::SeqCst);
        self.fired.notify_one();
        std::future::pending().await
    }
}

/// A store that fails or crashes at random, with the odds of its
/// [`Faults`].
#[derive(Debug, Clone)]
pub struct FaultyStore<S> {
    inner: S,
    faults: Arc<Faults>,
    crash: Arc<Crash>,
}

impl<S> FaultyStore<S> {
    /// Wraps `inner`; a crash fires `crash`.
    pub fn new(inner: S, faults: Arc<Faults>, crash: Arc<Crash>) -> Self {
        Self {
            inner,
            faults,
            crash,
        }
    }
}

#[async_trait]
impl<S: OutboxStore> OutboxStore for FaultyStore<S> {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        self.inner.enqueue(records).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        if self.faults.roll(self.faults.odds.fail_claim) {
            return Err(self.faults.failed("claim refused"));
        }
        let records = self.inner.claim(request).await?;
        if !records.is_empty() && self.faults.roll(self.faults.odds.crash_after_claim) {
            self.crash.here(&self.faults).await;
        }
        Ok(records)
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[i64],
        lease: std::time::Duration,
    ) -> Result<u64, StoreError> {
        self.inner.renew(owner, ids, lease).await
    }

    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
        if self.faults.roll(self.faults.odds.fail_before_settle) {
            return Err(self.faults.failed("settlement refused"));
        }
        let changed = self.inner.settle(owner, settlement).await?;
        if self.faults.roll(self.faults.odds.fail_after_settle) {
            return Err(self.faults.failed("settlement applied, reply lost"));
        }
        Ok(changed)
    }
}

/// A sink that crashes at random after the broker acknowledged a batch,
/// with the odds of its [`Faults`].
#[derive(Debug, Clone)]
pub struct FaultySink<Si> {
    inner: Si,
    faults: Arc<Faults>,
    crash: Arc<Crash>,
}

impl<Si> FaultySink<Si> {
    /// Wraps `inner`; a crash fires `crash`.
    pub fn new(inner: Si, faults: Arc<Faults>, crash: Arc<Crash>) -> Self {
        Self {
            inner,
            faults,
            crash,
        }
    }
}

#[async_trait]
impl<Si: Sink> Sink for FaultySink<Si> {
    async fn publish(&self, records: &[OutboxRecord]) -> Vec<Outcome> {
        self.inner.publish(records).await
    }

    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        if !self.faults.roll(self.faults.odds.crash_after_ack) {
            return self.inner.publish_each(records, report).await;
        }
        // Every record goes to the broker and is acknowledged (or fails);
        // the relay hears of a prefix only, may mark some of it, and dies.
        let outcomes = self.inner.publish(records).await;
        let told = rand::random_range(0..=outcomes.len());
        for (index, outcome) in outcomes.into_iter().enumerate().take(told) {
            report(index, outcome);
        }
        if told > 0 {
            let settle = rand::random_range(0..300);
            tokio::time::sleep(Duration::from_millis(settle)).await;
        }
        self.crash.here(&self.faults).await
    }
}

/// Runs relays made by `build` (given the generation and its crash signal)
/// batch after batch until `stopped` turns true: when one crashes, its
/// `run_once` future is dropped where it stands and a new relay of the next
/// generation takes its place. A failed batch is retried after
/// `poll_interval`, as an empty one. Returns how many relays crashed.
pub async fn run_crashing<St, Si, F>(
    build: F,
    poll_interval: Duration,
    mut stopped: watch::Receiver<bool>,
) -> u64
where
    St: OutboxStore,
    Si: Sink,
    F: Fn(u32, Arc<Crash>) -> Relay<St, Si>,
{
    let mut crashes = 0;
    for generation in 0.. {
        let crash = Crash::new();
        let relay = build(generation, Arc::clone(&crash));
        loop {
            if *stopped.borrow_and_update() {
                return crashes;
            }
            let idle = tokio::select! {
                result = relay.run_once() => !matches!(result, Ok(report) if report.claimed > 0),
                () = crash.fired.notified() => {
                    crashes += 1;
                    break;
                }
            };
            if idle {
                tokio::select! {
                    () = tokio::time::sleep(poll_interval) => {}
                    _ = stopped.changed() => {}
                }
            }
        }
    }
    crashes
}

/// Waits until `condition` holds, checking every 50 ms; panics with
/// `what` and the last `state` after `deadline`.
pub async fn wait_for<F, Fut, T>(what: &str, deadline: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = tokio::time::Instant::now();
    loop {
        match condition().await {
            Ok(value) => return value,
            Err(state) => assert!(
                started.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}: {state}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
