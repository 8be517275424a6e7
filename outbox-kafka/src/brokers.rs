//! [`check_brokers`]: whether the brokers answer, with an error that says
//! what to fix when they do not.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, Producer as _};

use crate::{Error, TracingContext};

/// Asks the brokers of `config` (its `bootstrap.servers`, TLS and SASL
/// settings) for the cluster's metadata, waiting up to `timeout`: what a
/// relay checks at start, and a readiness probe can ask. Blocks the
/// calling thread (call it from `spawn_blocking` in async code).
///
/// # Errors
///
/// [`Error::Brokers`], whose message names the settings to check: the TLS
/// handshake failed (`ssl.ca.location`, client certificates), the SASL
/// login was refused (`sasl.username`, `sasl.password`, `sasl.mechanism`),
/// or the brokers could not be reached (`bootstrap.servers`, the network);
/// [`Error::Producer`] when librdkafka rejects the configuration.
pub fn check_brokers(config: &ClientConfig, timeout: Duration) -> Result<(), Error> {
    let brokers = config
        .get("bootstrap.servers")
        .unwrap_or_default()
        .to_owned();
    let context = TracingContext::default();
    let client: FutureProducer<TracingContext> = config
        .create_with_context(context.clone())
        .map_err(|error| Error::Producer {
            error,
            defaults_applied: Vec::new(),
        })?;
    match client.client().fetch_metadata(None, timeout) {
        Ok(_) => Ok(()),
        Err(error) => Err(Error::Brokers {
            brokers,
            timeout,
            broker: context.last_broker_error().map(Box::new),
            error: Box::new(error),
        }),
    }
}
