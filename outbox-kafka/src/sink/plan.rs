//! The bookkeeping of a pipelined batch: where each record stands, which
//! records are ready to hand over, and when a key's next segment starts.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use outbox_engine::sink::KeyGroups;
use outbox_engine::{OutboxRecord, Outcome};
use tokio::time::Instant;

use super::handoff::{RecordResult, SegmentToken};
use super::reporter::Reporter;

/// Where a record stands.
#[derive(Debug)]
enum Slot {
    /// Its segment has not started.
    Idle,
    /// Waiting to be handed over.
    Ready,
    /// In the producer.
    Sent,
    /// Delivered; the report waits for the earlier records of its key.
    Delivered,
    /// Reported.
    Reported,
}

/// Where a key's records (a group of the batch's [`KeyGroups`]) stand.
#[derive(Debug, Default)]
struct Chain {
    /// How many of them have started (their segments).
    started: usize,
    /// How many of them, from the first, are reported.
    reported: usize,
    /// The position of its first failed record, once one failed.
    failed: Option<usize>,
    /// The token of its current segment.
    token: SegmentToken,
}

/// The bookkeeping of a pipelined batch.
#[derive(Debug)]
pub(super) struct Plan<'t> {
    topics: &'t [Cow<'t, str>],
    groups: KeyGroups,
    /// Each group's progress.
    chains: Vec<Chain>,
    slots: Vec<Slot>,
    /// Records to hand over, in order, with when their segment started.
    ready: VecDeque<(usize, Instant)>,
    /// Records handed over, with when, in that order; trimmed from the
    /// front as they get outcomes or expire.
    handed: VecDeque<(Instant, usize)>,
}

