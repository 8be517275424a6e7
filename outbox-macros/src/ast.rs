//! A typed model of the item under `#[derive(OutboxEvent)]`.

use syn::{Data, DataEnum, DataUnion, DeriveInput, Fields, Ident};

use crate::attr::{self, Attrs};
use crate::errors::Errors;

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
