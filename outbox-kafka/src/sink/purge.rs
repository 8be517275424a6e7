//! [`PurgeGate`]: the pipelined batches' purges of the producer's queue,
//! kept apart from their hand-overs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{PoisonError, RwLock};

use rdkafka::client::ClientContext;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer as _, PurgeConfig};

use super::handoff::{Cut, Handoff, SegmentToken};

/// Keeps the sink's purges and its hand-overs apart: a purge waits for the
/// hand-over in progress, and the rest of a segment some of whose records
/// were handed over before a purge is not handed over after it (the purge
/// may have failed those records, and the rest would be written without
/// them).
/// One per sink, since the sink's batches share the producer.
#[derive(Debug, Default)]
pub(crate) struct PurgeGate {
    /// How many purges the sink made. Read for each hand-over, written for
    /// a purge.
    purges: RwLock<u64>,
    /// Whether a record was handed over since the last purge, which a new
    /// one would catch.
    handed: AtomicBool,
}

impl PurgeGate {
    /// Calls `hand_off`, unless the segment `segment` belongs to began
    /// before a purge: `None` then.
    pub(super) fn hand_over<F>(
        &self,
        segment: &mut SegmentToken,
        hand_off: impl FnOnce() -> Handoff<F>,
    ) -> Option<Handoff<F>> {
        let purges = self.purges.read().unwrap_or_else(PoisonError::into_inner);
        if segment.is_some_and(|seen| seen != *purges) {
            return None;
        }
        let handoff = hand_off();
        if matches!(handoff, Handoff::Sent(_)) {
            *segment = Some(*purges);
            self.handed.store(true, Ordering::Relaxed);
        }
        Some(handoff)
    }

    /// Makes the records still queued in the producer fail, for `why`:
    /// some of them belong to keys whose earlier records are failing or
    /// about to, and written after those they would break the keys' order.
    ///
    /// librdkafka's gapless guarantee does not cover `message.timeout.ms`.
    /// It looks for expired records once a second and fails those whose
    /// time is up, oldest first, so a key's records handed over a moment
    /// apart can be split: the earlier ones failed, the later ones kept.
    /// Then it bumps the producer epoch, locally, as soon as no request is
    /// in flight, and sends the later ones, which are written. A purge
    /// fails every queued record at once and leaves those in flight, which
    /// come before them (but for records librdkafka queued again to retry
    /// them), so it does not split a key that way: the sink purges shortly
    /// before librdkafka would time records out ([`Cut::Expiring`]), and,
    /// should a record fail first all the same, as soon as it learns of it
    /// ([`Cut::Failed`]), which catches the later records only if
    /// librdkafka has not sent them yet.
    ///
    /// The purge fails the queued records of other keys and other batches
    /// too (retriably, with [`RDKafkaErrorCode::PurgeQueue`]), so it is not
    /// done for failures that cannot leave later records behind: a purge, a
    /// fatal error (the producer sends nothing more), a missing topic or
    /// partition (which fails all its queued records at once). Nor is it
    /// done when nothing was handed over since the last purge.
    ///
    /// The purge blocks until librdkafka's threads have done it (usually
    /// well under a millisecond), so that it catches no record handed over
    /// afterwards.
    pub(super) fn cut_off<C: ClientContext + 'static>(
        &self,
        producer: &FutureProducer<C>,
        why: Cut<'_>,
    ) {
        use RDKafkaErrorCode as Code;
        let cannot_split = match why {
            Cut::Expiring => false,
            Cut::Failed(error) => matches!(
                error.rdkafka_error_code(),
                Some(
                    Code::PurgeQueue
                        | Code::PurgeInflight
                        | Code::Fatal
                        | Code::UnknownTopic
                        | Code::UnknownPartition
                )
            ),
        };
        if cannot_split || producer.client().fatal_error().is_some() {
            return;
        }
        let mut purges = self.purges.write().unwrap_or_else(PoisonError::into_inner);
        if !self.handed.swap(false, Ordering::Relaxed) {
            return;
        }
        match why {
            Cut::Expiring => tracing::warn!(
                "records have waited nearly message.timeout.ms in the Kafka producer; purging \
                 its queue before librdkafka times them out, which could fail a key's earlier \
                 records and keep its later ones (the purged records are retried)"
            ),
            Cut::Failed(error) => tracing::warn!(
                %error,
                "a record failed while later records of its key were queued in the Kafka \
                 producer; purging the producer's queue so that they fail too (the purged \
                 records are retried)"
            ),
        }
        producer.purge(PurgeConfig::default().queue());
        *purges += 1;
    }
}
