//! The errors of `outbox-engine`.

use std::error::Error as StdError;
use std::fmt;

/// A boxed error, the currency of adapters' failures.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Everything that can go wrong in `outbox-engine`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event did not serialize to JSON; nothing was written.
    #[error(
        "cannot serialize event `{event_type}` to JSON: {cause}; fix its Serialize impl \
         (JSON maps need string keys)"
    )]
    Encode {
        /// The event type that failed.
        event_type: &'static str,
        /// What serde_json said (shown in the message, so not a `source()`).
        cause: serde_json::Error,
    },
    /// The event's key is the empty string.
    #[error(
        "event `{event_type}` has an empty key; Kafka's default partitioner spreads empty keys \
         over random partitions, so it would order nothing: give the event a key, or no key \
         for an unordered event"
    )]
    EmptyKey {
        /// The event type.
        event_type: String,
    },
    /// A payload did not decode into the named event type.
    #[error(
        "cannot decode a payload of event type `{event_type}`: {cause}; is that type linked \
         into this program, and does its struct match the producer's?"
    )]
    Decode {
        /// The event type named by the record.
        event_type: String,
        /// What serde_json said (shown in the message, so not a `source()`).
        cause: serde_json::Error,
    },
    /// A stored record holds a value the outbox does not understand.
    #[error("invalid outbox record: {0}")]
    InvalidRecord(String),
    /// A relay or policy was configured with a value it cannot work with.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Error {
    /// Whether doing the same thing again later can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Store(e) => e.is_retriable(),
            _ => false,
        }
    }
}

/// A failure of an [`OutboxStore`](crate::OutboxStore): the adapter's own
/// error, classified as retriable (a lost connection, a deadlock, a lock
/// timeout) or not (a missing table, a constraint violation).
///
/// It displays as the adapter's error and returns that error's source, so
/// an error report shows each cause once.
pub struct StoreError {
    retriable: bool,
    inner: BoxError,
}

impl StoreError {
    /// A failure that may go away: the relay tries again after its poll
    /// interval.
    pub fn retriable(error: impl Into<BoxError>) -> Self {
        Self {
            retriable: true,
            inner: error.into(),
        }
    }

    /// A failure that will not go away by itself: the relay stops with it.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            retriable: false,
            inner: error.into(),
        }
    }

    /// Whether doing the same thing again later can succeed.
    pub fn is_retriable(&self) -> bool {
        self.retriable
    }

    /// The adapter's error.
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }

    /// The adapter's error, by value.
    pub fn into_inner(self) -> BoxError {
        self.inner
    }
}

impl fmt::Debug for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreError")
            .field("retriable", &self.retriable)
            .field("inner", &self.inner)
            .finish()
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner, f)
    }
}

impl StdError for StoreError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner.source()
    }
}
