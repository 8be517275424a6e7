//! [`KafkaSink`]: publishes outbox records to Kafka.

mod builder;
mod context;
mod handoff;
mod pipeline;
mod plan;
mod publish;
mod purge;
mod reporter;
mod resolve;
mod routing;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use outbox_engine::{OutboxRecord, Outcome, Sink};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::producer::{FutureProducer, Producer as _};

pub use builder::KafkaSinkBuilder;
pub use builder::OAuthContext;
pub use context::{BrokerError, TracingContext};

use self::handoff::RecordResult;
use self::publish::{Limits, publish_batch};
use self::purge::PurgeGate;
use self::resolve::{held_back_as_ours, outcome, unless_fatal, with_broker_error};
use self::routing::Routing;
use crate::Error;
use crate::config::{apply_defaults, check_bootstrap, keeps_partitions_gapless, message_timeout};
use crate::metrics::ORDER_GAPS_TOTAL;

/// A [`Sink`] that publishes outbox records to Kafka through an rdkafka
/// [`FutureProducer`].
///
/// # Configuration
///
/// The sink takes your rdkafka [`ClientConfig`] as it is and adds these
/// defaults for the properties you leave unset (an alias counts as set,
/// e.g. `request.required.acks` for `acks`):
///
/// | property | default | why |
/// |---|---|---|
/// | `enable.idempotence` | `true` | no duplicates and no reordering under librdkafka's own retries |
/// | `enable.gapless.guarantee` | `true`, with idempotence | librdkafka stops the producer rather than write a record after an earlier one of its partition failed for good, so a key's records can be handed over together (see *Per-key order*) |
/// | `acks` | `all` | delivered means on every in-sync replica |
/// | `compression.type` | `lz4` | built into the bundled librdkafka, light on CPU |
/// | `linger.ms` | `0` | the batch is handed over at once, so lingering would only delay it |
/// | `message.timeout.ms` | `20000` | below the relay's default lease of 30 s |
///
/// Settings that contradict idempotence (say `acks=1`) make
/// [`KafkaSink::new`] fail with a message naming the conflict; set
/// `enable.idempotence=false` yourself to use them. Property names and
/// values are checked when the sink is built, as is `bootstrap.servers`
/// (which librdkafka itself only parses when it first connects).
///
/// # Timeouts
///
/// `message.timeout.ms` bounds each record, not the batch: librdkafka gives
/// up on a record (retries included) that long after it was handed to the
/// producer and reports it failed, and the sink waits for that report a
/// few seconds longer at most, then reports the record retriable
/// ([`Error::DeliveryTimeout`]). A record that waits for room in the
/// producer's queue (`queue.buffering.max.messages`) waits at most
/// `message.timeout.ms` too. A slow record (say, to a topic that does not
/// exist) delays only its own key. When a key's records go one at a time,
/// no record is cut off before its own time is up, and a key with many
/// records in a batch may take longer than `message.timeout.ms` in total;
/// pipelined, a batch whose records near their time while a key has
/// several of them in the producer purges the producer's queue 250 ms
/// early, which fails every record still queued, younger ones included
/// (see *Per-key order*). Keep `message.timeout.ms` below the relay's
/// lease, so that no other relay takes over a record while it is being
/// published. Zero (wait forever) is refused.
///
/// # Routing and message layout
///
/// A record goes to its own topic, or to the topic a
/// [`route`](KafkaSinkBuilder::route) function picks, behind an optional
/// [`topic_prefix`](KafkaSinkBuilder::topic_prefix). A topic name Kafka
/// would refuse fails the record permanently without sending it. The key is
/// the record's key (none: a null key, so the partitioner spreads such
/// records); the timestamp is the record's `created_at`; the payload is the
/// event's JSON; the headers are [`EVENT_ID_HEADER`](crate::EVENT_ID_HEADER),
/// [`EVENT_TYPE_HEADER`](crate::EVENT_TYPE_HEADER),
/// [`SCHEMA_VERSION_HEADER`](crate::SCHEMA_VERSION_HEADER), then the
/// record's own headers (among them `traceparent`, when a span was active
/// at enqueue time).
///
/// # Per-key order
///
/// For each key, the sink publishes the records of a batch in batch order
/// and never lets a later record overtake an earlier one that failed, in
/// one of two ways ([`is_pipelined`](KafkaSink::is_pipelined) says which).
///
/// **Pipelined**, when the configuration sets `enable.idempotence=true` and
/// `enable.gapless.guarantee=true` (both defaults above) and leaves
/// `retries` unlimited (librdkafka's default): every record of the batch is
/// handed to the producer at once, in batch order, and the sink collects
/// the delivery reports. librdkafka's idempotent producer writes a
/// partition's records in the order they were handed over, through its
/// own retries, and with the gapless guarantee it fails fatally rather
/// than write a record after an earlier one of its partition failed for
/// good. A key's records share requests instead of waiting a round trip
/// each, so a batch of a few hot keys is about as fast as a batch of many
/// keys (see the `publish_bench` example). The sink adds these rules:
///
/// - A record refused before it reaches the producer (an invalid topic
///   name, larger than `message.max.bytes`, a queue that stays full for
///   `message.timeout.ms`) stops its key: the rest of the key is not handed
///   over and is reported retriable ([`Error::HeldBack`]).
/// - A key whose records go to several topics (through a
///   [`route`](KafkaSinkBuilder::route)) spans several partitions, which
///   librdkafka does not order among themselves: its records for one topic
///   are handed over together, and those for the next topic once they are
///   all delivered.
/// - A key's deliveries are reported in batch order.
/// - A record the broker refuses for good (not authorized, too large for
///   the topic) is reported permanent with the broker's error; librdkafka
///   then stops the producer, the batch's undelivered records fail
///   retriably ([`Error::ProducerFatal`]) and the sink makes a new producer,
///   as for any fatal error (see *Outcomes*). One refused record thus costs
///   a new producer and a retry of what was in flight.
///
/// What remains is `message.timeout.ms`, which librdkafka's guarantee does
/// not cover. librdkafka looks for expired records once a second and fails
/// those whose time is up, oldest first; two records of a key handed over
/// a moment apart can fall on either side of that moment, and once no
/// request is in flight librdkafka bumps the producer epoch (locally, at
/// once) and sends the later record, which is written before the earlier
/// one is retried. So the sink purges the producer's queue itself shortly
/// before that: when a record of a batch has been in the producer for
/// `message.timeout.ms` less 250 ms and a key of the batch has several
/// records in it. A purge fails every queued record at once, those of
/// other keys and batches too (retriably: the relay retries them), and the
/// records it leaves, those in flight, come before the ones it fails.
/// Should a record fail first all the same while later records of its key
/// are in the producer (the sink's timer ran late; a request timed out in
/// flight and librdkafka queued its records again), the sink purges at
/// once, which catches the later records unless librdkafka has sent them
/// already. No batch of the sink hands over the rest of a key some of
/// whose records a purge may have caught. A record written after an
/// earlier record of its key failed is logged as an error and counted
/// ([`order_gaps`](KafkaSink::order_gaps), the metric
/// `outbox_kafka_order_gaps_total`); the relay marks it published and
/// retries the earlier one, which lands after it. A purge can also catch a
/// produce request librdkafka has already built, which it counts as a
/// permanent failure: under the gapless guarantee a fatal error, handled as
/// above. Where even this risk is too much, set
/// `enable.gapless.guarantee=false`.
///
/// **One record at a time** otherwise (idempotence off,
/// `enable.gapless.guarantee=false`, limited `retries`, or a producer from
/// [`from_producer`](KafkaSink::from_producer) made without these
/// settings): the sink is built on [`outbox_engine::publish_by_key`], which
/// keeps these rules for every sink. For each key, the records of a batch
/// are sent one after the other: the next record of a key is handed to the
/// producer only once the previous one's delivery report says it is
/// written. The first record of every key, and every keyless record, are
/// handed over at once, and the keys advance independently as their
/// reports come back. When a record fails, the rest of its key is not sent
/// and is reported retriable ([`Error::HeldBack`]), which the relay
/// releases without counting an attempt; other keys go on. Nothing of a
/// key is in the producer behind a record that may fail, so no timeout,
/// retry or epoch bump can reorder it; the cost is a round trip per record
/// of a key, so a batch of a few hot keys is much slower than a batch of
/// many distinct keys.
///
/// Pipelined, a record that fails after later records of its key were
/// handed over reports its own error, and those later records report
/// theirs (a timeout, a purge, a fatal producer); the relay releases them
/// without counting an attempt, as it does held-back records.
///
/// # Outcomes
///
/// [`publish_each`](Sink::publish_each) reports each record's [`Outcome`]
/// as soon as it is known: when its delivery report comes, or, for the
/// records a failure holds back, when the head of their key fails.
/// [`publish`](Sink::publish) collects the same outcomes and returns them,
/// one per record, in order, when the last is known. Outcomes are
/// classified by rdkafka's error code: too large, corrupt or invalid
/// records, invalid topics and missing authorization are
/// [`Outcome::Permanent`]; timeouts, unreachable brokers, leader changes, a
/// full queue, a missing topic (unless
/// [`unknown_topic_is_permanent`](KafkaSinkBuilder::unknown_topic_is_permanent))
/// and any code not known to be permanent are [`Outcome::Retriable`]. The
/// error inside is this crate's [`Error`]; downcast it to inspect it.
///
/// When the producer hits a fatal error (librdkafka cannot keep its
/// idempotence or gapless guarantees any more), the sink reports the
/// batch's records that fail from then on retriable
/// ([`Error::ProducerFatal`]), except a record whose own failure is
/// permanent (the one the broker refused, which caused the error), and,
/// once the batch's outcomes are all reported, replaces the producer with
/// a new one built from the same configuration.
///
/// Clones share the producer.
pub struct KafkaSink<C: ClientContext + 'static = TracingContext> {
    inner: Arc<Inner<C>>,
}

