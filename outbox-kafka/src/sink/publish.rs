//! Publishing one batch, in one of two ways, and each record's result
//! reported as soon as it is known:
//!
//! - pipelined ([`publish_pipelined`]): every record handed to the producer
//!   at once, in batch order, when the producer keeps each partition
//!   gapless and in order itself;
//! - one record at a time per key ([`publish_by_key`]): each record of a
//!   key sent once the previous one is acknowledged, every key at once.

use std::borrow::Cow;
use std::time::Duration;

use outbox_engine::sink::publish_by_key;
use outbox_engine::{OutboxRecord, Outcome};
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::time::Instant;

use super::handoff::{Handoff, QUEUE_FULL_PAUSE, RecordResult};
use super::pipeline::publish_pipelined;
use super::purge::PurgeGate;
use super::routing::{Routing, check_topic};
use crate::Error;
use crate::classify::{Class, classify};
use crate::headers::message_headers;

/// How much longer than `message.timeout.ms` the sink waits for a record's
/// delivery report before it gives up on it.
///
/// librdkafka itself fails a record `message.timeout.ms` after it was
/// produced (an in-flight request's timeout is capped the same way), but it
/// looks for expired records once a second and hands reports over through
/// a polling thread, so the report can come a little late. This timer only
/// decides when a report never comes at all.
pub(crate) const REPORT_GRACE: Duration = Duration::from_secs(3);

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
/// (`index` into `records`) as soon as its outcome is known; returns the
/// number of order gaps seen (always 0 one record at a time).
///
/// `pipelined` (the producer keeps each partition gapless:
/// [`keeps_partitions_gapless`](crate::config::keeps_partitions_gapless))
/// hands every record to the producer at once, in batch order, with the
/// rules of [`publish_pipelined`]; records about to time out, or a record
/// that fails while later records of its key are in the producer, make the
/// sink purge the producer's queue (see [`PurgeGate::cut_off`]).
///
/// Otherwise the per-key rules are [`publish_by_key`]'s: a key's records
/// are handed to the producer one after the other, each once the previous
/// one's delivery report says it is written; every key and every keyless
/// record at once; after a failure, the rest of the key is held back. So
/// no record is sent before the previous record of its key is
/// acknowledged, whatever librdkafka does with retries, timeouts and epoch
/// bumps.
///
/// There is no deadline for the batch as a whole: each record's wait is
/// bounded on its own (see [`await_report`]), so a slow record delays only
/// its own key. `resolve` turns a record's result into its outcome (the
/// sink's fatal-error check).
pub(crate) async fn publish_batch<C, S, R>(
    producer: &FutureProducer<C>,
    records: &[OutboxRecord],
    routing: &Routing,
    limits: Limits,
    pipelined: Option<&PurgeGate>,
    resolve: S,
    report: R,
) -> u64
where
    C: ClientContext + 'static,
    S: Fn(&OutboxRecord, RecordResult) -> Outcome,
    R: Fn(usize, Outcome),
{
    let Some(gate) = pipelined else {
        publish_by_key(records, report, |record| {
            let resolve = &resolve;
            async move { resolve(record, send(producer, record, routing, limits).await) }
        })
        .await;
        return 0;
    };
    let topics: Vec<Cow<'_, str>> = records.iter().map(|record| routing.topic(record)).collect();
    let ce_source = routing.cloud_events_source.as_deref();
    publish_pipelined(
        records,
        &topics,
        limits.timeout,
        expire_after(limits.timeout),
        |index, segment| {
            let record = &records[index];
            let topic = &topics[index];
            gate.hand_over(segment, || {
                hand_off(producer, record, topic, ce_source, limits)
            })
            .unwrap_or_else(|| Handoff::Refused(Err(cut_off_error(record, topic, limits))))
        },
        resolve,
        report,
        |why| gate.cut_off(producer, why),
    )
    .await
}

/// How long before `message.timeout.ms` a pipelined batch purges the
/// producer's queue if records are still in it (see
/// [`PurgeGate::cut_off`]): enough for a late timer, and well under the
/// second between librdkafka's looks for expired records.
const PURGE_AHEAD: Duration = Duration::from_millis(250);

/// How long a record may be in the producer before its batch purges the
/// queue: `message.timeout.ms` less [`PURGE_AHEAD`], or half of it when it
/// is short.
fn expire_after(timeout: Duration) -> Duration {
    timeout.saturating_sub(PURGE_AHEAD).max(timeout / 2)
}

/// The failure of a record not handed over because a purge came after
/// earlier records of its segment were.
fn cut_off_error(record: &OutboxRecord, topic: &str, limits: Limits) -> Error {
    let purged = KafkaError::MessageProduction(RDKafkaErrorCode::PurgeQueue);
    delivery_error(record, topic, purged, limits)
}

/// Hands `record` to the producer for `topic` and returns the wait for its
/// delivery report.
fn hand_off<'a, C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    record: &'a OutboxRecord,
    topic: &'a str,
    cloud_events_source: Option<&str>,
    limits: Limits,
) -> Handoff<impl Future<Output = RecordResult> + use<'a, C>> {
    if let Err(reason) = check_topic(topic) {
        return Handoff::Refused(Err(Error::InvalidTopic {
            event_id: record.event_id,
            topic: topic.to_owned(),
            reason,
        }));
    }
    match enqueue(producer, record, topic, cloud_events_source) {
        Ok(delivery) => {
            let deadline = Instant::now() + limits.timeout + REPORT_GRACE;
            Handoff::Sent(await_report(delivery, deadline, record, topic, limits))
        }
        Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
            Handoff::Full(Err(delivery_error(record, topic, error, limits)))
        }
        Err(error) => Handoff::Refused(Err(delivery_error(record, topic, error, limits))),
    }
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
    await_report(delivery, deadline, record, topic, limits).await
}

/// Waits for the delivery report of `record` until `deadline`:
/// `message.timeout.ms` plus [`REPORT_GRACE`] after it was handed to the
/// producer.
async fn await_report(
    delivery: DeliveryFuture,
    deadline: Instant,
    record: &OutboxRecord,
    topic: &str,
    limits: Limits,
) -> RecordResult {
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
