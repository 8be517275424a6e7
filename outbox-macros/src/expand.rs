//! The generated impls, and the fallback emitted next to errors.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr};

use crate::ast::{Input, Setting, Shape, Topic};
use crate::valid::{Errors, Event};

/// Expands `#[derive(OutboxEvent)]` on `node`: the impls, or every error
/// found plus a fallback impl.
pub(crate) fn derive(node: &DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let input = Input::from_syn(node, &mut errors);
    match input.validate(errors) {
        Ok(event) => impl_event(&event),
        Err(error) => fallback(&input, &error),
    }
}

/// `OutboxEvent` (registered with typetag under the event type) and
/// `TypedEvent`.
///
/// typetag's expansion names `typetag::...` relative to where the attribute
/// is written, so the `use` inside the anonymous const makes it resolve
/// through `outbox_core` without the user depending on typetag.
fn impl_event(event: &Event<'_>) -> TokenStream {
    let ident = event.ident;
    let event_type = &event.event_type;
    let version = Literal::u32_unsuffixed(event.version);

    let topic = match event.topic {
        Topic::Literal(lit) => quote! {
            ::outbox_core::__private::Cow::Borrowed(#lit)
        },
        // Spanned at the path, so that a function of the wrong type is
        // reported there.
        Topic::Computed(path) => quote_spanned! {path.span()=>
            ::outbox_core::__private::Cow::Owned(
                ::outbox_core::__private::ToString::to_string(&#path(self)),
            )
        },
    };

    let key = match event.key {
        None => quote! {
            ::outbox_core::__private::Option::None
        },
        // Spanned at the key, so that a field that is not `Display` is
        // reported there.
        Some(field) => quote_spanned! {field.span()=>
            ::outbox_core::__private::Option::Some(
                ::outbox_core::__private::ToString::to_string(&self.#field),
            )
        },
    };

    let event_type_value = quote!(#event_type);
    impls(ident, event_type, &version, &topic, &key, &event_type_value)
}

/// The errors, plus impls whose methods are unreachable, so that uses of
/// the type as an event elsewhere in the program do not add errors of their
/// own. No impl is emitted for unions and generic items: it could not be
/// written without errors that would hide the real one.
fn fallback(input: &Input<'_>, error: &syn::Error) -> TokenStream {
    let errors = error.to_compile_error();
    if matches!(input.shape, Shape::Union(_)) || input.is_generic() {
        return errors;
    }

    let ident = input.ident;
    let event_type: LitStr = Setting::value(input.attrs.event_type.as_ref())
        .filter(|lit| !lit.value().is_empty())
        .cloned()
        .unwrap_or_else(|| input.default_event_type());

    let unreachable = quote!(::core::unreachable!());
    let version = Literal::u32_unsuffixed(1);
    let impls = impls(
        ident,
        &event_type,
        &version,
        &unreachable,
        &unreachable,
        &unreachable,
    );
    quote! {
        #errors
        #impls
    }
}

/// The two impls, with the given method bodies: registered with typetag
/// under `event_type`.
fn impls(
    ident: &syn::Ident,
    event_type: &LitStr,
    version: &Literal,
    topic: &TokenStream,
    key: &TokenStream,
    event_type_value: &TokenStream,
) -> TokenStream {
    quote! {
        const _: () = {
            use ::outbox_core::__private::typetag;

            #[typetag::serde(name = #event_type)]
            #[automatically_derived]
            #[allow(unused_qualifications)]
            impl ::outbox_core::OutboxEvent for #ident {
                fn topic(&self) -> ::outbox_core::__private::Cow<'_, str> {
                    #topic
                }

                fn key(&self) -> ::outbox_core::__private::Option<::outbox_core::__private::String> {
                    #key
                }

                fn event_type(&self) -> &'static str {
                    #event_type_value
                }

                fn schema_version(&self) -> u32 {
                    #version
                }
            }

            #[automatically_derived]
            impl ::outbox_core::TypedEvent for #ident {
                const EVENT_TYPE: &'static str = #event_type;
                const SCHEMA_VERSION: u32 = #version;
            }
        };
    }
}