impl<C: ClientContext + 'static> Clone for KafkaSink<C> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// Makes a producer's context: a clone of the one the sink was built with.
type ContextFactory<C> = Box<dyn Fn() -> C + Send + Sync>;

struct Inner<C: ClientContext + 'static> {
    /// The user's configuration plus the defaults.
    config: ClientConfig,
    /// The defaults added, as `property=value`.
    defaults_applied: Vec<String>,
    routing: Routing,
    limits: Limits,
    /// Whether a key's records are handed to the producer together (the
    /// configuration keeps partitions gapless), or one at a time.
    pipelined: bool,
    /// Orders the purges of pipelined batches against their hand-overs.
    purges: PurgeGate,
    /// Records delivered after an earlier record of their key failed.
    order_gaps: AtomicU64,
    /// Replaced after a fatal error.
    producer: RwLock<Arc<FutureProducer<C>>>,
    /// The context of a replacement; `None` for a producer the
    /// application made ([`KafkaSink::from_producer`]).
    context: Option<ContextFactory<C>>,
    /// The sink's own context, which keeps the last broker error.
    watch: Option<TracingContext>,
}

impl KafkaSink {
    /// A sink publishing with `config` (plus the defaults above) and the
    /// default outbox options; the same as
    /// `KafkaSink::builder(config).build()`.
    ///
    /// # Errors
    ///
    /// See [`KafkaSinkBuilder::build`].
    pub fn new(config: ClientConfig) -> Result<Self, Error> {
        Self::builder(config).build()
    }

