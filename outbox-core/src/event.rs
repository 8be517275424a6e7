//! The [`OutboxEvent`] trait and typed decoding of payloads.

use std::borrow::Cow;
use std::fmt::Debug;

use serde::de::DeserializeOwned;

use crate::Error;

/// A domain event that can be written to the outbox.
///
/// Usually derived with `#[derive(OutboxEvent)]`, which also implements
/// [`TypedEvent`] and registers the type with [`typetag`], so that a
/// `Box<dyn OutboxEvent>` serializes with its event type as tag and
/// deserializes back into the concrete struct:
///
/// ```
/// use outbox_engine::OutboxEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(topic = "orders", key = order_id)]
/// struct OrderOpened { order_id: u64, total_cents: i64 }
///
/// #[derive(Debug, PartialEq, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(topic = "orders", key = order_id, event_type = "order.cancelled", version = 2)]
/// struct OrderCancelled { order_id: u64 }
///
/// let events: Vec<Box<dyn OutboxEvent>> = vec![
///     Box::new(OrderOpened { order_id: 7, total_cents: 1250 }),
///     Box::new(OrderCancelled { order_id: 7 }),
/// ];
/// let json = serde_json::to_string(&events).unwrap();
/// let back: Vec<Box<dyn OutboxEvent>> = serde_json::from_str(&json).unwrap();
/// assert_eq!(back[1].event_type(), "order.cancelled");
/// assert_eq!(back[1].key().as_deref(), Some("7"));
/// ```
///
/// The Kafka payload of an event is its own JSON (without the type tag); the
/// event type travels beside it (the `event_type` column, the
/// `outbox-event-type` header), and [`decode`] puts the two back together.
#[typetag::serde]
pub trait OutboxEvent: Debug + Send + Sync {
    /// The topic the event is published to.
    fn topic(&self) -> Cow<'_, str>;

    /// The Kafka message key, which is also the ordering key: events with the
    /// same key are published in enqueue order. `None` means unordered.
    fn key(&self) -> Option<String>;

    /// The event type, sent as the `outbox-event-type` header and used as
    /// the type tag when decoding. Unique per Rust type.
    fn event_type(&self) -> &'static str;

    /// The schema version of the payload, sent as the
    /// `outbox-schema-version` header. Defaults to 1.
    fn schema_version(&self) -> u32 {
        1
    }

    /// Extra headers for this event, sent after the outbox's own headers.
    /// Defaults to none.
    fn headers(&self) -> Vec<(String, String)> {
        Vec::new()
    }
}

/// An [`OutboxEvent`] whose event type is known without a value, so it can be
/// picked out of a stream of records and decoded into its own type
/// ([`decode_as`], `InMemorySink::events`). Implemented by the derive.
pub trait TypedEvent: OutboxEvent + DeserializeOwned + Sized {
    /// The value [`OutboxEvent::event_type`] returns for every value.
    const EVENT_TYPE: &'static str;
    /// The value [`OutboxEvent::schema_version`] returns for every value.
    const SCHEMA_VERSION: u32;
}

/// Serializes the event's own fields as JSON, without the type tag.
pub(crate) fn payload_json(event: &dyn OutboxEvent) -> Result<String, Error> {
    let erased: &dyn erased_serde::Serialize = event;
    serde_json::to_string(erased).map_err(|cause| Error::Encode {
        event_type: event.event_type(),
        cause,
    })
}

/// Decodes a payload into the registered event type named `event_type`.
///
/// This is the consumer's side of the outbox: read the `outbox-event-type`
/// header and the message value, and get back a `Box<dyn OutboxEvent>`
/// without knowing the type in advance. Fails with [`Error::Decode`] when
/// the type is unknown to this program or the payload does not match it.
pub fn decode(event_type: &str, payload: &[u8]) -> Result<Box<dyn OutboxEvent>, Error> {
    let decode_error = |cause: serde_json::Error| Error::Decode {
        event_type: event_type.to_owned(),
        cause,
    };
    let value: serde_json::Value = serde_json::from_slice(payload).map_err(decode_error)?;
    // typetag's default representation is externally tagged: `{tag: value}`.
    let tagged =
        serde_json::Value::Object(serde_json::Map::from_iter([(event_type.to_owned(), value)]));
    serde_json::from_value(tagged).map_err(decode_error)
}

/// Decodes a payload into `T`, checking that `event_type` is `T`'s.
///
/// Returns `Ok(None)` when the record holds another event type, so a
/// consumer can try its types in turn.
pub fn decode_as<T: TypedEvent>(event_type: &str, payload: &[u8]) -> Result<Option<T>, Error> {
    if event_type != T::EVENT_TYPE {
        return Ok(None);
    }
    serde_json::from_slice(payload)
        .map(Some)
        .map_err(|cause| Error::Decode {
            event_type: event_type.to_owned(),
            cause,
        })
}

/// Proves that [`OutboxEvent`] is object safe.
#[allow(dead_code)]
fn assert_object_safe(_: Box<dyn OutboxEvent>) {}
