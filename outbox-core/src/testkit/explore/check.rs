//! The checks of a run's destination log, and the [`Violation`] that
//! reports the first broken promise with the schedule that reproduces it.

use std::collections::{HashMap, HashSet};
use std::fmt;

use uuid::Uuid;

use super::run::Execution;
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
    pub(super) fn new(schedule: Schedule, problem: Problem, execution: Option<&Execution>) -> Self {
        let (ledger, journal) = match execution {
            Some(execution) => {
                let state = &execution.state;
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

/// Checks a run's destination log against its history: the first problem
/// in arrival order (an event that arrived ahead of an earlier one of its
/// key that never arrives is reported as that one lost), then lost events
/// in commit order, then the store's answers.
pub(super) fn check(schedule: &Schedule, execution: &Execution) -> Result<(), Problem> {
    let state = &execution.state;
    let events = &schedule.history.events;
    let key_of = |event: usize| events[event].key.to_string();
    let ids: HashMap<usize, Uuid> = state.events.iter().map(|(&id, &i)| (i, id)).collect();
    let lost = |event: usize| Problem::Lost {
        event: state.labels[event].clone(),
        key: key_of(event),
        event_id: ids.get(&event).copied().unwrap_or_default(),
        pending: execution.stuck,
    };
    let arrived: HashSet<usize> = state.ledger.iter().filter_map(|a| a.event).collect();
    // Hand-offs by claims that never had them settled as published.
    let mut in_flight: HashMap<usize, usize> = HashMap::new();
    for arrival in &state.ledger {
        if let Some(event) = arrival.event
            && !state.acked.contains(&(arrival.token.clone(), event))
        {
            *in_flight.entry(event).or_default() += 1;
        }
    }
    let mut copies: HashMap<usize, usize> = HashMap::new();
    for (position, arrival) in state.ledger.iter().enumerate() {
        let event_id = arrival.event_id;
        let Some(event) = arrival.event else {
            return Err(Problem::Unknown { event_id, position });
        };
        let label = state.labels[event].clone();
        if events[event].rolled_back {
            return Err(Problem::RolledBack {
                event: label,
                key: key_of(event),
                event_id,
                position,
            });
        }
        let copy = copies.entry(event).or_default();
        *copy += 1;
        let copy = *copy;
        if copy == 1 {
            let earlier = (0..event).find(|&other| {
                events[other].key == events[event].key
                    && !events[other].rolled_back
                    && !copies.contains_key(&other)
            });
            if let Some(earlier) = earlier {
                if !arrived.contains(&earlier) {
                    return Err(lost(earlier));
                }
                return Err(Problem::OutOfOrder {
                    event: label,
                    key: key_of(event),
                    event_id,
                    position,
                    earlier: state.labels[earlier].clone(),
                });
            }
        } else {
            let in_flight = in_flight.get(&event).copied().unwrap_or_default();
            if copy > in_flight + 1 {
                return Err(Problem::Duplicate {
                    event: label,
                    key: key_of(event),
                    event_id,
                    position,
                    copy,
                    in_flight,
                });
            }
        }
    }
    for (index, event) in events.iter().enumerate() {
        if !event.rolled_back && !copies.contains_key(&index) {
            return Err(lost(index));
        }
    }
    if let (Some(token), Some(&changed)) = (&state.stale, state.stale_changes.first()) {
        return Err(Problem::StaleSettle {
            token: token.clone(),
            changed,
        });
    }
    if execution.stuck > 0 {
        return Err(Problem::Stuck {
            pending: execution.stuck,
        });
    }
    if let Some(step) = schedule.fault.step()
        && !state.fault_hit
    {
        return Err(Problem::Unreached {
            step,
            steps: state.steps.len(),
        });
    }
    Ok(())
}
