//! What the outbox stores: [`NewRecord`] going in, [`OutboxRecord`] coming out.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;
use crate::event::{OutboxEvent, TypedEvent, decode, decode_as, payload_json};

/// The headers of a record, by name. Sorted, so records compare and store
/// deterministically.
pub type Headers = BTreeMap<String, String>;

/// A record about to be written to the outbox: one event, serialized.
///
/// Built from an event with [`NewRecord::from_event`]; the store adapters'
/// `enqueue` functions do that for you.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRecord {
    /// A UUIDv7, unique per event, sent as the `outbox-event-id` header so
    /// consumers can drop duplicates.
    pub event_id: Uuid,
    /// The topic to publish to.
    pub topic: String,
    /// The message key and ordering key; `None` for unordered events.
    pub key: Option<String>,
    /// The event type (the type tag for decoding).
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The event serialized as JSON, without type tag.
    pub payload: String,
    /// The event's extra headers.
    pub headers: Headers,
    /// When the event was enqueued; becomes the Kafka message timestamp.
    pub created_at: DateTime<Utc>,
    /// When the event may be published first (now, or later for a delayed
    /// delivery).
    pub available_at: DateTime<Utc>,
}

impl NewRecord {
    /// Serializes `event` into a record with a fresh UUIDv7, created and
    /// available now.
    ///
    /// Fails with [`Error::Encode`] when the event does not serialize to
    /// JSON (a map with non-string keys, a failing `Serialize` impl), so the
    /// caller's transaction fails instead of the relay, and with
    /// [`Error::EmptyKey`] when its key is `""` (use no key instead).
    ///
    /// When a [traceparent source](crate::set_traceparent_source) is
    /// installed and returns one, the record carries it as the
    /// `traceparent` header (an event's own header of that name wins).
    pub fn from_event(event: &dyn OutboxEvent) -> Result<Self, Error> {
        let key = event.key();
        if key.as_deref() == Some("") {
            return Err(Error::EmptyKey {
                event_type: event.event_type().to_owned(),
            });
        }
        let now = Utc::now();
        let mut headers: Headers = crate::trace::current_traceparent()
            .map(|traceparent| (crate::TRACEPARENT.to_owned(), traceparent))
            .into_iter()
            .collect();
        headers.extend(event.headers());
        Ok(Self {
            event_id: Uuid::now_v7(),
            topic: event.topic().into_owned(),
            key,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            payload: payload_json(event)?,
            headers,
            created_at: now,
            available_at: now,
        })
    }

    /// Delays the first publish until `at`.
    #[must_use]
    pub fn available_at(mut self, at: DateTime<Utc>) -> Self {
        self.available_at = at;
        self
    }

    /// Adds a header, replacing one of the same name; `traceparent` is the
    /// W3C trace context the sink forwards.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// The life cycle of a stored record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Waiting to be published (possibly in backoff, possibly leased).
    Pending,
    /// Delivered to the sink.
    Published,
    /// Given up on: a permanent failure or too many attempts.
    Dead,
}

impl Status {
    /// The name stored in the `status` column.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Published => "published",
            Status::Dead => "dead",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "pending" => Ok(Status::Pending),
            "published" => Ok(Status::Published),
            "dead" => Ok(Status::Dead),
            other => Err(Error::InvalidRecord(format!(
                "unknown status `{other}` (expected pending, published or dead)"
            ))),
        }
    }
}

/// A record as stored, claimed by a relay or listed by an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The store's sequence number: records are claimed in `id` order.
    pub id: i64,
    /// See [`NewRecord::event_id`].
    pub event_id: Uuid,
    /// See [`NewRecord::topic`].
    pub topic: String,
    /// See [`NewRecord::key`].
    pub key: Option<String>,
    /// See [`NewRecord::event_type`].
    pub event_type: String,
    /// See [`NewRecord::schema_version`].
    pub schema_version: u32,
    /// See [`NewRecord::payload`].
    pub payload: String,
    /// See [`NewRecord::headers`].
    pub headers: Headers,
    /// Where the record is in its life cycle.
    pub status: Status,
    /// How many publish attempts have failed so far.
    pub attempts: u32,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// When the record was enqueued.
    pub created_at: DateTime<Utc>,
    /// When the record may be published next.
    pub available_at: DateTime<Utc>,
}

impl OutboxRecord {
    /// A record stored with `id` from `new`, pending, never attempted.
    pub fn from_new(id: i64, new: NewRecord) -> Self {
        Self {
            id,
            event_id: new.event_id,
            topic: new.topic,
            key: new.key,
            event_type: new.event_type,
            schema_version: new.schema_version,
            payload: new.payload,
            headers: new.headers,
            status: Status::Pending,
            attempts: 0,
            last_error: None,
            created_at: new.created_at,
            available_at: new.available_at,
        }
    }

    /// Decodes the payload into its registered event type.
    pub fn decode(&self) -> Result<Box<dyn OutboxEvent>, Error> {
        decode(&self.event_type, self.payload.as_bytes())
    }

    /// Decodes the payload into `T`, or `Ok(None)` when the record holds
    /// another event type.
    pub fn decode_as<T: TypedEvent>(&self) -> Result<Option<T>, Error> {
        decode_as(&self.event_type, self.payload.as_bytes())
    }
}
