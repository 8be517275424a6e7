//! Which Kafka errors a later attempt can overcome, decided by rdkafka's
//! error codes (never by message text).

use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What the relay should do with a record that failed with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Try again later: the cause is transient (a timeout, a broker down, a
    /// leader change, a full queue) or unknown.
    Retriable,
    /// Trying again cannot help: the record goes to dead letters.
    Permanent,
}

/// Classifies an rdkafka error. An error without a code (the producer went
/// away) is retriable.
pub(crate) fn classify(error: &KafkaError, unknown_topic_is_permanent: bool) -> Class {
    error.rdkafka_error_code().map_or(Class::Retriable, |code| {
        classify_code(code, unknown_topic_is_permanent)
    })
}

/// Classifies an rdkafka error code.
///
/// Permanent: the record itself or the producer's rights are at fault, so
/// the same record sent the same way fails again (too large, corrupt,
/// invalid, not authorized, rejected by a policy). A missing topic is
/// retriable unless `unknown_topic_is_permanent`, since topics are often
/// created after the first events are enqueued. Every other code, known or
/// not, is retriable: a record is never given up on by guesswork.
pub(crate) fn classify_code(code: RDKafkaErrorCode, unknown_topic_is_permanent: bool) -> Class {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::MessageBatchTooLarge
        | C::InvalidMessage
        | C::InvalidRecord
        | C::BadMessage
        | C::InvalidTimestamp
        | C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::InvalidRequiredAcks
        | C::UnsupportedForMessageFormat
        | C::UnsupportedCompressionType
        | C::PolicyViolation
        | C::InvalidArgument => Class::Permanent,
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownTopicId
            if unknown_topic_is_permanent =>
        {
            Class::Permanent
        }
        _ => Class::Retriable,
    }
}

/// What a person can do about `code`, appended to the failure message.
pub(crate) fn hint(code: Option<RDKafkaErrorCode>) -> &'static str {
    use RDKafkaErrorCode as C;
    let Some(code) = code else {
        return "the producer was shut down before it reported on the record; it is retried";
    };
    match code {
        C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge => {
            "make the event smaller, or raise the producer's `message.max.bytes` and the \
             topic's `max.message.bytes`, then requeue the dead record"
        }
        C::TopicAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed => {
            "grant the producer's principal Write on the topic (and IdempotentWrite on the \
             cluster), then requeue the dead record"
        }
        C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownTopicId => {
            "create the topic (or let the broker auto-create it)"
        }
        C::InvalidTopic => "the broker rejects the topic name: fix the record's topic or the route",
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            "no broker acknowledged the record within `message.timeout.ms`: check that the \
             brokers are reachable; it is retried"
        }
        C::BrokerTransportFailure | C::AllBrokersDown | C::Resolve | C::NetworkException => {
            "the brokers could not be reached: check `bootstrap.servers` and the network; it \
             is retried"
        }
        C::QueueFull => {
            "the producer's queue is full (`queue.buffering.max.messages`); it is retried"
        }
        _ => match classify_code(code, false) {
            Class::Permanent => "the broker rejects this record as it is",
            Class::Retriable => "it is retried",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as C;

    /// Every code the sink meets in practice, with its class (unknown topics
    /// retriable by default).
    const TABLE: &[(RDKafkaErrorCode, Class)] = &[
        // The record itself is at fault.
        (C::MessageSizeTooLarge, Class::Permanent),
        (C::InvalidMessageSize, Class::Permanent),
        (C::MessageBatchTooLarge, Class::Permanent),
        (C::InvalidMessage, Class::Permanent),
        (C::InvalidRecord, Class::Permanent),
        (C::BadMessage, Class::Permanent),
        (C::InvalidTimestamp, Class::Permanent),
        (C::InvalidTopic, Class::Permanent),
        (C::PolicyViolation, Class::Permanent),
        (C::UnsupportedForMessageFormat, Class::Permanent),
        (C::UnsupportedCompressionType, Class::Permanent),
        (C::InvalidRequiredAcks, Class::Permanent),
        (C::InvalidArgument, Class::Permanent),
        // Not authorized.
        (C::TopicAuthorizationFailed, Class::Permanent),
        (C::ClusterAuthorizationFailed, Class::Permanent),
        (C::TransactionalIdAuthorizationFailed, Class::Permanent),
        // Timeouts.
        (C::MessageTimedOut, Class::Retriable),
        (C::RequestTimedOut, Class::Retriable),
        (C::OperationTimedOut, Class::Retriable),
        (C::TimedOutQueue, Class::Retriable),
        // Transport.
        (C::BrokerTransportFailure, Class::Retriable),
        (C::AllBrokersDown, Class::Retriable),
        (C::NetworkException, Class::Retriable),
        (C::Resolve, Class::Retriable),
        (C::BrokerNotAvailable, Class::Retriable),
        // Leadership and replication.
        (C::NotLeaderForPartition, Class::Retriable),
        (C::LeaderNotAvailable, Class::Retriable),
        (C::FencedLeaderEpoch, Class::Retriable),
        (C::NotEnoughReplicas, Class::Retriable),
        (C::NotEnoughReplicasAfterAppend, Class::Retriable),
        (C::KafkaStorageError, Class::Retriable),
        // The local queue and the producer's own state.
        (C::QueueFull, Class::Retriable),
        (C::PurgeQueue, Class::Retriable),
        (C::PurgeInflight, Class::Retriable),
        (C::Fatal, Class::Retriable),
        (C::OutOfOrderSequenceNumber, Class::Retriable),
        (C::UnknownProducerId, Class::Retriable),
        (C::InvalidProducerEpoch, Class::Retriable),
        (C::ThrottlingQuotaExceeded, Class::Retriable),
        // Missing topics, retriable by default.
        (C::UnknownTopicOrPartition, Class::Retriable),
        (C::UnknownTopic, Class::Retriable),
        (C::UnknownTopicId, Class::Retriable),
        // Codes the sink has no opinion on.
        (C::Unknown, Class::Retriable),
        (C::Fail, Class::Retriable),
        (C::UnknownPartition, Class::Retriable),
    ];

    #[test]
    fn every_code_in_the_table_has_its_class() {
        for &(code, class) in TABLE {
            assert_eq!(classify_code(code, false), class, "{code:?}");
        }
    }

    #[test]
    fn unknown_topic_can_be_made_permanent() {
        for code in [
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::UnknownTopicId,
        ] {
            assert_eq!(classify_code(code, true), Class::Permanent, "{code:?}");
        }
        // The option touches nothing else.
        for &(code, class) in TABLE {
            if !matches!(
                code,
                C::UnknownTopicOrPartition | C::UnknownTopic | C::UnknownTopicId
            ) {
                assert_eq!(classify_code(code, true), class, "{code:?}");
            }
        }
    }

    #[test]
    fn classifies_kafka_errors_by_their_code() {
        let too_large = KafkaError::MessageProduction(C::MessageSizeTooLarge);
        assert_eq!(classify(&too_large, false), Class::Permanent);
        let timed_out = KafkaError::MessageProduction(C::MessageTimedOut);
        assert_eq!(classify(&timed_out, false), Class::Retriable);
        assert_eq!(classify(&KafkaError::Canceled, false), Class::Retriable);
    }

    #[test]
    fn every_code_has_a_hint() {
        for &(code, _) in TABLE {
            assert!(!hint(Some(code)).is_empty(), "{code:?}");
        }
        assert!(!hint(None).is_empty());
    }
}
