//! What a pipelined batch reports for each record, and the order gaps it
//! counts.

use outbox_engine::{HeldBack, OutboxRecord, Outcome};

use super::handoff::RecordResult;

/// Turns results into reports.
pub(super) struct Reporter<'r, S, R> {
    pub(super) records: &'r [OutboxRecord],
    pub(super) resolve: S,
    pub(super) report: R,
    pub(super) gaps: u64,
}

impl<S, R> Reporter<'_, S, R>
where
    S: Fn(&OutboxRecord, RecordResult) -> Outcome,
    R: Fn(usize, Outcome),
{
    pub(super) fn outcome(&self, index: usize, result: RecordResult) {
        (self.report)(index, (self.resolve)(&self.records[index], result));
    }

    pub(super) fn held_back(&self, index: usize, behind: usize) {
        let held = HeldBack::new(&self.records[index], &self.records[behind]);
        (self.report)(index, Outcome::Retriable(Box::new(held)));
    }

    /// `index` was delivered after `failed`, an earlier record of its key,
    /// failed.
    pub(super) fn gap(&mut self, index: usize, failed: usize) {
        let record = &self.records[index];
        tracing::error!(
            id = record.id,
            event_id = %record.event_id,
            key = record.key.as_deref(),
            behind_id = self.records[failed].id,
            "Kafka wrote a record after an earlier record of its key failed in the same batch; \
             the key's order in the topic may be broken (the earlier record is retried and \
             lands after it)"
        );
        self.gaps += 1;
    }
}
