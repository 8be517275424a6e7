//! Publishing one batch: the records of a key are sent one after the other,
//! every key at once, and each record's result is reported as soon as it is
//! known.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use outbox_core::OutboxRecord;
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

/// Publishes `records` and calls `report(index, result)` once per record
/// (`index` into `records`) as soon as its result is known.
///
/// The records of each key form a chain, in batch order; a keyless record is
/// a chain of its own. The head of every chain is handed to the producer at
/// once; when a head is delivered, the next record of its chain follows;
/// when a head fails, the rest of its chain is held back. So no record is
/// sent before the previous record of its key is acknowledged, whatever
/// librdkafka does with retries, timeouts and epoch bumps.
///
/// There is no deadline for the batch as a whole: each record's wait is
/// bounded on its own, from its hand-off to the producer (librdkafka's
/// `message.timeout.ms`, plus [`REPORT_GRACE`] in case no report comes), and
/// a head waiting for room in the producer's queue waits at most
/// `message.timeout.ms` from when it became ready. A long chain therefore
/// takes as long as its records need, and a slow record delays only its own
/// key.
pub(crate) async fn publish_batch<C, F>(
    producer: &FutureProducer<C>,
    records: &[OutboxRecord],
    routing: &Routing,
    limits: Limits,
    report: F,
) where
    C: ClientContext + 'static,
    F: FnMut(usize, RecordResult) + Send,
{
    let topics: Vec<Cow<'_, str>> = records.iter().map(|r| routing.topic(r)).collect();
    let mut batch = Batch::new(records, report);
    // Chains whose head is to be handed over, with when it became ready.
    // Every chain with records left is either here or in flight.
    let started = Instant::now();
    let mut ready: VecDeque<(usize, Instant)> = (0..batch.chains.len())
        .map(|chain| (chain, started))
        .collect();
    let mut in_flight = FuturesUnordered::new();

    loop {
        // Hand the head of every ready chain to the producer, until its
        // queue is full.
        while let Some(&(chain, _)) = ready.front() {
            let index = batch.head(chain);
            let record = &records[index];
            let topic = &*topics[index];
            if let Err(reason) = check_topic(topic) {
                ready.pop_front();
                let error = Error::InvalidTopic {
                    event_id: record.event_id,
                    topic: topic.to_owned(),
                    reason,
                };
                batch.fail(chain, error);
                continue;
            }
            match enqueue(producer, record, topic) {
                Ok(delivery) => {
                    ready.pop_front();
                    let deadline = Instant::now() + limits.timeout + REPORT_GRACE;
                    in_flight.push(async move {
                        (chain, tokio::time::timeout_at(deadline, delivery).await)
                    });
                }
                // Try again once a slot is free.
                Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    break;
                }
                Err(error) => {
                    ready.pop_front();
                    batch.fail(chain, delivery_error(record, topic, error, limits));
                }
            }
        }

        // A head waits for room in the queue no longer than it could wait
        // in it.
        let now = Instant::now();
        ready.retain(|&(chain, since)| {
            if now < since + limits.timeout {
                return true;
            }
            let index = batch.head(chain);
            let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
            batch.fail(
                chain,
                delivery_error(&records[index], &topics[index], full, limits),
            );
            false
        });

        let (chain, outcome) = if ready.is_empty() {
            match in_flight.next().await {
                Some(next) => next,
                // Every chain is settled.
                None => break,
            }
        } else if in_flight.is_empty() {
            // The queue is full of records that are not this batch's.
            tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            continue;
        } else {
            match tokio::time::timeout(QUEUE_FULL_PAUSE, in_flight.next()).await {
                Ok(Some(next)) => next,
                _ => continue,
            }
        };
        let index = batch.head(chain);
        let (record, topic) = (&records[index], &*topics[index]);
        match outcome {
            Ok(Ok(Ok(_delivery))) => {
                if batch.deliver(chain) {
                    ready.push_back((chain, Instant::now()));
                }
            }
            Ok(Ok(Err((error, _message)))) => {
                batch.fail(chain, delivery_error(record, topic, error, limits));
            }
            Ok(Err(_canceled)) => {
                let error = delivery_error(record, topic, KafkaError::Canceled, limits);
                batch.fail(chain, error);
            }
            Err(_elapsed) => {
                let error = Error::DeliveryTimeout {
                    event_id: record.event_id,
                    topic: topic.to_owned(),
                    timeout: limits.timeout + REPORT_GRACE,
                };
                batch.fail(chain, error);
            }
        }
    }
    debug_assert!(batch.chains.iter().all(VecDeque::is_empty));
}

