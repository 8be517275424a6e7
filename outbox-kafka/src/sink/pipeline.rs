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
//! - A key's records go to the producer in batch order, a *run* at a time:
//!   the consecutive records of the key that share a topic. A run starts
//!   once the previous run of its key is delivered, since records in
//!   different topics are in different partitions, which librdkafka does not
//!   order among themselves. A key normally has one topic, so one run.
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
//! - Each run carries a [`RunToken`] through its hand-overs, with which the
//!   sink refuses the rest of a run that a cut-off split: the records of
//!   the run handed over before the cut-off may have been purged.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::Duration;

use futures::FutureExt as _;
use futures::stream::{FuturesUnordered, StreamExt};
use outbox_engine::sink::KeyGroups;
use outbox_engine::{HeldBack, OutboxRecord, Outcome};
use tokio::time::Instant;

use super::publish::RecordResult;
use crate::Error;

/// How long to wait before handing a record over again when the producer's
/// queue is full: a delivery report of the batch's own, or of a concurrent
/// batch's, frees a slot.
pub(crate) const QUEUE_FULL_PAUSE: Duration = Duration::from_millis(10);

/// What the sink keeps about a run between the hand-overs of its records:
/// how many cut-offs it had seen at the first one (`None` before).
pub(crate) type RunToken = Option<u64>;

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

/// Publishes `records` pipelined (see the module docs) and calls
/// `report(index, outcome)` once per record; returns the number of order
/// gaps seen (records delivered after an earlier record of their key
/// failed).
///
/// - `topics[index]` is where record `index` goes; a key's consecutive
///   records with equal topics form a run.
/// - `hand_off(index, token)` gives record `index` to the producer without
///   waiting for it to be sent; `token` is its run's, for `hand_off` to
///   keep what it needs between the run's records (`None` at the start of
///   each run). A record finding the queue full is tried again every
///   [`QUEUE_FULL_PAUSE`] until it has waited `room_wait` since its run
///   started, then fails with the result [`Handoff::Full`] carries.
/// - `settle` turns a record's result into its outcome.
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
    settle: S,
    report: R,
    mut cut_off: C,
) -> u64
where
    H: FnMut(usize, &mut RunToken) -> Handoff<F>,
    F: Future<Output = RecordResult>,
    S: Fn(&OutboxRecord, RecordResult) -> Outcome,
    R: Fn(usize, Outcome),
    C: FnMut(Cut<'_>),
{
    debug_assert_eq!(records.len(), topics.len());
    let mut plan = Plan::new(records, topics);
    let mut reporter = Reporter {
        records,
        settle,
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

/// Turns results into reports.
struct Reporter<'r, S, R> {
    records: &'r [OutboxRecord],
    settle: S,
    report: R,
    gaps: u64,
}

impl<S, R> Reporter<'_, S, R>
where
    S: Fn(&OutboxRecord, RecordResult) -> Outcome,
    R: Fn(usize, Outcome),
{
    fn outcome(&self, index: usize, result: RecordResult) {
        (self.report)(index, (self.settle)(&self.records[index], result));
    }

    fn held_back(&self, index: usize, behind: usize) {
        let held = HeldBack::new(&self.records[index], &self.records[behind]);
        (self.report)(index, Outcome::Retriable(Box::new(held)));
    }

    /// `index` was delivered after `failed`, an earlier record of its key,
    /// failed.
    fn gap(&mut self, index: usize, failed: usize) {
        let record = &self.records[index];
        tracing::error!(
            id = record.id,
            event_id = %record.event_id,
            key = record.key.as_deref(),
            behind_id = self.records[failed].id,
            "Kafka wrote a record after an earlier record of its key failed in the same batch; \
             the key's order in the topic may be broken (the earlier record is retried and \
             lands after it)"
        );
        self.gaps += 1;
    }
}

/// Where a record stands.
#[derive(Debug)]
enum Slot {
    /// Its run has not started.
    Idle,
    /// Waiting to be handed over.
    Ready,
    /// In the producer.
    Sent,
    /// Delivered; the report waits for the earlier records of its key.
    Delivered,
    /// Reported.
    Reported,
}

/// Where a key's records (a group of the batch's [`KeyGroups`]) stand.
#[derive(Debug, Default)]
struct Chain {
    /// How many of them have started (their runs).
    started: usize,
    /// How many of them, from the first, are reported.
    reported: usize,
    /// The position of its first failed record, once one failed.
    failed: Option<usize>,
    /// The token of its current run.
    token: RunToken,
}

/// The bookkeeping of a pipelined batch.
#[derive(Debug)]
struct Plan<'t> {
    topics: &'t [Cow<'t, str>],
    groups: KeyGroups,
    /// Each group's progress.
    chains: Vec<Chain>,
    slots: Vec<Slot>,
    /// Records to hand over, in order, with when their run started.
    ready: VecDeque<(usize, Instant)>,
    /// Records handed over, with when, in that order; trimmed from the
    /// front as they get outcomes or expire.
    handed: VecDeque<(Instant, usize)>,
}

