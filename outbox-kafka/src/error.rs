//! The errors of `outbox-rdkafka`.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use uuid::Uuid;

use crate::classify::hint;

/// Everything that can go wrong in `outbox-rdkafka`: building a
/// [`KafkaSink`](crate::KafkaSink), publishing one record (inside an
/// [`Outcome`](outbox_engine::Outcome)), decoding a consumed message.
///
/// Each message says what failed, on what input, and what to do; the cause
/// is part of the message, so [`source`](std::error::Error::source) is
/// `None` and an error chain shows each cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sink's configuration is unusable; nothing was created.
    #[error("invalid Kafka sink configuration: {0}")]
    Config(String),

    /// librdkafka rejected the producer configuration (an unknown property,
    /// a bad value, incompatible settings) or could not create the producer.
    #[error(
        "cannot create the Kafka producer: {error}; fix the property it names{}",
        defaults_note(.defaults_applied)
    )]
    Producer {
        /// What librdkafka said.
        error: KafkaError,
        /// The `property=value` defaults the sink added to the user's
        /// configuration, which may be the ones that conflict.
        defaults_applied: Vec<String>,
    },

    /// Kafka did not take the record: it was refused when enqueued or its
    /// delivery report carries an error.
    #[error(
        "Kafka did not accept event {event_id} for topic `{topic}`: {error}; {}",
        hint(.error.rdkafka_error_code())
    )]
    Delivery {
        /// The record's event id.
        event_id: Uuid,
        /// The topic it was sent to.
        topic: String,
        /// What librdkafka reported; its
        /// [`rdkafka_error_code`](KafkaError::rdkafka_error_code) decided
        /// `retriable`.
        error: KafkaError,
        /// Whether a later attempt can succeed.
        retriable: bool,
    },

    /// The record's topic (after routing) is not a valid Kafka topic name;
    /// nothing was sent.
    #[error(
        "cannot publish event {event_id} to topic {topic:?}: {reason}; fix the record's topic \
         or the sink's route and topic prefix"
    )]
    InvalidTopic {
        /// The record's event id.
        event_id: Uuid,
        /// The topic name as routed.
        topic: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// Not sent because an earlier record of the same key failed in the
    /// same batch; sending it would break the key's order.
    #[error(
        "event {event_id} held back behind event {behind}, an earlier record of key `{key}` \
         that failed in this batch; it is sent once that one is delivered"
    )]
    HeldBack {
        /// The record's event id.
        event_id: Uuid,
        /// The event id of the failed record it waits for.
        behind: Uuid,
        /// The key both share.
        key: String,
    },

    /// The record was not delivered while the connection to the brokers
    /// failed: a TLS handshake, a SASL login, brokers out of reach. The
    /// message says which settings to check; the record is retried.
    #[error("Kafka did not take event {event_id} for topic `{topic}`: {broker}; it is retried")]
    BrokerConnection {
        /// The record's event id.
        event_id: Uuid,
        /// The topic it was sent to.
        topic: String,
        /// What librdkafka reported about the connection.
        broker: Box<crate::BrokerError>,
    },

    /// The brokers did not answer [`check_brokers`](crate::check_brokers).
    #[error(
        "cannot reach the Kafka brokers at {brokers} within {timeout:?}: {}",
        match .broker {
            Some(broker) => broker.to_string(),
            None => format!("{error}; check `bootstrap.servers` and that the brokers are up"),
        }
    )]
    Brokers {
        /// `bootstrap.servers`.
        brokers: String,
        /// How long it waited.
        timeout: Duration,
        /// What librdkafka reported about the connection, when it did.
        broker: Option<Box<crate::BrokerError>>,
        /// The metadata request's error.
        error: Box<KafkaError>,
    },

    /// No delivery report came back in time (`message.timeout.ms` after
    /// the record was handed to the producer, plus a grace period); the
    /// record may or may not be in the topic.
    #[error(
        "no delivery report for event {event_id} on topic `{topic}` within {timeout:?} of \
         handing it to the producer (its `message.timeout.ms` plus a grace period); it is \
         retried and may be published twice"
    )]
    DeliveryTimeout {
        /// The record's event id.
        event_id: Uuid,
        /// The topic it was sent to.
        topic: String,
        /// How long the sink waited.
        timeout: Duration,
    },

    /// The producer hit a fatal error (its idempotence guarantees could not
    /// be kept) while the record was undelivered. The sink replaces the
    /// producer; the record is retried.
    #[error(
        "the Kafka producer failed fatally ({code:?}: {reason}) before event {event_id} was \
         delivered; the sink starts a new producer and the record is retried"
    )]
    ProducerFatal {
        /// The record's event id.
        event_id: Uuid,
        /// librdkafka's fatal error code.
        code: RDKafkaErrorCode,
        /// librdkafka's description.
        reason: String,
    },

    /// The sink has no producer: the last fatal error's replacement could not
    /// be created.
    #[error(
        "event {event_id} not sent: the Kafka producer could not be recreated after a fatal \
         error ({reason}); it is retried"
    )]
    ProducerUnavailable {
        /// The record's event id.
        event_id: Uuid,
        /// Why the producer could not be created.
        reason: String,
    },

    /// A consumed message lacks a header the outbox always writes.
    #[error(
        "the message at {at} has no `{header}` header (or it is empty); was it published by \
         the outbox relay?"
    )]
    MissingHeader {
        /// The header's name.
        header: &'static str,
        /// Where the message is: topic, partition, offset.
        at: String,
    },

    /// A consumed message has an outbox header whose value does not parse.
    #[error("header `{header}` of the message at {at} is {value:?}, expected {expected}")]
    InvalidHeader {
        /// The header's name.
        header: &'static str,
        /// Its value, lossily decoded as UTF-8.
        value: String,
        /// What it should hold.
        expected: &'static str,
        /// Where the message is: topic, partition, offset.
        at: String,
    },

    /// A consumed message has no payload.
    #[error("the message at {at} has no payload; outbox messages always carry the event as JSON")]
    MissingPayload {
        /// Where the message is: topic, partition, offset.
        at: String,
    },

    /// A consumed message's key is not UTF-8 (outbox keys are strings).
    #[error("the key of the message at {at} is not UTF-8; outbox keys are strings")]
    InvalidKey {
        /// Where the message is: topic, partition, offset.
        at: String,
    },

    /// A consumed message was written with a schema version newer than the
    /// type it is decoded into: a newer producer's, which this consumer
    /// cannot read safely.
    #[error(
        "event `{event_type}` at {at} has schema version {version}, newer than the {supported} \
         this consumer reads; deploy a consumer that knows version {version}"
    )]
    UnsupportedSchemaVersion {
        /// The event type.
        event_type: String,
        /// The message's schema version.
        version: u32,
        /// The newest version the type reads (its `SCHEMA_VERSION`).
        supported: u32,
        /// Where the message is: topic, partition, offset.
        at: String,
    },

    /// A consumed message's payload does not decode into its event type.
    #[error("{error} (message at {at})")]
    Decode {
        /// What `outbox-engine` said.
        error: outbox_engine::Error,
        /// Where the message is: topic, partition, offset.
        at: String,
    },
}

