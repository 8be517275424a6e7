//! The sink conformance suite: the behaviour every [`Sink`] must show
//! against its real destination, run by the in-memory sink here, by the
//! Kafka sink against librdkafka's mock cluster (and a broker), and by the
//! NATS sink against a JetStream server.
//!
//! ```ignore
//! async fn sink() -> Option<(MySink, MyDestination)> { /* a fresh sink */ }
//! outbox_engine::sink_conformance_tests!(sink);
//! ```
//!
//! [`sink_conformance_tests!`](crate::sink_conformance_tests) expands to
//! one `#[tokio::test]` per case, so the calling crate needs `tokio` with
//! the `macros` and `rt-multi-thread` features. The factory returns a fresh
//! sink and its [`Destination`], the suite's view of the far side: which
//! topic to publish to, how to make a record fail for good, and what
//! arrived. The destination lives as long as the case, so it can be the
//! guard that cleans up (a broker, a stream). The factory returns `None` to
//! skip the case (a server that cannot be reached outside CI: say so loudly
//! before returning `None`). Each case is also a public function here, to
//! run on its own.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use uuid::Uuid;

use crate::{OutboxRecord, Outcome, Sink, error_chain};

/// One message as it reached the destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The record's key, as the destination carries it.
    pub key: Option<String>,
    /// The record's event id, as the message carries it.
    pub event_id: Uuid,
    /// The payload, as the message carries it.
    pub payload: String,
}

/// The far side of a sink under test, as the sink conformance suite sees
/// it. The suite runs each case on the test's own thread, so neither the
/// destination nor its futures need to be `Send` (a handle to librdkafka's
/// mock cluster is not): implement it with `#[async_trait(?Send)]`.
#[async_trait(?Send)]
pub trait Destination {
    /// The topic the suite's records name. Where the destination keeps what
    /// it receives (a Kafka topic, a JetStream stream), a fresh one per
    /// case, so that [`messages`](Destination::messages) sees only the
    /// case's own.
    fn topic(&self) -> String;

    /// Changes `record` (not its key nor its event id) so that the
    /// destination refuses it for good, promptly: an
    /// [`Outcome::Permanent`] well before a few round trips of other
    /// records are through. For example a payload larger than the
    /// destination accepts, or an invalid topic; for a test double, its
    /// failure injection.
    fn fail_permanently(&self, record: &mut OutboxRecord);

    /// Every message that reached [`topic`](Destination::topic), each
    /// key's in the destination's order (the order a consumer reads them).
    async fn messages(&self) -> Vec<Message>;
}

/// Expands to one `#[tokio::test]` per sink conformance case, each calling
/// `$factory().await` for a fresh `Some((sink, destination))`, or `None`
/// to skip.
#[macro_export]
macro_rules! sink_conformance_tests {
    ($factory:path) => {
        $crate::sink_conformance_tests!(@cases $factory;
            every_record_is_delivered_once_with_its_outcome_in_order,
            many_records_of_one_key_arrive_in_order,
            a_failure_holds_back_only_its_key,
            keyless_records_do_not_hold_each_other_back,
            publish_each_reports_each_record_once_as_soon_as_known,
            an_empty_batch_does_nothing,
            the_event_id_travels_with_the_message,
            a_held_key_flows_again_in_the_next_batch,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((sink, destination)) = $factory().await else {
                    return;
                };
                $crate::testkit::sink::$case(sink, destination).await;
            }
        )*
    };
}

/// Records on the destination's topic with these keys, ids from `first_id`,
/// each payload carrying its position.
fn batch<D: Destination>(
    destination: &D,
    first_id: i64,
    keys: &[Option<&str>],
) -> Vec<OutboxRecord> {
    let topic = destination.topic();
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let id = first_id + i as i64;
            OutboxRecord::from_new(id, super::record_on(&topic, *key, id as u32))
        })
        .collect()
}

/// Publishes with `publish_each` and returns each record's outcome, checking
/// that each index was reported exactly once.
async fn publish_each<S: Sink>(sink: &S, records: &[OutboxRecord]) -> Vec<Outcome> {
    let reports = std::sync::Mutex::new(Vec::new());
    sink.publish_each(records, &|index, outcome| {
        reports
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((index, outcome));
    })
    .await;
    once_each(records.len(), reports.into_inner().unwrap_or_default())
}

