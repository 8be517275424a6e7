//! [`publish_by_key`]: the per-key scheduling of a batch, written once for
//! every sink.

use std::fmt;
use std::future::Future;

use futures::stream::{FuturesUnordered, StreamExt};
use uuid::Uuid;

use super::{KeyGroups, Outcome};
use crate::record::OutboxRecord;

/// Publishes a batch with `send`, one record at a time per key, every key
/// at once, and reports each record's [`Outcome`] through
/// `report(index, outcome)` as soon as it is known: what a
/// [`Sink::publish_each`](super::Sink::publish_each) must do, given only a
/// way to send one record.
///
/// - The records of a key are sent in batch order, each only once `send`
///   said the previous one was [delivered](Outcome::Delivered).
/// - The first record of every key, and every keyless record, are sent at
///   once; the keys advance independently as their sends complete.
/// - When a record fails, the rest of its key is not sent: each of those
///   records is reported [`Outcome::Retriable`] with a [`HeldBack`] error
///   at the moment the failure is known (the relay releases them without
///   counting an attempt). Other keys go on.
/// - Each record gets exactly one report, `index` being its position in
///   `records`; when the future completes, every record has its report.
///
/// `send` is called from the task that polls the returned future, and the
/// sends run concurrently on that task, without spawning; a send that needs
/// a deadline carries it itself (say, with `tokio::time::timeout`), so a
/// slow record delays only its own key.
///
/// ```
/// use async_trait::async_trait;
/// use outbox_engine::{OutboxRecord, Outcome, Sink, publish_by_key};
///
/// /// Prints each record; a real sink sends it and awaits the acknowledgement.
/// struct Stdout;
///
/// #[async_trait]
/// impl Sink for Stdout {
///     async fn publish_each(
///         &self,
///         records: &[OutboxRecord],
///         report: &(dyn Fn(usize, Outcome) + Send + Sync),
///     ) {
///         publish_by_key(records, report, |record| async move {
///             println!("{} {}", record.topic, record.payload);
///             Outcome::Delivered
///         })
///         .await
///     }
/// }
/// ```
pub async fn publish_by_key<'r, R, F, Fut>(records: &'r [OutboxRecord], report: R, mut send: F)
where
    R: Fn(usize, Outcome),
    F: FnMut(&'r OutboxRecord) -> Fut,
    Fut: Future<Output = Outcome>,
{
    let groups = KeyGroups::new(records);
    // How many records of each group have an outcome.
    let mut done = vec![0; groups.len()];
    let mut in_flight = FuturesUnordered::new();
    for (group, indexes) in groups.iter().enumerate() {
        in_flight.push(tagged(group, send(&records[indexes[0]])));
    }
    while let Some((group, outcome)) = in_flight.next().await {
        let indexes = groups.group(group);
        let index = indexes[done[group]];
        done[group] += 1;
        let rest = &indexes[done[group]..];
        if outcome.is_delivered() {
            report(index, outcome);
            if let Some(&next) = rest.first() {
                in_flight.push(tagged(group, send(&records[next])));
            }
            continue;
        }
        report(index, outcome);
        let failed = &records[index];
        for &held in rest {
            report(
                held,
                Outcome::Retriable(Box::new(HeldBack::new(&records[held], failed))),
            );
        }
    }
}

/// A send, tagged with its group.
async fn tagged<Fut: Future<Output = Outcome>>(group: usize, send: Fut) -> (usize, Outcome) {
    (group, send.await)
}

/// Why a record was not sent: an earlier record of its key failed in the
/// same batch, and sending it would break the key's order. The outcome is
/// retriable; the relay releases such a record without counting an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeldBack {
    /// The held record's id.
    pub id: i64,
    /// The held record's event id.
    pub event_id: Uuid,
    /// The id of the failed record it waits behind.
    pub behind_id: i64,
    /// The event id of the failed record it waits behind.
    pub behind_event_id: Uuid,
    /// The key both share.
    pub key: String,
}

impl HeldBack {
    /// `record` held back behind `failed`, an earlier record of its key.
    pub fn new(record: &OutboxRecord, failed: &OutboxRecord) -> Self {
        Self {
            id: record.id,
            event_id: record.event_id,
            behind_id: failed.id,
            behind_event_id: failed.event_id,
            key: record.key.clone().unwrap_or_default(),
        }
    }
}

impl fmt::Display for HeldBack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} (event {}) held back behind record {} (event {}), an earlier record of \
             key `{}` that failed in this batch; it is sent once that one is delivered",
            self.id, self.event_id, self.behind_id, self.behind_event_id, self.key
        )
    }
}

impl std::error::Error for HeldBack {}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::testkit::batch;

    /// Each send's record id, in the order `send` was called, and the
    /// reports, in the order they were made.
    #[derive(Default)]
    struct Log {
        sent: Mutex<Vec<i64>>,
        reported: Mutex<Vec<(usize, String)>>,
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_waits_for_each_delivery_and_a_failure_holds_back_its_rest() {
        let records = batch(&[Some("a"), Some("b"), Some("a"), None, Some("a"), Some("b")]);
        let log = Log::default();
        publish_by_key(
            &records,
            |index, outcome: Outcome| {
                log.reported
                    .lock()
                    .unwrap()
                    .push((index, outcome.to_string()));
            },
            |record| {
                log.sent.lock().unwrap().push(record.id);
                let id = record.id;
                async move {
                    // On the paused clock: a's records answer in 1 ms, the
                    // keyless one in 5, b's in 20; a's second one fails.
                    let wait = match id {
                        2 | 6 => 20,
                        4 => 5,
                        _ => 1,
                    };
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    if id == 3 {
                        Outcome::permanent("refused")
                    } else {
                        Outcome::Delivered
                    }
                }
            },
        )
        .await;
        // Heads first, in batch order; a's second only after its first.
        assert_eq!(*log.sent.lock().unwrap(), vec![1, 2, 4, 3, 6]);
        let reported = log.reported.into_inner().unwrap();
        let indexes: Vec<usize> = reported.iter().map(|(index, _)| *index).collect();
        assert_eq!(indexes, vec![0, 2, 4, 3, 1, 5]);
        assert_eq!(reported[1].1, "permanent failure: refused");
        let held = &reported[2].1;
        assert!(held.starts_with("retriable failure: record 5 "), "{held}");
        assert!(held.contains("held back behind record 3"), "{held}");
    }

    #[tokio::test]
    async fn an_empty_batch_sends_and_reports_nothing() {
        publish_by_key(
            &[],
            |_, _| panic!("nothing to report"),
            |_| async { panic!("nothing to send") },
        )
        .await;
    }
}
