//! The headers every outbox message carries, whatever the transport.

use std::borrow::Cow;

use crate::record::OutboxRecord;

/// Header holding the event id (a UUID, hyphenated): the same on every copy
/// of an event, so consumers drop duplicates by it.
pub const EVENT_ID_HEADER: &str = "outbox-event-id";

/// Header holding the event type, the tag that [`decode`](crate::decode)
/// needs to pick the Rust type.
pub const EVENT_TYPE_HEADER: &str = "outbox-event-type";

/// Header holding the payload's schema version (a decimal `u32`).
pub const SCHEMA_VERSION_HEADER: &str = "outbox-schema-version";

/// Whether `name` is one of the headers a sink writes itself.
pub fn is_outbox_header(name: &str) -> bool {
    matches!(
        name,
        EVENT_ID_HEADER | EVENT_TYPE_HEADER | SCHEMA_VERSION_HEADER
    )
}

/// The headers of `record`'s message, in order: [`EVENT_ID_HEADER`],
/// [`EVENT_TYPE_HEADER`], [`SCHEMA_VERSION_HEADER`], then the record's own
/// headers in name order (among them `traceparent`, when a span was active
/// at enqueue time). A record header that reuses one of the outbox's names
/// is left out, so a consumer never sees two event ids.
pub fn message_headers(record: &OutboxRecord) -> Vec<(&str, Cow<'_, str>)> {
    let mut headers = Vec::with_capacity(3 + record.headers.len());
    headers.push((
        EVENT_ID_HEADER,
        Cow::Owned(record.event_id.hyphenated().to_string()),
    ));
    headers.push((EVENT_TYPE_HEADER, Cow::Borrowed(record.event_type.as_str())));
    headers.push((
        SCHEMA_VERSION_HEADER,
        Cow::Owned(record.schema_version.to_string()),
    ));
    headers.extend(
        record
            .headers
            .iter()
            .filter(|(name, _)| !is_outbox_header(name))
            .map(|(name, value)| (name.as_str(), Cow::Borrowed(value.as_str()))),
    );
    headers
}
