//! Kafka settings from the command line: `--brokers`, `-X key=value` (as
//! kcat takes them) and `--kafka-config FILE`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use rdkafka::ClientConfig;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;

/// How to reach Kafka.
#[derive(Debug, Clone, Args)]
pub(crate) struct KafkaArgs {
    /// The bootstrap brokers, host:port[,host:port...].
    #[arg(long, env = "KAFKA_BROKERS")]
    pub(crate) brokers: Option<String>,
    /// A librdkafka property, such as -X security.protocol=sasl_ssl (repeat
    /// for more; these win over --kafka-config). Without -X, they come from
    /// the environment variable OUTBOX_KAFKA_X, separated by `;` (secrets
    /// belong in --kafka-config).
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = property)]
    properties: Vec<(String, String)>,
    /// A file of librdkafka properties, one key=value per line (# starts a
    /// comment): TLS files, SASL credentials (mount it from a secret).
    #[arg(long, value_name = "FILE", env = "OUTBOX_KAFKA_CONFIG")]
    kafka_config: Option<PathBuf>,
    /// How long one check of the brokers waits for an answer.
    #[arg(long, value_name = "PERIOD", default_value = "10s", value_parser = crate::db::period, env = "OUTBOX_BROKER_TIMEOUT")]
    pub(crate) broker_timeout: Duration,
}

/// librdkafka properties from the environment, `;`-separated: what -X
/// gives on the command line.
const PROPERTIES_ENV: &str = "OUTBOX_KAFKA_X";

fn property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(format!(
            "`{text}` is not a librdkafka property; write -X key=value, such as -X acks=all"
        )),
    }
}

impl KafkaArgs {
    /// The client configuration: the file, then `-X`, then `--brokers`.
    pub(crate) fn config(&self) -> anyhow::Result<ClientConfig> {
        let mut config = ClientConfig::new();
        if let Some(path) = &self.kafka_config {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the Kafka config file {}", path.display()))?;
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let (key, value) = property(line).map_err(|error| {
                    anyhow::anyhow!("line {} of {}: {error}", number + 1, path.display())
                })?;
                config.set(key, value);
            }
        }
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        // Split here, not by clap: a `;` inside a value given with -X stays.
        if self.properties.is_empty()
            && let Ok(listed) = std::env::var(PROPERTIES_ENV)
        {
            for item in listed.split(';').filter(|item| !item.trim().is_empty()) {
                let (key, value) = property(item).map_err(|_| {
                    anyhow::anyhow!(
                        "{PROPERTIES_ENV} holds an item that is not key=value; separate \
                         properties with `;`"
                    )
                })?;
                config.set(key, value);
            }
        }
        if let Some(brokers) = &self.brokers {
            config.set("bootstrap.servers", brokers);
        }
        if config.get("bootstrap.servers").is_none() {
            crate::usage_error(
                "no Kafka brokers: pass --brokers host:port, set KAFKA_BROKERS, or set \
                 bootstrap.servers with -X or in --kafka-config",
            );
        }
        Ok(config)
    }

    /// An admin client that has reached the brokers, or an error that says
    /// which brokers did not answer.
    pub(crate) fn admin(
        &self,
        config: &ClientConfig,
    ) -> anyhow::Result<AdminClient<DefaultClientContext>> {
        let brokers = config
            .get("bootstrap.servers")
            .unwrap_or_default()
            .to_owned();
        let admin: AdminClient<DefaultClientContext> = config
            .create()
            .with_context(|| format!("invalid Kafka settings for brokers {brokers}"))?;
        admin
            .inner()
            .fetch_metadata(None, self.broker_timeout)
            .with_context(|| {
                format!(
                    "cannot reach the Kafka brokers at {brokers} within {}: check --brokers \
                     (or KAFKA_BROKERS) and that the brokers are up",
                    humantime::format_duration(self.broker_timeout)
                )
            })?;
        Ok(admin)
    }
}
