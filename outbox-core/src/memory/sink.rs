use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::event::TypedEvent;
use crate::record::OutboxRecord;
use crate::sink::{Outcome, Sink, publish_by_key};

/// How an injected failure is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// As [`Outcome::Retriable`]: the relay retries after a backoff.
    Retriable,
    /// As [`Outcome::Permanent`]: the relay moves the record to dead
    /// letters.
    Permanent,
}

/// A [`Sink`] that keeps what it is given, for tests: swap it for the
/// Kafka sink, run the relay, and assert on
/// [`events`](InMemorySink::events). It can fail on purpose
/// ([`fail_next`](InMemorySink::fail_next),
/// [`fail_topic`](InMemorySink::fail_topic)), and it keeps per-key order
/// as the [`Sink`] contract asks, through
/// [`publish_by_key`]: a key's records are delivered one after
/// the other, every key at once, and after a failed record, later records
/// of the same key in the batch are not delivered. Clones share state.
#[derive(Debug, Clone, Default)]
pub struct InMemorySink {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    delivered: Vec<OutboxRecord>,
    fail_next: VecDeque<FailureKind>,
    failing_topics: HashMap<String, FailureKind>,
    latency: Duration,
    send_latency: Duration,
    batches: usize,
}

impl InMemorySink {
    /// A sink that delivers everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every record delivered, in delivery order (a record delivered twice
    /// appears twice).
    pub fn delivered(&self) -> Vec<OutboxRecord> {
        self.lock().delivered.clone()
    }

    /// The delivered records of type `T`, decoded, in delivery order.
    ///
    /// # Panics
    ///
    /// When a record of `T`'s event type does not decode into `T`: a test
    /// helper should fail loudly.
    pub fn events<T: TypedEvent>(&self) -> Vec<T> {
        self.lock()
            .delivered
            .iter()
            .filter_map(|record| {
                record
                    .decode_as::<T>()
                    .unwrap_or_else(|error| panic!("record {}: {error}", record.id))
            })
            .collect()
    }

    /// How many publish calls (batches) the sink has seen.
    pub fn batches(&self) -> usize {
        self.lock().batches
    }

    /// Fails the next `count` records handed to the sink with `kind`
    /// (records of failing topics do not use them up, nor do records held
    /// back behind a failure). Records are handed over in this order: the
    /// first record of each key (and every keyless record) in batch order,
    /// then each key's next record once the previous one is delivered.
    pub fn fail_next(&self, count: usize, kind: FailureKind) {
        self.lock()
            .fail_next
            .extend(std::iter::repeat_n(kind, count));
    }

    /// Fails every record of `topic` with `kind` until
    /// [`heal_topic`](InMemorySink::heal_topic).
    pub fn fail_topic(&self, topic: impl Into<String>, kind: FailureKind) {
        self.lock().failing_topics.insert(topic.into(), kind);
    }

    /// Stops failing `topic`.
    pub fn heal_topic(&self, topic: &str) {
        self.lock().failing_topics.remove(topic);
    }

    /// Forgets every injected failure.
    pub fn clear_failures(&self) {
        let mut state = self.lock();
        state.fail_next.clear();
        state.failing_topics.clear();
    }

    /// Makes every publish call take `latency` first, to stand for a slow
    /// broker.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Makes each record's acknowledgement take `latency` from when the
    /// record is sent, as a broker's round trip would: the next record of
    /// its key waits for it, other keys do not, and a batch's outcomes are
    /// reported one by one as they come. Zero, the default, acknowledges
    /// every record at once, so a batch's outcomes are all known together.
    pub fn set_send_latency(&self, latency: Duration) {
        self.lock().send_latency = latency;
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Sink for InMemorySink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        let latency = self.lock().latency;
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        self.lock().batches += 1;
        publish_by_key(records, report, |record| self.send(record)).await;
    }
}

impl InMemorySink {
    /// Delivers `record` or fails it as injected, at once; the outcome
    /// comes back after the send latency.
    fn send(&self, record: &OutboxRecord) -> impl Future<Output = Outcome> + use<> {
        let (outcome, latency) = {
            let mut state = self.lock();
            let failure = match state.failing_topics.get(&record.topic) {
                Some(kind) => Some(*kind),
                None => state.fail_next.pop_front(),
            };
            let outcome = match failure {
                None => {
                    state.delivered.push(record.clone());
                    Outcome::Delivered
                }
                Some(kind) => {
                    let message = format!("injected failure on topic `{}`", record.topic);
                    match kind {
                        FailureKind::Retriable => Outcome::retriable(message),
                        FailureKind::Permanent => Outcome::permanent(message),
                    }
                }
            };
            (outcome, state.send_latency)
        };
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            outcome
        }
    }
}
