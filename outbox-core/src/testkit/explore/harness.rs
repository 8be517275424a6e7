//! The instruments of a run: a store wrapper and a recording sink that
//! count the relays' protocol steps, log them, keep the destination's log,
//! and stop the relay at the step the fault names.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::schedule::{Fault, History};
use crate::testkit::{OpenTransaction, TestStore};
use crate::{
    Backoff, ClaimRequest, NewRecord, OutboxRecord, OutboxStore, Outcome, Settled, Settlement,
    Sink, StoreError,
};

/// The relays' lease: long enough that no wall-clock delay ends it; only
/// the explorer moving the store's clock does.
pub(super) const LEASE: Duration = Duration::from_secs(3600);

/// The relays' backoff after a failure, shorter than a lease.
pub(super) const BACKOFF: Duration = Duration::from_secs(600);

/// How far the store's clock moves when every relay is idle: past every
/// lease and backoff.
pub(super) const IDLE_ADVANCE: Duration = Duration::from_secs(3660);

/// The same wait after every failure, so runs repeat exactly (the relay's
/// default backoff has jitter).
#[derive(Debug)]
pub(super) struct FixedBackoff;

impl Backoff for FixedBackoff {
    fn delay(&self, _attempts: u32) -> Duration {
        BACKOFF
    }
}

/// A defect the explorer can build into its own instruments on purpose,
/// to see its checks catch it: a checker that cannot fail proves nothing.
/// Each one makes an exploration of [`Size::Small`](super::Size::Small)
/// fail with the [`Problem`](super::Problem) its doc names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Defect {
    /// The sink delivers the later records of a key after an earlier
    /// record of that key failed in the same batch, against the
    /// [`Sink`] per-key rule: [`Problem::OutOfOrder`](super::Problem::OutOfOrder).
    SinkIgnoresFailedKeys,
    /// The store acknowledges the second record enqueued but never writes
    /// it: [`Problem::Lost`](super::Problem::Lost).
    StoreLosesARecord,
    /// The store keeps the records of transactions that rolled back:
    /// [`Problem::RolledBack`](super::Problem::RolledBack).
    StoreKeepsRolledBackRecords,
    /// The store's claims hand out records leased to another claim that
    /// has not settled them: [`Problem::Duplicate`](super::Problem::Duplicate).
    StoreIgnoresLeases,
    /// The store's settle answers how many records it was asked to settle,
    /// not how many it changed, so a stale claim seems to change records:
    /// [`Problem::StaleSettle`](super::Problem::StaleSettle).
    StoreCountsRequestedSettles,
    /// The store's settle waits until no writer's transaction is open, as
    /// a settlement that locks its keys and waits for each would:
    /// [`Problem::Hung`](super::Problem::Hung).
    StoreWaitsForWriters,
}

impl Defect {
    /// Every defect.
    pub const ALL: [Defect; 6] = [
        Defect::SinkIgnoresFailedKeys,
        Defect::StoreLosesARecord,
        Defect::StoreKeepsRolledBackRecords,
        Defect::StoreIgnoresLeases,
        Defect::StoreCountsRequestedSettles,
        Defect::StoreWaitsForWriters,
    ];
}

/// A protocol step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum StepKind {
    /// A claim returned these records (the store leased them).
    Claimed(String),
    /// This record reached the destination; its outcome is not reported.
    HandedOff(String),
    /// This record's outcome was reported to the relay.
    Reported(String, &'static str),
    /// A settle is about to be sent to the store.
    Settling(String),
    /// The store answered a settle.
    Settled(String),
}

impl StepKind {
    /// Whether the step is a store step: a claim or a settle.
    pub(super) fn is_store_step(&self) -> bool {
        matches!(
            self,
            StepKind::Claimed(_) | StepKind::Settling(_) | StepKind::Settled(_)
        )
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StepKind::Claimed(records) => write!(f, "claimed {records}"),
            StepKind::HandedOff(record) => write!(f, "handed off {record}"),
            StepKind::Reported(record, outcome) => write!(f, "reported {record} {outcome}"),
            StepKind::Settling(settlement) => write!(f, "settling {settlement}"),
            StepKind::Settled(result) => write!(f, "settled: {result}"),
        }
    }
}

/// A record that reached the destination.
#[derive(Debug, Clone)]
pub(super) struct Arrival {
    /// Its index in the history, if it is one of the history's events.
    pub(super) event: Option<usize>,
    pub(super) event_id: Uuid,
    /// The claim that handed it off.
    pub(super) token: String,
}