impl<'t> Plan<'t> {
    /// Groups the records by key and starts every key's first run.
    fn new(records: &[OutboxRecord], topics: &'t [Cow<'t, str>]) -> Self {
        let groups = KeyGroups::new(records);
        let mut plan = Self {
            topics,
            chains: groups.iter().map(|_| Chain::default()).collect(),
            groups,
            slots: records.iter().map(|_| Slot::Idle).collect(),
            ready: VecDeque::new(),
            handed: VecDeque::new(),
        };
        let now = Instant::now();
        for chain in 0..plan.chains.len() {
            let end = plan.run_end(chain);
            plan.chains[chain].started = end;
        }
        // Every first run at once, in batch order.
        for index in 0..records.len() {
            let (chain, position) = plan.groups.place(index);
            if position < plan.chains[chain].started {
                plan.slots[index] = Slot::Ready;
                plan.ready.push_back((index, now));
            }
        }
        plan
    }

    /// Where the run starting at `chain`'s first unstarted record ends.
    fn run_end(&self, chain: usize) -> usize {
        let indexes = self.groups.group(chain);
        let started = self.chains[chain].started;
        let topic = &self.topics[indexes[started]];
        let mut end = started + 1;
        while end < indexes.len() && self.topics[indexes[end]] == *topic {
            end += 1;
        }
        end
    }

    /// The next record to hand over, if any; records held back meanwhile
    /// are skipped.
    fn next_ready(&mut self) -> Option<(usize, Instant)> {
        while let Some(&(index, since)) = self.ready.front() {
            if matches!(self.slots[index], Slot::Ready) {
                return Some((index, since));
            }
            self.ready.pop_front();
        }
        None
    }

    /// The token of `index`'s run.
    fn token(&mut self, index: usize) -> &mut RunToken {
        &mut self.chains[self.groups.place(index).0].token
    }

    /// The record at the front was handed over.
    fn sent(&mut self, index: usize) {
        self.taken(index);
        self.slots[index] = Slot::Sent;
        self.handed.push_back((Instant::now(), index));
    }

    /// When the oldest record still in the producer will have been there
    /// for `expire_after`, if any is.
    fn next_expiry(&mut self, expire_after: Duration) -> Option<Instant> {
        while let Some(&(_, index)) = self.handed.front() {
            if matches!(self.slots[index], Slot::Sent) {
                break;
            }
            self.handed.pop_front();
        }
        self.handed.front().map(|&(at, _)| at + expire_after)
    }

    /// The records in the producer for `expire_after` by now were dealt
    /// with: the next expiry is a later record's.
    fn expired(&mut self, expire_after: Duration) {
        let now = Instant::now();
        while self
            .handed
            .front()
            .is_some_and(|&(at, _)| at + expire_after <= now)
        {
            self.handed.pop_front();
        }
    }

    /// Whether some key has more than one record in the producer.
    fn a_key_has_several_in_producer(&self) -> bool {
        self.groups.iter().any(|indexes| {
            indexes
                .iter()
                .filter(|&&index| matches!(self.slots[index], Slot::Sent))
                .nth(1)
                .is_some()
        })
    }

    /// The record at the front leaves the queue of records to hand over.
    fn taken(&mut self, index: usize) {
        let front = self.ready.pop_front();
        debug_assert_eq!(front.map(|(i, _)| i), Some(index));
    }

    /// Whether a later record of `index`'s key is in the producer.
    fn later_in_producer(&self, index: usize) -> bool {
        let (chain, position) = self.groups.place(index);
        self.groups.group(chain)[position + 1..self.chains[chain].started]
            .iter()
            .any(|&later| matches!(self.slots[later], Slot::Sent))
    }

    /// Record `index` has its result: reports what can be reported and
    /// starts its key's next run when the current one is delivered.
    fn finish<S, R>(&mut self, index: usize, result: RecordResult, out: &mut Reporter<'_, S, R>)
    where
        S: Fn(&OutboxRecord, RecordResult) -> Outcome,
        R: Fn(usize, Outcome),
    {
        let (c, position) = self.groups.place(index);
        let indexes = self.groups.group(c);
        if result.is_ok() {
            self.slots[index] = Slot::Delivered;
        } else {
            self.slots[index] = Slot::Reported;
            out.outcome(index, result);
            let chain = &mut self.chains[c];
            if chain.failed.is_none_or(|failed| position < failed) {
                chain.failed = Some(position);
            }
            // What has not reached the producer stays out of it.
            for &later in &indexes[position + 1..] {
                if matches!(self.slots[later], Slot::Idle | Slot::Ready) {
                    self.slots[later] = Slot::Reported;
                    out.held_back(later, index);
                }
            }
        }
        // Report the deliveries whose earlier records all have outcomes.
        let chain = &mut self.chains[c];
        while let Some(&next) = indexes.get(chain.reported) {
            match self.slots[next] {
                Slot::Reported => {}
                Slot::Delivered => {
                    if let Some(failed) = chain.failed.filter(|&f| f < chain.reported) {
                        out.gap(next, indexes[failed]);
                    }
                    self.slots[next] = Slot::Reported;
                    out.outcome(next, Ok(()));
                }
                Slot::Idle | Slot::Ready | Slot::Sent => break,
            }
            chain.reported += 1;
        }
        // A delivered run starts the next one.
        let chain = &self.chains[c];
        if chain.failed.is_none()
            && chain.reported == chain.started
            && chain.started < indexes.len()
        {
            let end = self.run_end(c);
            let chain = &mut self.chains[c];
            let now = Instant::now();
            for &next in &indexes[chain.started..end] {
                self.slots[next] = Slot::Ready;
                self.ready.push_back((next, now));
            }
            chain.started = end;
            chain.token = None;
        }
    }

    fn all_reported(&self) -> bool {
        self.slots.iter().all(|slot| matches!(slot, Slot::Reported))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use uuid::Uuid;

    use super::*;

    fn records(keys: &[Option<&str>]) -> Vec<OutboxRecord> {
        keys.iter()
            .enumerate()
            .map(|(i, key)| super::super::test_record(i as i64 + 1, "t", *key))
            .collect()
    }

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

    fn settle(_: &OutboxRecord, result: RecordResult) -> Outcome {
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

    /// Runs a batch whose records meet `fates`, on topics `topics`; returns
    /// the hand-offs in order, the reports in order (index and text), the
    /// cut-offs and the gaps.
    async fn run(
        keys: &[Option<&str>],
        topics: &[&str],
        fates: &[Fate],
    ) -> (Vec<usize>, Vec<(usize, String)>, usize, u64) {
        let records = records(keys);
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
            settle,
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
        let (handed, reported, cut, gaps) = run(&keys, &["t"; 5], &fates).await;
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
        let (handed, reported, cut, gaps) = run(&keys, &["t"; 5], &fates).await;
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
        let (handed, reported, cut, gaps) = run(&keys, &["t"; 3], &fates).await;
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
        let (_, reported, cut, gaps) = run(&keys, &["t"; 2], &fates).await;
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
            run(&keys, &topics, &[ok(10), ok(10), ok(10), ok(10), ok(50)]).await;
        // a's third (topic u) goes once the first two are delivered, its
        // fourth once the third is.
        assert_eq!(handed, vec![0, 1, 4, 2, 3]);
        assert_eq!(indexes(&reported), vec![0, 1, 2, 3, 4]);
        assert_eq!(gaps, 0);

        // A failed run holds back the later runs.
        let (handed, reported, _, _) =
            run(&keys, &topics, &[ok(10), fail(10), ok(10), ok(10), ok(10)]).await;
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
        let (handed, reported, _, _) = run(&keys, &["t"; 3], &[full(50), full(50), full(50)]).await;
        assert_eq!(handed, vec![0, 1, 2]);
        assert!(
            reported.iter().all(|(_, r)| r == "delivered"),
            "{reported:?}"
        );

        // No room within the 100 ms wait: every record fails, a's second
        // held back behind a's first.
        let (handed, reported, _, _) =
            run(&keys, &["t"; 3], &[full(500), full(500), full(500)]).await;
        assert!(handed.is_empty());
        assert_eq!(indexes(&reported), vec![0, 1, 2]);
        assert!(reported[0].1.contains("QueueFull"), "{reported:?}");
        assert!(reported[1].1.contains("held back"), "{reported:?}");
        assert!(reported[2].1.contains("QueueFull"), "{reported:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_split_by_a_cut_off_is_not_handed_over_further() {
        // a's second record finds the queue full until 50 ms; b's first
        // fails at 10 ms with b's second in the producer: a cut-off, which
        // may have purged a's first, so a's second must not follow it.
        let records = records(&[Some("a"), Some("b"), Some("b"), Some("a"), Some("a")]);
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
            |index, token: &mut RunToken| {
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
            settle,
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
        let records = records(keys);
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
            settle,
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
            settle,
            |_, _| panic!("nothing to report"),
            |_| panic!("nothing to cut off"),
        )
        .await;
        assert_eq!(gaps, 0);
    }
}