    /// A sink for the brokers `bootstrap_servers` (`host:port`, comma
    /// separated), with the defaults above.
    ///
    /// # Errors
    ///
    /// See [`KafkaSinkBuilder::build`].
    pub fn from_brokers(bootstrap_servers: &str) -> Result<Self, Error> {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", bootstrap_servers);
        Self::new(config)
    }

    /// Starts configuring a sink with the outbox options of
    /// [`KafkaSinkBuilder`].
    pub fn builder(config: ClientConfig) -> KafkaSinkBuilder {
        KafkaSinkBuilder::new(config)
    }
}

impl<C: ClientContext + 'static> KafkaSink<C> {
    /// A sink over a producer the application made (to share it, or with a
    /// context of its own), with `config`, the configuration it was made
    /// from: the sink checks it as [`KafkaSinkBuilder::build`] does, so it
    /// must set `message.timeout.ms` (below the relay's lease; librdkafka's
    /// own default is 5 minutes), but it cannot add its defaults to a
    /// producer that exists, so it logs a warning for each default the
    /// configuration lacks (`enable.idempotence=true`, `acks=all`: without
    /// them a broker failure can lose or duplicate records). The sink is
    /// [pipelined](KafkaSink::is_pipelined) only if the configuration sets
    /// `enable.idempotence=true` and `enable.gapless.guarantee=true` itself;
    /// then a record timing out can make the sink purge the producer's
    /// queue (see *Per-key order*), which fails the messages the
    /// application queued on a shared producer too. After a fatal producer
    /// error the sink cannot make a new producer: every record fails
    /// retriably, saying so, until the application restarts the relay with
    /// a new one. [`KafkaSink::builder`] with
    /// [`context`](KafkaSinkBuilder::context) has neither limit.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] as [`KafkaSinkBuilder::build`] returns it.
    pub fn from_producer(producer: FutureProducer<C>, config: ClientConfig) -> Result<Self, Error> {
        Self::builder_for_producer(config).wrap(producer)
    }

    fn builder_for_producer(config: ClientConfig) -> KafkaSinkBuilder<C> {
        KafkaSinkBuilder::without_context(config)
    }

    /// The configuration the producer runs with: yours plus the defaults.
    pub fn client_config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// How long one record may take to be delivered, from its hand-off to
    /// the producer: `message.timeout.ms` (see *Timeouts* above; a batch
    /// may take longer in total).
    pub fn publish_timeout(&self) -> Duration {
        self.inner.limits.timeout
    }

    /// Whether the sink hands all the records of a key in a batch to the
    /// producer together (pipelined), rather than one at a time, each once
    /// the previous one is acknowledged: true when the configuration sets
    /// `enable.idempotence=true` and `enable.gapless.guarantee=true` (the
    /// defaults) and leaves `retries` unlimited. See *Per-key order* above.
    pub fn is_pipelined(&self) -> bool {
        self.inner.pipelined
    }

    /// How many records Kafka wrote after an earlier record of their key
    /// failed in the same batch, since the sink was made: each is a place
    /// where the key's order in the topic may be broken (see *Per-key
    /// order* above), also logged as an error and counted in the metric
    /// `outbox_kafka_order_gaps_total`. Always 0 when not
    /// [pipelined](KafkaSink::is_pipelined).
    pub fn order_gaps(&self) -> u64 {
        self.inner.order_gaps.load(Ordering::Relaxed)
    }

    /// The producer the sink publishes with now (a new one after a fatal
    /// error).
    pub fn producer(&self) -> Arc<FutureProducer<C>> {
        self.inner.current()
    }

    fn create(
        mut config: ClientConfig,
        routing: Routing,
        unknown_topic_is_permanent: bool,
        context: ContextFactory<C>,
        watch: Option<TracingContext>,
    ) -> Result<Self, Error> {
        check_bootstrap(&config)?;
        let defaults_applied = apply_defaults(&mut config);
        let timeout = message_timeout(&config)?;
        let producer = create_producer(&config, &defaults_applied, context())?;
        let pipelined = keeps_partitions_gapless(&config);
        Ok(Self::assemble(
            config,
            defaults_applied,
            routing,
            Limits {
                timeout,
                unknown_topic_is_permanent,
            },
            pipelined,
            producer,
            Some(context),
            watch,
        ))
    }

    fn adopt(
        producer: FutureProducer<C>,
        config: ClientConfig,
        routing: Routing,
        unknown_topic_is_permanent: bool,
    ) -> Result<Self, Error> {
        check_bootstrap(&config)?;
        let timeout = message_timeout(&config)?;
        let mut with_defaults = config.clone();
        for missing in apply_defaults(&mut with_defaults) {
            if missing.starts_with("enable.idempotence") || missing.starts_with("acks") {
                tracing::warn!(
                    property = %missing,
                    "the producer given to the Kafka sink was made without this setting, which \
                     the sink would add: a broker failure may lose or duplicate records"
                );
            }
        }
        // The producer runs with `config` as given, without the defaults.
        let pipelined = keeps_partitions_gapless(&config);
        if !pipelined {
            tracing::info!(
                "the producer given to the Kafka sink is not configured with \
                 enable.idempotence=true, enable.gapless.guarantee=true and unlimited retries: \
                 the sink sends a key's records one at a time, each once the previous one is \
                 acknowledged"
            );
        }
        Ok(Self::assemble(
            config,
            Vec::new(),
            routing,
            Limits {
                timeout,
                unknown_topic_is_permanent,
            },
            pipelined,
            producer,
            None,
            None,
        ))
    }

    #[allow(clippy::too_many_arguments)] // one per field of `Inner`, named at both call sites
    fn assemble(
        config: ClientConfig,
        defaults_applied: Vec<String>,
        routing: Routing,
        limits: Limits,
        pipelined: bool,
        producer: FutureProducer<C>,
        context: Option<ContextFactory<C>>,
        watch: Option<TracingContext>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                defaults_applied,
                routing,
                limits,
                pipelined,
                purges: PurgeGate::default(),
                order_gaps: AtomicU64::new(0),
                producer: RwLock::new(Arc::new(producer)),
                context,
                watch,
            }),
        }
    }
}