/// Where the fault stopped a relay.
#[derive(Debug, Clone)]
pub(super) struct Trip {
    pub(super) token: String,
    pub(super) kind: StepKind,
}

/// What a run did so far, shared by the instruments and the driver.
#[derive(Debug, Default)]
pub(super) struct RunState {
    pub(super) fault: Option<Fault>,
    /// Every step, `<token> <step>`, by step number.
    pub(super) steps: Vec<String>,
    /// The numbers of the store steps.
    pub(super) store_steps: Vec<usize>,
    /// Everything that happened, steps included, for a report.
    pub(super) journal: Vec<String>,
    /// Set when the fault stopped a relay, until the driver notices.
    pub(super) tripped: Option<Trip>,
    /// Whether the fault happened.
    pub(super) fault_hit: bool,
    /// Lets a stalled relay go on.
    pub(super) released: bool,
    /// Wakes the stalled relay's step when it is released.
    pub(super) stalled: Option<std::task::Waker>,
    /// The claim whose lease was taken over while it stalled.
    pub(super) stale: Option<String>,
    /// Settles by the stale claim that changed records.
    pub(super) stale_changes: Vec<u64>,
    /// The history's events by event id, rolled-back ones included.
    pub(super) events: HashMap<Uuid, usize>,
    /// Labels of the history's events, by index.
    pub(super) labels: Vec<String>,
    /// The offers on which each event fails, by index.
    pub(super) fails_on: Vec<Vec<u32>>,
    /// The history's events by store id, once claimed.
    pub(super) by_record: HashMap<i64, usize>,
    /// Each relay's claim in flight, by relay id.
    pub(super) current: HashMap<String, String>,
    /// How many times the sink was handed each record.
    pub(super) offers: HashMap<Uuid, u32>,
    /// The destination's log, in arrival order.
    pub(super) ledger: Vec<Arrival>,
    /// The (claim, event) pairs whose settle as published the store
    /// applied under a live lease.
    pub(super) acked: HashSet<(String, usize)>,
    /// The defect built into the instruments, if any.
    pub(super) defect: Option<Defect>,
    /// Records enqueued so far.
    pub(super) enqueued: usize,
    /// Under [`Defect::StoreIgnoresLeases`]: the records claims returned
    /// and have not settled, with the claim's token.
    pub(super) unsettled: BTreeMap<i64, (String, OutboxRecord)>,
    /// Held events whose writers open after the next claim: index and
    /// record.
    pub(super) to_open: Vec<(usize, usize, NewRecord)>,
    /// Writers' transactions open, with their events' indexes and the
    /// wave they commit with.
    pub(super) open: Vec<(usize, usize, OpenWriter)>,
}

/// A writer's transaction held open across a relay turn.
pub(super) struct OpenWriter(pub(super) Box<dyn OpenTransaction>);

impl fmt::Debug for OpenWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OpenWriter")
    }
}

impl RunState {
    pub(super) fn new(history: &History, fault: Fault, defect: Option<Defect>) -> Self {
        Self {
            fault: Some(fault),
            labels: history.events.iter().map(|e| e.label()).collect(),
            fails_on: history.events.iter().map(|e| e.fails_on.clone()).collect(),
            defect,
            ..Self::default()
        }
    }

    /// The label of the record with event id `event_id` and store id `id`.
    fn label(&self, event_id: Uuid) -> String {
        match self.events.get(&event_id) {
            Some(&event) => self.labels[event].clone(),
            None => format!("unknown event {event_id}"),
        }
    }

    fn label_of_id(&self, id: i64) -> String {
        match self.by_record.get(&id) {
            Some(&event) => self.labels[event].clone(),
            None => format!("record #{id}"),
        }
    }

    /// Describes a settlement by the labels of its records.
    fn describe(&self, settlement: &Settlement) -> String {
        let mut parts = Vec::new();
        let mut part = |name: &str, ids: Vec<i64>| {
            if !ids.is_empty() {
                let labels: Vec<String> = ids.iter().map(|&id| self.label_of_id(id)).collect();
                parts.push(format!("{name} {}", labels.join(" ")));
            }
        };
        part("published", settlement.published.clone());
        part("retry", settlement.retries.iter().map(|r| r.id).collect());
        part("dead", settlement.dead.iter().map(|d| d.id).collect());
        part("released", settlement.released.clone());
        parts.join(", ")
    }

    pub(super) fn note(&mut self, line: String) {
        self.journal.push(format!("      {line}"));
    }
}

/// The state of a run, behind one lock.
#[derive(Debug, Default)]
pub(super) struct Shared(Mutex<RunState>);

