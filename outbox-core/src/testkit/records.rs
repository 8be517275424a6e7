//! Records for tests: a payload that carries a number, on a topic of the
//! suites' own or of the caller's; a batch of them as a claim returns it.

use std::collections::BTreeMap;

use chrono::Utc;
use uuid::Uuid;

use crate::{NewRecord, OutboxRecord};

const TOPIC: &str = "conformance";

/// A record of `key` whose payload carries `n`.
pub fn record(key: Option<&str>, n: u32) -> NewRecord {
    record_on(TOPIC, key, n)
}

/// A record of `topic` and `key` whose payload carries `n`.
pub fn record_on(topic: &str, key: Option<&str>, n: u32) -> NewRecord {
    let now = Utc::now();
    NewRecord {
        event_id: Uuid::now_v7(),
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        event_type: "ConformanceEvent".to_owned(),
        schema_version: 1,
        payload: format!(r#"{{"n":{n}}}"#),
        headers: BTreeMap::from([("origin".to_owned(), "testkit".to_owned())]),
        created_at: now,
        available_at: now,
    }
}

/// A batch as a claim returns it: a record of each key of `keys` in turn
/// (`None` for a keyless one), ids from 1, each payload carrying the
/// record's position.
pub fn batch(keys: &[Option<&str>]) -> Vec<OutboxRecord> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| OutboxRecord::from_new(i as i64 + 1, record(*key, i as u32)))
        .collect()
}
