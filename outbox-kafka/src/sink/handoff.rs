//! What passes between a pipelined batch and the producer: a record's
//! result, what handing a record over did, why the producer's queue is cut
//! off, and the token a segment carries through its hand-overs.

use std::time::Duration;

use crate::Error;

/// What became of one record: delivered, or why not.
pub(crate) type RecordResult = Result<(), Error>;

/// How long to wait before handing a record over again when the producer's
/// queue is full: a delivery report of the batch's own, or of a concurrent
/// batch's, frees a slot.
pub(crate) const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// What the sink keeps about a segment between the hand-overs of its
/// records: how many cut-offs it had seen at the first one (`None` before).
pub(crate) type SegmentToken = Option<u64>;

/// Why the producer's queue should be cut off (purged).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cut<'e> {
    /// A record has been in the producer for the batch's `expire_after`,
    /// and some key has several records in it: librdkafka is about to time
    /// records out, which could fail a key's earlier records and keep its
    /// later ones.
    Expiring,
    /// A record failed with this error while later records of its key
    /// were in the producer.
    Failed(&'e Error),
}

/// What became of handing one record to the producer.
pub(crate) enum Handoff<F> {
    /// The producer has it; `F` resolves to its delivery result.
    Sent(F),
    /// The producer's queue is full: try again shortly, or, once the record
    /// has waited long enough, give up with this result.
    Full(RecordResult),
    /// Refused before reaching the producer (its topic name, its size...).
    Refused(RecordResult),
}
