//! `#[derive(OutboxEvent)]` for [`outbox-engine`](https://docs.rs/outbox-engine).
//!
//! Use it through `outbox_engine::OutboxEvent` (the `derive` feature of
//! `outbox-engine`, on by default) rather than depending on this crate: the
//! generated code names `::outbox_engine` paths only.
//!
//! See [`macro@OutboxEvent`] for the attribute keys.

mod ast;
mod attr;
mod errors;
mod expand;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Implements `outbox_engine::OutboxEvent` and `outbox_engine::TypedEvent` for a
/// struct, and registers it under its event type so that a
/// `Box<dyn OutboxEvent>` deserializes back into it.
///
/// The struct must also implement `Debug`, `Serialize` and `Deserialize`
/// (derive them next to `OutboxEvent`), and must not be generic.
///
/// ```
/// use outbox_engine::{OutboxEvent, TypedEvent};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(topic = "orders", key = order_id, event_type = "order.placed", version = 2)]
/// struct OrderPlaced {
///     order_id: u64,
///     total_cents: i64,
/// }
///
/// let event = OrderPlaced { order_id: 7, total_cents: 1250 };
/// assert_eq!(event.topic(), "orders");
/// assert_eq!(event.key().as_deref(), Some("7"));
/// assert_eq!(event.event_type(), "order.placed");
/// assert_eq!(OrderPlaced::SCHEMA_VERSION, 2);
/// ```
///
/// # Attribute keys
///
/// Given in `#[outbox(...)]`, comma separated; they may be split across
/// several `#[outbox(...)]` attributes, each key at most once.
///
/// - `topic = "name"` (required): the topic, a non-empty string literal.
///   Or `topic = path::to::function`, where the function takes `&Self` and
///   returns any `Display` value, for a topic computed from the event.
/// - `key = field` (optional): a named field whose `Display` value is the
///   message key (and ordering key). Without it, `key()` returns `None`.
/// - `event_type = "name"` (optional): the event type, a non-empty string
///   literal unique in the program. Defaults to the struct's name.
/// - `version = N` (optional): the schema version, an integer from 1 that
///   fits in a `u32`. Defaults to 1.
///
/// ```
/// use outbox_engine::OutboxEvent;
/// use serde::{Deserialize, Serialize};
///
/// fn tenant_topic(event: &UserRenamed) -> String {
///     format!("tenant-{}.users", event.tenant)
/// }
///
/// #[derive(Debug, Serialize, Deserialize, OutboxEvent)]
/// #[outbox(topic = tenant_topic)]
/// #[outbox(key = user_id)]
/// struct UserRenamed {
///     tenant: String,
///     user_id: u64,
///     name: String,
/// }
///
/// let event = UserRenamed { tenant: "acme".into(), user_id: 3, name: "Ada".into() };
/// assert_eq!(event.topic(), "tenant-acme.users");
/// assert_eq!(event.event_type(), "UserRenamed");
/// assert_eq!(event.schema_version(), 1);
/// ```
#[proc_macro_derive(OutboxEvent, attributes(outbox))]
pub fn derive_outbox_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive(&input).into()
}
