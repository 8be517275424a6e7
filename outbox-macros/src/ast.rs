//! A typed model of the item under `#[derive(OutboxEvent)]`.

use syn::{Data, DataEnum, DataUnion, DeriveInput, Fields, Ident, LitInt, LitStr, Path};

use crate::attr;
use crate::valid::Errors;

/// The derive input as far as it could be read. Reading never stops at the
/// first mistake: whatever could not be read is left out of the model and
/// its error is in the [`Errors`] passed to [`Input::from_syn`].
pub(crate) struct Input<'a> {
    pub(crate) original: &'a DeriveInput,
    pub(crate) ident: &'a Ident,
    pub(crate) shape: Shape<'a>,
    pub(crate) attrs: Attrs,
}

/// What kind of item the derive is on.
pub(crate) enum Shape<'a> {
    /// A struct: named, tuple or unit.
    Struct(&'a Fields),
    /// An enum, which is not supported.
    Enum(&'a DataEnum),
    /// A union, which is not supported.
    Union(&'a DataUnion),
}

/// The keys of all `#[outbox(...)]` attributes on the item.
#[derive(Default)]
pub(crate) struct Attrs {
    pub(crate) topic: Option<Setting<Topic>>,
    pub(crate) key: Option<Setting<Ident>>,
    pub(crate) event_type: Option<Setting<LitStr>>,
    pub(crate) version: Option<Setting<Version>>,
    /// Whether an attribute could not be read to its end, so that keys
    /// after the unreadable tokens are unknown.
    pub(crate) incomplete: bool,
}

/// One key given in an attribute. `value` is `None` when the value could not
/// be read (the error is already recorded), so that a key given with a bad
/// value is not also reported as missing.
pub(crate) struct Setting<T> {
    pub(crate) value: Option<T>,
}

/// The value of `topic = ...`.
pub(crate) enum Topic {
    /// `topic = "orders"`.
    Literal(LitStr),
    /// `topic = path::to::function`, called with `&Self`.
    Computed(Path),
}

/// The value of `version = N`, read as a `u32`.
pub(crate) struct Version {
    pub(crate) value: u32,
    pub(crate) literal: LitInt,
}

impl<'a> Input<'a> {
    /// Reads the item and its `#[outbox(...)]` attributes, recording every
    /// mistake found while reading in `errors`.
    pub(crate) fn from_syn(node: &'a DeriveInput, errors: &mut Errors) -> Self {
        let shape = match &node.data {
            Data::Struct(data) => Shape::Struct(&data.fields),
            Data::Enum(data) => Shape::Enum(data),
            Data::Union(data) => Shape::Union(data),
        };
        Input {
            original: node,
            ident: &node.ident,
            shape,
            attrs: attr::get(&node.attrs, errors),
        }
    }

    /// Whether the item is generic (over types, lifetimes or constants).
    pub(crate) fn is_generic(&self) -> bool {
        !self.original.generics.params.is_empty()
    }
}

impl<T> Setting<T> {
    /// The value, if it could be read.
    pub(crate) fn value(setting: Option<&Self>) -> Option<&T> {
        setting.and_then(|setting| setting.value.as_ref())
    }
}
