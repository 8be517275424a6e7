//! The producer's client context: librdkafka's logs and errors go to
//! `tracing`.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;

/// The default client context of a [`KafkaSink`](crate::KafkaSink): it
/// forwards librdkafka's logs and client-level errors to `tracing`, under
/// the target `librdkafka`. A context of your own
/// ([`KafkaSinkBuilder::context`](crate::KafkaSinkBuilder::context))
/// replaces it; call its methods from yours to keep these logs.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingContext;

impl ClientContext for TracingContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}");
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // Mostly transient (a broker down, a connection reset): the records
        // concerned fail or succeed on their own, with their own outcome.
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}
