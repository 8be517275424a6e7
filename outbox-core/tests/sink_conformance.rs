//! The in-memory sink passes the sink conformance suite, and the suite
//! catches sinks that break the contract.

use async_trait::async_trait;
use outbox_engine::testkit::sink::{self as suite, Destination, Message};
use outbox_engine::{FailureKind, InMemorySink, OutboxRecord, Outcome, Sink, sink_fn};

const TOPIC: &str = "conformance";
/// The in-memory sink fails every record of this topic for good.
const REFUSED: &str = "conformance-refused";

/// What the in-memory sink delivered.
#[derive(Debug, Clone)]
struct Delivered(InMemorySink);

impl Delivered {
    /// An in-memory sink whose acknowledgements take a moment, as a
    /// broker's do, so that its reports come one by one.
    fn new() -> (InMemorySink, Self) {
        let sink = InMemorySink::new();
        sink.fail_topic(REFUSED, FailureKind::Permanent);
        sink.set_send_latency(std::time::Duration::from_millis(1));
        (sink.clone(), Self(sink))
    }
}

#[async_trait(?Send)]
impl Destination for Delivered {
    fn topic(&self) -> String {
        TOPIC.to_owned()
    }

    fn fail_permanently(&self, record: &mut OutboxRecord) {
        record.topic = REFUSED.to_owned();
    }

    async fn messages(&self) -> Vec<Message> {
        self.0
            .delivered()
            .into_iter()
            .map(|record| Message {
                key: record.key,
                event_id: record.event_id,
                payload: record.payload,
            })
            .collect()
    }
}

async fn in_memory() -> Option<(InMemorySink, Delivered)> {
    Some(Delivered::new())
}

outbox_engine::sink_conformance_tests!(in_memory);

/// A sink made with `sink_fn` over the in-memory sink, one record per call.
mod from_a_function {
    use super::*;

    async fn sink_fn_sink() -> Option<(impl Sink, Delivered)> {
        let (inner, destination) = Delivered::new();
        let sink = sink_fn(move |record: OutboxRecord| {
            let inner = inner.clone();
            async move { inner.publish(&[record]).await.remove(0) }
        });
        Some((sink, destination))
    }

    outbox_engine::sink_conformance_tests!(sink_fn_sink);
}

/// Sinks that each break one rule, over the in-memory sink: the suite must
/// fail them.
mod broken {
    use super::*;

    /// Sends every record on its own, so nothing is held back.
    fn ignores_failures() -> (impl Sink, Delivered) {
        let (inner, destination) = Delivered::new();
        let sink = Forward(
            inner,
            |inner: InMemorySink, records: Vec<OutboxRecord>| async move {
                let mut outcomes = Vec::new();
                for record in records {
                    outcomes.extend(inner.publish(&[record]).await);
                }
                outcomes
            },
        );
        (sink, destination)
    }

    /// Keeps the rules, but reports every outcome when the batch is done.
    fn reports_at_the_end() -> (impl Sink, Delivered) {
        let (inner, destination) = Delivered::new();
        let sink = Forward(
            inner,
            |inner: InMemorySink, records: Vec<OutboxRecord>| async move {
                inner.publish(&records).await
            },
        );
        (sink, destination)
    }

    /// Sends each key's records newest first.
    fn reverses_keys() -> (impl Sink, Delivered) {
        let (inner, destination) = Delivered::new();
        let sink = Forward(
            inner,
            |inner: InMemorySink, records: Vec<OutboxRecord>| async move {
                let reversed: Vec<OutboxRecord> = records.iter().rev().cloned().collect();
                let mut outcomes = inner.publish(&reversed).await;
                outcomes.reverse();
                outcomes
            },
        );
        (sink, destination)
    }

    /// Treats keyless records as one key.
    fn orders_keyless_records() -> (impl Sink, Delivered) {
        let (inner, destination) = Delivered::new();
        let sink = Forward(
            inner,
            |inner: InMemorySink, records: Vec<OutboxRecord>| async move {
                let keyed: Vec<OutboxRecord> = records
                    .into_iter()
                    .map(|mut record| {
                        record.key.get_or_insert_with(String::new);
                        record
                    })
                    .collect();
                inner.publish(&keyed).await
            },
        );
        (sink, destination)
    }

    /// Gives each message a fresh event id.
    fn loses_event_ids() -> (impl Sink, Delivered) {
        let (inner, destination) = Delivered::new();
        let sink = Forward(
            inner,
            |inner: InMemorySink, records: Vec<OutboxRecord>| async move {
                let renamed: Vec<OutboxRecord> = records
                    .into_iter()
                    .map(|mut record| {
                        record.event_id = uuid::Uuid::now_v7();
                        record
                    })
                    .collect();
                inner.publish(&renamed).await
            },
        );
        (sink, destination)
    }

