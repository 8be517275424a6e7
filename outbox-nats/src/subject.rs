//! Which subject a record goes to, and whether NATS accepts it.

use std::fmt;
use std::sync::Arc;

use outbox_engine::OutboxRecord;

/// A function choosing the topic part of a record's subject.
pub(crate) type RouteFn = Arc<dyn Fn(&OutboxRecord) -> String + Send + Sync>;

/// The subject mapping: `{prefix}{topic}` and, for a keyed record when
/// keys are in subjects, `.{key token}`.
#[derive(Clone)]
pub(crate) struct Subjects {
    pub(crate) prefix: String,
    pub(crate) route: Option<RouteFn>,
    pub(crate) key_in_subject: bool,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            route: None,
            key_in_subject: true,
        }
    }
}

impl Subjects {
    /// The subject `record` is published to, or why it has none.
    pub(crate) fn subject(&self, record: &OutboxRecord) -> Result<String, (String, &'static str)> {
        let mut subject = self.prefix.clone();
        match &self.route {
            Some(route) => subject.push_str(&route(record)),
            None => subject.push_str(&record.topic),
        }
        if let Err(reason) = check_subject(&subject) {
            return Err((subject, reason));
        }
        if self.key_in_subject
            && let Some(key) = record.key.as_deref()
        {
            if key.is_empty() {
                return Err((
                    subject,
                    "an empty key has no subject token; use no key instead",
                ));
            }
            subject.push('.');
            subject.push_str(&key_token(key));
        }
        Ok(subject)
    }
}

impl fmt::Debug for Subjects {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subjects")
            .field("prefix", &self.prefix)
            .field(
                "route",
                &self.route.as_ref().map(|_| "Fn(&OutboxRecord) -> String"),
            )
            .field("key_in_subject", &self.key_in_subject)
            .finish()
    }
}

/// The subject token of a key: the key with every byte other than an
/// ASCII letter, digit, `-` or `_` written as `%XX` (upper-case hex of the
/// UTF-8 byte), so that any key makes exactly one token and no two keys
/// make the same one. `order-7` stays `order-7`; `a.b` becomes `a%2Eb`,
/// `user@example.com` `user%40example%2Ecom`.
///
/// ```
/// assert_eq!(outbox_nats::key_token("order-7"), "order-7");
/// assert_eq!(outbox_nats::key_token("a.b *>"), "a%2Eb%20%2A%3E");
/// ```
pub fn key_token(key: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut token = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_') {
            token.push(char::from(byte));
        } else {
            token.push('%');
            token.push(char::from(HEX[usize::from(byte >> 4)]));
            token.push(char::from(HEX[usize::from(byte & 0xF)]));
        }
    }
    token
}

/// Checks a subject to publish to: dot-separated tokens, none empty, no
/// whitespace or control characters, no wildcard (`*`, `>`).
pub(crate) fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("a subject cannot be empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a subject cannot hold whitespace or control characters");
    }
    if subject.contains(['*', '>']) {
        return Err("a subject to publish to cannot hold the wildcards `*` and `>`");
    }
    if subject.split('.').any(str::is_empty) {
        return Err("a subject's dot-separated tokens cannot be empty");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use outbox_engine::testkit::record_on;

    use super::*;

    fn record(topic: &str, key: Option<&str>) -> OutboxRecord {
        OutboxRecord::from_new(1, record_on(topic, key, 1))
    }

    #[test]
    fn keys_become_one_token_each() {
        assert_eq!(key_token("Order_7-b"), "Order_7-b");
        assert_eq!(key_token("a.b"), "a%2Eb");
        assert_eq!(key_token("%41"), "%2541");
        assert_eq!(key_token("ü"), "%C3%BC");
        assert_ne!(key_token("a.b"), key_token("a%2Eb"));
        for key in ["a.b", "*", ">", "x y", "tab\t", "ü/é"] {
            assert_eq!(
                check_subject(&format!("t.{}", key_token(key))),
                Ok(()),
                "{key}"
            );
        }
    }

    #[test]
    fn subjects_are_prefix_topic_and_key() {
        let subjects = Subjects::default();
        assert_eq!(subjects.subject(&record("orders", None)).unwrap(), "orders");
        assert_eq!(
            subjects.subject(&record("orders", Some("a.b"))).unwrap(),
            "orders.a%2Eb"
        );
        let prefixed = Subjects {
            prefix: "outbox.".into(),
            route: Some(Arc::new(|r: &OutboxRecord| {
                format!("{}.v{}", r.topic, r.schema_version)
            })),
            key_in_subject: false,
        };
        assert_eq!(
            prefixed.subject(&record("shop.orders", Some("7"))).unwrap(),
            "outbox.shop.orders.v1"
        );
    }

    #[test]
    fn bad_subjects_are_refused() {
        let subjects = Subjects::default();
        for topic in ["", "with space", "a..b", ".a", "a.", "a.*", "a.>"] {
            assert!(subjects.subject(&record(topic, None)).is_err(), "{topic:?}");
        }
        assert!(subjects.subject(&record("orders", Some(""))).is_err());
    }
}
