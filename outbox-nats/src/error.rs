//! The errors of `outbox-nats`.

use std::time::Duration;

use async_nats::jetstream::context::PublishErrorKind;
use uuid::Uuid;

/// Everything that can go wrong in `outbox-nats`: connecting, building a
/// [`NatsSink`](crate::NatsSink), publishing one record (inside an
/// [`Outcome`](outbox_engine::Outcome)).
///
/// Each message says what failed, on what input, and what to do; the cause
/// is part of the message, so [`source`](std::error::Error::source) is
/// `None` and an error chain shows each cause once.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The sink's configuration is unusable; nothing was created.
    #[error("invalid NATS sink configuration: {0}")]
    Config(String),

    /// The NATS server could not be reached.
    #[error("cannot connect to NATS at {url}: {reason}; check the URL and that the server runs")]
    Connect {
        /// The server URL.
        url: String,
        /// What the client said.
        reason: String,
    },

    /// The record's subject (from its topic and key, after routing) is not
    /// a subject NATS accepts; nothing was sent.
    #[error(
        "cannot publish event {event_id} to subject {subject:?}: {reason}; fix the record's topic \
         or the sink's route and subject prefix"
    )]
    InvalidSubject {
        /// The record's event id.
        event_id: Uuid,
        /// The subject as derived.
        subject: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// One of the record's own headers cannot be sent as a NATS header
    /// (a name with `:`, spaces or non-ASCII characters, a value with a
    /// line break); nothing was sent.
    #[error(
        "cannot publish event {event_id}: its header {name:?} cannot be sent over NATS ({reason}); \
         fix the header where the event is enqueued"
    )]
    InvalidHeader {
        /// The record's event id.
        event_id: Uuid,
        /// The header's name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// JetStream did not store the record: the publish failed or its
    /// acknowledgement carries an error.
    #[error("JetStream did not store event {event_id} on subject `{subject}`: {reason}; {hint}")]
    Publish {
        /// The record's event id.
        event_id: Uuid,
        /// The subject it was published to.
        subject: String,
        /// The client's classification of the failure; with
        /// [`code`](Error::code) it decided `retriable`.
        kind: PublishErrorKind,
        /// The JetStream API error code, when the server answered with one.
        code: Option<u16>,
        /// What the client or server said.
        reason: String,
        /// What a person can do about it.
        hint: &'static str,
        /// Whether a later attempt can succeed.
        retriable: bool,
    },

    /// No acknowledgement within the sink's publish timeout; the record
    /// may or may not be in the stream (the stream's duplicate window drops
    /// the copy a retry sends within it).
    #[error(
        "no JetStream acknowledgement for event {event_id} on subject `{subject}` within \
         {timeout:?}; it is retried"
    )]
    Timeout {
        /// The record's event id.
        event_id: Uuid,
        /// The subject it was published to.
        subject: String,
        /// How long the sink waited.
        timeout: Duration,
    },
}

impl Error {
    /// Whether doing the same thing again later can succeed: true for a
    /// retriable publish failure and a timeout; false for configuration,
    /// subject and header errors and for records JetStream refuses as they
    /// are.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Publish { retriable, .. } => *retriable,
            Error::Timeout { .. } | Error::Connect { .. } => true,
            _ => false,
        }
    }

    /// The JetStream API error code behind the error, if the server
    /// answered with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Publish { code, .. } => *code,
            _ => None,
        }
    }
}