impl Shared {
    pub(super) fn new(state: RunState) -> Self {
        Self(Mutex::new(state))
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, RunState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a step, then returns at once, or never (the fault is a crash
    /// at this step), or once the driver releases the stall; returns
    /// whether the step is to fail (the fault is a failure at this step).
    async fn step(&self, token: &str, kind: StepKind) -> bool {
        let stop = {
            let mut state = self.lock();
            let number = state.steps.len();
            let line = format!("{token} {kind}");
            state.journal.push(format!("{number:>4}  {line}"));
            state.steps.push(line);
            if kind.is_store_step() {
                state.store_steps.push(number);
            }
            let here = state.fault.and_then(|f| f.step()) == Some(number);
            if here {
                state.fault_hit = true;
            }
            if here && matches!(state.fault, Some(Fault::Fail { .. })) {
                state.note(format!("{token} step {number} fails (injected)"));
                return true;
            }
            if here {
                state.tripped = Some(Trip {
                    token: token.to_owned(),
                    kind,
                });
            }
            here
        };
        if stop {
            // A crash is never released: the driver drops the relay's
            // future, and with it this one.
            std::future::poll_fn(|cx| {
                let mut state = self.lock();
                if state.released {
                    Poll::Ready(())
                } else {
                    state.stalled = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
        }
        false
    }
}

/// The error of a store step the fault fails.
fn injected(what: &str) -> StoreError {
    StoreError::retriable(format!("injected failure: {what}"))
}

/// The relay id in a claim token (`r1#2` is relay `r1`'s second claim).
fn relay_of(token: &str) -> &str {
    token.split_once('#').map_or(token, |(relay, _)| relay)
}

/// The store under test, with its claims and settles counted as steps.
#[derive(Debug, Clone)]
pub(super) struct GatedStore<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> GatedStore<S> {
    pub(super) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }
}

impl<S: TestStore> GatedStore<S> {
    /// Opens the writers of the held events due after this claim.
    async fn open_writers(&self) -> Result<(), StoreError> {
        let due = std::mem::take(&mut self.shared.lock().to_open);
        for (index, commit_with, record) in due {
            let label = self.shared.lock().labels[index].clone();
            let Some(open) = self.inner.begin_write(&[record]).await? else {
                return Err(StoreError::permanent(
                    "this store cannot hold a writer's transaction open (its writers take \
                     turns for the whole database), so it cannot run held events",
                ));
            };
            let mut state = self.shared.lock();
            state.note(format!("{label}'s writer opens, holding its key"));
            state.open.push((index, commit_with, OpenWriter(open)));
        }
        Ok(())
    }

    /// Under [`Defect::StoreWaitsForWriters`], waits until no writer's
    /// transaction is open.
    async fn wait_for_writers(&self) {
        std::future::poll_fn(|cx| {
            let state = self.shared.lock();
            if state.defect != Some(Defect::StoreWaitsForWriters) || state.open.is_empty() {
                Poll::Ready(())
            } else {
                // Never woken: the writers commit only when the driver
                // moves on, which it does not while this batch runs.
                let _ = cx;
                Poll::Pending
            }
        })
        .await;
    }
}

#[async_trait]
impl<S: TestStore> OutboxStore for GatedStore<S> {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        let kept: Vec<NewRecord> = {
            let mut state = self.shared.lock();
            let first = state.enqueued;
            state.enqueued += records.len();
            let loses = state.defect == Some(Defect::StoreLosesARecord);
            (first..)
                .zip(records)
                .filter(|&(number, _)| !(loses && number == 1))
                .map(|(_, record)| record.clone())
                .collect()
        };
        self.inner.enqueue(&kept).await
    }

    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        let claimed = self.inner.claim(request).await;
        self.open_writers().await?;
        let mut records = claimed?;
        if self.shared.lock().defect == Some(Defect::StoreIgnoresLeases) {
            let mut state = self.shared.lock();
            for record in &records {
                state
                    .unsettled
                    .insert(record.id, (request.owner.clone(), record.clone()));
            }
            for (token, record) in state.unsettled.values_mut() {
                if *token != request.owner && records.len() < request.limit {
                    *token = request.owner.clone();
                    records.push(record.clone());
                }
            }
            records.sort_by_key(|record| record.id);
        }
        if records.is_empty() {
            return Ok(records);
        }
        let labels = {
            let mut state = self.shared.lock();
            for record in &records {
                if let Some(&event) = state.events.get(&record.event_id) {
                    state.by_record.insert(record.id, event);
                }
            }
            let relay = relay_of(&request.owner).to_owned();
            state.current.insert(relay, request.owner.clone());
            let labels: Vec<String> = records.iter().map(|r| state.label(r.event_id)).collect();
            labels.join(" ")
        };
        if self
            .shared
            .step(&request.owner, StepKind::Claimed(labels))
            .await
        {
            return Err(injected("the claim's answer was lost"));
        }
        Ok(records)
    }

    async fn renew(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        self.inner.renew(owner, ids, lease).await
    }

    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
        let description = self.shared.lock().describe(settlement);
        if self
            .shared
            .step(owner, StepKind::Settling(description))
            .await
        {
            return Err(injected("the settlement was refused"));
        }
        self.wait_for_writers().await;
        let mut result = self.inner.settle(owner, settlement).await;
        let answer = {
            let mut state = self.shared.lock();
            match state.defect {
                Some(Defect::StoreCountsRequestedSettles) => {
                    result = result.map(|_| Settled::changed(settlement.len() as u64));
                }
                Some(Defect::StoreIgnoresLeases) => {
                    let ids = settlement.published.iter().copied().chain(
                        (settlement.retries.iter().map(|r| r.id))
                            .chain(settlement.dead.iter().map(|d| d.id))
                            .chain(settlement.released.iter().copied()),
                    );
                    for id in ids {
                        if state
                            .unsettled
                            .get(&id)
                            .is_some_and(|(token, _)| token == owner)
                        {
                            state.unsettled.remove(&id);
                        }
                    }
                }
                _ => {}
            }
            let stale = state.stale.as_deref() == Some(owner);
            match &result {
                Ok(settled) if stale => {
                    if settled.changed > 0 {
                        state.stale_changes.push(settled.changed);
                    }
                }
                Ok(_) => {
                    for id in &settlement.published {
                        if let Some(&event) = state.by_record.get(id) {
                            state.acked.insert((owner.to_owned(), event));
                        }
                    }
                }
                Err(_) => {}
            }
            match &result {
                Ok(settled) if !settled.deferred.is_empty() => format!(
                    "{} of {} changed, {} deferred",
                    settled.changed,
                    settlement.len(),
                    settled.deferred.len()
                ),
                Ok(settled) => format!("{} of {} changed", settled.changed, settlement.len()),
                Err(error) => format!("failed: {error}"),
            }
        };
        if self.shared.step(owner, StepKind::Settled(answer)).await {
            return Err(injected("the settlement was applied, its answer lost"));
        }
        result
    }
}

/// A destination that logs what reaches it, fails records as the history
/// says, keeps the [`Sink`] per-key rule (unless told to break it), and
/// counts each hand-off and report as a step.
#[derive(Debug, Clone)]
pub(super) struct RecordingSink {
    relay: String,
    shared: Arc<Shared>,
}

impl RecordingSink {
    /// The sink of relay `relay`.
    pub(super) fn new(relay: String, shared: Arc<Shared>) -> Self {
        Self { relay, shared }
    }
}

#[async_trait]
impl Sink for RecordingSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        let token = self
            .shared
            .lock()
            .current
            .get(&self.relay)
            .cloned()
            .unwrap_or_else(|| self.relay.clone());
        let mut failed_keys: HashSet<&str> = HashSet::new();
        for (index, record) in records.iter().enumerate() {
            let key = record.key.as_deref();
            let (label, outcome, what) = {
                let mut state = self.shared.lock();
                let label = state.label(record.event_id);
                let event = state.events.get(&record.event_id).copied();
                let keeps_rule = state.defect != Some(Defect::SinkIgnoresFailedKeys);
                if keeps_rule && key.is_some_and(|key| failed_keys.contains(key)) {
                    let outcome = Outcome::retriable(
                        "held back: an earlier record of its key failed in this batch",
                    );
                    (label, outcome, "held back")
                } else {
                    let offers = state.offers.entry(record.event_id).or_default();
                    *offers += 1;
                    let offer = *offers;
                    if event.is_some_and(|event| state.fails_on[event].contains(&offer)) {
                        failed_keys.extend(key);
                        let outcome =
                            Outcome::retriable(format!("injected failure on offer {offer}"));
                        (label, outcome, "failed")
                    } else {
                        state.ledger.push(Arrival {
                            event,
                            event_id: record.event_id,
                            token: token.clone(),
                        });
                        (label, Outcome::Delivered, "delivered")
                    }
                }
            };
            if outcome.is_delivered() {
                self.shared
                    .step(&token, StepKind::HandedOff(label.clone()))
                    .await;
            }
            report(index, outcome);
            self.shared
                .step(&token, StepKind::Reported(label, what))
                .await;
        }
    }
}
