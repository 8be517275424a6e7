//! Publishing one batch: the records of a key are sent one after the other,
//! every key at once, and delivery reports are collected as they come.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use outbox_core::OutboxRecord;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use tokio::time::Instant;

use super::context::TracingContext;
use super::routing::{Routing, check_topic};
use crate::Error;
use crate::classify::{Class, classify};
use crate::headers::message_headers;

/// The producer the sink drives.
pub(crate) type Producer = FutureProducer<TracingContext>;

/// How long to wait before enqueuing again when the producer's queue is
/// full and none of the batch's own records is in flight to free a slot.
const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// What became of one record: delivered, or why not.
pub(crate) type RecordResult = Result<(), Error>;

/// The settings one batch needs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// How long the batch may take: `message.timeout.ms`.
    pub(crate) timeout: Duration,
    /// Whether a missing topic is a permanent failure.
    pub(crate) unknown_topic_is_permanent: bool,
}

/// Publishes `records` and returns one result per record, in order.
///
/// The records of each key form a chain, in batch order; a keyless record is
/// a chain of its own. The head of every chain is handed to the producer at
/// once; when a head is delivered, the next record of its chain follows;
/// when a head fails, the rest of its chain is held back. So no record is
/// sent before the previous record of its key is acknowledged, whatever
/// librdkafka does with retries, timeouts and epoch bumps.
pub(crate) async fn publish_batch(
    producer: &Producer,
    records: &[OutboxRecord],
    routing: &Routing,
    limits: Limits,
) -> Vec<RecordResult> {
    let deadline = Instant::now() + limits.timeout;
    let topics: Vec<Cow<'_, str>> = records.iter().map(|r| routing.topic(r)).collect();
    let mut batch = Batch::new(records);
    let mut ready: VecDeque<usize> = (0..batch.chains.len()).collect();
    let mut in_flight = FuturesUnordered::new();

    loop {
        // Hand the head of every ready chain to the producer.
        while let Some(chain) = ready.pop_front() {
            let index = batch.head(chain);
            let record = &records[index];
            let topic = &*topics[index];
            if let Err(reason) = check_topic(topic) {
                let error = Error::InvalidTopic {
                    event_id: record.event_id,
                    topic: topic.to_owned(),
                    reason,
                };
                batch.fail(chain, error);
                continue;
            }
            match enqueue(producer, record, topic) {
                Ok(delivery) => in_flight.push(async move { (chain, delivery.await) }),
                Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) => {
                    // Try again once a delivery report frees a slot.
                    ready.push_front(chain);
                    break;
                }
                Err(error) => batch.fail(chain, delivery_error(record, topic, error, limits)),
            }
        }

        if in_flight.is_empty() {
            if ready.is_empty() {
                break;
            }
            // The queue is full of records that are not this batch's.
            if Instant::now() + QUEUE_FULL_PAUSE >= deadline {
                break;
            }
            tokio::time::sleep(QUEUE_FULL_PAUSE).await;
            continue;
        }

        let Ok(Some((chain, report))) = tokio::time::timeout_at(deadline, in_flight.next()).await
        else {
            break;
        };
        let index = batch.head(chain);
        match report {
            Ok(Ok(_delivery)) => {
                if batch.deliver(chain) {
                    ready.push_back(chain);
                }
            }
            Ok(Err((error, _message))) => {
                let error = delivery_error(&records[index], &topics[index], error, limits);
                batch.fail(chain, error);
            }
            Err(_canceled) => {
                let error = delivery_error(
                    &records[index],
                    &topics[index],
                    KafkaError::Canceled,
                    limits,
                );
                batch.fail(chain, error);
            }
        }
    }

    // Out of time: heads still waiting for a free slot were never sent;
    // heads in flight may or may not have arrived.
    let queue_full: HashSet<usize> = ready.into_iter().collect();
    for chain in 0..batch.chains.len() {
        if batch.chains[chain].is_empty() {
            continue;
        }
        let index = batch.head(chain);
        let record = &records[index];
        let error = if queue_full.contains(&chain) {
            let full = KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull);
            delivery_error(record, &topics[index], full, limits)
        } else {
            Error::DeliveryTimeout {
                event_id: record.event_id,
                topic: topics[index].clone().into_owned(),
                timeout: limits.timeout,
            }
        };
        batch.fail(chain, error);
    }
    batch.into_results()
}

/// Hands one record to the producer without waiting for it to be sent.
fn enqueue(
    producer: &Producer,
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

/// The chains of a batch and what became of each record.
struct Batch<'r> {
    records: &'r [OutboxRecord],
    /// Record indexes still to settle, per chain, in batch order.
    chains: Vec<VecDeque<usize>>,
    results: Vec<Option<RecordResult>>,
}

impl<'r> Batch<'r> {
    fn new(records: &'r [OutboxRecord]) -> Self {
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
            results: (0..records.len()).map(|_| None).collect(),
        }
    }

    /// The record the chain waits on.
    fn head(&self, chain: usize) -> usize {
        self.chains[chain][0]
    }

    /// Settles the chain's head as delivered; true when the chain has more.
    fn deliver(&mut self, chain: usize) -> bool {
        if let Some(index) = self.chains[chain].pop_front() {
            self.results[index] = Some(Ok(()));
        }
        !self.chains[chain].is_empty()
    }

    /// Settles the chain's head with `error` and holds back the rest.
    fn fail(&mut self, chain: usize, error: Error) {
        let Some(index) = self.chains[chain].pop_front() else {
            return;
        };
        let behind = self.records[index].event_id;
        let key = self.records[index].key.clone().unwrap_or_default();
        for held in self.chains[chain].drain(..) {
            self.results[held] = Some(Err(Error::HeldBack {
                event_id: self.records[held].event_id,
                behind,
                key: key.clone(),
            }));
        }
        self.results[index] = Some(Err(error));
    }

    fn into_results(self) -> Vec<RecordResult> {
        self.results
            .into_iter()
            .map(|result| result.expect("every chain is settled before the batch ends"))
            .collect()
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
        let batch = Batch::new(&records);
        let chains: Vec<Vec<usize>> = batch
            .chains
            .iter()
            .map(|c| c.iter().copied().collect())
            .collect();
        assert_eq!(chains, vec![vec![0, 3, 5], vec![1], vec![2], vec![4]]);
    }

    #[test]
    fn a_failed_head_holds_back_the_rest_of_its_key() {
        let records = [
            record(1, Some("a")),
            record(2, Some("b")),
            record(3, Some("a")),
        ];
        let mut batch = Batch::new(&records);
        assert!(!batch.deliver(1));
        let timeout = Error::DeliveryTimeout {
            event_id: records[0].event_id,
            topic: "t".into(),
            timeout: Duration::from_secs(1),
        };
        batch.fail(0, timeout);
        let results = batch.into_results();
        assert!(matches!(results[0], Err(Error::DeliveryTimeout { .. })));
        assert!(results[1].is_ok());
        match &results[2] {
            Err(Error::HeldBack { behind, key, .. }) => {
                assert_eq!(*behind, records[0].event_id);
                assert_eq!(key, "a");
            }
            other => panic!("{other:?}"),
        }
    }
}
