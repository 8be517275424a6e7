//! The checks of a run's destination log against its history.

use std::collections::{HashMap, HashSet};

use uuid::Uuid;

use super::problem::Problem;
use super::run::Execution;
use super::schedule::Schedule;

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
