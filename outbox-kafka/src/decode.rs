//! The consumer's side: decoding a Kafka message published by the outbox.

use outbox_engine::{OutboxEvent, TypedEvent, decode, decode_as};
use rdkafka::Message;
use rdkafka::message::Headers;
use uuid::Uuid;

use crate::Error;
use crate::headers::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER};

/// An outbox event read back from Kafka by [`decode_message`].
#[derive(Debug)]
#[non_exhaustive]
pub struct DecodedEvent {
    /// The event id: the same on every copy of the event, so a consumer
    /// that remembers the ids it has handled can drop duplicates.
    pub event_id: Uuid,
    /// The event type, which picked the Rust type of `event`.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The message key: the event's ordering key, if it has one.
    pub key: Option<String>,
    /// The event, decoded into its registered type; downcast it or match on
    /// `event_type`, or use [`decode_message_as`] for one type.
    pub event: Box<dyn OutboxEvent>,
}

/// Decodes a message published by the outbox into its event, whatever its
/// type, using the `outbox-*` headers and [`outbox_engine::decode`].
///
/// Works on any rdkafka [`Message`]: a consumer's `BorrowedMessage` or an
/// `OwnedMessage`.
///
/// # Errors
///
/// [`Error::MissingHeader`] or [`Error::InvalidHeader`] when an outbox
/// header is absent or does not parse, [`Error::MissingPayload`],
/// [`Error::InvalidKey`] for a key that is not UTF-8, and [`Error::Decode`]
/// when the event type is not linked into this program or the payload does
/// not match it.
pub fn decode_message<M: Message>(message: &M) -> Result<DecodedEvent, Error> {
    let event_type = header(message, EVENT_TYPE_HEADER)?;
    let event_id = event_id(message)?;
    let schema_version = schema_version(message)?;
    let key = key(message)?;
    let event = decode(event_type, payload(message)?).map_err(|error| Error::Decode {
        error,
        at: position(message),
    })?;
    Ok(DecodedEvent {
        event_id,
        event_type: event_type.to_owned(),
        schema_version,
        key,
        event,
    })
}

/// Decodes a message into `T` and returns it with its event id, or
/// `Ok(None)` when the message holds another event type, so a consumer can
/// try its types in turn.
///
/// The message's schema version must be one `T` reads: its
/// `SCHEMA_VERSION` or an older one (a struct at version 3 reads the
/// payloads of versions 1 to 3, with serde defaults for fields added
/// since). A newer version is [`Error::UnsupportedSchemaVersion`]: its
/// producer changed the payload in a way this consumer does not know.
///
/// # Errors
///
/// As [`decode_message`], for a message of `T`'s event type (or with no
/// event type at all), and [`Error::UnsupportedSchemaVersion`].
pub fn decode_message_as<T: TypedEvent, M: Message>(
    message: &M,
) -> Result<Option<(Uuid, T)>, Error> {
    let event_type = header(message, EVENT_TYPE_HEADER)?;
    if event_type != T::EVENT_TYPE {
        return Ok(None);
    }
    let event_id = event_id(message)?;
    let version = schema_version(message)?;
    if version > T::SCHEMA_VERSION {
        return Err(Error::UnsupportedSchemaVersion {
            event_type: event_type.to_owned(),
            version,
            supported: T::SCHEMA_VERSION,
            at: position(message),
        });
    }
    let event = decode_as::<T>(event_type, payload(message)?).map_err(|error| Error::Decode {
        error,
        at: position(message),
    })?;
    Ok(event.map(|event| (event_id, event)))
}

/// Where a message is, for error messages.
fn position<M: Message>(message: &M) -> String {
    format!(
        "topic `{}` partition {} offset {}",
        message.topic(),
        message.partition(),
        message.offset()
    )
}

/// The first header named `name`, as UTF-8 text.
fn header<'m, M: Message>(message: &'m M, name: &'static str) -> Result<&'m str, Error> {
    let value = message.headers().and_then(|headers| {
        (0..headers.count())
            .filter_map(|index| headers.try_get(index))
            .find(|header| header.key == name)
            .and_then(|header| header.value)
    });
    let Some(value) = value.filter(|value| !value.is_empty()) else {
        return Err(Error::MissingHeader {
            header: name,
            at: position(message),
        });
    };
    std::str::from_utf8(value).map_err(|_| Error::InvalidHeader {
        header: name,
        value: String::from_utf8_lossy(value).into_owned(),
        expected: "UTF-8 text",
        at: position(message),
    })
}

fn event_id<M: Message>(message: &M) -> Result<Uuid, Error> {
    let value = header(message, EVENT_ID_HEADER)?;
    Uuid::parse_str(value).map_err(|_| Error::InvalidHeader {
        header: EVENT_ID_HEADER,
        value: value.to_owned(),
        expected: "a UUID",
        at: position(message),
    })
}