/// The outcomes by index; panics unless each index in `0..len` was
/// reported exactly once.
fn once_each(len: usize, reports: Vec<(usize, Outcome)>) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = (0..len).map(|_| None).collect();
    for (index, outcome) in reports {
        let slot = outcomes
            .get_mut(index)
            .unwrap_or_else(|| panic!("publish_each reported index {index} of a batch of {len}"));
        assert!(
            slot.is_none(),
            "publish_each reported record {index} twice: {} and {outcome}",
            slot.as_ref().map(Outcome::to_string).unwrap_or_default()
        );
        *slot = Some(outcome);
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| {
            outcome.unwrap_or_else(|| panic!("publish_each reported nothing for record {index}"))
        })
        .collect()
}

fn assert_delivered(records: &[OutboxRecord], outcomes: &[Outcome], which: &[usize]) {
    for &index in which {
        assert!(
            outcomes[index].is_delivered(),
            "record {index} (key {:?}) should be delivered: {}",
            records[index].key,
            outcomes[index]
        );
    }
}

fn assert_permanent(records: &[OutboxRecord], outcomes: &[Outcome], index: usize) {
    assert!(
        matches!(outcomes[index], Outcome::Permanent(_)),
        "record {index} (key {:?}) was made to fail for good, so its outcome must be permanent: \
         {}",
        records[index].key,
        outcomes[index]
    );
}

/// Checks that `outcomes[index]` is a retriable failure that names the
/// record it was held back behind.
fn assert_held_back(records: &[OutboxRecord], outcomes: &[Outcome], index: usize, behind: usize) {
    let outcome = &outcomes[index];
    let Outcome::Retriable(error) = outcome else {
        panic!(
            "record {index} of key {:?} comes after record {behind}, which failed: it must be \
             held back, reported as a retriable failure, and not sent; got: {outcome}",
            records[index].key
        );
    };
    let text = error_chain(&**error);
    let failed = &records[behind];
    assert!(
        text.contains(&failed.event_id.to_string())
            || text.contains(&format!("record {}", failed.id)),
        "the error of held-back record {index} should name the record it waits behind \
         (id {}, event {}): {text}",
        failed.id,
        failed.event_id
    );
}

/// Checks that the destination holds exactly the `expected` records, each
/// once, with its key and payload, each key's in the order of `expected`.
async fn assert_arrived<D: Destination>(destination: &D, expected: &[&OutboxRecord]) {
    let messages = destination.messages().await;
    let mut counts: HashMap<Uuid, usize> = HashMap::new();
    for message in &messages {
        *counts.entry(message.event_id).or_default() += 1;
    }
    let wanted: HashMap<Uuid, &OutboxRecord> = expected
        .iter()
        .map(|record| (record.event_id, *record))
        .collect();
    for (event_id, count) in &counts {
        let Some(record) = wanted.get(event_id) else {
            panic!(
                "event {event_id} reached the destination, but it should not have been \
                 delivered: {messages:#?}"
            );
        };
        assert_eq!(
            *count, 1,
            "record {} reached the destination {count} times",
            record.id
        );
    }
    for record in expected {
        assert!(
            counts.contains_key(&record.event_id),
            "record {} (key {:?}, event {}) never reached the destination: {messages:#?}",
            record.id,
            record.key,
            record.event_id
        );
    }
    for message in &messages {
        let record = wanted[&message.event_id];
        assert_eq!(message.key, record.key, "the key of record {}", record.id);
        assert_eq!(
            message.payload, record.payload,
            "the payload of record {}",
            record.id
        );
    }
    let mut arrived: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for message in &messages {
        if let Some(key) = message.key.as_deref() {
            arrived.entry(key).or_default().push(message.event_id);
        }
    }
    let mut sent: BTreeMap<&str, Vec<Uuid>> = BTreeMap::new();
    for record in expected {
        if let Some(key) = record.key.as_deref() {
            sent.entry(key).or_default().push(record.event_id);
        }
    }
    for (key, ids) in &sent {
        assert_eq!(
            arrived.get(key),
            Some(ids),
            "the records of key {key:?} arrived out of order"
        );
    }
}

