//! The driver: runs one schedule with two relays taking turns, injects its
//! fault, restarts a crashed relay, and runs until nothing is pending.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::harness::{
    Defect, FixedBackoff, GatedStore, IDLE_ADVANCE, LEASE, OpenWriter, RecordingSink, RunState,
    Shared, StepKind,
};
use super::problem::Problem;
use super::schedule::{Fault, Schedule};
use crate::testkit::TestStore;
use crate::{Error, NewRecord, OutboxStore, Relay, RunReport};

/// Turns after which a run that still has records pending counts as stuck:
/// far more than any history of the explorer needs.
const MAX_TURNS: usize = 400;

/// What a run left behind, for the checks.
#[derive(Debug)]
pub(super) struct Execution {
    pub(super) state: RunState,
    /// `run_once` calls, crashed and stalled ones included.
    pub(super) batches: usize,
    /// Records still pending when the run gave up (0 when it finished).
    pub(super) stuck: u64,
}

/// Runs `schedule` against `store`, a fresh, empty store.
pub(super) async fn execute<S: TestStore>(
    store: S,
    schedule: &Schedule,
    defect: Option<Defect>,
) -> Result<Execution, Problem> {
    let state = RunState::new(&schedule.history, schedule.fault, defect);
    let shared = Arc::new(Shared::new(state));
    let mut driver = Driver {
        store,
        shared: shared.clone(),
        schedule,
        relays: Vec::new(),
        started: 0,
        turn: 0,
        batches: 0,
    };
    for _ in 0..2 {
        let relay = driver.start_relay()?;
        driver.relays.push(relay);
    }
    let stuck = driver.run().await?;
    let batches = driver.batches;
    drop(driver);
    let state = std::mem::take(&mut *shared.lock());
    Ok(Execution {
        state,
        batches,
        stuck,
    })
}

type ExploredRelay<S> = Relay<GatedStore<S>, RecordingSink>;

/// A relay's batch in progress.
type Batch = Pin<Box<dyn Future<Output = Result<RunReport, Error>>>>;

enum Turn {
    /// The batch finished, having claimed this many records.
    Ran(usize),
    /// The batch failed (the store returned an error).
    Failed,
    /// The relay crashed, and a fresh one took its place.
    Crashed,
    /// The relay stalled; its batch goes on when polled again.
    Stalled(Batch),
}

struct Driver<'a, S: TestStore> {
    store: S,
    shared: Arc<Shared>,
    schedule: &'a Schedule,
    relays: Vec<Arc<ExploredRelay<S>>>,
    /// Relays started so far: the next is `r<started + 1>`.
    started: usize,
    /// Turns taken so far: wave `w` commits before turn `w`.
    turn: usize,
    batches: usize,
}

/// How long a batch may take, on the explorer's paused clock, before it
/// counts as hung: far more than its settlements' pauses add up to.
const HUNG_AFTER: Duration = Duration::from_secs(24 * 3600);

/// Polls a batch until it finishes, or until the fault stops its relay;
/// a batch that never finishes is [`Problem::Hung`].
async fn drive(
    shared: &Shared,
    relay: &str,
    batch: &mut Batch,
) -> Result<Option<Result<RunReport, Error>>, Problem> {
    let polled = std::future::poll_fn(|cx| match batch.as_mut().poll(cx) {
        Poll::Ready(result) => Poll::Ready(Some(result)),
        Poll::Pending if shared.lock().tripped.is_some() => Poll::Ready(None),
        Poll::Pending => Poll::Pending,
    });
    tokio::time::timeout(HUNG_AFTER, polled)
        .await
        .map_err(|_| Problem::Hung {
            relay: relay.to_owned(),
            last_step: shared.lock().steps.last().cloned().unwrap_or_default(),
        })
}

