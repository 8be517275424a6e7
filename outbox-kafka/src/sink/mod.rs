//! [`KafkaSink`]: publishes outbox records to Kafka.

mod builder;
mod context;
mod publish;
mod routing;

/// A record for unit tests: `{}` of type `E` on `topic`.
#[cfg(test)]
fn test_record(id: i64, topic: &str, key: Option<&str>) -> outbox_core::OutboxRecord {
    let now = chrono::Utc::now();
    outbox_core::OutboxRecord::from_new(
        id,
        outbox_core::NewRecord {
            event_id: uuid::Uuid::now_v7(),
            topic: topic.into(),
            key: key.map(Into::into),
            event_type: "E".into(),
            schema_version: 1,
            payload: "{}".into(),
            headers: Default::default(),
            created_at: now,
            available_at: now,
        },
    )
}

use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::sink::collect_outcomes;
use outbox_core::{HeldBack, OutboxRecord, Outcome, Sink};
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::producer::{FutureProducer, Producer as _};

pub use builder::KafkaSinkBuilder;
pub use context::TracingContext;

use self::publish::{Limits, RecordResult, publish_batch};
use self::routing::Routing;
use crate::Error;
use crate::config::{apply_defaults, check_bootstrap, message_timeout};

/// A [`Sink`] that publishes outbox records to Kafka through an rdkafka
/// [`FutureProducer`](rdkafka::producer::FutureProducer).
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
/// | `acks` | `all` | delivered means on every in-sync replica |
/// | `compression.type` | `lz4` | built into the bundled librdkafka, light on CPU |
/// | `linger.ms` | `0` | the batch is handed over at once, so lingering would only delay it (and every step of a key's chain) |
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
/// `message.timeout.ms` too. No record is cut off before its own time is
/// up, so a slow record (say, to a topic that does not exist) delays only
/// its own key, and a key with many records in a batch may take longer than
/// `message.timeout.ms` in total (see *Per-key order*). Keep it below the
/// relay's lease, so that no other relay takes over a record while it is
/// being published. Zero (wait forever) is refused.
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
/// The sink is built on [`outbox_core::publish_by_key`], which keeps these
/// rules for every sink. For each key, the records of a batch are sent one
/// after the other: the next record of a key is handed to the producer only
/// once the previous one's delivery report says it is written. The first record of every key,
/// and every keyless record, are handed over at once, and the keys advance
/// independently as their reports come back. When a record fails, the rest
/// of its key is not sent and is reported retriable
/// ([`Error::HeldBack`]), which the relay releases without counting an
/// attempt; other keys go on.
///
/// librdkafka's idempotent producer alone keeps a partition's order under
/// its internal retries, but leaves gaps when a record times out or fails
/// for good while the records after it are written; waiting for each report
/// closes that gap. The cost: a key with many records in one batch is
/// published one round trip per record, so a batch of a few hot keys is
/// slower than a batch of many distinct keys (see the `publish_bench`
/// example).
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
/// idempotence guarantees any more), the sink reports the batch's records
/// that fail from then on retriable ([`Error::ProducerFatal`]) and, once
/// the batch is settled, replaces the producer with a new one built from
/// the same configuration.
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
    /// Replaced after a fatal error.
    producer: RwLock<Arc<FutureProducer<C>>>,
    /// The context of a replacement; `None` for a producer the
    /// application made ([`KafkaSink::from_producer`]).
    context: Option<ContextFactory<C>>,
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
    /// them a broker failure can lose or duplicate records). After a fatal
    /// producer error the sink cannot make a new producer: every record
    /// fails retriably, saying so, until the application restarts the
    /// relay with a new one. [`KafkaSink::builder`] with
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
    ) -> Result<Self, Error> {
        check_bootstrap(&config)?;
        let defaults_applied = apply_defaults(&mut config);
        let timeout = message_timeout(&config)?;
        let producer = create_producer(&config, &defaults_applied, context())?;
        Ok(Self::assemble(
            config,
            defaults_applied,
            routing,
            Limits {
                timeout,
                unknown_topic_is_permanent,
            },
            producer,
            Some(context),
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
        Ok(Self::assemble(
            config,
            Vec::new(),
            routing,
            Limits {
                timeout,
                unknown_topic_is_permanent,
            },
            producer,
            None,
        ))
    }

    fn assemble(
        config: ClientConfig,
        defaults_applied: Vec<String>,
        routing: Routing,
        limits: Limits,
        producer: FutureProducer<C>,
        context: Option<ContextFactory<C>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                defaults_applied,
                routing,
                limits,
                producer: RwLock::new(Arc::new(producer)),
                context,
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

fn outcome(result: RecordResult) -> Outcome {
    match result {
        Ok(()) => Outcome::Delivered,
        Err(error) if error.is_retriable() => Outcome::Retriable(Box::new(error)),
        Err(error) => Outcome::Permanent(Box::new(error)),
    }
}

#[async_trait]
impl<C: ClientContext + 'static> Sink for KafkaSink<C> {
    async fn publish(&self, records: &[OutboxRecord]) -> Vec<Outcome> {
        collect_outcomes(self, records).await
    }

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

        let settle = |record: &OutboxRecord, result: RecordResult| {
            outcome(unless_fatal(&producer, record, result))
        };
        let report = |index: usize, outcome: Outcome| report(index, held_back_as_ours(outcome));
        publish_batch(
            &producer,
            records,
            &inner.routing,
            inner.limits,
            settle,
            report,
        )
        .await;

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

/// A record held back behind a failed one of its key, reported with this
/// crate's [`Error::HeldBack`] (as consumers of the outcome downcast it).
fn held_back_as_ours(outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Retriable(error) => match error.downcast::<HeldBack>() {
            Ok(held) => Outcome::Retriable(Box::new(Error::HeldBack {
                event_id: held.event_id,
                behind: held.behind_event_id,
                key: held.key,
            })),
            Err(error) => Outcome::Retriable(error),
        },
        outcome => outcome,
    }
}

/// A Kafka failure of `record` once `producer` has failed fatally is the
/// producer's failure, not the record's: [`Error::ProducerFatal`], retried
/// with the next producer.
fn unless_fatal<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    record: &OutboxRecord,
    result: RecordResult,
) -> RecordResult {
    match result {
        Err(Error::Delivery { .. } | Error::DeliveryTimeout { .. }) => {
            match producer.client().fatal_error() {
                Some((code, reason)) => Err(Error::ProducerFatal {
                    event_id: record.event_id,
                    code,
                    reason,
                }),
                None => result,
            }
        }
        result => result,
    }
}

impl<C: ClientContext + 'static> fmt::Debug for KafkaSink<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.inner.config)
            .field("routing", &self.inner.routing)
            .field("publish_timeout", &self.inner.limits.timeout)
            .field(
                "unknown_topic_is_permanent",
                &self.inner.limits.unknown_topic_is_permanent,
            )
            .finish_non_exhaustive()
    }
}