fn create_producer<C: ClientContext + 'static>(
    config: &ClientConfig,
    defaults_applied: &[String],
    context: C,
) -> Result<FutureProducer<C>, Error> {
    config
        .create_with_context(context)
        .map_err(|error| Error::Producer {
            error,
            defaults_applied: defaults_applied.to_vec(),
        })
}

impl<C: ClientContext + 'static> Inner<C> {
    fn current(&self) -> Arc<FutureProducer<C>> {
        Arc::clone(&self.producer.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces `failed` with a new producer, unless a concurrent batch
    /// already did.
    fn replace(&self, failed: &Arc<FutureProducer<C>>) -> Result<(), Error> {
        let mut slot = self
            .producer
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if !Arc::ptr_eq(&slot, failed) {
            return Ok(());
        }
        let Some(context) = &self.context else {
            return Err(Error::Config(
                "the producer given to KafkaSink::from_producer failed fatally and the sink \
                 cannot make another: restart the relay with a new producer, or build the sink \
                 with KafkaSink::builder(config).context(..) so it can replace it"
                    .to_owned(),
            ));
        };
        let fresh = Arc::new(create_producer(
            &self.config,
            &self.defaults_applied,
            context(),
        )?);
        let old = std::mem::replace(&mut *slot, fresh);
        drop(slot);
        dispose(old);
        Ok(())
    }
}

/// Drops a producer handle away from the async workers: dropping the last
/// one purges, waits up to half a second for the purged reports and joins
/// librdkafka's threads.
fn dispose<C: ClientContext + 'static>(producer: Arc<FutureProducer<C>>) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(move || drop(producer));
        }
        Err(_) => drop(producer),
    }
}

