//! [`sink_fn`]: a [`Sink`] from a function that sends one record.

use std::fmt;
use std::future::Future;

use async_trait::async_trait;

use super::{Outcome, Sink, publish_by_key};
use crate::record::OutboxRecord;

/// A [`Sink`] that sends each record with `send` and keeps the sink
/// contract through [`publish_by_key`]: a key's records one after the
/// other, every key at once, the rest of a key held back after a failure,
/// each outcome reported as soon as it is known.
///
/// `send` gets its own copy of the record and returns what became of it:
/// [`Outcome::Delivered`] once the destination acknowledged it,
/// [`Outcome::Retriable`] when a later attempt may succeed (a timeout, a
/// connection lost), [`Outcome::Permanent`] when it cannot (the destination
/// refuses this record as it is). A send with no deadline of its own may
/// hold up its key for as long as it takes, so give it one.
///
/// ```
/// use std::sync::{Arc, Mutex};
///
/// use outbox_engine::{InMemoryStore, NewRecord, OutboxEvent, OutboxStore, Outcome, Relay, sink_fn};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(topic = "orders", key = order_id)]
/// struct OrderPlaced { order_id: u64 }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), outbox_engine::Error> {
/// // A destination: here a list; a real sink sends over the network.
/// let sent: Arc<Mutex<Vec<String>>> = Arc::default();
/// let log = sent.clone();
/// let sink = sink_fn(move |record| {
///     let log = log.clone();
///     async move {
///         if record.payload.len() > 1_000_000 {
///             return Outcome::permanent(format!("event {} is too large", record.event_id));
///         }
///         log.lock().unwrap().push(record.payload);
///         Outcome::Delivered
///     }
/// });
///
/// let store = InMemoryStore::new();
/// store.enqueue(&[NewRecord::from_event(&OrderPlaced { order_id: 7 })?]).await?;
/// let relay = Relay::builder(store, sink).build()?;
/// assert_eq!(relay.run_once().await?.published, 1);
/// assert_eq!(*sent.lock().unwrap(), vec![r#"{"order_id":7}"#.to_owned()]);
/// # Ok(())
/// # }
/// ```
pub fn sink_fn<F, Fut>(send: F) -> SinkFn<F>
where
    F: Fn(OutboxRecord) -> Fut + Send + Sync,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    SinkFn { send }
}

/// The [`Sink`] made by [`sink_fn`].
#[derive(Clone)]
pub struct SinkFn<F> {
    send: F,
}

impl<F> fmt::Debug for SinkFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SinkFn").finish_non_exhaustive()
    }
}

#[async_trait]
impl<F, Fut> Sink for SinkFn<F>
where
    F: Fn(OutboxRecord) -> Fut + Send + Sync,
    Fut: Future<Output = Outcome> + Send + 'static,
{
    async fn publish_each(
        &self,
        records: &[OutboxRecord],
        report: &(dyn Fn(usize, Outcome) + Send + Sync),
    ) {
        publish_by_key(records, report, |record| (self.send)(record.clone())).await;
    }
}
