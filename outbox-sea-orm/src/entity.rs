//! The SeaORM entity of the `outbox` table, for queries of your own
//! (dashboards, audits). Write events with [`enqueue`](crate::enqueue), and
//! change rows through [`SeaOrmStore`](crate::SeaOrmStore), which keeps
//! the leases right.
//!
//! ```
//! use outbox_sea_orm::entity::{Column, Entity};
//! use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
//!
//! // The dead records of one key, oldest first.
//! let query = Entity::find()
//!     .filter(Column::Status.eq("dead"))
//!     .filter(Column::PartitionKey.eq("order-42"))
//!     .order_by_asc(Column::Id);
//! # let _ = query;
//! ```

use std::str::FromStr;

use outbox_engine::{Headers, OutboxRecord, Status};
use sea_orm::entity::prelude::*;

use crate::Error;

/// A row of the `outbox` table.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    /// The sequence number; records are claimed in `id` order.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// The event's UUIDv7, sent as the `outbox-event-id` header.
    #[sea_orm(unique)]
    pub event_id: Uuid,
    /// The topic to publish to.
    pub topic: String,
    /// The message key and ordering key.
    pub partition_key: Option<String>,
    /// The event type.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: i32,
    /// The event as JSON text, exactly as serialized at enqueue.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// The extra headers, a JSON object of strings.
    #[sea_orm(column_type = "Text")]
    pub headers: String,
    /// `pending`, `published` or `dead`.
    pub status: String,
    /// Failed publish attempts so far.
    pub attempts: i32,
    /// When the record may be published next.
    pub available_at: DateTimeUtc,
    /// The relay holding the lease.
    pub locked_by: Option<String>,
    /// When the lease runs out.
    pub locked_until: Option<DateTimeUtc>,
    /// The error of the last failed attempt.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    /// When the record was enqueued.
    pub created_at: DateTimeUtc,
    /// When the row last changed.
    pub updated_at: DateTimeUtc,
    /// When the record was published.
    pub published_at: Option<DateTimeUtc>,
}

/// The outbox has no relations.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}

impl TryFrom<Model> for OutboxRecord {
    type Error = Error;

    fn try_from(row: Model) -> Result<Self, Error> {
        let invalid = |reason: String| Error::InvalidRow { id: row.id, reason };
        let status = Status::from_str(&row.status).map_err(|e| invalid(e.to_string()))?;
        // Another client may have written the row: a payload that is not
        // JSON would reach consumers as a message no one can decode.
        check_json(&row.payload).map_err(|e| invalid(format!("the payload is not JSON: {e}")))?;
        let headers: Headers = serde_json::from_str(&row.headers)
            .map_err(|e| invalid(format!("headers are not a JSON object of strings: {e}")))?;
        let schema_version = u32::try_from(row.schema_version)
            .map_err(|_| invalid(format!("negative schema version {}", row.schema_version)))?;
        let attempts = u32::try_from(row.attempts)
            .map_err(|_| invalid(format!("negative attempts {}", row.attempts)))?;
        Ok(OutboxRecord {
            id: row.id,
            event_id: row.event_id,
            topic: row.topic,
            key: row.partition_key,
            event_type: row.event_type,
            schema_version,
            payload: row.payload,
            headers,
            status,
            attempts,
            last_error: row.last_error,
            created_at: row.created_at,
            available_at: row.available_at,
        })
    }
}

/// Checks that `text` is one JSON value, without building it.
fn check_json(text: &str) -> Result<(), serde_json::Error> {
    use serde::Deserialize;
    let mut json = serde_json::Deserializer::from_str(text);
    serde::de::IgnoredAny::deserialize(&mut json)?;
    json.end()
}

impl Model {
    /// The row as a record for people to look at (dead letters): where a
    /// value cannot be read (the reason a row was set aside), an empty or
    /// zero value stands in, and the row's `last_error` says what it was.
    pub(crate) fn into_listed(self) -> OutboxRecord {
        match OutboxRecord::try_from(self.clone()) {
            Ok(record) => record,
            Err(_) => OutboxRecord {
                id: self.id,
                event_id: self.event_id,
                topic: self.topic,
                key: self.partition_key,
                event_type: self.event_type,
                schema_version: u32::try_from(self.schema_version).unwrap_or_default(),
                payload: self.payload,
                headers: serde_json::from_str(&self.headers).unwrap_or_default(),
                status: Status::from_str(&self.status).unwrap_or(Status::Dead),
                attempts: u32::try_from(self.attempts).unwrap_or_default(),
                last_error: self.last_error,
                created_at: self.created_at,
                available_at: self.available_at,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_must_be_one_json_value() {
        assert!(check_json(r#"{"order": 7, "lines": [1, 2]}"#).is_ok());
        assert!(check_json(" 42 ").is_ok());
        assert!(check_json("not json {").is_err());
        assert!(check_json("{} {}").is_err(), "two values");
        assert!(check_json("").is_err());
    }
}
