//! [`NatsSink`]: publishes outbox records to NATS JetStream.

mod builder;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, context::PublishErrorKind, message::PublishMessage};
use async_trait::async_trait;
use bytes::Bytes;
use outbox_engine::sink::publish_by_key;
use outbox_engine::{OutboxRecord, Outcome, Sink};

pub use builder::NatsSinkBuilder;

use crate::Error;
use crate::classify::{Class, api_code, classify, hint};
use crate::headers::message_headers;
use crate::subject::Subjects;

/// A [`Sink`] that publishes outbox records to NATS JetStream and awaits
/// each acknowledgement.
///
/// # Subjects
///
/// A record goes to `{prefix}{topic}` when it has no key, and to
/// `{prefix}{topic}.{key token}` when it has one: `orders` records of key
/// `order-7` go to `orders.order-7`. The key token is the key with every
/// byte other than an ASCII letter, digit, `-` or `_` written as `%XX`
/// ([`key_token`](crate::key_token)), so any key is exactly one token
/// (`a.b` becomes `a%2Eb`). A stream that takes a whole topic therefore
/// lists both subjects, `orders` and `orders.>`; a consumer of one key
/// filters on `orders.{key token}`. The topic may hold dots (more tokens);
/// [`route`](NatsSinkBuilder::route) replaces the topic part,
/// [`subject_prefix`](NatsSinkBuilder::subject_prefix) goes before it, and
/// [`key_in_subject(false)`](NatsSinkBuilder::key_in_subject) leaves the
/// key token out. A subject NATS would refuse (whitespace, a wildcard, an
/// empty token) fails the record permanently without sending it.
///
/// # Message layout
///
/// The payload is the event's JSON. The headers are `Nats-Msg-Id` (the
/// event id: the stream's duplicate window, 2 minutes by default, drops a
/// copy that a retry sends again, and the acknowledgement then says
/// *duplicate*, which the sink counts as delivered),
/// [`EVENT_ID_HEADER`](crate::EVENT_ID_HEADER),
/// [`EVENT_TYPE_HEADER`](crate::EVENT_TYPE_HEADER),
/// [`SCHEMA_VERSION_HEADER`](crate::SCHEMA_VERSION_HEADER),
/// [`KEY_HEADER`](crate::KEY_HEADER) (the key, unencoded) for a keyed
/// record, then the record's own headers (among them `traceparent`, when a
/// span was active at enqueue time). A record header named like one of
/// the outbox's, or starting with `Nats-` (JetStream would act on it), is
/// left out; one that NATS cannot carry (a name with `:` or non-ASCII
/// characters, a value with a line break) fails the record permanently.
///
/// # Per-key order and outcomes
///
/// The sink is built on [`publish_by_key`]: each key's records are
/// published one after the other, the next only once JetStream has
/// acknowledged the previous one; every key, and every keyless record, at
/// once. After a failure the rest of the key is held back (reported
/// retriable, not sent) and other keys go on. Each outcome is reported as
/// soon as its acknowledgement, or failure, is known.
///
/// Classification, by the client's error kind and JetStream's API error
/// code: a message larger than the server's `max_payload` or the stream's
/// `max_msg_size` is [`Outcome::Permanent`] (dead letters: make the event
/// smaller or raise the limit, then requeue). No stream for the subject
/// (the server answers "no responders") is [`Outcome::Retriable`] by
/// default, as Kafka's unknown topics are: a stream is often created after
/// the first events, and a JetStream that restarts or elects a leader
/// answers the same; [`missing_stream_is_permanent`](NatsSinkBuilder::missing_stream_is_permanent)
/// makes it permanent. Timeouts, a lost connection (the client reconnects
/// by itself), too many acknowledgements pending and any other error are
/// retriable. The error inside is this crate's [`Error`]; downcast it to
/// inspect it.
///
/// Clones share the connection.
#[derive(Clone)]
pub struct NatsSink {
    inner: Arc<Inner>,
}

struct Inner {
    jetstream: jetstream::Context,
    options: Options,
}