fn schema_version<M: Message>(message: &M) -> Result<u32, Error> {
    let value = header(message, SCHEMA_VERSION_HEADER)?;
    value.parse().map_err(|_| Error::InvalidHeader {
        header: SCHEMA_VERSION_HEADER,
        value: value.to_owned(),
        expected: "a whole number from 0 to 4294967295",
        at: position(message),
    })
}

fn key<M: Message>(message: &M) -> Result<Option<String>, Error> {
    message
        .key()
        .map(|key| {
            String::from_utf8(key.to_vec()).map_err(|_| Error::InvalidKey {
                at: position(message),
            })
        })
        .transpose()
}

fn payload<M: Message>(message: &M) -> Result<&[u8], Error> {
    message.payload().ok_or_else(|| Error::MissingPayload {
        at: position(message),
    })
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
    use serde::{Deserialize, Serialize};

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize, outbox_engine::OutboxEvent)]
    #[outbox(topic = "unit", key = id, event_type = "decode.unit.Ping", version = 4)]
    struct Ping {
        id: u32,
    }

    fn message(
        headers: &[(&str, &str)],
        key: Option<&[u8]>,
        payload: Option<&str>,
    ) -> OwnedMessage {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(*value),
            })
        });
        OwnedMessage::new(
            payload.map(|p| p.as_bytes().to_vec()),
            key.map(<[u8]>::to_vec),
            "unit".into(),
            Timestamp::NotAvailable,
            2,
            17,
            Some(headers),
        )
    }

    fn good_headers(id: &str) -> Vec<(&'static str, String)> {
        vec![
            (EVENT_ID_HEADER, id.to_owned()),
            (EVENT_TYPE_HEADER, "decode.unit.Ping".to_owned()),
            (SCHEMA_VERSION_HEADER, "4".to_owned()),
        ]
    }

    fn borrow<'h>(headers: &'h [(&'static str, String)]) -> Vec<(&'static str, &'h str)> {
        headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    #[test]
    fn decodes_any_type_and_one_type() {
        let id = Uuid::now_v7();
        let headers = good_headers(&id.to_string());
        let msg = message(&borrow(&headers), Some(b"9"), Some(r#"{"id":9}"#));

        let decoded = decode_message(&msg).unwrap();
        assert_eq!(decoded.event_id, id);
        assert_eq!(decoded.event_type, "decode.unit.Ping");
        assert_eq!(decoded.schema_version, 4);
        assert_eq!(decoded.key.as_deref(), Some("9"));
        assert_eq!(decoded.event.key().as_deref(), Some("9"));

        let (typed_id, ping) = decode_message_as::<Ping, _>(&msg).unwrap().unwrap();
        assert_eq!((typed_id, ping), (id, Ping { id: 9 }));
    }

    #[test]
    fn another_type_is_none() {
        let id = Uuid::now_v7().to_string();
        let mut headers = good_headers(&id);
        headers[1].1 = "something.Else".into();
        let msg = message(&borrow(&headers), None, Some("{}"));
        assert!(decode_message_as::<Ping, _>(&msg).unwrap().is_none());
    }

    #[test]
    fn missing_and_malformed_headers_are_named() {
        let msg = message(&[], None, Some("{}"));
        let error = decode_message(&msg).unwrap_err();
        assert!(matches!(
            error,
            Error::MissingHeader {
                header: EVENT_TYPE_HEADER,
                ..
            }
        ));
        assert!(
            error.to_string().contains("partition 2 offset 17"),
            "{error}"
        );

        let mut headers = good_headers("not-a-uuid");
        let msg = message(&borrow(&headers), None, Some(r#"{"id":1}"#));
        let error = decode_message(&msg).unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidHeader {
                    header: EVENT_ID_HEADER,
                    ..
                }
            ),
            "{error}"
        );

        headers[0].1 = Uuid::now_v7().to_string();
        headers[2].1 = "-1".into();
        let msg = message(&borrow(&headers), None, Some(r#"{"id":1}"#));
        let error = decode_message(&msg).unwrap_err();
        assert!(
            matches!(
                error,
                Error::InvalidHeader {
                    header: SCHEMA_VERSION_HEADER,
                    ..
                }
            ),
            "{error}"
        );
    }

    #[test]
    fn bad_payloads_and_keys_fail_clearly() {
        let headers = good_headers(&Uuid::now_v7().to_string());
        let msg = message(&borrow(&headers), None, None);
        assert!(matches!(
            decode_message(&msg),
            Err(Error::MissingPayload { .. })
        ));

        let msg = message(&borrow(&headers), Some(&[0xff, 0xfe]), Some(r#"{"id":1}"#));
        assert!(matches!(
            decode_message(&msg),
            Err(Error::InvalidKey { .. })
        ));

        let msg = message(&borrow(&headers), None, Some(r#"{"id":"nine"}"#));
        let error = decode_message_as::<Ping, _>(&msg).unwrap_err();
        assert!(matches!(error, Error::Decode { .. }), "{error}");
        assert!(error.to_string().contains("decode.unit.Ping"), "{error}");
    }
}
