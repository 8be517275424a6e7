//! [`AsEvent`]: the shapes of event [`enqueue_all`](crate::enqueue_all)
//! takes.

use std::sync::Arc;

use outbox_engine::OutboxEvent;

/// What [`enqueue_all`] accepts as an event: an event by value, a
/// reference to one (`&OrderPlaced`, `&dyn OutboxEvent`), a reference to
/// such a reference (the items of `&[&OrderPlaced]`), a `Box` or `Arc` of an
/// event, or a reference to one (the items of `&[Box<dyn OutboxEvent>]`).
///
/// `M` is one of the [`marker`] types; the compiler infers it, so callers
/// never name it. (One trait per shape keeps the implementations apart:
/// with a single trait, the one for events by value would collide with
/// those for references and boxes.)
pub trait AsEvent<M> {
    /// The event.
    fn as_event(&self) -> &dyn OutboxEvent;
}

/// The shapes of [`AsEvent`], inferred by the compiler.
pub mod marker {
    /// An event by value.
    #[derive(Debug)]
    pub enum Value {}
    /// `&E`.
    #[derive(Debug)]
    pub enum Ref {}
    /// `&&E`.
    #[derive(Debug)]
    pub enum RefRef {}
    /// `Box<E>` or `Arc<E>`.
    #[derive(Debug)]
    pub enum Owned {}
    /// `&Box<E>` or `&Arc<E>`.
    #[derive(Debug)]
    pub enum OwnedRef {}
}

impl<T: OutboxEvent> AsEvent<marker::Value> for T {
    fn as_event(&self) -> &dyn OutboxEvent {
        self
    }
}

/// Implements [`AsEvent`] for a shape, once for concrete events and once
/// for `dyn OutboxEvent` (a generic `T: ?Sized` cannot become a trait
/// object). `$deref` turns `self` into a reference to the event.
macro_rules! as_event {
    ($($marker:ident: $concrete:ty, $dynamic:ty, |$this:ident| $deref:expr;)*) => {$(
        impl<T: OutboxEvent> AsEvent<marker::$marker> for $concrete {
            fn as_event(&self) -> &dyn OutboxEvent {
                let $this = self;
                let event: &T = $deref;
                event
            }
        }
        impl AsEvent<marker::$marker> for $dynamic {
            fn as_event(&self) -> &dyn OutboxEvent {
                let $this = self;
                $deref
            }
        }
    )*};
}

as_event! {
    Ref: &T, &dyn OutboxEvent, |this| &**this;
    RefRef: &&T, &&dyn OutboxEvent, |this| &***this;
    Owned: Box<T>, Box<dyn OutboxEvent>, |this| &**this;
    Owned: Arc<T>, Arc<dyn OutboxEvent>, |this| &**this;
    OwnedRef: &Box<T>, &Box<dyn OutboxEvent>, |this| &***this;
    OwnedRef: &Arc<T>, &Arc<dyn OutboxEvent>, |this| &***this;
}
