//! The consumer's side: handle a message, then commit its offset.

use std::future::Future;

use outbox_engine::TypedEvent;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use uuid::Uuid;

use crate::Error;
use crate::decode::decode_message_as;

/// What [`handle_message`] did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// The message was a `T`; the handler ran and its offset is committed.
    Event(Uuid),
    /// The message is another event type: skipped, its offset committed.
    OtherType,
}

/// Why [`handle_message`] did not commit a message's offset.
#[derive(Debug, thiserror::Error)]
pub enum HandleError<E> {
    /// The message is not an outbox event of a known shape (missing
    /// headers, a payload that does not decode): nothing ran.
    #[error("cannot decode the message")]
    Decode(#[source] Error),
    /// The handler failed: nothing is committed, so the message comes again
    /// (after a rebalance or a restart, or a seek back).
    #[error("the handler failed: {0}")]
    Handler(E),
    /// The handler succeeded but the offset commit failed: the message
    /// comes again, and the handler's inbox check skips it.
    #[error("cannot commit the offset after handling the message")]
    Commit(#[source] KafkaError),
}

/// Decodes `message` as a `T`, runs `handler(event_id, event)`, and commits
/// the message's offset (synchronously) once the handler succeeded, so an
/// offset is never committed ahead of the work it stands for.
///
/// Delivery stays at least once: a crash after the handler's database
/// commit and before the offset commit delivers the message again. Make
/// the handler idempotent with the inbox (`outbox_sea_orm::inbox::handle`
/// records the event id in the handler's own transaction and skips an
/// event handled before): then each event is handled once. Run the
/// consumer with `enable.auto.commit=false`.
///
/// ```no_run
/// # async fn example(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_rdkafka::rdkafka::consumer::{Consumer, StreamConsumer};
/// use outbox_rdkafka::rdkafka::ClientConfig;
/// use outbox_rdkafka::handle_message;
/// # #[derive(Debug, serde::Serialize, serde::Deserialize, outbox_engine::OutboxEvent)]
/// # #[outbox(topic = "orders", key = order_id)]
/// # struct OrderPlaced { order_id: u64, total_cents: i64 }
///
/// let consumer: StreamConsumer = ClientConfig::new()
///     .set("bootstrap.servers", "kafka:9092")
///     .set("group.id", "billing")
///     .set("enable.auto.commit", "false")
///     .create()?;
/// consumer.subscribe(&["orders"])?;
/// loop {
///     let message = consumer.recv().await?;
///     handle_message(&consumer, &message, |event_id, order: OrderPlaced| {
///         let db = db.clone();
///         async move {
///             outbox_sea_orm::inbox::handle(&db, "billing", event_id, move |txn| {
///                 Box::pin(async move {
///                     // ... the handler's writes on `txn`, for `order` ...
/// #                   let _ = (txn, order);
///                     Ok::<_, sea_orm::DbErr>(())
///                 })
///             })
///             .await
///             .map(|_handled_now| ())
///         }
///     })
///     .await?;
/// }
/// # }
/// ```
pub async fn handle_message<'m, T, C, X, H, F, E>(
    consumer: &C,
    message: &BorrowedMessage<'m>,
    handler: H,
) -> Result<Handled, HandleError<E>>
where
    T: TypedEvent,
    C: Consumer<X>,
    X: ConsumerContext + 'static,
    H: FnOnce(Uuid, T) -> F,
    F: Future<Output = Result<(), E>>,
{
    let handled = match decode_message_as::<T, _>(message).map_err(HandleError::Decode)? {
        Some((event_id, event)) => {
            handler(event_id, event)
                .await
                .map_err(HandleError::Handler)?;
            Handled::Event(event_id)
        }
        None => Handled::OtherType,
    };
    consumer
        .commit_message(message, CommitMode::Sync)
        .map_err(HandleError::Commit)?;
    Ok(handled)
}
