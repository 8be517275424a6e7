//! The NATS headers of an outbox message.

use std::str::FromStr;

use async_nats::header::NATS_MESSAGE_ID;
use async_nats::{HeaderMap, HeaderName, HeaderValue};
use outbox_engine::OutboxRecord;

pub use outbox_engine::sink::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER};

/// Header holding the record's key, unencoded (the subject holds it
/// encoded, see [`key_token`](crate::key_token)); absent for a keyless
/// record.
pub const KEY_HEADER: &str = "outbox-key";

/// Header holding the W3C trace context captured when the event was
/// enqueued. It travels among the record's own headers; the name is here
/// for consumers that continue the trace.
pub const TRACEPARENT_HEADER: &str = outbox_engine::TRACEPARENT;

/// The headers of `record`'s message: `Nats-Msg-Id` (the event id, for
/// JetStream's duplicate window), the outbox's own, [`KEY_HEADER`] when
/// keyed, then the record's own headers, except those named like the
/// outbox's or starting with `Nats-` (JetStream would act on them).
///
/// Fails with the header's name and the reason when a record header cannot
/// be sent over NATS.
pub(crate) fn message_headers(record: &OutboxRecord) -> Result<HeaderMap, (String, &'static str)> {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, record.event_id.hyphenated().to_string());
    for (name, value) in outbox_engine::sink::message_headers(record) {
        if name == KEY_HEADER || is_jetstream_header(name) {
            continue;
        }
        let header = HeaderName::from_str(name)
            .ok()
            .filter(|_| !name.is_empty())
            .ok_or((
                name.to_owned(),
                "a header name must be printable ASCII without `:`",
            ))?;
        let value = HeaderValue::from_str(&value)
            .map_err(|_| (name.to_owned(), "a header value cannot hold a line break"))?;
        headers.append(header, value);
    }
    if let Some(key) = record.key.as_deref() {
        let value = HeaderValue::from_str(key).map_err(|_| {
            (
                KEY_HEADER.to_owned(),
                "the record's key holds a line break, which a header cannot carry",
            )
        })?;
        headers.insert(KEY_HEADER, value);
    }
    Ok(headers)
}

/// Whether JetStream reads a header of this name (`Nats-Msg-Id`,
/// `Nats-Expected-Stream`, ...).
fn is_jetstream_header(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("nats-"))
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use outbox_engine::NewRecord;
    use uuid::Uuid;

    use super::*;

    fn record(key: Option<&str>) -> OutboxRecord {
        let now = Utc::now();
        let new = NewRecord {
            event_id: Uuid::now_v7(),
            topic: "orders".into(),
            key: key.map(Into::into),
            event_type: "OrderPlaced".into(),
            schema_version: 3,
            payload: "{}".into(),
            headers: Default::default(),
            created_at: now,
            available_at: now,
        };
        OutboxRecord::from_new(1, new)
    }

    fn get<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
        headers.get(name).map(HeaderValue::as_str)
    }

    #[test]
    fn a_message_carries_the_event_id_twice_type_version_key_and_its_own_headers() {
        let mut record = record(Some("a.b"));
        record
            .headers
            .insert("traceparent".into(), "00-abc-def-01".into());
        record
            .headers
            .insert(EVENT_ID_HEADER.into(), "forged".into());
        record
            .headers
            .insert("Nats-Expected-Stream".into(), "other".into());
        let headers = message_headers(&record).unwrap();
        let event_id = record.event_id.to_string();
        assert_eq!(get(&headers, "Nats-Msg-Id"), Some(event_id.as_str()));
        assert_eq!(get(&headers, EVENT_ID_HEADER), Some(event_id.as_str()));
        assert_eq!(get(&headers, EVENT_TYPE_HEADER), Some("OrderPlaced"));
        assert_eq!(get(&headers, SCHEMA_VERSION_HEADER), Some("3"));
        assert_eq!(get(&headers, KEY_HEADER), Some("a.b"));
        assert_eq!(get(&headers, TRACEPARENT_HEADER), Some("00-abc-def-01"));
        assert_eq!(get(&headers, "Nats-Expected-Stream"), None);
        assert_eq!(headers.get_all(EVENT_ID_HEADER).count(), 1);
        assert_eq!(
            get(&message_headers(&record_without_key()).unwrap(), KEY_HEADER),
            None
        );
    }

    fn record_without_key() -> OutboxRecord {
        record(None)
    }

    #[test]
    fn headers_nats_cannot_carry_are_refused() {
        let mut bad_name = record(None);
        bad_name.headers.insert("with:colon".into(), "x".into());
        assert_eq!(message_headers(&bad_name).unwrap_err().0, "with:colon");
        let mut bad_value = record(None);
        bad_value
            .headers
            .insert("x-note".into(), "two\r\nlines".into());
        assert_eq!(message_headers(&bad_value).unwrap_err().0, "x-note");
        assert!(message_headers(&record(Some("line\nbreak"))).is_err());
    }
}
