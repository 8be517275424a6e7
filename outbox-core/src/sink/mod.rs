//! The transport side: [`Sink`], the [`Outcome`] of each record, and the
//! parts a sink is built from.
//!
//! A sink needs one thing of its own: a way to send one record and learn
//! what became of it. [`publish_by_key`] turns that into a batch that keeps
//! the sink contract (per-key order, the rest of a key held back after a
//! failure, one outcome per record as soon as known), and [`sink_fn`] makes
//! a whole [`Sink`] of it. The sink conformance suite
//! (`sink_conformance_tests!`, feature
//! `testkit`) checks the result against a real destination.

mod by_key;
mod headers;
mod key_groups;
mod sink_fn;

use std::fmt;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;

pub use by_key::{HeldBack, publish_by_key};
pub use headers::{
    EVENT_ID_HEADER, EVENT_TYPE_HEADER, SCHEMA_VERSION_HEADER, is_outbox_header, message_headers,
};
pub use key_groups::KeyGroups;
pub use sink_fn::{SinkFn, sink_fn};

use crate::error::BoxError;
use crate::record::OutboxRecord;

/// Where the relay publishes records: Kafka in production
/// (`outbox-rdkafka`), NATS JetStream (`outbox-nats`), an
/// [`InMemorySink`](crate::InMemorySink) in tests.
///
/// A sink implements one method, [`publish_each`](Sink::publish_each):
/// write it with [`publish_by_key`] and a function that sends one record,
/// or let [`sink_fn`] make the whole sink of such a function.
/// [`publish`](Sink::publish) comes with it, collecting the same outcomes
/// ([`collect_outcomes`]).
#[async_trait]
pub trait Sink: Send + Sync {
    /// Publishes a batch and reports each record's [`Outcome`] through
    /// `report(index, outcome)` as soon as it is known (`index` into
    /// `records`), exactly once per record, so the relay can mark delivered
    /// records published while slower ones are still in flight.
    ///
    /// `records` come in claim order (by id). For each key, the records of
    /// that key come in enqueue order, and the sink must not deliver a
    /// record once an earlier record of the same key in this batch has
    /// failed: it reports such records as failed too (the relay releases
    /// them without counting an attempt). That keeps per-key order in the
    /// destination when a batch fails part-way.
    ///
    /// A sink-wide failure (the broker is unreachable) is a retriable
    /// outcome for every record.
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    );

    /// Publishes a batch like [`publish_each`](Sink::publish_each) and
    /// returns one [`Outcome`] per record, in the order of `records`, once
    /// the last is known. The default collects what `publish_each` reports
    /// ([`collect_outcomes`]).
    async fn publish(&self, records: &[OutboxRecord]) -> Vec<Outcome> {
        collect_outcomes(self, records).await
    }
}

#[async_trait]
impl<S: Sink + ?Sized> Sink for Box<S> {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        (**self).publish_each(records, report).await
    }
    async fn publish(&self, records: &[OutboxRecord]) -> Vec<Outcome> {
        (**self).publish(records).await
    }
}

#[async_trait]
impl<S: Sink + ?Sized> Sink for std::sync::Arc<S> {
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        (**self).publish_each(records, report).await
    }
    async fn publish(&self, records: &[OutboxRecord]) -> Vec<Outcome> {
        (**self).publish(records).await
    }
}

/// What became of one record handed to a [`Sink`].
#[derive(Debug)]
pub enum Outcome {
    /// The destination acknowledged the record.
    Delivered,
    /// Not delivered; trying again later may succeed (a timeout, a broker
    /// down, a leader change, a full queue).
    Retriable(BoxError),
    /// Not delivered, and trying again cannot help (message too large,
    /// invalid record, not authorized): the record goes to dead letters.
    Permanent(BoxError),
}

impl Outcome {
    /// A retriable outcome with a message.
    pub fn retriable(error: impl Into<BoxError>) -> Self {
        Outcome::Retriable(error.into())
    }

