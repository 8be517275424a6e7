//! The producer's client context: librdkafka's logs and errors go to
//! `tracing`, and the last error of the connection to the brokers (a TLS
//! handshake, a SASL login, brokers out of reach) is kept to say what to
//! fix.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// How long a TLS or SASL failure stays the last broker error when mere
/// "brokers down" errors follow it.
const KEEP_CAUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// The default client context of a [`KafkaSink`](crate::KafkaSink): it
/// forwards librdkafka's logs and client-level errors to `tracing`, under
/// the target `librdkafka`, and keeps the last error of the connection to
/// the brokers ([`last_broker_error`](Self::last_broker_error)), which the
/// sink adds to the errors of records that could not be delivered. A
/// context of your own
/// ([`KafkaSinkBuilder::context`](crate::KafkaSinkBuilder::context))
/// replaces it; call its methods from yours to keep these. Clones share
/// the last error.
#[derive(Debug, Clone, Default)]
pub struct TracingContext {
    last: Arc<Mutex<Option<BrokerError>>>,
}

impl TracingContext {
    /// The last error librdkafka reported about the connection to the
    /// brokers (TLS, SASL, reachability), if any since the sink started.
    pub fn last_broker_error(&self) -> Option<BrokerError> {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

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
        if let Some(broker) = BrokerError::from_client_error(&error, reason) {
            tracing::warn!(target: "librdkafka", "{broker}");
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            // A refused handshake or login is followed by "all brokers
            // down": keep the cause, the setting to fix, for a while.
            let keep = last.as_ref().is_some_and(|last| {
                last.is_security() && !broker.is_security() && last.at.elapsed() < KEEP_CAUSE
            });
            if !keep {
                *last = Some(broker);
            }
        } else {
            tracing::warn!(target: "librdkafka", %error, "{reason}");
        }
    }
}

/// An error of the connection to the brokers, as librdkafka reported it,
/// classified by its error code: what failed and which settings to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerError {
    /// librdkafka's error code.
    pub code: RDKafkaErrorCode,
    /// librdkafka's description.
    pub reason: String,
    /// When it was reported.
    pub at: Instant,
}

impl BrokerError {
    /// The connection error in a client error, or `None` for another kind
    /// of error.
    pub fn from_client_error(error: &KafkaError, reason: &str) -> Option<Self> {
        use RDKafkaErrorCode as C;
        let code = error.rdkafka_error_code()?;
        matches!(
            code,
            C::SSL
                | C::Authentication
                | C::SaslAuthenticationFailed
                | C::AllBrokersDown
                | C::BrokerTransportFailure
                | C::Resolve
        )
        .then(|| Self {
            code,
            reason: reason.to_owned(),
            at: Instant::now(),
        })
    }

    /// Whether the brokers refused the connection for its security (TLS
    /// or SASL): a setting to fix, not a broker to wait for.
    pub fn is_security(&self) -> bool {
        use RDKafkaErrorCode as C;
        matches!(
            self.code,
            C::SSL | C::Authentication | C::SaslAuthenticationFailed
        )
    }
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RDKafkaErrorCode as C;
        let reason = &self.reason;
        match self.code {
            C::SSL => write!(
                f,
                "the TLS handshake with the brokers failed ({reason}): check `ssl.ca.location` \
                 (the CA that signed the brokers' certificates), `ssl.certificate.location` and \
                 `ssl.key.location` (a client certificate, when the brokers ask for one), and \
                 that the brokers speak TLS on that port"
            ),
            C::Authentication | C::SaslAuthenticationFailed => write!(
                f,
                "the brokers refused the SASL login ({reason}): check `sasl.username` and \
                 `sasl.password` (or the OAUTHBEARER token), `sasl.mechanism`, and \
                 `security.protocol` (sasl_ssl or sasl_plaintext)"
            ),
            _ => write!(
                f,
                "the brokers cannot be reached or closed the connection ({reason}): check \
                 `bootstrap.servers`, the network, `security.protocol` (a TLS port answers \
                 plaintext clients with nothing), and, over TLS, that the brokers accept the \
                 client certificate (`ssl.certificate.location`, `ssl.key.location`)"
            ),
        }
    }
}
