//! The Kafka headers of an outbox message.

use outbox_engine::OutboxRecord;
use rdkafka::message::{Header, OwnedHeaders};

pub use outbox_engine::sink::{EVENT_ID_HEADER, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER};

/// Header holding the W3C trace context captured when the event was
/// enqueued. It travels among the record's own headers; the name is here
/// for consumers that continue the trace.
pub const TRACEPARENT_HEADER: &str = outbox_engine::TRACEPARENT;

/// The CloudEvents attributes of the Kafka protocol binding, binary mode
/// ([`KafkaSinkBuilder::cloud_events`](crate::KafkaSinkBuilder::cloud_events)).
pub const CE_SPECVERSION_HEADER: &str = "ce_specversion";
/// `ce_id`: the event id.
pub const CE_ID_HEADER: &str = "ce_id";
/// `ce_source`: the producing service, as configured.
pub const CE_SOURCE_HEADER: &str = "ce_source";
/// `ce_type`: the event type.
pub const CE_TYPE_HEADER: &str = "ce_type";
/// `ce_time`: when the event was enqueued, RFC 3339.
pub const CE_TIME_HEADER: &str = "ce_time";
/// `content-type` of the payload, `application/json`.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// The headers of `record`'s message, as
/// [`outbox_engine::sink::message_headers`] orders them: the outbox's own
/// three first, then the record's headers in name order, without any that
/// reuse one of the outbox's names; with a CloudEvents source, the
/// CloudEvents attributes after the outbox's own (a record's header of the
/// same name is left out).
pub(crate) fn message_headers(
    record: &OutboxRecord,
    cloud_events_source: Option<&str>,
) -> OwnedHeaders {
    let mut headers = outbox_engine::sink::message_headers(record);
    if let Some(source) = cloud_events_source {
        let cloud = [
            (CE_SPECVERSION_HEADER, "1.0".to_owned()),
            (CE_ID_HEADER, record.event_id.to_string()),
            (CE_SOURCE_HEADER, source.to_owned()),
            (CE_TYPE_HEADER, record.event_type.clone()),
            (
                CE_TIME_HEADER,
                record
                    .created_at
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
            (CONTENT_TYPE_HEADER, "application/json".to_owned()),
        ];
        headers.retain(|(name, _)| !cloud.iter().any(|(ce, _)| ce == name));
        let at = 3.min(headers.len());
        for (offset, (name, value)) in cloud.into_iter().enumerate() {
            headers.insert(at + offset, (name, std::borrow::Cow::Owned(value)));
        }
    }
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
    use outbox_engine::NewRecord;
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
        let headers = message_headers(&record, None);
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

    #[test]
    fn cloud_events_attributes_follow_the_outbox_headers() {
        let mut record = record();
        record
            .headers
            .insert(CE_SOURCE_HEADER.into(), "forged".into());
        let headers = message_headers(&record, Some("/orders"));
        let pairs: Vec<(String, String)> = headers
            .iter()
            .map(|h| {
                let value = String::from_utf8(h.value.unwrap().to_vec()).unwrap();
                (h.key.to_owned(), value)
            })
            .collect();
        let names: Vec<&str> = pairs.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names[..9],
            [
                EVENT_ID_HEADER,
                EVENT_TYPE_HEADER,
                SCHEMA_VERSION_HEADER,
                CE_SPECVERSION_HEADER,
                CE_ID_HEADER,
                CE_SOURCE_HEADER,
                CE_TYPE_HEADER,
                CE_TIME_HEADER,
                CONTENT_TYPE_HEADER,
            ]
        );
        let value = |name: &str| {
            pairs
                .iter()
                .filter(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(value(CE_SPECVERSION_HEADER), ["1.0"]);
        assert_eq!(value(CE_ID_HEADER), [record.event_id.to_string().as_str()]);
        assert_eq!(
            value(CE_SOURCE_HEADER),
            ["/orders"],
            "the record's own is left out"
        );
        assert_eq!(value(CE_TYPE_HEADER), ["OrderPlaced"]);
        assert_eq!(value(CONTENT_TYPE_HEADER), ["application/json"]);
        let time = chrono::DateTime::parse_from_rfc3339(value(CE_TIME_HEADER)[0]).unwrap();
        // To the microsecond, as the outbox stores times.
        assert!(
            (time.to_utc() - record.created_at)
                .num_microseconds()
                .unwrap()
                .abs()
                < 1
        );
    }
}
