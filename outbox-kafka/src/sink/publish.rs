//! Publishing one batch: the records of a key are sent one after the other,
//! every key at once ([`publish_by_key`]), and each record's result is
//! reported as soon as it is known.

use std::time::Duration;

use outbox_core::sink::publish_by_key;
use outbox_core::{OutboxRecord, Outcome};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::time::Instant;

use super::routing::{Routing, check_topic};
use crate::Error;
use crate::classify::{Class, classify};
use crate::headers::message_headers;

/// How long to wait before enqueuing again when the producer's queue is
/// full: a delivery report of the batch's own, or of a concurrent batch's,
/// frees a slot.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// How much longer than `message.timeout.ms` the sink waits for a record's
/// delivery report before it gives up on it.
///
/// librdkafka itself fails a record `message.timeout.ms` after it was
/// produced (an in-flight request's timeout is capped the same way), but it
/// looks for expired records once a second and hands reports over through
/// a polling thread, so the report can come a little late. This timer only
/// decides when a report never comes at all.
pub(crate) const REPORT_GRACE: Duration = Duration::from_secs(3);

/// What became of one record: delivered, or why not.
pub(crate) type RecordResult = Result<(), Error>;

/// The settings one batch needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long one record may take, from its hand-off to the producer (or
    /// from when it starts waiting for room in the producer's queue):
    /// `message.timeout.ms`.
    pub(crate) timeout: Duration,
    /// Whether a missing topic is a permanent failure.
    pub(crate) unknown_topic_is_permanent: bool,
}

/// Publishes `records` and calls `report(index, outcome)` once per record
/// (`index` into `records`) as soon as its outcome is known.
///
/// The per-key rules are [`publish_by_key`]'s: a key's records are handed
/// to the producer one after the other, each once the previous one's
/// delivery report says it is written; every key and every keyless record
/// at once; after a failure, the rest of the key is held back. So no record
/// is sent before the previous record of its key is acknowledged, whatever
/// librdkafka does with retries, timeouts and epoch bumps.
///
/// There is no deadline for the batch as a whole: each record's wait is
/// bounded on its own (see [`send`]), so a long chain takes as long as its
/// records need, and a slow record delays only its own key. `settle` turns
/// a record's result into its outcome (the sink's fatal-error check).
pub(crate) async fn publish_batch<C, S, R>(
    producer: &FutureProducer<C>,
    records: &[OutboxRecord],
    routing: &Routing,
    limits: Limits,
    settle: S,
    report: R,
) where
    C: ClientContext + 'static,
    S: Fn(&OutboxRecord, RecordResult) -> Outcome,
    R: Fn(usize, Outcome),
{
    publish_by_key(records, report, |record| {
        let settle = &settle;
        async move { settle(record, send(producer, record, routing, limits).await) }
    })
    .await;
}

/// Sends one record and waits for its delivery report.
///
/// The wait is bounded from the hand-off to the producer
/// (librdkafka's `message.timeout.ms`, plus [`REPORT_GRACE`] in case no
/// report comes), and a record that finds the producer's queue full waits
/// for room at most `message.timeout.ms` from when it became ready.
async fn send<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    record: &OutboxRecord,
    routing: &Routing,
    limits: Limits,
) -> RecordResult {
    let topic = routing.topic(record);
    let topic = &*topic;
    if let Err(reason) = check_topic(topic) {
        return Err(Error::InvalidTopic {
            event_id: record.event_id,
            topic: topic.to_owned(),
            reason,
        });
    }
    let ready = Instant::now();
    let delivery = loop {
        match enqueue(
            producer,
            record,
            topic,
            routing.cloud_events_source.as_deref(),
        ) {
            Ok(delivery) => break delivery,
            // Try again once a slot is free: a delivery report of this
            // batch's, or of a concurrent batch's, frees one.
            Err(error)
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull)
                    && ready.elapsed() < limits.timeout =>
            {
                tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            }
            Err(error) => return Err(delivery_error(record, topic, error, limits)),
        }
    };
    let deadline = Instant::now() + limits.timeout + REPORT_GRACE;
    match tokio::time::timeout_at(deadline, delivery).await {
        Ok(Ok(Ok(_delivery))) => Ok(()),
        Ok(Ok(Err((error, _message)))) => Err(delivery_error(record, topic, error, limits)),
        Ok(Err(_canceled)) => Err(delivery_error(record, topic, KafkaError::Canceled, limits)),
        Err(_elapsed) => Err(Error::DeliveryTimeout {
            event_id: record.event_id,
            topic: topic.to_owned(),
            timeout: limits.timeout + REPORT_GRACE,
        }),
    }
}

/// Hands one record to the producer without waiting for it to be sent.
fn enqueue<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    record: &OutboxRecord,
    topic: &str,
    cloud_events_source: Option<&str>,
) -> Result<DeliveryFuture, KafkaError> {
    let mut message = FutureRecord::<str, str>::to(topic)
        .payload(record.payload.as_str())
        .timestamp(record.created_at.timestamp_millis())
        .headers(message_headers(record, cloud_events_source));
    if let Some(key) = record.key.as_deref() {
        message = message.key(key);
    }
    producer.send_result(message).map_err(|(error, _)| error)
}

/// A Kafka failure of `record`, classified.
fn delivery_error(record: &OutboxRecord, topic: &str, error: KafkaError, limits: Limits) -> Error {
    Error::Delivery {
        event_id: record.event_id,
        topic: topic.to_owned(),
        retriable: classify(&error, limits.unknown_topic_is_permanent) == Class::Retriable,
        error,
    }
}
