//! Pipelined publishing, the default: all the records of a key in a batch
//! go to the producer together, and per-key order holds under injected
//! faults: retriable produce errors, broker outages, slow brokers, records
//! timing out, a record the broker refuses for good.
//!
//! Every test checks what the relay relies on: each record gets one
//! outcome, and no record of a key is reported delivered after an earlier
//! one of its key failed (nor counted by the sink as such); then it reads
//! the topic back and checks that each key's first copies are in batch
//! order.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    OrderPlaced, TestKafka, assert_first_copies_in_order, error_of, interleaved_new_orders,
    interleaved_orders, publish_all, publish_until_delivered, record, stored,
};
use outbox_engine::{OutboxRecord, Outcome, Sink};
use outbox_rdkafka::rdkafka::producer::FutureProducer;
use outbox_rdkafka::rdkafka::{ClientConfig, ClientContext, Statistics};
use outbox_rdkafka::{Error, KafkaSink};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// Publishes `records` once with `publish_each` and returns the ones not
/// delivered, in order. Checks that each record has one outcome, none
/// permanent, and that no record is delivered after an earlier record of
/// its key failed.
async fn publish_checked<S: Sink>(sink: &S, records: &[OutboxRecord]) -> Vec<OutboxRecord> {
    publish_checked_with_errors(sink, records).await.0
}

/// [`publish_checked`], with the errors of the records not delivered.
async fn publish_checked_with_errors<S: Sink>(
    sink: &S,
    records: &[OutboxRecord],
) -> (Vec<OutboxRecord>, Vec<String>) {
    let reported: Mutex<Vec<Vec<Outcome>>> =
        Mutex::new(records.iter().map(|_| Vec::new()).collect());
    sink.publish_each(records, &|index, outcome| {
        reported.lock().unwrap()[index].push(outcome);
    })
    .await;
    let reported = reported.into_inner().unwrap();
    let mut failed_key: HashMap<Option<String>, (i64, String)> = HashMap::new();
    let mut left = Vec::new();
    let mut errors = Vec::new();
    for (record, outcomes) in records.iter().zip(reported) {
        let [outcome] = &outcomes[..] else {
            panic!("record {}: {} outcomes", record.id, outcomes.len());
        };
        match outcome {
            Outcome::Delivered => {
                if let Some((failed, error)) =
                    failed_key.get(&record.key).filter(|_| record.key.is_some())
                {
                    panic!(
                        "record {} of key {:?} delivered after record {failed} of its key \
                         failed: {error}",
                        record.id, record.key
                    );
                }
            }
            Outcome::Retriable(error) => {
                failed_key
                    .entry(record.key.clone())
                    .or_insert_with(|| (record.id, error.to_string()));
                left.push(record.clone());
                errors.push(error.to_string());
            }
            Outcome::Permanent(error) => panic!("record {}: permanent: {error}", record.id),
        }
    }
    (left, errors)
}

/// Publishes `records` in batches of `batch`, as the relay claims them:
/// each batch again and again (its undelivered records, in order) until it
/// is delivered, before the next one. Returns the number of failed
/// outcomes seen. Panics after `timeout`.
async fn deliver_in_batches<S: Sink>(
    sink: &S,
    records: &[OutboxRecord],
    batch: usize,
    timeout: Duration,
) -> usize {
    let deadline = Instant::now() + timeout;
    let mut failures = 0;
    for chunk in records.chunks(batch) {
        let mut pending = chunk.to_vec();
        while !pending.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} records of a batch still undelivered after {timeout:?}",
                pending.len()
            );
            pending = publish_checked(sink, &pending).await;
            failures += pending.len();
        }
    }
    failures
}

/// Counts the produce requests the sink's producer sent, from librdkafka's
/// statistics.
#[derive(Debug, Clone, Default)]
struct ProduceRequests(Arc<Mutex<(u64, i64)>>);

impl ClientContext for ProduceRequests {
    fn stats(&self, statistics: Statistics) {
        let requests = statistics
            .brokers
            .values()
            .filter_map(|broker| broker.req.get("Produce"))
            .sum();
        let mut seen = self.0.lock().unwrap();
        *seen = (seen.0 + 1, requests);
    }
}

