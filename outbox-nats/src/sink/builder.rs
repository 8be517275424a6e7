//! [`NatsSinkBuilder`]: the outbox options of a [`NatsSink`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use outbox_engine::OutboxRecord;

use super::{NatsSink, Options};
use crate::Error;
use crate::subject::{Subjects, check_subject};

/// Configures a [`NatsSink`]: the JetStream context it publishes through,
/// plus the outbox's own options, each with its default below. Nothing is
/// checked until [`build`](NatsSinkBuilder::build).
///
/// ```no_run
/// use std::time::Duration;
///
/// use outbox_nats::NatsSink;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let client = outbox_nats::async_nats::connect("nats://127.0.0.1:4222").await?;
/// let sink = NatsSink::builder(outbox_nats::async_nats::jetstream::new(client))
///     .subject_prefix("outbox.")
///     .publish_timeout(Duration::from_secs(5))
///     .build()?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct NatsSinkBuilder {
    jetstream: jetstream::Context,
    subjects: Subjects,
    publish_timeout: Duration,
    missing_stream_is_permanent: bool,
}

impl std::fmt::Debug for NatsSinkBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSinkBuilder")
            .field("subjects", &self.subjects)
            .field("publish_timeout", &self.publish_timeout)
            .field(
                "missing_stream_is_permanent",
                &self.missing_stream_is_permanent,
            )
            .finish_non_exhaustive()
    }
}

/// The default [`NatsSinkBuilder::publish_timeout`].
pub(crate) const DEFAULT_PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);

impl NatsSinkBuilder {
    pub(super) fn new(jetstream: jetstream::Context) -> Self {
        Self {
            jetstream,
            subjects: Subjects::default(),
            publish_timeout: DEFAULT_PUBLISH_TIMEOUT,
            missing_stream_is_permanent: false,
        }
    }

    /// Puts `prefix` before every subject, e.g. `"outbox."` sends `orders`
    /// records to `outbox.orders.<key>`. Applied to the topic or the
    /// [`route`](NatsSinkBuilder::route)'s choice. Default: none.
    pub fn subject_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.subjects.prefix = prefix.into();
        self
    }

    /// Chooses the topic part of each record's subject with `route`
    /// instead of the record's own [`topic`](OutboxRecord::topic); the key
    /// token still follows unless
    /// [`key_in_subject(false)`](NatsSinkBuilder::key_in_subject). A subject
    /// NATS does not accept makes that record fail permanently, without
    /// anything being sent. Default: the record's topic.
    pub fn route<F>(mut self, route: F) -> Self
    where
        F: Fn(&OutboxRecord) -> String + Send + Sync + 'static,
    {
        self.subjects.route = Some(Arc::new(route));
        self
    }

    /// Whether a keyed record's subject ends with its key's token
    /// (`orders.order-7`), so that consumers can filter by key. Without it
    /// every record of a topic goes to the topic's subject (the key is
    /// still in the [`KEY_HEADER`](crate::KEY_HEADER)). Default: `true`.
    pub fn key_in_subject(mut self, key_in_subject: bool) -> Self {
        self.subjects.key_in_subject = key_in_subject;
        self
    }

    /// How long one record may take, from the publish to JetStream's
    /// acknowledgement, before it is reported retriable
    /// ([`Error::Timeout`]). The JetStream context's own timeout (5 s
    /// unless set with `ContextBuilder::timeout`) bounds the wait for the
    /// acknowledgement too, whichever is shorter. Keep it below the relay's
    /// lease. Zero is refused. Default: 10 s.
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// Whether a record whose subject no stream listens on fails
    /// permanently (to dead letters) instead of being retried. Default:
    /// `false`, since streams are often created after the first events are
    /// enqueued, and a JetStream that is restarting answers the same way.
    pub fn missing_stream_is_permanent(mut self, permanent: bool) -> Self {
        self.missing_stream_is_permanent = permanent;
        self
    }

    /// Checks the options and makes the sink. No request is made, so a
    /// server that is down is not an error here: its records fail
    /// retriably when published.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a zero publish timeout or a subject prefix NATS
    /// would refuse (whitespace, wildcards, an empty token).
    pub fn build(self) -> Result<NatsSink, Error> {
        if self.publish_timeout.is_zero() {
            return Err(Error::Config(
                "the publish timeout is zero; give each record time to be acknowledged".into(),
            ));
        }
        let prefix = &self.subjects.prefix;
        if !prefix.is_empty() {
            let probe = format!("{prefix}x");
            check_subject(&probe).map_err(|reason| {
                Error::Config(format!(
                    "the subject prefix {prefix:?} is not usable: {reason}"
                ))
            })?;
        }
        Ok(NatsSink::assemble(
            self.jetstream,
            Options {
                subjects: self.subjects,
                publish_timeout: self.publish_timeout,
                missing_stream_is_permanent: self.missing_stream_is_permanent,
            },
        ))
    }
}
