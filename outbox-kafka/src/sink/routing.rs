//! Which topic a record goes to, and whether Kafka accepts that name.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use outbox_engine::OutboxRecord;

/// A function choosing a record's topic.
pub(crate) type RouteFn = Arc<dyn Fn(&OutboxRecord) -> String + Send + Sync>;

/// The record's topic, or the route's choice, behind an optional prefix.
#[derive(Clone, Default)]
pub(crate) struct Routing {
    pub(crate) route: Option<RouteFn>,
    pub(crate) prefix: String,
    /// With CloudEvents headers, the `ce_source` of every message.
    pub(crate) cloud_events_source: Option<String>,
}

impl Routing {
    /// The topic `record` is published to.
    pub(crate) fn topic<'r>(&self, record: &'r OutboxRecord) -> Cow<'r, str> {
        let base: Cow<'r, str> = match &self.route {
            Some(route) => Cow::Owned(route(record)),
            None => Cow::Borrowed(&record.topic),
        };
        if self.prefix.is_empty() {
            base
        } else {
            Cow::Owned(format!("{}{base}", self.prefix))
        }
    }
}

impl fmt::Debug for Routing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Routing")
            .field(
                "route",
                &self.route.as_ref().map(|_| "Fn(&OutboxRecord) -> String"),
            )
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// The longest topic name Kafka accepts.
const MAX_TOPIC_LEN: usize = 249;

/// Checks a topic name the way the broker does: 1 to 249 characters from
/// `[a-zA-Z0-9._-]`, and neither `.` nor `..`.
pub(crate) fn check_topic(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("a topic name cannot be empty");
    }
    if name.len() > MAX_TOPIC_LEN {
        return Err("a topic name is at most 249 characters long");
    }
    if name == "." || name == ".." {
        return Err("`.` and `..` are not topic names");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("a topic name may only hold ASCII letters, digits, `.`, `_` and `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use outbox_engine::testkit::record_on;

    use super::*;

    /// A record of `topic`, of event type `E`.
    fn record(topic: &str) -> OutboxRecord {
        let mut new = record_on(topic, None, 1);
        new.event_type = "E".into();
        OutboxRecord::from_new(1, new)
    }

    #[test]
    fn topics_are_checked_like_the_broker_does() {
        for good in ["orders", "a", "Orders.v2_eu-west", &"x".repeat(249), "..."] {
            assert_eq!(check_topic(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            "with space",
            "slash/topic",
            "ünï",
            &"x".repeat(250),
        ] {
            assert!(check_topic(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn routes_then_prefixes() {
        let record = record("orders");
        assert_eq!(Routing::default().topic(&record), "orders");
        let prefixed = Routing {
            route: None,
            prefix: "staging.".into(),
            cloud_events_source: None,
        };
        assert_eq!(prefixed.topic(&record), "staging.orders");
        let routed = Routing {
            route: Some(Arc::new(|r: &OutboxRecord| {
                format!("{}-{}", r.topic, r.event_type)
            })),
            prefix: "staging.".into(),
            cloud_events_source: None,
        };
        assert_eq!(routed.topic(&record), "staging.orders-E");
    }
}