/// The outbox options, as the builder checked them.
#[derive(Debug)]
struct Options {
    subjects: Subjects,
    publish_timeout: Duration,
    missing_stream_is_permanent: bool,
}

impl NatsSink {
    /// A sink publishing through `jetstream` with the default options; the
    /// same as `NatsSink::builder(jetstream).build()`.
    pub fn new(jetstream: jetstream::Context) -> Self {
        Self::assemble(
            jetstream,
            Options {
                subjects: Subjects::default(),
                publish_timeout: builder::DEFAULT_PUBLISH_TIMEOUT,
                missing_stream_is_permanent: false,
            },
        )
    }

    /// Connects to the NATS server(s) at `url` (`nats://host:port`, comma
    /// separated) and makes a sink with the default options.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when no server answers.
    pub async fn connect(url: &str) -> Result<Self, Error> {
        let client = async_nats::connect(url)
            .await
            .map_err(|error| Error::Connect {
                url: url.to_owned(),
                reason: error.to_string(),
            })?;
        Ok(Self::new(jetstream::new(client)))
    }

    /// Starts configuring a sink with the outbox options of
    /// [`NatsSinkBuilder`].
    pub fn builder(jetstream: jetstream::Context) -> NatsSinkBuilder {
        NatsSinkBuilder::new(jetstream)
    }

    /// The JetStream context the sink publishes through.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.jetstream
    }

    /// How long one record may take, publish to acknowledgement.
    pub fn publish_timeout(&self) -> Duration {
        self.inner.options.publish_timeout
    }

    /// The subject `record` is published to (see *Subjects* above).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSubject`] when NATS would refuse it.
    pub fn subject(&self, record: &OutboxRecord) -> Result<String, Error> {
        self.inner
            .options
            .subjects
            .subject(record)
            .map_err(|(subject, reason)| Error::InvalidSubject {
                event_id: record.event_id,
                subject,
                reason,
            })
    }

    fn assemble(jetstream: jetstream::Context, options: Options) -> Self {
        Self {
            inner: Arc::new(Inner { jetstream, options }),
        }
    }

    /// Publishes one record and awaits its acknowledgement.
    async fn send(&self, record: &OutboxRecord) -> Outcome {
        match self.try_send(record).await {
            Ok(()) => Outcome::Delivered,
            Err(error) if error.is_retriable() => Outcome::Retriable(Box::new(error)),
            Err(error) => Outcome::Permanent(Box::new(error)),
        }
    }

    async fn try_send(&self, record: &OutboxRecord) -> Result<(), Error> {
        let options = &self.inner.options;
        let subject = self.subject(record)?;
        let headers = message_headers(record).map_err(|(name, reason)| Error::InvalidHeader {
            event_id: record.event_id,
            name,
            reason,
        })?;
        let message = PublishMessage::build()
            .payload(Bytes::from(record.payload.clone()))
            .headers(headers);
        let publish = async {
            let ack = self
                .inner
                .jetstream
                .send_publish(subject.clone(), message)
                .await?;
            ack.await
        };
        let failure = match tokio::time::timeout(options.publish_timeout, publish).await {
            Ok(Ok(ack)) => {
                if ack.duplicate {
                    tracing::debug!(
                        event_id = %record.event_id,
                        stream = %ack.stream,
                        "JetStream already had this event; the copy was dropped"
                    );
                }
                return Ok(());
            }
            Ok(Err(failure)) => failure,
            Err(_elapsed) => {
                return Err(Error::Timeout {
                    event_id: record.event_id,
                    subject,
                    timeout: options.publish_timeout,
                });
            }
        };
        let class = classify(&failure, options.missing_stream_is_permanent);
        let kind: PublishErrorKind = failure.kind();
        Err(Error::Publish {
            event_id: record.event_id,
            subject,
            code: api_code(&failure),
            // Its message already holds its source.
            reason: failure.to_string(),
            hint: hint(&failure),
            retriable: class == Class::Retriable,
            kind,
        })
    }
}

#[async_trait]
impl Sink for NatsSink {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        publish_by_key(records, report, |record| self.send(record)).await;
    }
}

impl fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsSink")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}
