//! The outcomes of a batch in flight, grouped by key, handed out for
//! settling as soon as what to do with them is known.

use crate::sink::KeyGroups;
use crate::{OutboxRecord, Outcome};

/// A record ready to settle.
#[derive(Debug)]
pub(super) struct Ready {
    /// Its index in the batch.
    pub(super) index: usize,
    /// What the sink reported.
    pub(super) outcome: Outcome,
    /// Whether an earlier record of its key in the batch failed (or got no
    /// outcome): a failure is then not an attempt of its own.
    pub(super) behind: bool,
}

#[derive(Debug)]
enum Slot {
    Waiting,
    Reported(Outcome),
    /// Handed out; whether it had failed.
    Taken {
        failed: bool,
    },
}

impl Slot {
    fn failed(&self) -> bool {
        match self {
            Slot::Waiting => false,
            Slot::Reported(outcome) => !outcome.is_delivered(),
            Slot::Taken { failed } => *failed,
        }
    }
}

/// What the sink reported so far for each record of a batch.
///
/// A delivered record is ready at once. A failed record is ready once
/// every record of its key in the batch has an outcome: only then is it
/// known whether it is the key's first failure (an attempt: retry or dead)
/// or one behind it (released), and only then can the key be claimed
/// again without a record of it still in the sink's hands (a retried head
/// overtaking its own later records).
#[derive(Debug)]
pub(super) struct Tracker {
    slots: Vec<Slot>,
    groups: KeyGroups,
}

impl Tracker {
    pub(super) fn new(records: &[OutboxRecord]) -> Self {
        Self {
            slots: records.iter().map(|_| Slot::Waiting).collect(),
            groups: KeyGroups::new(records),
        }
    }

    /// Records an outcome; false if the index is out of range or already
    /// has one.
    pub(super) fn report(&mut self, index: usize, outcome: Outcome) -> bool {
        match self.slots.get_mut(index) {
            Some(slot @ Slot::Waiting) => {
                *slot = Slot::Reported(outcome);
                true
            }
            _ => false,
        }
    }

    /// Gives every record still without an outcome a retriable one, so it
    /// is released (or retried when it heads its key); returns how many.
    pub(super) fn report_missing(&mut self) -> usize {
        let mut missing = 0;
        for slot in &mut self.slots {
            if matches!(slot, Slot::Waiting) {
                *slot = Slot::Reported(Outcome::retriable(
                    "the sink returned no outcome for this record",
                ));
                missing += 1;
            }
        }
        missing
    }

    /// The records not handed out yet (waiting for an outcome, or for the
    /// rest of their key).
    pub(super) fn unsettled(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| !matches!(slot, Slot::Taken { .. }))
            .map(|(index, _)| index)
    }

    /// Hands out every record whose settlement is known.
    pub(super) fn take_settled(&mut self) -> Vec<Ready> {
        let mut ready = Vec::new();
        for indexes in self.groups.iter() {
            let complete = indexes
                .iter()
                .all(|&index| !matches!(self.slots[index], Slot::Waiting));
            let mut failed_before = false;
            for &index in indexes {
                let slot = &mut self.slots[index];
                let failed = slot.failed();
                let take = match slot {
                    Slot::Reported(outcome) => outcome.is_delivered() || complete,
                    _ => false,
                };
                if take {
                    let Slot::Reported(outcome) = std::mem::replace(slot, Slot::Taken { failed })
                    else {
                        unreachable!("matched as reported")
                    };
                    ready.push(Ready {
                        index,
                        outcome,
                        behind: failed_before,
                    });
                }
                failed_before |= failed;
            }
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::batch;

    fn taken(ready: &[Ready]) -> Vec<(usize, bool, bool)> {
        ready
            .iter()
            .map(|r| (r.index, r.outcome.is_delivered(), r.behind))
            .collect()
    }

    #[test]
    fn delivered_records_are_ready_at_once_failures_when_their_key_is_known() {
        let records = batch(&[Some("a"), Some("a"), Some("a"), None]);
        let mut tracker = Tracker::new(&records);
        assert!(tracker.report(1, Outcome::retriable("held back")));
        assert!(tracker.report(3, Outcome::Delivered));
        // Record 1 failed, but record 0 of its key is unknown yet.
        assert_eq!(taken(&tracker.take_settled()), vec![(3, true, false)]);
        assert!(tracker.report(0, Outcome::retriable("timeout")));
        // Record 2 of the key is still in the sink's hands: the failures
        // wait for it.
        assert!(tracker.take_settled().is_empty());
        assert_eq!(tracker.unsettled().collect::<Vec<_>>(), vec![0, 1, 2]);
        assert!(tracker.report(2, Outcome::retriable("held back")));
        assert_eq!(
            taken(&tracker.take_settled()),
            vec![(0, false, false), (1, false, true), (2, false, true)]
        );
        assert!(tracker.take_settled().is_empty());
        assert!(!tracker.report(0, Outcome::Delivered), "reported twice");
        assert!(!tracker.report(9, Outcome::Delivered), "no such record");
    }

    #[test]
    fn a_delivered_prefix_is_ready_before_the_rest_of_its_key() {
        let records = batch(&[Some("a"), Some("a"), Some("a")]);
        let mut tracker = Tracker::new(&records);
        tracker.report(0, Outcome::Delivered);
        assert_eq!(taken(&tracker.take_settled()), vec![(0, true, false)]);
        tracker.report(1, Outcome::permanent("too large"));
        assert!(tracker.take_settled().is_empty(), "record 2 is unknown yet");
        assert_eq!(tracker.report_missing(), 1);
        assert_eq!(
            taken(&tracker.take_settled()),
            vec![(1, false, false), (2, false, true)]
        );
    }

    #[test]
    fn a_record_delivered_behind_a_failure_is_ready_and_flagged() {
        let records = batch(&[Some("a"), Some("a"), Some("a")]);
        let mut tracker = Tracker::new(&records);
        tracker.report(0, Outcome::retriable("timeout"));
        tracker.report(1, Outcome::Delivered);
        assert_eq!(taken(&tracker.take_settled()), vec![(1, true, true)]);
        tracker.report(2, Outcome::retriable("held back"));
        assert_eq!(
            taken(&tracker.take_settled()),
            vec![(0, false, false), (2, false, true)]
        );
        assert_eq!(tracker.unsettled().count(), 0);
    }

    #[test]
    fn missing_outcomes_are_released() {
        let records = batch(&[None, Some("b")]);
        let mut tracker = Tracker::new(&records);
        tracker.report(1, Outcome::Delivered);
        assert_eq!(tracker.report_missing(), 1);
        let ready = tracker.take_settled();
        assert_eq!(taken(&ready), vec![(0, false, false), (1, true, false)]);
    }
}
