//! Which publish failures a later attempt can overcome, decided by the
//! client's error kind and the JetStream API error code (never by message
//! text).

use std::error::Error as _;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};

/// What the relay should do with a record that failed with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Try again later.
    Retriable,
    /// Trying again cannot help: the record goes to dead letters.
    Permanent,
}

/// The JetStream API error code inside `error`, if the server sent one.
pub(crate) fn api_code(error: &PublishError) -> Option<u16> {
    error
        .source()
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .and_then(|error| u16::try_from(error.error_code().0).ok())
}

/// Classifies a publish failure.
///
/// Permanent: the message is larger than the server's `max_payload`, or
/// than the stream's `max_msg_size` (API code 10054): the same record fails
/// the same way until someone raises the limit. No stream for the subject
/// (the server's "no responders") is retriable unless
/// `missing_stream_is_permanent`, since streams are often created after the
/// first events are enqueued, and since a JetStream that is restarting or
/// electing a leader answers the same. Everything else (timeouts, a lost
/// connection, too many acknowledgements pending, any other API error) is
/// retriable: a record is never given up on by guesswork.
pub(crate) fn classify(error: &PublishError, missing_stream_is_permanent: bool) -> Class {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => Class::Permanent,
        PublishErrorKind::StreamNotFound if missing_stream_is_permanent => Class::Permanent,
        PublishErrorKind::Other
            if api_code(error) == Some(code(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)) =>
        {
            Class::Permanent
        }
        _ => Class::Retriable,
    }
}

fn code(code: ErrorCode) -> u16 {
    u16::try_from(code.0).unwrap_or(u16::MAX)
}

/// What a person can do about a publish failure, appended to its message.
pub(crate) fn hint(error: &PublishError) -> &'static str {
    match error.kind() {
        PublishErrorKind::MaxPayloadExceeded => {
            "make the event smaller, or raise the server's `max_payload`, then requeue the dead \
             record"
        }
        PublishErrorKind::StreamNotFound => {
            "no JetStream stream listens on this subject: create one whose subjects cover it \
             (see the sink's subject mapping), or check that JetStream is enabled"
        }
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
            "the server did not answer in time or the connection was lost; it is retried"
        }
        PublishErrorKind::MaxAckPending => {
            "too many publishes await their acknowledgement on this connection; it is retried"
        }
        PublishErrorKind::Other
            if api_code(error) == Some(code(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM)) =>
        {
            "make the event smaller, or raise the stream's `max_msg_size`, then requeue the dead \
             record"
        }
        _ => "it is retried",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_their_class() {
        let table = [
            (PublishErrorKind::MaxPayloadExceeded, Class::Permanent),
            (PublishErrorKind::StreamNotFound, Class::Retriable),
            (PublishErrorKind::TimedOut, Class::Retriable),
            (PublishErrorKind::BrokenPipe, Class::Retriable),
            (PublishErrorKind::MaxAckPending, Class::Retriable),
            (PublishErrorKind::WrongLastMessageId, Class::Retriable),
            (PublishErrorKind::WrongLastSequence, Class::Retriable),
            (PublishErrorKind::Other, Class::Retriable),
        ];
        for (kind, class) in table {
            let error = PublishError::new(kind);
            assert_eq!(classify(&error, false), class, "{kind:?}");
            assert!(!hint(&error).is_empty());
        }
    }

    #[test]
    fn a_missing_stream_can_be_made_permanent() {
        let error = PublishError::new(PublishErrorKind::StreamNotFound);
        assert_eq!(classify(&error, true), Class::Permanent);
        let timeout = PublishError::new(PublishErrorKind::TimedOut);
        assert_eq!(classify(&timeout, true), Class::Retriable);
    }

    #[test]
    fn a_message_over_the_streams_limit_is_permanent() {
        let api: jetstream::Error = serde_json::from_str(
            r#"{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}"#,
        )
        .unwrap();
        let error = PublishError::with_source(PublishErrorKind::Other, api);
        assert_eq!(api_code(&error), Some(10054));
        assert_eq!(classify(&error, false), Class::Permanent);
        assert!(hint(&error).contains("max_msg_size"));
        let other: jetstream::Error =
            serde_json::from_str(r#"{"code":503,"err_code":10008,"description":"unavailable"}"#)
                .unwrap();
        let error = PublishError::with_source(PublishErrorKind::Other, other);
        assert_eq!(classify(&error, false), Class::Retriable);
    }
}
