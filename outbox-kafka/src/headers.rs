//! The Kafka headers of an outbox message.

use outbox_core::OutboxRecord;
use rdkafka::message::{Header, OwnedHeaders};

pub use outbox_core::sink::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER};

/// Header holding the W3C trace context captured when the event was
/// enqueued. It travels among the record's own headers; the name is here
/// for consumers that continue the trace.
pub const TRACEPARENT_HEADER: &str = outbox_core::TRACEPARENT;

/// The headers of `record`'s message, as
/// [`outbox_core::sink::message_headers`] orders them: the outbox's own
/// three first, then the record's headers in name order, without any that
/// reuse one of the outbox's names.
pub(crate) fn message_headers(record: &OutboxRecord) -> OwnedHeaders {
    let headers = outbox_core::sink::message_headers(record);
    headers.iter().fold(
        OwnedHeaders::new_with_capacity(headers.len()),
        |message, (key, value)| {
            message.insert(Header {
                key,
                value: Some(value.as_ref()),
            })
        },
    )
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use outbox_core::NewRecord;
    use rdkafka::message::Headers;
    use uuid::Uuid;

    use super::*;

    fn record() -> OutboxRecord {
        let now = Utc::now();
        let new = NewRecord {
            event_id: Uuid::now_v7(),
            topic: "orders".into(),
            key: Some("7".into()),
            event_type: "OrderPlaced".into(),
            schema_version: 3,
            payload: "{}".into(),
            headers: Default::default(),
            created_at: now,
            available_at: now,
        }
        .with_header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .with_header("a-custom", "x")
        .with_header(EVENT_ID_HEADER, "forged");
        OutboxRecord::from_new(1, new)
    }

    #[test]
    fn outbox_headers_come_first_then_the_records_own() {
        let record = record();
        let headers = message_headers(&record);
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.unwrap().to_vec()).unwrap();
                (h.key.to_owned(), value)
            })
            .collect();
        let expected = vec![
            (EVENT_ID_HEADER.into(), record.event_id.to_string()),
            (EVENT_TYPE_HEADER.into(), "OrderPlaced".into()),
            (SCHEMA_VERSION_HEADER.into(), "3".into()),
            ("a-custom".into(), "x".into()),
            (
                TRACEPARENT_HEADER.into(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            ),
        ];
        assert_eq!(pairs, expected);
    }
}
