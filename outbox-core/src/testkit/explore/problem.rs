//! What a run can break: the [`Problem`], and the [`Violation`] that
//! reports the first one with the schedule that reproduces it.

use std::fmt;

use uuid::Uuid;

use super::harness::RunState;
use super::schedule::Schedule;

/// The first promise a run broke, or what kept it from running.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// A committed event never reached the destination.
    Lost {
        /// The event (`a1`).
        event: String,
        /// Its key.
        key: String,
        /// Its event id.
        event_id: Uuid,
        /// Records the store still held as pending when the run ended.
        pending: u64,
    },
    /// An event whose transaction rolled back reached the destination.
    RolledBack {
        /// The event.
        event: String,
        /// Its key.
        key: String,
        /// Its event id.
        event_id: Uuid,
        /// Where it arrived in the destination's log, from 0.
        position: usize,
    },
    /// A record that no writer attempted reached the destination.
    Unknown {
        /// Its event id.
        event_id: Uuid,
        /// Where it arrived in the destination's log, from 0.
        position: usize,
    },
    /// The first copy of an event arrived before the first copy of an
    /// event of the same key committed before it.
    OutOfOrder {
        /// The event that arrived too early.
        event: String,
        /// Its key.
        key: String,
        /// Its event id.
        event_id: Uuid,
        /// Where it arrived in the destination's log, from 0.
        position: usize,
        /// The event of the same key, committed earlier, not arrived yet.
        earlier: String,
    },
    /// More copies of an event arrived than the faults of the run explain.
    Duplicate {
        /// The event.
        event: String,
        /// Its key.
        key: String,
        /// Its event id.
        event_id: Uuid,
        /// Where the unexplained copy arrived in the destination's log.
        position: usize,
        /// Which copy it is (2 for the first duplicate).
        copy: usize,
        /// The event's hand-offs by claims that never settled it: each may
        /// cause one more copy.
        in_flight: usize,
    },
    /// A relay whose lease ran out and was taken over settled late, and
    /// the store let its stale claim change records.
    StaleSettle {
        /// The stale claim's token.
        token: String,
        /// How many records its settle changed.
        changed: u64,
    },
    /// A relay's batch never finished: it waited for something that only
    /// the next turn brings, such as a writer's transaction that holds a
    /// key (the relay must never wait for a business transaction).
    Hung {
        /// The relay.
        relay: String,
        /// Its last step.
        last_step: String,
    },
    /// Every event arrived, but the store still holds records as pending.
    Stuck {
        /// How many.
        pending: u64,
    },
    /// A run took a different step than the fault-free run of the same
    /// history did before the fault: the explorer needs runs that repeat.
    Nondeterministic {
        /// The first step that differs.
        step: usize,
        /// What the fault-free run did.
        expected: String,
        /// What this run did.
        found: String,
    },
    /// The schedule's fault step never came: the run had fewer steps.
    Unreached {
        /// The fault's step.
        step: usize,
        /// The run's steps.
        steps: usize,
    },
    /// The store failed outside a relay's batch (enqueue, stats).
    Store(String),
    /// A relay could not be built.
    Setup(String),
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Lost {
                event,
                key,
                event_id,
                pending,
            } => write!(
                f,
                "event {event} (key {key}, event id {event_id}) was committed but never \
                 reached the destination ({pending} records still pending in the store); \
                 expected every committed event delivered at least once"
            ),
            Problem::RolledBack {
                event,
                key,
                event_id,
                position,
            } => write!(
                f,
                "event {event} (key {key}, event id {event_id}) reached the destination at \
                 position {position}, but its transaction rolled back; expected a rolled-back \
                 event never delivered"
            ),
            Problem::Unknown { event_id, position } => write!(
                f,
                "a record with event id {event_id}, which no writer attempted, reached the \
                 destination at position {position}; expected only the history's events"
            ),
            Problem::OutOfOrder {
                event,
                key,
                event_id,
                position,
                earlier,
            } => write!(
                f,
                "event {event} (key {key}, event id {event_id}) first reached the destination \
                 at position {position}, before any copy of {earlier}, committed before it; \
                 expected the first copies of key {key} in commit order"
            ),
            Problem::Duplicate {
                event,
                key,
                event_id,
                position,
                copy,
                in_flight,
            } => write!(
                f,
                "event {event} (key {key}, event id {event_id}) reached the destination \
                 again (copy {copy}, at position {position}); only {in_flight} of its hand-offs were \
                 by claims that never settled it (a crashed relay, or a stalled one whose \
                 lease was taken over), so expected at most {} {}",
                in_flight + 1,
                if *in_flight == 0 { "copy" } else { "copies" }
            ),
            Problem::StaleSettle { token, changed } => write!(
                f,
                "claim {token} settled after its lease ran out and its records were taken \
                 over, and the store changed {changed} records; expected a stale claim's \
                 settle to change nothing"
            ),
            Problem::Hung { relay, last_step } => write!(
                f,
                "relay {relay}'s batch never finished (its last step: {last_step}); expected a \
                 relay that never waits for a writer's open transaction"
            ),
            Problem::Stuck { pending } => write!(
                f,
                "every event arrived, but the store still holds {pending} records as \
                 pending; expected nothing pending once the relays are idle"
            ),
            Problem::Nondeterministic {
                step,
                expected,
                found,
            } => write!(
                f,
                "step {step} was `{found}`, but the fault-free run of this history took \
                 `{expected}` there; expected runs that repeat step for step (a store that \
                 orders records by wall-clock time or at random?)"
            ),
            Problem::Unreached { step, steps } => write!(
                f,
                "the fault at step {step} never came: the run took {steps} steps"
            ),
            Problem::Store(message) => write!(f, "the store failed: {message}"),
            Problem::Setup(message) => write!(f, "cannot build a relay: {message}"),
        }
    }
}

