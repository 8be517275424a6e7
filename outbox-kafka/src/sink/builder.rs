//! [`KafkaSinkBuilder`]: the outbox options of a [`KafkaSink`].

use std::sync::Arc;

use outbox_engine::OutboxRecord;
use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::producer::FutureProducer;

use super::routing::Routing;
use super::{KafkaSink, TracingContext};
use crate::Error;

/// Configures a [`KafkaSink`]: the rdkafka [`ClientConfig`] it was started
/// with, plus the outbox's own options, each with its default below.
/// Nothing is checked until [`build`](KafkaSinkBuilder::build).
///
/// ```no_run
/// use outbox_rdkafka::KafkaSink;
/// use rdkafka::ClientConfig;
///
/// let mut config = ClientConfig::new();
/// config.set("bootstrap.servers", "kafka-1:9092,kafka-2:9092");
/// let sink = KafkaSink::builder(config)
///     .topic_prefix("staging.")
///     .unknown_topic_is_permanent(false)
///     .build()?;
/// # Ok::<(), outbox_rdkafka::Error>(())
/// ```
#[must_use = "a builder does nothing until `build` is called"]
pub struct KafkaSinkBuilder<C = TracingContext> {
    config: ClientConfig,
    routing: Routing,
    unknown_topic_is_permanent: bool,
    context: Option<C>,
    /// The context that keeps the last broker error, when the sink's own.
    watch: Option<TracingContext>,
}

impl<C> std::fmt::Debug for KafkaSinkBuilder<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSinkBuilder")
            .field("config", &self.config)
            .field("routing", &self.routing)
            .field(
                "unknown_topic_is_permanent",
                &self.unknown_topic_is_permanent,
            )
            .finish_non_exhaustive()
    }
}

impl KafkaSinkBuilder {
    pub(super) fn new(config: ClientConfig) -> Self {
        let context = TracingContext::default();
        Self {
            config,
            routing: Routing::default(),
            unknown_topic_is_permanent: false,
            watch: Some(context.clone()),
            context: Some(context),
        }
    }

    /// Gives librdkafka OAUTHBEARER tokens from `provider` (with
    /// `security.protocol=sasl_ssl` and `sasl.mechanism=OAUTHBEARER`):
    /// librdkafka calls it at start and again before each token expires,
    /// with `sasl.oauthbearer.config` if set. This is the hook for a
    /// token that must be made in code, such as AWS MSK IAM's signed token
    /// (the `aws-msk-iam-sasl-signer` crate) or a cloud identity's; for an
    /// OIDC token endpoint, librdkafka's own `sasl.oauthbearer.method=oidc`
    /// needs no code. The sink keeps its logs and broker errors
    /// ([`TracingContext`]).
    ///
    /// ```no_run
    /// use outbox_rdkafka::KafkaSink;
    /// use outbox_rdkafka::rdkafka::ClientConfig;
    /// use outbox_rdkafka::rdkafka::client::OAuthToken;
    ///
    /// let mut config = ClientConfig::new();
    /// config
    ///     .set("bootstrap.servers", "b-1.example.kafka.us-east-1.amazonaws.com:9098")
    ///     .set("security.protocol", "sasl_ssl")
    ///     .set("sasl.mechanism", "OAUTHBEARER");
    /// let sink = KafkaSink::builder(config)
    ///     .oauth_token(|_config: Option<&str>| {
    ///         // Sign or fetch a token here.
    ///         Ok(OAuthToken {
    ///             token: "eyJ...".to_owned(),
    ///             principal_name: "outbox-relay".to_owned(),
    ///             lifetime_ms: chrono::Utc::now().timestamp_millis() + 900_000,
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok::<(), outbox_rdkafka::Error>(())
    /// ```
    pub fn oauth_token<F>(self, provider: F) -> KafkaSinkBuilder<OAuthContext>
    where
        F: Fn(Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>>
            + Send
            + Sync
            + 'static,
    {
        let tracing = self.watch.clone().unwrap_or_default();
        KafkaSinkBuilder {
            config: self.config,
            routing: self.routing,
            unknown_topic_is_permanent: self.unknown_topic_is_permanent,
            watch: Some(tracing.clone()),
            context: Some(OAuthContext {
                tracing,
                provider: Arc::new(provider),
            }),
        }
    }
}

/// The client context of a sink built with
/// [`KafkaSinkBuilder::oauth_token`]: the sink's [`TracingContext`], and
/// OAUTHBEARER tokens from the provider.
#[derive(Clone)]
pub struct OAuthContext {
    tracing: TracingContext,
    provider: Arc<TokenProvider>,
}

/// What [`KafkaSinkBuilder::oauth_token`] takes.
type TokenProvider =
    dyn Fn(Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error>> + Send + Sync;

impl std::fmt::Debug for OAuthContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthContext").finish_non_exhaustive()
    }
}

impl ClientContext for OAuthContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        self.tracing.log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.tracing.error(error, reason);
    }

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        // librdkafka calls this on the producer's polling thread: a panic
        // there would end delivery reports for good, so it becomes an error
        // and librdkafka asks again.
        let provider = &self.provider;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            provider(oauthbearer_config)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".to_owned());
            Err(format!("the token provider panicked: {what}").into())
        })
        .inspect_err(|error| {
            tracing::error!(
                target: "librdkafka",
                %error,
                "the OAUTHBEARER token provider failed; librdkafka asks again shortly"
            );
        })
    }
}

impl<C> KafkaSinkBuilder<C> {
    pub(super) fn without_context(config: ClientConfig) -> Self {
        Self {
            config,
            routing: Routing::default(),
            unknown_topic_is_permanent: false,
            context: None,
            watch: None,
        }
    }