#[async_trait]
impl<C: ClientContext + 'static> Sink for KafkaSink<C> {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        if records.is_empty() {
            return;
        }
        let inner = &*self.inner;
        let mut producer = inner.current();
        if producer.client().fatal_error().is_some() {
            // An earlier batch could not replace it; try again.
            if let Err(error) = inner.replace(&producer) {
                let reason = error.to_string();
                for (index, record) in records.iter().enumerate() {
                    let error = Error::ProducerUnavailable {
                        event_id: record.event_id,
                        reason: reason.clone(),
                    };
                    report(index, outcome(Err(error)));
                }
                return;
            }
            producer = inner.current();
        }

        let resolve = |record: &OutboxRecord, result: RecordResult| {
            let result = unless_fatal(&producer, record, result);
            outcome(with_broker_error(
                inner.watch.as_ref(),
                inner.limits,
                record,
                result,
            ))
        };
        let report = |index: usize, outcome: Outcome| report(index, held_back_as_ours(outcome));
        let gaps = publish_batch(
            &producer,
            records,
            &inner.routing,
            inner.limits,
            inner.pipelined.then_some(&inner.purges),
            resolve,
            report,
        )
        .await;
        if gaps > 0 {
            inner.order_gaps.fetch_add(gaps, Ordering::Relaxed);
            metrics::counter!(ORDER_GAPS_TOTAL).increment(gaps);
        }

        if let Some((code, reason)) = producer.client().fatal_error() {
            tracing::warn!(
                code = ?code,
                reason = %reason,
                "the Kafka producer failed fatally; replacing it, and the batch's undelivered \
                 records are retried"
            );
            if let Err(error) = inner.replace(&producer) {
                tracing::error!(
                    %error,
                    "cannot replace the failed Kafka producer; the next batch tries again"
                );
            }
        }
        if !Arc::ptr_eq(&producer, &inner.current()) {
            dispose(producer);
        }
    }
}

impl<C: ClientContext + 'static> fmt::Debug for KafkaSink<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.inner.config)
            .field("routing", &self.inner.routing)
            .field("publish_timeout", &self.inner.limits.timeout)
            .field("pipelined", &self.inner.pipelined)
            .field(
                "unknown_topic_is_permanent",
                &self.inner.limits.unknown_topic_is_permanent,
            )
            .finish_non_exhaustive()
    }
}