impl<'t> Plan<'t> {
    /// Groups the records by key and starts every key's first segment.
    pub(super) fn new(records: &[OutboxRecord], topics: &'t [Cow<'t, str>]) -> Self {
        let groups = KeyGroups::new(records);
        let mut plan = Self {
            topics,
            chains: groups.iter().map(|_| Chain::default()).collect(),
            groups,
            slots: records.iter().map(|_| Slot::Idle).collect(),
            ready: VecDeque::new(),
            handed: VecDeque::new(),
        };
        let now = Instant::now();
        for chain in 0..plan.chains.len() {
            let end = plan.segment_end(chain);
            plan.chains[chain].started = end;
        }
        // Every first segment at once, in batch order.
        for index in 0..records.len() {
            let (chain, position) = plan.groups.place(index);
            if position < plan.chains[chain].started {
                plan.slots[index] = Slot::Ready;
                plan.ready.push_back((index, now));
            }
        }
        plan
    }

    /// Where the segment starting at `chain`'s first unstarted record ends.
    fn segment_end(&self, chain: usize) -> usize {
        let indexes = self.groups.group(chain);
        let started = self.chains[chain].started;
        let topic = &self.topics[indexes[started]];
        let mut end = started + 1;
        while end < indexes.len() && self.topics[indexes[end]] == *topic {
            end += 1;
        }
        end
    }

    /// The next record to hand over, if any; records held back meanwhile
    /// are skipped.
    pub(super) fn next_ready(&mut self) -> Option<(usize, Instant)> {
        while let Some(&(index, since)) = self.ready.front() {
            if matches!(self.slots[index], Slot::Ready) {
                return Some((index, since));
            }
            self.ready.pop_front();
        }
        None
    }

    /// The token of `index`'s segment.
    pub(super) fn token(&mut self, index: usize) -> &mut SegmentToken {
        &mut self.chains[self.groups.place(index).0].token
    }

    /// The record at the front was handed over.
    pub(super) fn sent(&mut self, index: usize) {
        self.taken(index);
        self.slots[index] = Slot::Sent;
        self.handed.push_back((Instant::now(), index));
    }

    /// When the oldest record still in the producer will have been there
    /// for `expire_after`, if any is.
    pub(super) fn next_expiry(&mut self, expire_after: Duration) -> Option<Instant> {
        while let Some(&(_, index)) = self.handed.front() {
            if matches!(self.slots[index], Slot::Sent) {
                break;
            }
            self.handed.pop_front();
        }
        self.handed.front().map(|&(at, _)| at + expire_after)
    }

    /// The records in the producer for `expire_after` by now were dealt
    /// with: the next expiry is a later record's.
    pub(super) fn expired(&mut self, expire_after: Duration) {
        let now = Instant::now();
        while self
            .handed
            .front()
            .is_some_and(|&(at, _)| at + expire_after <= now)
        {
            self.handed.pop_front();
        }
    }

    /// Whether some key has more than one record in the producer.
    pub(super) fn a_key_has_several_in_producer(&self) -> bool {
        self.groups.iter().any(|indexes| {
            indexes
                .iter()
                .filter(|&&index| matches!(self.slots[index], Slot::Sent))
                .nth(1)
                .is_some()
        })
    }

    /// The record at the front leaves the queue of records to hand over.
    pub(super) fn taken(&mut self, index: usize) {
        let front = self.ready.pop_front();
        debug_assert_eq!(front.map(|(i, _)| i), Some(index));
    }

    /// Whether a later record of `index`'s key is in the producer.
    pub(super) fn later_in_producer(&self, index: usize) -> bool {
        let (chain, position) = self.groups.place(index);
        self.groups.group(chain)[position + 1..self.chains[chain].started]
            .iter()
            .any(|&later| matches!(self.slots[later], Slot::Sent))
    }

    /// Record `index` has its result: reports what can be reported and
    /// starts its key's next segment when the current one is delivered.
    pub(super) fn finish<S, R>(
        &mut self,
        index: usize,
        result: RecordResult,
        out: &mut Reporter<'_, S, R>,
    ) where
        S: Fn(&OutboxRecord, RecordResult) -> Outcome,
        R: Fn(usize, Outcome),
    {
        let (c, position) = self.groups.place(index);
        let indexes = self.groups.group(c);
        if result.is_ok() {
            self.slots[index] = Slot::Delivered;
        } else {
            self.slots[index] = Slot::Reported;
            out.outcome(index, result);
            let chain = &mut self.chains[c];
            if chain.failed.is_none_or(|failed| position < failed) {
                chain.failed = Some(position);
            }
            // What has not reached the producer stays out of it.
            for &later in &indexes[position + 1..] {
                if matches!(self.slots[later], Slot::Idle | Slot::Ready) {
                    self.slots[later] = Slot::Reported;
                    out.held_back(later, index);
                }
            }
        }
        // Report the deliveries whose earlier records all have outcomes.
        let chain = &mut self.chains[c];
        while let Some(&next) = indexes.get(chain.reported) {
            match self.slots[next] {
                Slot::Reported => {}
                Slot::Delivered => {
                    if let Some(failed) = chain.failed.filter(|&f| f < chain.reported) {
                        out.gap(next, indexes[failed]);
                    }
                    self.slots[next] = Slot::Reported;
                    out.outcome(next, Ok(()));
                }
                Slot::Idle | Slot::Ready | Slot::Sent => break,
            }
            chain.reported += 1;
        }
        // A delivered segment starts the next one.
        let chain = &self.chains[c];
        if chain.failed.is_none()
            && chain.reported == chain.started
            && chain.started < indexes.len()
        {
            let end = self.segment_end(c);
            let chain = &mut self.chains[c];
            let now = Instant::now();
            for &next in &indexes[chain.started..end] {
                self.slots[next] = Slot::Ready;
                self.ready.push_back((next, now));
            }
            chain.started = end;
            chain.token = None;
        }
    }

    pub(super) fn all_reported(&self) -> bool {
        self.slots.iter().all(|slot| matches!(slot, Slot::Reported))
    }
}
