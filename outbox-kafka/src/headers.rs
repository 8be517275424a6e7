//! The Kafka headers of an outbox message.

use outbox_core::OutboxRecord;
use rdkafka::message::{Header, OwnedHeaders};

/// Header holding the event id (a UUID, hyphenated): the same on every copy
/// of an event, so consumers drop duplicates by it.
pub const EVENT_ID_HEADER: &str = "outbox-event-id";

/// Header holding the event type, the tag that
/// [`outbox_core::decode`] needs to pick the Rust type.
pub const EVENT_TYPE_HEADER: &str = "outbox-event-type";

/// Header holding the payload's schema version (a decimal `u32`).
pub const SCHEMA_VERSION_HEADER: &str = "outbox-schema-version";

/// Header holding the W3C trace context captured when the event was
/// enqueued. It travels among the record's own headers; the name is here
/// for consumers that continue the trace.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Whether `name` is one of the headers the sink writes itself.
fn is_reserved(name: &str) -> bool {
    matches!(
        name,
        EVENT_ID_HEADER | EVENT_TYPE_HEADER | SCHEMA_VERSION_HEADER
    )
}

/// The headers of `record`'s message: the outbox's own three first, then the
/// record's headers in name order. A record header that reuses one of the
/// outbox's names is skipped, so a consumer never sees two event ids.
pub(crate) fn message_headers(record: &OutboxRecord) -> OwnedHeaders {
    let event_id = record.event_id.hyphenated().to_string();
    let schema_version = record.schema_version.to_string();
    let own = [
        (EVENT_ID_HEADER, event_id.as_str()),
        (EVENT_TYPE_HEADER, record.event_type.as_str()),
        (SCHEMA_VERSION_HEADER, schema_version.as_str()),
    ];
    let extra = record
        .headers
        .iter()
        .filter(|(name, _)| !is_reserved(name))
        .map(|(name, value)| (name.as_str(), value.as_str()));
    own.into_iter().chain(extra).fold(
        OwnedHeaders::new_with_capacity(3 + record.headers.len()),
        |headers, (key, value)| {
            headers.insert(Header {
                key,
                value: Some(value),
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