    /// A permanent outcome with a message.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Outcome::Permanent(error.into())
    }

    /// Whether the record was delivered.
    pub fn is_delivered(&self) -> bool {
        matches!(self, Outcome::Delivered)
    }

    /// The error, unless delivered.
    pub fn error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self {
            Outcome::Delivered => None,
            Outcome::Retriable(e) | Outcome::Permanent(e) => Some(&**e),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Delivered => f.write_str("delivered"),
            Outcome::Retriable(e) => write!(f, "retriable failure: {}", error_chain(&**e)),
            Outcome::Permanent(e) => write!(f, "permanent failure: {}", error_chain(&**e)),
        }
    }
}

/// An error and its sources as one line, `error: cause: cause`: the form
/// stored as a record's `last_error`, and handy in logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Publishes `records` with `sink`'s [`publish_each`](Sink::publish_each)
/// and returns the outcomes in the order of `records`: what
/// [`publish`](Sink::publish) does unless a sink says otherwise.
/// A record that `publish_each` left without an outcome gets a retriable
/// one saying so; of a record reported twice, the first report counts.
pub async fn collect_outcomes<S: Sink + ?Sized>(
    sink: &S,
    records: &[OutboxRecord],
) -> Vec<Outcome> {
    let outcomes: Mutex<Vec<Option<Outcome>>> = Mutex::new(records.iter().map(|_| None).collect());
    sink.publish_each(records, &|index, outcome| {
        let mut outcomes = outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot @ None) = outcomes.get_mut(index) {
            *slot = Some(outcome);
        }
    })
    .await;
    outcomes
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner)
        .into_iter()
        .map(|outcome| {
            outcome.unwrap_or_else(|| {
                Outcome::retriable("the sink reported no outcome for this record")
            })
        })
        .collect()
}

/// Proves that [`Sink`] is object safe.
#[allow(dead_code)]
fn assert_object_safe(_: Box<dyn Sink>) {}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::testkit::batch;

    /// Fails the second record of every batch, delivers the rest.
    struct SecondFails;

    #[async_trait]
    impl Sink for SecondFails {
        async fn publish_each(
            &self,
            records: &[OutboxRecord],
            report: &(dyn Fn(usize, Outcome) + Send + Sync),
        ) {
            for index in 0..records.len() {
                report(
                    index,
                    match index {
                        1 => Outcome::retriable("second"),
                        _ => Outcome::Delivered,
                    },
                );
            }
        }
    }

    async fn reported(sink: &dyn Sink, records: &[OutboxRecord]) -> Vec<(usize, String)> {
        let seen = Mutex::new(Vec::new());
        sink.publish_each(records, &|index, outcome: Outcome| {
            seen.lock().unwrap().push((index, outcome.to_string()));
        })
        .await;
        seen.into_inner().unwrap()
    }

    #[tokio::test]
    async fn a_boxed_or_shared_sink_reports_what_the_sink_reports() {
        let records = batch(&[None; 3]);
        let expected = vec![
            (0, "delivered".to_owned()),
            (1, "retriable failure: second".to_owned()),
            (2, "delivered".to_owned()),
        ];
        assert_eq!(reported(&SecondFails, &records).await, expected);
        let boxed: Box<dyn Sink> = Box::new(SecondFails);
        assert_eq!(reported(&boxed, &records).await, expected);
        let shared: Arc<dyn Sink> = Arc::new(SecondFails);
        assert_eq!(reported(&shared, &records).await, expected);
        assert!(reported(&SecondFails, &[]).await.is_empty());
    }

    #[tokio::test]
    async fn publish_returns_what_publish_each_reports_in_record_order() {
        let records = batch(&[None; 3]);
        let published = |outcomes: Vec<Outcome>| -> Vec<String> {
            outcomes.iter().map(ToString::to_string).collect()
        };
        let expected = ["delivered", "retriable failure: second", "delivered"];
        assert_eq!(published(SecondFails.publish(&records).await), expected);
        let boxed: Box<dyn Sink> = Box::new(SecondFails);
        assert_eq!(published(boxed.publish(&records).await), expected);
        assert!(SecondFails.publish(&[]).await.is_empty());
    }
}
