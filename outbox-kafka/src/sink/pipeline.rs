//! Publishing a batch pipelined: every record is handed to the producer at
//! once, in batch order, and each key's outcomes are reported in batch
//! order.
//!
//! This is for a producer that keeps each partition's records in order and
//! gapless itself (idempotence with `enable.gapless.guarantee`, see
//! [`keeps_partitions_gapless`](crate::config::keeps_partitions_gapless)):
//! the records of a key, all in one partition, then need not wait for each
//! other's acknowledgements. The rules kept here:
//!
//! - A key's records go to the producer in batch order, a *segment* at a
//!   time: the consecutive records of the key that share a topic. A segment
//!   starts once the previous segment of its key is delivered, since
//!   records in different topics are in different partitions, which
//!   librdkafka does not order among themselves. A key normally has one
//!   topic, so one segment.
//! - A record refused before it reaches the producer (its topic name, its
//!   size, a queue that stays full) stops its key: the records after it
//!   are not handed over and are reported [`HeldBack`].
//! - A key's [`Outcome::Delivered`] reports come in batch order: a record's
//!   is held until every earlier record of its key has its outcome.
//!   Failures are reported at once.
//! - librdkafka's gapless guarantee does not cover `message.timeout.ms`:
//!   it may fail a key's earlier records by timeout and write its later
//!   ones. So the sink is asked to [cut off](Cut) the producer's queue,
//!   which fails every record still queued at once, when a record has
//!   waited nearly `message.timeout.ms` while some key has several records
//!   in the producer (before librdkafka times any out), and when a record
//!   fails while later records of its key are in the producer. A later
//!   record delivered all the same is an order gap: it is logged as an
//!   error and counted.
//! - Each segment carries a [`SegmentToken`] through its hand-overs, with
//!   which the sink refuses the rest of a segment that a cut-off split: the
//!   records of the segment handed over before the cut-off may have been
//!   purged.

use std::borrow::Cow;
use std::time::Duration;

use futures::FutureExt as _;
use futures::stream::{FuturesUnordered, StreamExt};
use outbox_engine::{OutboxRecord, Outcome};
use tokio::time::Instant;

use super::handoff::{Cut, Handoff, QUEUE_FULL_PAUSE, RecordResult, SegmentToken};
use super::plan::Plan;
use super::reporter::Reporter;