    /// Reports the first record of a batch twice.
    fn reports_twice() -> (impl Sink, Delivered) {
        let (inner, destination) = Delivered::new();
        (Twice(inner), destination)
    }

    /// A sink whose `publish` hands the batch to a function, and whose
    /// `publish_each` reports what that returns, when it returns.
    struct Forward<F>(InMemorySink, F);

    #[async_trait]
    impl<F, Fut> Sink for Forward<F>
    where
        F: Fn(InMemorySink, Vec<OutboxRecord>) -> Fut + Send + Sync,
        Fut: std::future::Future<Output = Vec<Outcome>> + Send,
    {
        async fn publish_each(
            &self,
            records: &[OutboxRecord],
            report: &(dyn Fn(usize, Outcome) + Send + Sync),
        ) {
            let outcomes = (self.1)(self.0.clone(), records.to_vec()).await;
            for (index, outcome) in outcomes.into_iter().enumerate() {
                report(index, outcome);
            }
        }
    }

    struct Twice(InMemorySink);

    #[async_trait]
    impl Sink for Twice {
        async fn publish(&self, records: &[OutboxRecord]) -> Vec<Outcome> {
            self.0.publish(records).await
        }

        async fn publish_each(
            &self,
            records: &[OutboxRecord],
            report: &(dyn Fn(usize, Outcome) + Send + Sync),
        ) {
            self.0
                .publish_each(records, &|index, outcome| {
                    if index == 0 {
                        report(index, Outcome::Delivered);
                    }
                    report(index, outcome);
                })
                .await;
        }
    }

    #[tokio::test]
    #[should_panic(expected = "must be held back")]
    async fn a_sink_that_delivers_past_a_failure_fails_the_hold_back_case() {
        let (sink, destination) = ignores_failures();
        suite::a_failure_holds_back_only_its_key(sink, destination).await;
    }

    #[tokio::test]
    async fn the_broken_sinks_keep_what_they_do_not_break() {
        // Each broken sink passes the cases about what it does not break,
        // so the failures below are for the rule each breaks.
        let (sink, destination) = ignores_failures();
        suite::many_records_of_one_key_arrive_in_order(sink, destination).await;
        let (sink, destination) = reports_at_the_end();
        suite::a_failure_holds_back_only_its_key(sink, destination).await;
        let (sink, destination) = reverses_keys();
        suite::keyless_records_do_not_hold_each_other_back(sink, destination).await;
        let (sink, destination) = orders_keyless_records();
        suite::a_held_key_flows_again_in_the_next_batch(sink, destination).await;
        let (sink, destination) = loses_event_ids();
        suite::an_empty_batch_does_nothing(sink, destination).await;
        let (sink, destination) = reports_twice();
        suite::an_empty_batch_does_nothing(sink, destination).await;
    }

    #[tokio::test]
    #[should_panic(expected = "reported only at the end")]
    async fn a_sink_that_reports_at_the_end_fails_the_as_soon_as_known_case() {
        let (sink, destination) = reports_at_the_end();
        suite::publish_each_reports_each_record_once_as_soon_as_known(sink, destination).await;
    }

    #[tokio::test]
    #[should_panic(expected = "arrived out of order")]
    async fn a_sink_that_reorders_a_key_fails_the_order_case() {
        let (sink, destination) = reverses_keys();
        suite::many_records_of_one_key_arrive_in_order(sink, destination).await;
    }

    #[tokio::test]
    #[should_panic(expected = "should be delivered")]
    async fn a_sink_that_orders_keyless_records_fails_the_keyless_case() {
        let (sink, destination) = orders_keyless_records();
        suite::keyless_records_do_not_hold_each_other_back(sink, destination).await;
    }

    #[tokio::test]
    #[should_panic(expected = "the event ids that arrived")]
    async fn a_sink_that_loses_event_ids_fails_the_event_id_case() {
        let (sink, destination) = loses_event_ids();
        suite::the_event_id_travels_with_the_message(sink, destination).await;
    }

    #[tokio::test]
    #[should_panic(expected = "reported record 0 twice")]
    async fn a_sink_that_reports_twice_fails_the_once_case() {
        let (sink, destination) = reports_twice();
        suite::many_records_of_one_key_arrive_in_order(sink, destination).await;
    }
}