/// Hands one record to the producer without waiting for it to be sent.
fn enqueue<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    record: &OutboxRecord,
    topic: &str,
) -> Result<DeliveryFuture, KafkaError> {
    let mut message = FutureRecord::<str, str>::to(topic)
        .payload(record.payload.as_str())
        .timestamp(record.created_at.timestamp_millis())
        .headers(message_headers(record));
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

/// The chains of a batch; settling a record reports its result.
struct Batch<'r, F> {
    records: &'r [OutboxRecord],
    /// Record indexes still to settle, per chain, in batch order.
    chains: Vec<VecDeque<usize>>,
    report: F,
}

impl<'r, F: FnMut(usize, RecordResult)> Batch<'r, F> {
    fn new(records: &'r [OutboxRecord], report: F) -> Self {
        let mut chains: Vec<VecDeque<usize>> = Vec::new();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for (index, record) in records.iter().enumerate() {
            match record.key.as_deref() {
                Some(key) => match by_key.get(key) {
                    Some(&chain) => chains[chain].push_back(index),
                    None => {
                        by_key.insert(key, chains.len());
                        chains.push(VecDeque::from([index]));
                    }
                },
                None => chains.push(VecDeque::from([index])),
            }
        }
        Self {
            records,
            chains,
            report,
        }
    }

    /// The record the chain waits on.
    fn head(&self, chain: usize) -> usize {
        self.chains[chain][0]
    }

    /// Settles the chain's head as delivered; true when the chain has more.
    fn deliver(&mut self, chain: usize) -> bool {
        if let Some(index) = self.chains[chain].pop_front() {
            (self.report)(index, Ok(()));
        }
        !self.chains[chain].is_empty()
    }

    /// Settles the chain's head with `error` and holds back the rest.
    fn fail(&mut self, chain: usize, error: Error) {
        let Some(index) = self.chains[chain].pop_front() else {
            return;
        };
        (self.report)(index, Err(error));
        let behind = self.records[index].event_id;
        let key = self.records[index].key.clone().unwrap_or_default();
        for held in self.chains[chain].drain(..) {
            let error = Error::HeldBack {
                event_id: self.records[held].event_id,
                behind,
                key: key.clone(),
            };
            (self.report)(held, Err(error));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: i64, key: Option<&str>) -> OutboxRecord {
        super::super::test_record(id, "t", key)
    }

    #[test]
    fn chains_group_records_by_key_in_batch_order() {
        let records = [
            record(1, Some("a")),
            record(2, None),
            record(3, Some("b")),
            record(4, Some("a")),
            record(5, None),
            record(6, Some("a")),
        ];
        let batch = Batch::new(&records, |_, _| {});
        let chains: Vec<Vec<usize>> = batch
            .chains
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect();
        assert_eq!(chains, vec![vec![0, 3, 5], vec![1], vec![2], vec![4]]);
    }

    #[test]
    fn a_failed_head_holds_back_the_rest_of_its_key_and_each_record_is_reported_once() {
        let records = [
            record(1, Some("a")),
            record(2, Some("b")),
            record(3, Some("a")),
        ];
        let mut reported = Vec::new();
        let mut batch = Batch::new(&records, |index, result| reported.push((index, result)));
        assert!(!batch.deliver(1));
        let timeout = Error::DeliveryTimeout {
            event_id: records[0].event_id,
            topic: "t".into(),
            timeout: Duration::from_secs(1),
        };
        batch.fail(0, timeout);
        assert!(batch.chains.iter().all(VecDeque::is_empty));
        drop(batch);

        let indexes: Vec<usize> = reported.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, vec![1, 0, 2]);
        assert!(reported[0].1.is_ok());
        assert!(matches!(reported[1].1, Err(Error::DeliveryTimeout { .. })));
        match &reported[2].1 {
            Err(Error::HeldBack { behind, key, .. }) => {
                assert_eq!(*behind, records[0].event_id);
                assert_eq!(key, "a");
            }
            other => panic!("{other:?}"),
        }
    }
}