/// Publishes `records` pipelined (see the module docs) and calls
/// `report(index, outcome)` once per record; returns the number of order
/// gaps seen (records delivered after an earlier record of their key
/// failed).
///
/// - `topics[index]` is where record `index` goes; a key's consecutive
///   records with equal topics form a segment.
/// - `hand_off(index, token)` gives record `index` to the producer without
///   waiting for it to be sent; `token` is its segment's, for `hand_off`
///   to keep what it needs between the segment's records (`None` at the
///   start of each segment). A record finding the queue full is tried
///   again every [`QUEUE_FULL_PAUSE`] until it has waited `room_wait` since
///   its segment started, then fails with the result [`Handoff::Full`]
///   carries.
/// - `resolve` turns a record's result into its outcome.
/// - `cut_off(why)` is called when the producer's queue should be purged
///   (see [`Cut`]); [`Cut::Expiring`] once a record has been in the
///   producer for `expire_after`, at most once per such moment.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn publish_pipelined<H, F, S, R, C>(
    records: &[OutboxRecord],
    topics: &[Cow<'_, str>],
    room_wait: Duration,
    expire_after: Duration,
    mut hand_off: H,
    resolve: S,
    report: R,
    mut cut_off: C,
) -> u64
where
    H: FnMut(usize, &mut SegmentToken) -> Handoff<F>,
    F: Future<Output = RecordResult>,
    S: Fn(&OutboxRecord, RecordResult) -> Outcome,
    R: Fn(usize, Outcome),
    C: FnMut(Cut<'_>),
{
    debug_assert_eq!(records.len(), topics.len());
    let mut plan = Plan::new(records, topics);
    let mut reporter = Reporter {
        records,
        resolve,
        report,
        gaps: 0,
    };
    let mut in_flight = FuturesUnordered::new();
    let timer = tokio::time::sleep_until(Instant::now());
    tokio::pin!(timer);
    let mut armed: Option<Instant> = None;
    loop {
        // Hand over everything ready, in order, until the queue is full.
        let mut blocked = false;
        while let Some((index, since)) = plan.next_ready() {
            match hand_off(index, plan.token(index)) {
                Handoff::Sent(delivery) => {
                    plan.sent(index);
                    in_flight.push(tagged(index, delivery));
                }
                Handoff::Full(_) if since.elapsed() < room_wait => {
                    blocked = true;
                    break;
                }
                Handoff::Full(result) | Handoff::Refused(result) => {
                    plan.taken(index);
                    plan.finish(index, result, &mut reporter);
                }
            }
        }
        if in_flight.is_empty() && !blocked {
            break;
        }
        // The timer is armed for the oldest record in the producer; as
        // records leave, it is left as it is and re-armed when it fires
        // early, which spares a timer operation per report.
        let expiry = plan.next_expiry(expire_after);
        match (expiry, armed) {
            (Some(at), None) => {
                timer.as_mut().reset(at);
                armed = Some(at);
            }
            (None, Some(_)) => armed = None,
            _ => {}
        }
        let event = tokio::select! {
            biased;
            Some((index, result)) = in_flight.next(), if !in_flight.is_empty() => {
                Event::Reported(index, result)
            }
            () = &mut timer, if armed.is_some() => Event::Timer,
            () = tokio::time::sleep(QUEUE_FULL_PAUSE), if blocked => Event::Pause,
        };
        match event {
            Event::Reported(index, result) => {
                // This report and every other one already in.
                let mut next = Some((index, result));
                while let Some((index, result)) = next {
                    if let Err(error) = &result
                        && plan.later_in_producer(index)
                    {
                        cut_off(Cut::Failed(error));
                    }
                    plan.finish(index, result, &mut reporter);
                    next = in_flight.next().now_or_never().flatten();
                }
            }
            Event::Timer => {
                armed = None;
                if expiry.is_some_and(|at| at <= Instant::now()) {
                    if plan.a_key_has_several_in_producer() {
                        cut_off(Cut::Expiring);
                    }
                    plan.expired(expire_after);
                }
            }
            Event::Pause => {}
        }
    }
    debug_assert!(plan.all_reported(), "a record without an outcome");
    reporter.gaps
}

/// What the batch waits for.
enum Event {
    /// A record's delivery result.
    Reported(usize, RecordResult),
    /// The timer for the oldest record in the producer fired.
    Timer,
    /// The pause before handing a record over again to a full queue.
    Pause,
}

/// A delivery result, tagged with its record's index.
async fn tagged<F: Future<Output = RecordResult>>(
    index: usize,
    delivery: F,
) -> (usize, RecordResult) {
    (index, delivery.await)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use outbox_engine::testkit::batch;
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use uuid::Uuid;

    use super::*;
    use crate::Error;

    /// A delivery report `after` ms from now: a timeout if `fails`.
    async fn answer(after: u64, fails: bool) -> Result<(), Error> {
        tokio::time::sleep(Duration::from_millis(after)).await;
        if fails {
            Err(failure(RDKafkaErrorCode::MessageTimedOut))
        } else {
            Ok(())
        }
    }

    fn failure(code: RDKafkaErrorCode) -> Error {
        Error::Delivery {
            event_id: Uuid::nil(),
            topic: "t".into(),
            error: KafkaError::MessageProduction(code),
            retriable: true,
        }
    }

    fn resolve(_: &OutboxRecord, result: RecordResult) -> Outcome {
        match result {
            Ok(()) => Outcome::Delivered,
            Err(error) => Outcome::Retriable(Box::new(error)),
        }
    }

    /// What a test producer does with a record: answer after `after` ms
    /// (on the paused clock) with `result`, or refuse it at once.
    #[derive(Clone, Copy)]
    enum Fate {
        Answer { after: u64, fails: bool },
        Refuse,
        FullFor { ms: u64, after: u64 },
    }

    /// Publishes a batch whose records meet `fates`, on topics `topics`; returns
    /// the hand-offs in order, the reports in order (index and text), the
    /// cut-offs and the gaps.
    async fn publish(
        keys: &[Option<&str>],
        topics: &[&str],
        fates: &[Fate],
    ) -> (Vec<usize>, Vec<(usize, String)>, usize, u64) {
        let records = batch(keys);
        let topics: Vec<Cow<'_, str>> = topics.iter().map(|t| Cow::Borrowed(*t)).collect();
        let handed = Mutex::new(Vec::new());
        let reported = Mutex::new(Vec::new());
        let cut = Mutex::new(0);
        let start = Instant::now();
        let gaps = publish_pipelined(
            &records,
            &topics,
            Duration::from_millis(100),
            Duration::from_secs(60),
            |index, _token| {
                let (after, fails) = match fates[index] {
                    Fate::Refuse => {
                        let error = failure(RDKafkaErrorCode::MessageSizeTooLarge);
                        return Handoff::Refused(Err(error));
                    }
                    Fate::FullFor { ms, .. } if start.elapsed() < Duration::from_millis(ms) => {
                        return Handoff::Full(Err(failure(RDKafkaErrorCode::QueueFull)));
                    }
                    Fate::FullFor { after, .. } => (after, false),
                    Fate::Answer { after, fails } => (after, fails),
                };
                handed.lock().unwrap().push(index);
                Handoff::Sent(answer(after, fails))
            },
            resolve,
            |index, outcome: Outcome| reported.lock().unwrap().push((index, outcome.to_string())),
            |_| *cut.lock().unwrap() += 1,
        )
        .await;
        (
            handed.into_inner().unwrap(),
            reported.into_inner().unwrap(),
            cut.into_inner().unwrap(),
            gaps,
        )
    }

    fn ok(after: u64) -> Fate {
        Fate::Answer {
            after,
            fails: false,
        }
    }

    fn fail(after: u64) -> Fate {
        Fate::Answer { after, fails: true }
    }

    fn indexes(reported: &[(usize, String)]) -> Vec<usize> {
        reported.iter().map(|(index, _)| *index).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn every_record_is_handed_over_at_once_and_deliveries_reported_in_key_order() {
        let keys = [Some("a"), Some("b"), Some("a"), None, Some("a")];
        // a's second answers first; b and the keyless one in between.
        let fates = [ok(30), ok(10), ok(5), ok(20), ok(40)];
        let (handed, reported, cut, gaps) = publish(&keys, &["t"; 5], &fates).await;
        assert_eq!(handed, vec![0, 1, 2, 3, 4]);
        // a's second waits for a's first.
        assert_eq!(indexes(&reported), vec![1, 3, 0, 2, 4]);
        assert!(
            reported.iter().all(|(_, r)| r == "delivered"),
            "{reported:?}"
        );
        assert_eq!((cut, gaps), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_record_holds_back_the_rest_of_its_key_only() {
        let keys = [Some("a"), Some("a"), Some("b"), Some("a"), Some("b")];
        let fates = [ok(10), Fate::Refuse, ok(10), ok(10), ok(10)];
        let (handed, reported, cut, gaps) = publish(&keys, &["t"; 5], &fates).await;
        // a's third never reaches the producer.
        assert_eq!(handed, vec![0, 2, 4]);
        assert_eq!(indexes(&reported)[..2], [1, 3]);
        assert!(
            reported[0].1.contains("MessageSizeTooLarge"),
            "{reported:?}"
        );
        assert!(
            reported[1].1.contains("held back behind record 2"),
            "{reported:?}"
        );
        let mut rest = indexes(&reported)[2..].to_vec();
        rest.sort();
        assert_eq!(rest, vec![0, 2, 4]);
        // Nothing of a's was in the producer after the refused one.
        assert_eq!((cut, gaps), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_with_later_records_in_the_producer_cuts_off_and_a_late_delivery_is_a_gap() {
        let keys = [Some("a"), Some("a"), Some("a")];
        // The first fails; the second fails after it; the third is written.
        let fates = [fail(10), fail(20), ok(30)];
        let (handed, reported, cut, gaps) = publish(&keys, &["t"; 3], &fates).await;
        assert_eq!(handed, vec![0, 1, 2]);
        assert_eq!(indexes(&reported), vec![0, 1, 2]);
        assert!(reported[1].1.contains("MessageTimedOut"), "{reported:?}");
        assert_eq!(reported[2].1, "delivered");
        // A cut-off at each failure with a later record in the producer.
        assert_eq!((cut, gaps), (2, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_reported_before_an_earlier_failure_is_a_gap() {
        let keys = [Some("a"), Some("a")];
        let fates = [fail(20), ok(10)];
        let (_, reported, cut, gaps) = publish(&keys, &["t"; 2], &fates).await;
        // The delivery waits for the earlier record's outcome; when that
        // fails, nothing of the key is left in the producer to cut off.
        assert_eq!(indexes(&reported), vec![0, 1]);
        assert_eq!((cut, gaps), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_changing_topics_waits_for_the_previous_run() {
        let keys = [Some("a"), Some("a"), Some("a"), Some("a"), Some("b")];
        let topics = ["t", "t", "u", "t", "u"];
        let (handed, reported, _, gaps) =
            publish(&keys, &topics, &[ok(10), ok(10), ok(10), ok(10), ok(50)]).await;
        // a's third (topic u) goes once the first two are delivered, its
        // fourth once the third is.
        assert_eq!(handed, vec![0, 1, 4, 2, 3]);
        assert_eq!(indexes(&reported), vec![0, 1, 2, 3, 4]);
        assert_eq!(gaps, 0);

        // A failed segment holds back the later segments.
        let (handed, reported, _, _) =
            publish(&keys, &topics, &[ok(10), fail(10), ok(10), ok(10), ok(10)]).await;
        assert_eq!(handed, vec![0, 1, 4]);
        let held: Vec<&(usize, String)> = reported
            .iter()
            .filter(|(_, r)| r.contains("held back"))
            .collect();
        assert_eq!(held.len(), 2, "{reported:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_is_waited_for_then_gives_up_holding_back_the_key() {
        let keys = [Some("a"), Some("a"), Some("b")];
        // Room after 50 ms: everything goes, in order.
        let full = |ms| Fate::FullFor { ms, after: 10 };
        let (handed, reported, _, _) =
            publish(&keys, &["t"; 3], &[full(50), full(50), full(50)]).await;
        assert_eq!(handed, vec![0, 1, 2]);
        assert!(
            reported.iter().all(|(_, r)| r == "delivered"),
            "{reported:?}"
        );

        // No room within the 100 ms wait: every record fails, a's second
        // held back behind a's first.
        let (handed, reported, _, _) =
            publish(&keys, &["t"; 3], &[full(500), full(500), full(500)]).await;
        assert!(handed.is_empty());
        assert_eq!(indexes(&reported), vec![0, 1, 2]);
        assert!(reported[0].1.contains("QueueFull"), "{reported:?}");
        assert!(reported[1].1.contains("held back"), "{reported:?}");
        assert!(reported[2].1.contains("QueueFull"), "{reported:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_segment_split_by_a_cut_off_is_not_handed_over_further() {
        // a's second record finds the queue full until 50 ms; b's first
        // fails at 10 ms with b's second in the producer: a cut-off, which
        // may have purged a's first, so a's second must not follow it.
        let records = batch(&[Some("a"), Some("b"), Some("b"), Some("a"), Some("a")]);
        let topics = vec![Cow::Borrowed("t"); 5];
        let cuts = Mutex::new(0u64);
        let tokens = Mutex::new(Vec::new());
        let reported = Mutex::new(Vec::new());
        let start = Instant::now();
        publish_pipelined(
            &records,
            &topics,
            Duration::from_secs(1),
            Duration::from_secs(60),
            |index, token: &mut SegmentToken| {
                let cuts = *cuts.lock().unwrap();
                tokens.lock().unwrap().push((index, *token));
                if token.is_some_and(|seen| seen != cuts) {
                    return Handoff::Refused(Err(failure(RDKafkaErrorCode::PurgeQueue)));
                }
                if index == 3 && start.elapsed() < Duration::from_millis(50) {
                    return Handoff::Full(Err(failure(RDKafkaErrorCode::QueueFull)));
                }
                *token = Some(cuts);
                Handoff::Sent(answer(10, index == 1))
            },
            resolve,
            |index, outcome: Outcome| reported.lock().unwrap().push((index, outcome.to_string())),
            |_| *cuts.lock().unwrap() += 1,
        )
        .await;
        let tokens = tokens.into_inner().unwrap();
        assert_eq!(tokens[..3], [(0, None), (1, None), (2, Some(0))]);
        assert!(tokens.contains(&(3, Some(0))), "{tokens:?}");
        let reported = reported.into_inner().unwrap();
        let of = |index| &reported.iter().find(|(i, _)| *i == index).unwrap().1;
        assert_eq!(of(0), "delivered");
        assert!(of(3).contains("PurgeQueue"), "{reported:?}");
        assert!(of(4).contains("held back behind record 4"), "{reported:?}");
    }

    /// Publishes records of `keys` that answer after 500 ms, with
    /// `expire_after` 100 ms; returns the cut-offs asked for.
    async fn expiring(keys: &[Option<&str>]) -> Vec<String> {
        let records = batch(keys);
        let topics = vec![Cow::Borrowed("t"); keys.len()];
        let cuts = Mutex::new(Vec::new());
        let start = Instant::now();
        publish_pipelined(
            &records,
            &topics,
            Duration::from_secs(1),
            Duration::from_millis(100),
            |_, _| {
                Handoff::Sent(async {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    Ok(())
                })
            },
            resolve,
            |_, _| {},
            |why| {
                let at = start.elapsed().as_millis();
                cuts.lock().unwrap().push(format!("{why:?} at {at} ms"));
            },
        )
        .await;
        cuts.into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn records_about_to_time_out_with_a_key_mate_cut_off_the_queue_once() {
        assert_eq!(
            expiring(&[Some("a"), Some("b"), Some("a")]).await,
            vec!["Expiring at 100 ms"]
        );
        // One record per key: no key can be split.
        assert!(expiring(&[Some("a"), Some("b"), None]).await.is_empty());
    }

    #[tokio::test]
    async fn an_empty_batch_reports_nothing() {
        let gaps = publish_pipelined(
            &[],
            &[],
            Duration::ZERO,
            Duration::ZERO,
            |_, _| -> Handoff<std::future::Ready<RecordResult>> { panic!("nothing to hand over") },
            resolve,
            |_, _| panic!("nothing to report"),
            |_| panic!("nothing to cut off"),
        )
        .await;
        assert_eq!(gaps, 0);
    }
}