impl Error {
    /// Whether doing the same thing again later can succeed: true for a
    /// retriable delivery failure, a timeout, a held-back record and a
    /// fatal producer error; false for configuration and decoding errors.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Delivery { retriable, .. } => *retriable,
            Error::Brokers { broker, .. } => !broker.as_ref().is_some_and(|b| b.is_security()),
            Error::HeldBack { .. }
            | Error::BrokerConnection { .. }
            | Error::DeliveryTimeout { .. }
            | Error::ProducerFatal { .. }
            | Error::ProducerUnavailable { .. } => true,
            _ => false,
        }
    }

    /// The rdkafka error code behind the error, if Kafka reported one.
    pub fn rdkafka_error_code(&self) -> Option<RDKafkaErrorCode> {
        match self {
            Error::Producer { error, .. } | Error::Delivery { error, .. } => {
                error.rdkafka_error_code()
            }
            Error::ProducerFatal { code, .. } => Some(*code),
            Error::BrokerConnection { broker, .. } => Some(broker.code),
            _ => None,
        }
    }
}

fn defaults_note(defaults: &[String]) -> String {
    if defaults.is_empty() {
        String::new()
    } else {
        format!(
            " (KafkaSink added the defaults {}; set a property yourself to override its default)",
            defaults.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn messages_carry_their_cause_once() {
        let error = Error::Delivery {
            event_id: Uuid::nil(),
            topic: "orders".into(),
            error: KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
            retriable: false,
        };
        let text = error.to_string();
        assert!(text.contains("orders"), "{text}");
        assert!(text.contains("MessageSizeTooLarge"), "{text}");
        assert!(text.contains("message.max.bytes"), "{text}");
        assert!(error.source().is_none());
        assert!(!error.is_retriable());
        assert_eq!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::MessageSizeTooLarge)
        );
    }

    #[test]
    fn producer_errors_name_the_defaults_added() {
        let error = Error::Producer {
            error: KafkaError::ClientCreation("`acks` must be set to `all`".into()),
            defaults_applied: vec!["enable.idempotence=true".into()],
        };
        let text = error.to_string();
        assert!(text.contains("enable.idempotence=true"), "{text}");
        assert!(!error.is_retriable());
    }

    #[test]
    fn held_back_is_retriable() {
        let error = Error::HeldBack {
            event_id: Uuid::nil(),
            behind: Uuid::max(),
            key: "k".into(),
        };
        assert!(error.is_retriable());
        assert!(error.to_string().contains(&Uuid::max().to_string()));
    }
}