/// `publish` returns one outcome per record, in the order of `records`
/// (a failing record in the middle sits at its own index), and every
/// delivered record reaches the destination exactly once, with its key and
/// payload.
pub async fn every_record_is_delivered_once_with_its_outcome_in_order<S: Sink, D: Destination>(
    sink: S,
    destination: D,
) {
    let keys = [
        Some("a"),
        Some("b"),
        None,
        Some("a"),
        Some("c"),
        None,
        Some("b"),
        Some("a"),
        None,
        Some("c"),
    ];
    let mut records = batch(&destination, 1, &keys);
    let failing = 5;
    destination.fail_permanently(&mut records[failing]);
    let outcomes = sink.publish(&records).await;
    assert_eq!(outcomes.len(), records.len(), "one outcome per record");
    assert_permanent(&records, &outcomes, failing);
    let others: Vec<usize> = (0..records.len()).filter(|&i| i != failing).collect();
    assert_delivered(&records, &outcomes, &others);
    let expected: Vec<&OutboxRecord> = others.iter().map(|&i| &records[i]).collect();
    assert_arrived(&destination, &expected).await;
}

/// Many records of one key, interleaved with another key's and keyless
/// ones, all arrive, each key's in the order of the batch.
pub async fn many_records_of_one_key_arrive_in_order<S: Sink, D: Destination>(
    sink: S,
    destination: D,
) {
    let keys: Vec<Option<&str>> = (0..60)
        .map(|i| match i % 6 {
            0 => Some("warm"),
            5 => None,
            _ => Some("hot"),
        })
        .collect();
    let records = batch(&destination, 1, &keys);
    let outcomes = publish_each(&sink, &records).await;
    assert_delivered(&records, &outcomes, &(0..records.len()).collect::<Vec<_>>());
    assert_arrived(&destination, &records.iter().collect::<Vec<_>>()).await;
}

/// A failed record holds back the later records of its key (reported as
/// retriable failures that name it, and not sent), whether it is its key's
/// first record in the batch or not; the records before it and every other
/// key are delivered.
pub async fn a_failure_holds_back_only_its_key<S: Sink, D: Destination>(sink: S, destination: D) {
    let keys = [
        Some("a"), // 0 delivered
        Some("b"), // 1 delivered
        Some("a"), // 2 fails
        Some("c"), // 3 fails, the first of its key
        Some("b"), // 4 delivered
        Some("a"), // 5 held back behind 2
        Some("c"), // 6 held back behind 3
        None,      // 7 delivered
        Some("a"), // 8 held back behind 2
        Some("b"), // 9 delivered
        Some("c"), // 10 held back behind 3
    ];
    let mut records = batch(&destination, 1, &keys);
    destination.fail_permanently(&mut records[2]);
    destination.fail_permanently(&mut records[3]);
    let outcomes = publish_each(&sink, &records).await;
    assert_delivered(&records, &outcomes, &[0, 1, 4, 7, 9]);
    assert_permanent(&records, &outcomes, 2);
    assert_permanent(&records, &outcomes, 3);
    for (held, behind) in [(5, 2), (8, 2), (6, 3), (10, 3)] {
        assert_held_back(&records, &outcomes, held, behind);
    }
    let expected = [0, 1, 4, 7, 9].map(|i| &records[i]);
    assert_arrived(&destination, &expected).await;
}

/// Keyless records have no order among them: one that fails holds back
/// none of the others.
pub async fn keyless_records_do_not_hold_each_other_back<S: Sink, D: Destination>(
    sink: S,
    destination: D,
) {
    let mut records = batch(&destination, 1, &[None, None, None, None]);
    destination.fail_permanently(&mut records[1]);
    let outcomes = publish_each(&sink, &records).await;
    assert_permanent(&records, &outcomes, 1);
    assert_delivered(&records, &outcomes, &[0, 2, 3]);
    let expected = [0, 2, 3].map(|i| &records[i]);
    assert_arrived(&destination, &expected).await;
}