impl<S: TestStore> Driver<'_, S> {
    fn start_relay(&mut self) -> Result<Arc<ExploredRelay<S>>, Problem> {
        self.started += 1;
        let id = format!("r{}", self.started);
        let relay = Relay::builder(
            GatedStore::new(self.store.clone(), self.shared.clone()),
            RecordingSink::new(id.clone(), self.shared.clone()),
        )
        .relay_id(id)
        .batch_size(self.schedule.history.batch_size)
        .lease(LEASE)
        .backoff(FixedBackoff)
        .build()
        .map_err(|error| Problem::Setup(error.to_string()))?;
        Ok(Arc::new(relay))
    }

    fn note(&self, line: String) {
        self.shared.lock().note(line);
    }

    fn advance(&self, why: &str) {
        self.store.advance_clock(IDLE_ADVANCE);
        self.note(format!(
            "clock +{}m: {why}",
            IDLE_ADVANCE.as_secs().div_ceil(60)
        ));
    }

    async fn pending(&self) -> Result<u64, Problem> {
        let stats = self
            .store
            .stats(Utc::now())
            .await
            .map_err(|error| Problem::Store(format!("stats failed: {error}")))?;
        Ok(stats.pending)
    }

    /// Commits (or rolls back) the writers held open that are due, then the
    /// events of wave `wave`, one transaction each, in order; a held
    /// event's writer is left to open after the turn's claim.
    async fn commit_wave(&self, wave: usize) -> Result<(), Problem> {
        self.end_writers(|_, commit_with| commit_with <= wave)
            .await?;
        let events = &self.schedule.history.events;
        for (index, event) in events.iter().enumerate() {
            if event.wave != wave {
                continue;
            }
            // A writer of a key an open writer holds waits for it: the
            // open one ends first.
            self.end_writers(|held, _| events[held].key == event.key)
                .await?;
            let now = Utc::now();
            let record = NewRecord {
                event_id: Uuid::now_v7(),
                topic: "explore".to_owned(),
                key: Some(event.key.to_string()),
                event_type: "ExploredEvent".to_owned(),
                schema_version: 1,
                payload: format!(r#"{{"event":"{}"}}"#, event.label()),
                headers: Default::default(),
                created_at: now,
                available_at: now,
            };
            let keeps_rollbacks = {
                let mut state = self.shared.lock();
                state.events.insert(record.event_id, index);
                if event.held {
                    state.to_open.push((index, wave + 2, record.clone()));
                }
                state.defect == Some(Defect::StoreKeepsRolledBackRecords)
            };
            if event.held {
                continue;
            }
            if event.rolled_back {
                self.note(format!("roll back {}", event.label()));
                if !keeps_rollbacks {
                    continue;
                }
            }
            GatedStore::new(self.store.clone(), self.shared.clone())
                .enqueue(&[record])
                .await
                .map_err(|error| Problem::Store(format!("enqueue failed: {error}")))?;
            self.note(format!("commit {}", event.label()));
        }
        Ok(())
    }

    /// Commits (or rolls back) the open writers that `ends` picks, given
    /// each one's event and the wave it is due to commit with.
    async fn end_writers(&self, ends: impl Fn(usize, usize) -> bool) -> Result<(), Problem> {
        let ending: Vec<(usize, OpenWriter)> = {
            let mut state = self.shared.lock();
            let (ending, open) = std::mem::take(&mut state.open)
                .into_iter()
                .partition(|(index, commit_with, _)| ends(*index, *commit_with));
            state.open = open;
            ending
                .into_iter()
                .map(|(index, _, writer)| (index, writer))
                .collect()
        };
        for (index, writer) in ending {
            let event = &self.schedule.history.events[index];
            let keeps_rollbacks =
                self.shared.lock().defect == Some(Defect::StoreKeepsRolledBackRecords);
            if event.rolled_back && !keeps_rollbacks {
                drop(writer);
                self.note(format!(
                    "roll back {} (its writer held its key)",
                    event.label()
                ));
                continue;
            }
            writer
                .0
                .commit()
                .await
                .map_err(|error| Problem::Store(format!("commit failed: {error}")))?;
            self.note(format!(
                "commit {} (its writer held its key)",
                event.label()
            ));
        }
        Ok(())
    }

    /// One turn of the relay in `slot`: one `run_once`, after committing
    /// the wave due.
    async fn turn(&mut self, slot: usize) -> Result<Turn, Problem> {
        self.commit_wave(self.turn).await?;
        self.turn += 1;
        self.batches += 1;
        let relay = self.relays[slot].clone();
        let id = relay.relay_id().to_owned();
        let mut batch: Batch = Box::pin(async move { relay.run_once().await });
        match drive(&self.shared, &id, &mut batch).await? {
            Some(Ok(report)) => {
                if report.claimed == 0 {
                    self.note(format!("{id} found nothing to claim"));
                }
                Ok(Turn::Ran(report.claimed))
            }
            Some(Err(error)) => {
                self.note(format!("{id} batch failed: {error}"));
                Ok(Turn::Failed)
            }
            None => match self.schedule.fault {
                Fault::Stall { .. } => Ok(Turn::Stalled(batch)),
                _ => {
                    drop(batch);
                    self.shared.lock().tripped = None;
                    self.relays[slot] = self.start_relay()?;
                    let fresh = self.relays[slot].relay_id().to_owned();
                    self.note(format!(
                        "{id} crashed (its leases stay until they run out); {fresh} starts \
                         in its place"
                    ));
                    Ok(Turn::Crashed)
                }
            },
        }
    }

    /// Both relays take turns until neither claims anything, every wave is
    /// committed and nothing is pending; returns what is still pending if
    /// that takes too long.
    async fn run(&mut self) -> Result<u64, Problem> {
        let waves = self.schedule.history.waves();
        let mut idle = 0;
        let mut slot = 0;
        loop {
            if self.turn >= MAX_TURNS {
                return self.pending().await;
            }
            match self.turn(slot).await? {
                Turn::Ran(0) | Turn::Failed => idle += 1,
                Turn::Ran(_) | Turn::Crashed => idle = 0,
                Turn::Stalled(batch) => {
                    self.stalled(slot, batch).await?;
                    idle = 0;
                }
            }
            slot = 1 - slot;
            if idle >= self.relays.len() && self.turn >= waves {
                let pending = self.pending().await?;
                if pending == 0 {
                    return Ok(0);
                }
                self.advance(&format!("every relay idle, {pending} records pending"));
                idle = 0;
            }
        }
    }

    /// Lets the other relay work while the relay in `slot` stalls, then
    /// resumes it and lets it finish its batch.
    async fn stalled(&mut self, slot: usize, mut batch: Batch) -> Result<(), Problem> {
        let Fault::Stall { takeover, .. } = self.schedule.fault else {
            unreachable!("only a stall leaves a batch to resume");
        };
        let trip = self
            .shared
            .lock()
            .tripped
            .take()
            .expect("a stalled batch tripped");
        let id = self.relays[slot].relay_id().to_owned();
        let other = 1 - slot;
        let other_id = self.relays[other].relay_id().to_owned();
        if takeover {
            // A claim whose settle the store had not applied yet is stale
            // from now on: its records are taken over.
            if !matches!(trip.kind, StepKind::Settled(_)) {
                self.shared.lock().stale = Some(trip.token.clone());
            }
            self.advance(&format!(
                "{id} stalls past its lease; {other_id} runs alone until nothing is pending"
            ));
            self.run_alone(other).await?;
        } else {
            self.note(format!(
                "{id} stalls holding its lease; {other_id} runs one batch"
            ));
            if let Turn::Stalled(_) | Turn::Crashed = self.turn(other).await? {
                unreachable!("a schedule has one fault");
            }
        }
        self.note(format!("{id} resumes"));
        let stalled = {
            let mut state = self.shared.lock();
            state.released = true;
            state.stalled.take()
        };
        if let Some(waker) = stalled {
            waker.wake();
        }
        match drive(&self.shared, &id, &mut batch).await? {
            Some(Ok(_)) => {}
            Some(Err(error)) => self.note(format!("{id} batch failed: {error}")),
            None => unreachable!("a schedule has one fault"),
        }
        Ok(())
    }

    /// The relay in `slot` alone takes turns until nothing is pending.
    async fn run_alone(&mut self, slot: usize) -> Result<(), Problem> {
        let waves = self.schedule.history.waves();
        while self.turn < MAX_TURNS {
            match self.turn(slot).await? {
                Turn::Ran(0) | Turn::Failed if self.turn >= waves => {
                    let pending = self.pending().await?;
                    if pending == 0 {
                        return Ok(());
                    }
                    self.advance(&format!("relay idle, {pending} records pending"));
                }
                Turn::Stalled(_) | Turn::Crashed => unreachable!("a schedule has one fault"),
                _ => {}
            }
        }
        Ok(())
    }
}