impl ProduceRequests {
    /// The count of a statistics report made after this call.
    async fn now(&self) -> i64 {
        let calls = self.0.lock().unwrap().0;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (later, requests) = *self.0.lock().unwrap();
            // The second report after the call started after it.
            if later >= calls + 2 {
                return requests;
            }
            assert!(Instant::now() < deadline, "no statistics from librdkafka");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A sink counting its produce requests, on a one-partition topic, warmed
/// up (connected, the topic's metadata known) before the brokers take
/// `round_trip` to answer.
async fn counting_sink(
    kafka: &TestKafka,
    topic: &str,
    extra: &[(&str, &str)],
) -> (KafkaSink<ProduceRequests>, ProduceRequests) {
    let mut config = kafka.config();
    config.set("statistics.interval.ms", "50");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    let requests = ProduceRequests::default();
    let sink = KafkaSink::builder(config)
        .context(requests.clone())
        .build()
        .unwrap();
    let warm_up = record(1_000_000, topic, &order(99, 0));
    assert!(sink.publish(&[warm_up]).await[0].is_delivered());
    (sink, requests)
}

fn order(order_id: u64, seq: u32) -> OrderPlaced {
    OrderPlaced {
        order_id,
        seq,
        note: format!("order {order_id} step {seq}"),
    }
}

/// `count` records of one key.
fn one_key(topic: &str, count: u32) -> Vec<OutboxRecord> {
    (0..count)
        .map(|seq| record(seq as i64 + 1, topic, &order(1, seq)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_goes_to_the_producer_at_once() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("a_hot_key_goes_to_the_producer_at_once") else {
        return;
    };
    let topic = kafka.topic(1).await;
    let (sink, requests) = counting_sink(&kafka, &topic, &[]).await;
    assert!(sink.is_pipelined());
    mock.broker_round_trip_time(-1, Duration::from_millis(20))
        .unwrap();

    let records = one_key(&topic, 200);
    let before = requests.now().await;
    let outcomes = sink.publish(&records).await;
    let sent = requests.now().await - before;

    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    println!("{sent} produce requests for 200 records of one key, pipelined");
    // One at a time would take 200 requests, one round trip each.
    assert!(
        sent < 40,
        "{sent} produce requests for 200 records of one key"
    );
    let messages = kafka.read_topic(&topic, 1).await;
    assert_first_copies_in_order(&records, &messages[1..]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_gapless_guarantee_a_key_goes_one_record_at_a_time() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("without_the_gapless_guarantee_a_key_goes_one_record_at_a_time")
    else {
        return;
    };
    let topic = kafka.topic(1).await;
    let (sink, requests) =
        counting_sink(&kafka, &topic, &[("enable.gapless.guarantee", "false")]).await;
    assert!(!sink.is_pipelined());
    mock.broker_round_trip_time(-1, Duration::from_millis(20))
        .unwrap();

    let records = one_key(&topic, 40);
    let before = requests.now().await;
    let outcomes = sink.publish(&records).await;
    let sent = requests.now().await - before;

    assert!(outcomes.iter().all(Outcome::is_delivered), "{outcomes:?}");
    println!("{sent} produce requests for 40 records of one key, one at a time");
    // Each record waits for the previous one's acknowledgement.
    assert!(
        sent >= 40,
        "{sent} produce requests for 40 records of one key"
    );
    let messages = kafka.read_topic(&topic, 1).await;
    assert_first_copies_in_order(&records, &messages[1..]);
}

#[test]
fn the_mode_follows_the_producer_configuration() {
    let config = |pairs: &[(&str, &str)]| {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "1000");
        for (key, value) in pairs {
            config.set(*key, *value);
        }
        config
    };
    // The sink's own producer: the defaults make it pipelined.
    assert!(KafkaSink::new(config(&[])).unwrap().is_pipelined());
    let sink = KafkaSink::new(config(&[])).unwrap();
    assert_eq!(
        sink.client_config().get("enable.gapless.guarantee"),
        Some("true")
    );
    for pairs in [
        &[("enable.gapless.guarantee", "false")][..],
        &[("enable.idempotence", "false")],
        &[("retries", "3")],
    ] {
        let sink = KafkaSink::new(config(pairs)).unwrap();
        assert!(!sink.is_pipelined(), "{pairs:?}");
    }

    // A producer the application made runs with its configuration as it
    // is: pipelined only when that sets both properties.
    let adopt = |pairs: &[(&str, &str)]| {
        let config = config(pairs);
        let producer: FutureProducer = config.create().unwrap();
        KafkaSink::from_producer(producer, config).unwrap()
    };
    assert!(!adopt(&[]).is_pipelined());
    assert!(!adopt(&[("enable.idempotence", "true")]).is_pipelined());
    let gapless = [
        ("enable.idempotence", "true"),
        ("enable.gapless.guarantee", "true"),
    ];
    assert!(adopt(&gapless).is_pipelined());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_under_retriable_produce_errors() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("key_order_holds_under_retriable_produce_errors") else {
        return;
    };
    let topic = kafka.topic(3).await;
    let records = interleaved_orders(&topic, 5, 400);
    let mut config = kafka.config();
    // One produce request in flight per broker: the mock cluster does not
    // check an idempotent producer's sequence numbers, so it would write a
    // request sent behind one it refused, which a broker refuses
    // (OUT_OF_ORDER_SEQUENCE_NUMBER), and librdkafka would then count the
    // refused records as delivered. Small requests, so that the errors hit
    // the middle of batches.
    config
        .set("message.timeout.ms", "10000")
        .set("max.in.flight.requests.per.connection", "1")
        .set("batch.num.messages", "25");
    let sink = KafkaSink::new(config).unwrap();
    assert!(sink.is_pipelined());

    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_NO_ERROR,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_NO_ERROR,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NO_ERROR,
        RD_KAFKA_RESP_ERR_NO_ERROR,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
        RD_KAFKA_RESP_ERR_NO_ERROR,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        RD_KAFKA_RESP_ERR_NO_ERROR,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    for batch in records.chunks(500) {
        let mut pending = batch.to_vec();
        while !pending.is_empty() {
            assert!(Instant::now() < deadline, "{} undelivered", pending.len());
            mock.request_errors(RDKafkaApiKey::Produce, &errors);
            pending = publish_checked(&sink, &pending).await;
        }
    }
    mock.clear_request_errors(RDKafkaApiKey::Produce);

    assert_eq!(sink.order_gaps(), 0);
    let messages = kafka.read_topic(&topic, 3).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_through_broker_outages() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("key_order_holds_through_broker_outages") else {
        return;
    };
    let topic = kafka.topic(3).await;
    let records = interleaved_orders(&topic, 5, 400);
    let mut config = kafka.config();
    // Outages longer than the timeout make queued records time out; small
    // requests over a slow link keep each batch in flight long enough for
    // an outage to hit it; reconnecting soon after an outage keeps the
    // test short.
    config
        .set("message.timeout.ms", "1500")
        .set("batch.num.messages", "10")
        .set("reconnect.backoff.max.ms", "200");
    let sink = KafkaSink::new(config).unwrap();
    assert!(sink.is_pipelined());
    // Connecting may take longer than the short timeout.
    publish_until_delivered(&sink, records[..1].to_vec(), Duration::from_secs(30)).await;
    mock.broker_round_trip_time(-1, Duration::from_millis(40))
        .unwrap();

    let done = AtomicBool::new(false);
    let outages = async {
        let mut outages = 0;
        while !done.load(Ordering::SeqCst) && outages < 6 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            mock.broker_down(-1).unwrap();
            tokio::time::sleep(Duration::from_millis(2000)).await;
            mock.broker_up(-1).unwrap();
            outages += 1;
        }
        outages
    };
    let publishing = async {
        let failures = deliver_in_batches(&sink, &records[1..], 500, Duration::from_secs(90)).await;
        done.store(true, Ordering::SeqCst);
        failures
    };
    let (outages, failures) = tokio::join!(outages, publishing);
    mock.broker_round_trip_time(-1, Duration::ZERO).unwrap();

    assert!(outages > 0 && failures > 0, "no outage hit a batch");
    assert_eq!(sink.order_gaps(), 0);
    let messages = kafka.read_topic(&topic, 3).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_order_holds_over_slow_brokers() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("key_order_holds_over_slow_brokers") else {
        return;
    };
    let topic = kafka.topic(3).await;
    let records = interleaved_orders(&topic, 5, 400);
    let sink = kafka.sink_with("batch.num.messages", "20");
    publish_all(&sink, &records[..1]).await;

    for (n, batch) in records[1..].chunks(500).enumerate() {
        // 10, 40, 70, 100 ms.
        let round_trip = Duration::from_millis(10 + 30 * n as u64);
        mock.broker_round_trip_time(-1, round_trip).unwrap();
        let left = publish_checked(&sink, batch).await;
        assert!(
            left.is_empty(),
            "{} undelivered at {round_trip:?}",
            left.len()
        );
    }
    mock.broker_round_trip_time(-1, Duration::ZERO).unwrap();

    assert_eq!(sink.order_gaps(), 0);
    let messages = kafka.read_topic(&topic, 3).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_timing_out_let_no_later_record_of_their_key_through() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("records_timing_out_let_no_later_record_of_their_key_through")
    else {
        return;
    };
    let topic = kafka.topic(3).await;
    let records = interleaved_orders(&topic, 5, 200);
    let mut config = kafka.config();
    config
        .set("message.timeout.ms", "1000")
        .set("reconnect.backoff.max.ms", "200");
    let sink = KafkaSink::new(config).unwrap();
    // Connecting may take longer than the short timeout.
    publish_until_delivered(&sink, records[..1].to_vec(), Duration::from_secs(30)).await;
    let (first, second) = records[1..].split_at(500);

    // The brokers stay down past the timeout: nothing is delivered. The
    // sink purges the queue before librdkafka times records out, since each
    // key has many records in the producer; one record per key just times
    // out.
    mock.broker_down(-1).unwrap();
    let (left, errors) = publish_checked_with_errors(&sink, first).await;
    assert_eq!(left.len(), first.len());
    assert!(
        errors.iter().any(|e| e.contains("PurgeQueue")),
        "{:?}",
        &errors[..3]
    );
    for outcome in sink.publish(&first[..5]).await {
        assert!(
            matches!(outcome, Outcome::Retriable(ref e) if e.to_string().contains("MessageTimedOut")),
            "{outcome}"
        );
    }
    mock.broker_up(-1).unwrap();
    deliver_in_batches(&sink, first, 500, Duration::from_secs(60)).await;

    // The brokers come back while the records of the next batch are timing
    // out, partition by partition (librdkafka looks for expired records
    // once a second): some are delivered, some time out, and what times
    // out takes the rest of its key with it.
    mock.broker_down(-1).unwrap();
    let recovering = async {
        tokio::time::sleep(Duration::from_millis(1300)).await;
        mock.broker_up(-1).unwrap();
    };
    let ((), left) = tokio::join!(recovering, publish_checked(&sink, second));
    deliver_in_batches(&sink, &left, 500, Duration::from_secs(60)).await;

    assert_eq!(sink.order_gaps(), 0);
    let messages = kafka.read_topic(&topic, 3).await;
    assert_first_copies_in_order(&records, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_broker_refuses_for_good_stops_its_key_and_the_producer() {
    let kafka = TestKafka::start();
    let Some(mock) =
        kafka.faults("a_record_the_broker_refuses_for_good_stops_its_key_and_the_producer")
    else {
        return;
    };
    let topic = kafka.topic(1).await;
    let mut config = kafka.config();
    // One request in flight, as a broker refuses the requests behind a
    // refused one by their sequence numbers (see above).
    config.set("max.in.flight.requests.per.connection", "1");
    let sink = KafkaSink::new(config).unwrap();
    let records = one_key(&topic, 100);
    publish_all(&sink, &records[..1]).await;
    let first_producer = sink.producer();

    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
    );
    let batch = &records[1..];
    let outcomes = sink.publish(batch).await;

    // The records of the refused request fail for good, with the broker's
    // error; librdkafka then stops the producer (the gapless guarantee),
    // and every later record of the key fails retriably.
    let refused = outcomes
        .iter()
        .take_while(|o| matches!(o, Outcome::Permanent(_)))
        .count();
    assert!(refused > 0, "{}", outcomes[0]);
    assert_eq!(
        error_of(&outcomes[0]).rdkafka_error_code(),
        Some(RDKafkaErrorCode::TopicAuthorizationFailed)
    );
    for outcome in &outcomes[refused..] {
        assert!(matches!(outcome, Outcome::Retriable(_)), "{outcome}");
        assert!(
            matches!(
                error_of(outcome),
                Error::ProducerFatal { .. } | Error::HeldBack { .. }
            ),
            "{outcome}"
        );
    }
    assert!(!Arc::ptr_eq(&first_producer, &sink.producer()));
    assert_eq!(sink.order_gaps(), 0);

    // The new producer delivers the rest (the relay would hold the key
    // behind the refused records; here they are left out).
    let rest = &batch[refused..];
    publish_all(&sink, rest).await;
    let messages = kafka.read_topic(&topic, 1).await;
    let expected: Vec<OutboxRecord> = records[..1].iter().chain(rest).cloned().collect();
    assert_eq!(messages.len(), expected.len());
    assert_first_copies_in_order(&expected, &messages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_the_producer_queue_waits_for_room() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(2).await;
    let sink = kafka.sink_with("queue.buffering.max.messages", "50");
    let records = interleaved_orders(&topic, 3, 100);

    let left = publish_checked(&sink, &records).await;

    assert!(left.is_empty(), "{} undelivered", left.len());
    let messages = kafka.read_topic(&topic, 2).await;
    assert_eq!(messages.len(), records.len());
    assert_first_copies_in_order(&records, &messages);
}

/// An in-memory store whose first settlement takes `stall`, as one that
/// waits on a busy database would.
#[derive(Clone)]
struct StallingStore {
    inner: outbox_engine::InMemoryStore,
    stall: Duration,
    stalled: Arc<AtomicBool>,
}

#[async_trait::async_trait]
impl outbox_engine::OutboxStore for StallingStore {
    async fn enqueue(
        &self,
        records: &[outbox_engine::NewRecord],
    ) -> Result<(), outbox_engine::StoreError> {
        self.inner.enqueue(records).await
    }

    async fn claim(
        &self,
        request: &outbox_engine::ClaimRequest,
    ) -> Result<Vec<OutboxRecord>, outbox_engine::StoreError> {
        self.inner.claim(request).await
    }

    async fn settle(
        &self,
        owner: &str,
        settlement: &outbox_engine::Settlement,
    ) -> Result<outbox_engine::Settled, outbox_engine::StoreError> {
        if !self.stalled.swap(true, Ordering::SeqCst) {
            tokio::time::sleep(self.stall).await;
        }
        self.inner.settle(owner, settlement).await
    }

    async fn renew(
        &self,
        owner: &str,
        ids: &[i64],
        lease: Duration,
    ) -> Result<u64, outbox_engine::StoreError> {
        self.inner.renew(owner, ids, lease).await
    }
}

/// While the relay's settlement waits on the store (here 3 s), the sink
/// is still driven: with a partition's leader down, its purge fires
/// before librdkafka
/// would time records out on its own (which may fail a key's earlier
/// records and write its later ones), so the records of that partition
/// fail by the sink's purge, not by librdkafka's timeout; no
/// record is delivered after an earlier one of its key failed, and the
/// topic holds each key's first copies in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_settlement_leaves_the_sink_its_purges() {
    let kafka = TestKafka::start();
    let Some(mock) = kafka.faults("a_stalled_settlement_leaves_the_sink_its_purges") else {
        return;
    };
    let topic = kafka.topic(3).await;
    for partition in 0..3 {
        mock.partition_leader(&topic, partition, Some(partition + 1))
            .unwrap();
    }
    let orders = interleaved_new_orders(&topic, 6, 100);
    let records = stored(&orders);
    let mut config = kafka.config();
    config
        .set("message.timeout.ms", "1000")
        .set("reconnect.backoff.max.ms", "200");
    let sink = KafkaSink::new(config).unwrap();
    assert!(sink.is_pipelined());
    publish_until_delivered(&sink, records[..1].to_vec(), Duration::from_secs(30)).await;
    let memory = outbox_engine::InMemoryStore::new();
    let new = &orders[1..];
    outbox_engine::OutboxStore::enqueue(&memory, new)
        .await
        .unwrap();
    let store = StallingStore {
        inner: memory.clone(),
        stall: Duration::from_secs(3),
        stalled: Arc::default(),
    };
    // The leader of one partition of three is down: its records wait in
    // the producer, the others' are delivered and settled at once.
    mock.broker_down(2).unwrap();
    let relay = outbox_engine::Relay::builder(store, sink.clone())
        .backoff(
            outbox_engine::ExponentialBackoff::new(
                Duration::from_millis(200),
                Duration::from_millis(500),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = relay.run(async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    });
    let watching = async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let failed: Vec<OutboxRecord> = memory
            .records_with_status(outbox_engine::Status::Pending)
            .into_iter()
            .filter(|r| r.last_error.is_some())
            .collect();
        mock.broker_up(2).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        while memory
            .records_with_status(outbox_engine::Status::Published)
            .len()
            < new.len()
        {
            assert!(Instant::now() < deadline, "not all published in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.send_replace(true);
        failed
    };
    let ((), failed) = tokio::join!(running, watching);
    assert!(
        !failed.is_empty(),
        "no record waited for the broker that was down"
    );
    for record in &failed {
        let error = record.last_error.as_deref().unwrap_or_default();
        assert!(
            !error.contains("MessageTimedOut") && error.contains("PurgeQueue"),
            "record {} failed by librdkafka's own timeout, not the sink's purge: {error}",
            record.id
        );
    }
    assert_eq!(sink.order_gaps(), 0);
    let messages = kafka.read_topic(&topic, 3).await;
    assert_first_copies_in_order(&records, &messages);
}