/// A broken promise: the schedule that reproduces it, the first problem,
/// the destination's log and everything the run did.
///
/// Its `Display` prints all of that, with the schedule in the form
/// [`Explorer::run_schedule`](super::Explorer::run_schedule) replays.
#[derive(Debug, Clone)]
pub struct Violation(Box<Report>);

#[derive(Debug, Clone)]
struct Report {
    schedule: Schedule,
    problem: Problem,
    ledger: Vec<String>,
    journal: Vec<String>,
}

impl Violation {
    /// `problem` of `schedule`, with what the run left in `state`, if it
    /// ran.
    pub(super) fn new(schedule: Schedule, problem: Problem, state: Option<&RunState>) -> Self {
        let (ledger, journal) = match state {
            Some(state) => {
                let ledger = state
                    .ledger
                    .iter()
                    .map(|arrival| match arrival.event {
                        Some(event) => state.labels[event].clone(),
                        None => arrival.event_id.to_string(),
                    })
                    .collect();
                (ledger, state.journal.clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        Self(Box::new(Report {
            schedule,
            problem,
            ledger,
            journal,
        }))
    }

    /// The schedule that reproduces it.
    pub fn schedule(&self) -> &Schedule {
        &self.0.schedule
    }

    /// The first broken promise.
    pub fn problem(&self) -> &Problem {
        &self.0.problem
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Report {
            schedule,
            problem,
            ledger,
            journal,
        } = &*self.0;
        writeln!(f, "the outbox broke a promise in schedule `{}`", schedule)?;
        writeln!(f, "  {problem}")?;
        writeln!(f, "destination log: {}", ledger.join(" "))?;
        writeln!(
            f,
            "the run, step by step (steps numbered; claim tokens are <relay>#<claim>):"
        )?;
        for line in journal {
            writeln!(f, "  {line}")?;
        }
        write!(
            f,
            "replay it with Explorer::run_schedule(&\"{schedule}\".parse()?)"
        )
    }
}

impl std::error::Error for Violation {}