    /// Makes the producer with `context`, an rdkafka
    /// [`ClientContext`] of your own: an OAUTHBEARER or AWS MSK IAM token
    /// refresh, the statistics callback. It replaces the default
    /// [`TracingContext`]; the sink clones it for the producer it makes
    /// after a fatal error. Default: [`TracingContext`]. (Records the sink
    /// could not deliver then carry librdkafka's error only, not the
    /// broker error the default context keeps; for OAUTHBEARER tokens,
    /// [`oauth_token`](KafkaSinkBuilder::oauth_token) keeps it.)
    ///
    /// ```no_run
    /// use outbox_rdkafka::KafkaSink;
    /// use outbox_rdkafka::rdkafka::{ClientConfig, ClientContext, Statistics};
    ///
    /// #[derive(Clone)]
    /// struct Stats;
    ///
    /// impl ClientContext for Stats {
    ///     fn stats(&self, statistics: Statistics) {
    ///         println!("{} messages in the producer's queue", statistics.msg_cnt);
    ///     }
    /// }
    ///
    /// let mut config = ClientConfig::new();
    /// config
    ///     .set("bootstrap.servers", "kafka:9092")
    ///     .set("statistics.interval.ms", "10000");
    /// let sink = KafkaSink::builder(config).context(Stats).build()?;
    /// # Ok::<(), outbox_rdkafka::Error>(())
    /// ```
    pub fn context<D>(self, context: D) -> KafkaSinkBuilder<D>
    where
        D: ClientContext + Clone + 'static,
    {
        KafkaSinkBuilder {
            config: self.config,
            routing: self.routing,
            unknown_topic_is_permanent: self.unknown_topic_is_permanent,
            context: Some(context),
            watch: None,
        }
    }

    /// Puts `prefix` before every topic name, e.g. `"staging."` sends
    /// `orders` records to `staging.orders`. Applied after
    /// [`route`](KafkaSinkBuilder::route). Default: none.
    pub fn topic_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.routing.prefix = prefix.into();
        self
    }

    /// Chooses each record's topic with `route` instead of the record's own
    /// [`topic`](OutboxRecord::topic). A name Kafka does not accept (empty,
    /// longer than 249 characters, or with characters outside
    /// `[a-zA-Z0-9._-]`) makes that record fail permanently, without
    /// anything being sent. Default: the record's topic.
    pub fn route<F>(mut self, route: F) -> Self
    where
        F: Fn(&OutboxRecord) -> String + Send + Sync + 'static,
    {
        self.routing.route = Some(Arc::new(route));
        self
    }

    /// Adds CloudEvents attributes to every message, as the CloudEvents
    /// Kafka protocol binding's binary mode has them: `ce_specversion`
    /// (`1.0`), `ce_id` (the event id), `ce_source` (`source`, a URI
    /// reference naming the producing service, such as `/orders`),
    /// `ce_type` (the event type), `ce_time` (when it was enqueued) and
    /// `content-type: application/json`, beside the outbox's own headers.
    /// Default: off.
    pub fn cloud_events(mut self, source: impl Into<String>) -> Self {
        self.routing.cloud_events_source = Some(source.into());
        self
    }

    /// Whether a record whose topic does not exist fails permanently (to
    /// dead letters) instead of being retried. Default: `false`, since a
    /// topic is often created after the first events are enqueued.
    ///
    /// librdkafka reports a missing topic once `topic.metadata.propagation.max.ms`
    /// (default 30 s) has passed since it first saw the name; with a
    /// `message.timeout.ms` shorter than that, the record times out first
    /// and is retried anyway. Lower `topic.metadata.propagation.max.ms` when
    /// you turn this on.
    pub fn unknown_topic_is_permanent(mut self, permanent: bool) -> Self {
        self.unknown_topic_is_permanent = permanent;
        self
    }

    /// Checks the configuration, adds the sink's defaults and creates the
    /// producer.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a missing or malformed `bootstrap.servers`, a
    /// `message.timeout.ms` of zero or not a number, or a topic prefix Kafka
    /// would refuse; [`Error::Producer`] when librdkafka rejects a property
    /// name or value or a combination of them. No connection is made, so
    /// an unreachable broker is not an error here: its records fail
    /// retriably when published.
    pub fn build(self) -> Result<KafkaSink<C>, Error>
    where
        C: ClientContext + Clone + 'static,
    {
        let Self {
            config,
            routing,
            unknown_topic_is_permanent,
            context,
            watch,
        } = self;
        check_prefix(&routing)?;
        let context = context.ok_or_else(|| {
            Error::Config("the sink has no client context to make a producer with".to_owned())
        })?;
        KafkaSink::create(
            config,
            routing,
            unknown_topic_is_permanent,
            Box::new(move || context.clone()),
            watch,
        )
    }

    /// [`KafkaSink::from_producer`], with these options.
    pub(super) fn wrap(self, producer: FutureProducer<C>) -> Result<KafkaSink<C>, Error>
    where
        C: ClientContext + 'static,
    {
        check_prefix(&self.routing)?;
        KafkaSink::adopt(
            producer,
            self.config,
            self.routing,
            self.unknown_topic_is_permanent,
        )
    }
}

fn check_prefix(routing: &Routing) -> Result<(), Error> {
    if routing
        .cloud_events_source
        .as_deref()
        .is_some_and(|source| source.trim().is_empty())
    {
        return Err(Error::Config(
            "the CloudEvents source must not be empty: name the producing service, such as \
             `/orders`"
                .to_owned(),
        ));
    }
    {
        if let Some(bad) = routing
            .prefix
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(Error::Config(format!(
                "the topic prefix {:?} holds {bad:?}; topic names may only hold ASCII letters, \
                 digits, `.`, `_` and `-`",
                routing.prefix
            )));
        }
        Ok(())
    }
}