/// `publish_each` reports each record exactly once, and as soon as its
/// outcome is known, not when the batch is done: a key that fails at once
/// is reported, with the records held back behind it, while a long chain
/// of another key is still being delivered; so is that chain's first
/// delivery. The reports are watched from a task that runs beside the
/// publish.
pub async fn publish_each_reports_each_record_once_as_soon_as_known<S: Sink, D: Destination>(
    sink: S,
    destination: D,
) {
    const CHAIN: usize = 20;
    let mut keys = vec![Some("fails"), Some("chain"), Some("fails")];
    keys.extend(std::iter::repeat_n(Some("chain"), CHAIN - 1));
    keys.push(Some("fails"));
    let mut records = batch(&destination, 1, &keys);
    destination.fail_permanently(&mut records[0]);
    let failing_key = [0, 2, keys.len() - 1];
    let chain_head = 1;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Outcome)>();
    let done = AtomicBool::new(false);
    let publishing = async {
        let tx = tx;
        sink.publish_each(&records, &|index, outcome| {
            let _ = tx.send((index, outcome));
        })
        .await;
        done.store(true, Ordering::SeqCst);
    };
    let watching = async {
        let mut seen = Vec::new();
        while let Some((index, outcome)) = rx.recv().await {
            seen.push((index, outcome, done.load(Ordering::SeqCst)));
        }
        seen
    };
    let ((), seen) = tokio::join!(publishing, watching);

    let early: Vec<usize> = seen
        .iter()
        .filter(|(_, _, after_return)| !after_return)
        .map(|(index, _, _)| *index)
        .collect();
    let outcomes = once_each(
        records.len(),
        seen.into_iter()
            .map(|(index, outcome, _)| (index, outcome))
            .collect(),
    );
    assert_permanent(&records, &outcomes, 0);
    assert_held_back(&records, &outcomes, 2, 0);
    assert_held_back(&records, &outcomes, keys.len() - 1, 0);
    let chain: Vec<usize> = (0..keys.len())
        .filter(|i| !failing_key.contains(i))
        .collect();
    assert_delivered(&records, &outcomes, &chain);
    for index in failing_key.into_iter().chain([chain_head]) {
        assert!(
            early.contains(&index),
            "the outcome of record {index} was known long before the batch was done, but it was \
             reported only at the end (reported while publishing: {early:?})"
        );
    }
    let expected: Vec<&OutboxRecord> = chain.iter().map(|&i| &records[i]).collect();
    assert_arrived(&destination, &expected).await;
}

/// An empty batch returns no outcome, reports nothing and sends nothing.
pub async fn an_empty_batch_does_nothing<S: Sink, D: Destination>(sink: S, destination: D) {
    assert!(
        sink.publish(&[]).await.is_empty(),
        "outcomes for no records"
    );
    sink.publish_each(&[], &|index, outcome| {
        panic!("publish_each reported record {index} of an empty batch: {outcome}")
    })
    .await;
    assert_arrived(&destination, &[]).await;
}

/// Each message carries its record's event id (consumers drop duplicates
/// by it), key and payload, whatever characters the key holds.
pub async fn the_event_id_travels_with_the_message<S: Sink, D: Destination>(
    sink: S,
    destination: D,
) {
    let keys = [
        Some("order-7"),
        Some("a.b.c"),
        Some("with space"),
        Some("*"),
        Some(">"),
        Some("%41"),
        Some("ünï/cödé"),
        None,
        Some("order-7"),
    ];
    let records = batch(&destination, 1, &keys);
    let outcomes = publish_each(&sink, &records).await;
    assert_delivered(&records, &outcomes, &(0..records.len()).collect::<Vec<_>>());
    let messages = destination.messages().await;
    let mut ids: Vec<Uuid> = messages.iter().map(|m| m.event_id).collect();
    let mut sent: Vec<Uuid> = records.iter().map(|r| r.event_id).collect();
    ids.sort();
    sent.sort();
    assert_eq!(ids, sent, "the event ids that arrived");
    assert_arrived(&destination, &records.iter().collect::<Vec<_>>()).await;
}

/// Holding back is per batch: once the failed record goes through, in a
/// later batch, the key flows again, in order, with the same event ids.
pub async fn a_held_key_flows_again_in_the_next_batch<S: Sink, D: Destination>(
    sink: S,
    destination: D,
) {
    let records = batch(&destination, 1, &[Some("k"), Some("k"), Some("other")]);
    let mut first = records.clone();
    destination.fail_permanently(&mut first[0]);
    let outcomes = publish_each(&sink, &first).await;
    assert_permanent(&first, &outcomes, 0);
    assert_held_back(&first, &outcomes, 1, 0);
    assert_delivered(&first, &outcomes, &[2]);

    // The relay claims the key again, the failed record fixed.
    let again = &records[..2];
    let outcomes = publish_each(&sink, again).await;
    assert_delivered(again, &outcomes, &[0, 1]);
    assert_arrived(&destination, &records.iter().collect::<Vec<_>>()).await;
}
