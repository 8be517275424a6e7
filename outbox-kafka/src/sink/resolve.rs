//! What a record's result becomes: its [`Outcome`], with this crate's
//! errors inside.

use outbox_engine::{HeldBack, OutboxRecord, Outcome};
use rdkafka::client::ClientContext;
use rdkafka::producer::{FutureProducer, Producer as _};

use super::context::{BrokerError, TracingContext};
use super::handoff::RecordResult;
use super::publish::Limits;
use crate::Error;

/// The outcome of a record's result, retriable or not as its error says.
pub(super) fn outcome(result: RecordResult) -> Outcome {
    match result {
        Ok(()) => Outcome::Delivered,
        Err(error) if error.is_retriable() => Outcome::Retriable(Box::new(error)),
        Err(error) => Outcome::Permanent(Box::new(error)),
    }
}

/// A record held back behind a failed one of its key, reported with this
/// crate's [`Error::HeldBack`] (as consumers of the outcome downcast it).
pub(super) fn held_back_as_ours(outcome: Outcome) -> Outcome {
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
/// with the next producer. A permanent failure stays the record's own: with
/// `enable.gapless.guarantee`, a record the broker refuses for good (too
/// large for the topic, not authorized) is what makes the producer fail,
/// and retrying it would only do so again.
pub(super) fn unless_fatal<C: ClientContext + 'static>(
    producer: &FutureProducer<C>,
    record: &OutboxRecord,
    result: RecordResult,
) -> RecordResult {
    match result {
        Err(Error::Delivery {
            retriable: false, ..
        }) => result,
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

/// A record that timed out, or found no broker, while the brokers refused
/// the connection's security (a TLS handshake, a SASL login):
/// [`Error::BrokerConnection`], which names the settings to check. Still
/// retriable: nothing goes dead for a setting an operator fixes. (Brokers
/// merely down keep librdkafka's own error, which says so.)
pub(super) fn with_broker_error(
    watch: Option<&TracingContext>,
    limits: Limits,
    record: &OutboxRecord,
    result: RecordResult,
) -> RecordResult {
    use rdkafka::error::RDKafkaErrorCode as C;
    let Err(error) = &result else {
        return result;
    };
    let (topic, unreached) = match error {
        Error::Delivery {
            topic,
            error,
            retriable: true,
            ..
        } => (
            topic,
            matches!(
                error.rdkafka_error_code(),
                Some(
                    C::MessageTimedOut
                        | C::RequestTimedOut
                        | C::TimedOutQueue
                        | C::AllBrokersDown
                        | C::BrokerTransportFailure
                        | C::Resolve
                )
            ),
        ),
        Error::DeliveryTimeout { topic, .. } => (topic, true),
        _ => return result,
    };
    let Some(broker) = watch
        .and_then(TracingContext::last_broker_error)
        .filter(BrokerError::is_security)
    else {
        return result;
    };
    // Only an error seen while the record waited counts.
    let recent = broker.at.elapsed() <= limits.timeout + std::time::Duration::from_secs(30);
    if !unreached || !recent {
        return result;
    }
    Err(Error::BrokerConnection {
        event_id: record.event_id,
        topic: topic.clone(),
        broker: Box::new(broker),
    })
}
