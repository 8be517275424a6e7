//! A sink made with a client context of the application's own, and one
//! over a producer the application made: both publish, and the context is
//! the one librdkafka calls.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{TestKafka, interleaved_orders};
use outbox_engine::Sink;
use outbox_rdkafka::rdkafka::producer::{FutureProducer, Producer as _};
use outbox_rdkafka::rdkafka::{ClientConfig, ClientContext, Statistics};
use outbox_rdkafka::{Error, KafkaSink};

/// Counts librdkafka's statistics callbacks.
#[derive(Debug, Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl ClientContext for Counting {
    fn stats(&self, _statistics: Statistics) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_with_a_context_of_its_own_publishes_and_librdkafka_calls_it() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(2).await;
    let mut config = kafka.config();
    config.set("statistics.interval.ms", "100");
    let stats = Counting::default();
    let sink = KafkaSink::builder(config)
        .context(stats.clone())
        .build()
        .unwrap();

    let records = interleaved_orders(&topic, 3, 2);
    let outcomes = sink.publish(&records).await;
    assert!(outcomes.iter().all(|o| o.is_delivered()), "{outcomes:?}");
    assert_eq!(kafka.read_topic(&topic, 2).await.len(), 6);

    let deadline = Instant::now() + Duration::from_secs(10);
    while stats.0.load(Ordering::SeqCst) == 0 {
        assert!(
            Instant::now() < deadline,
            "librdkafka never called the sink's context"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The defaults are applied as with the default context.
    assert_eq!(sink.client_config().get("enable.idempotence"), Some("true"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_over_the_applications_producer_publishes_with_it() {
    let kafka = TestKafka::start();
    let topic = kafka.topic(1).await;
    let mut config = kafka.config();
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "20000");
    let producer: FutureProducer = config.create().unwrap();
    let sink = KafkaSink::from_producer(producer, config.clone()).unwrap();

    let records = interleaved_orders(&topic, 2, 2);
    let outcomes = sink.publish(&records).await;
    assert!(outcomes.iter().all(|o| o.is_delivered()), "{outcomes:?}");
    assert_eq!(kafka.read_topic(&topic, 1).await.len(), 4);
    assert_eq!(sink.producer().in_flight_count(), 0);

    // The configuration is checked as when the sink makes the producer:
    // librdkafka's own message timeout (5 min) would outlast the lease.
    let mut lax = kafka.config();
    lax.set("enable.idempotence", "true");
    let producer: FutureProducer = lax.create().unwrap();
    match KafkaSink::from_producer(producer, lax) {
        Err(Error::Config(message)) => assert!(message.contains("message.timeout.ms"), "{message}"),
        other => panic!("{other:?}"),
    }
    let producer: FutureProducer = config.create().unwrap();
    match KafkaSink::from_producer(producer, ClientConfig::new()) {
        Err(Error::Config(message)) => assert!(message.contains("bootstrap.servers"), "{message}"),
        other => panic!("{other:?}"),
    }
}
