//! The generated impls, and the fallback emitted next to errors.

use proc_macro2::{Literal, TokenStream};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr};

use crate::ast::{Input, Shape};
use crate::attr::{Setting, Topic};
use crate::errors::Errors;
use crate::valid::Event;

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
/// through `outbox_engine` without the user depending on typetag. The
/// generated code names the crate `__outbox`, an alias of
/// [`crate_path`].
fn impl_event(event: &Event<'_>) -> TokenStream {
    let ident = event.ident;
    let event_type = &event.event_type;
    let version = Literal::u32_unsuffixed(event.version);

    let topic = match event.topic {
        Topic::Literal(lit) => quote! {
            __outbox::__private::Cow::Borrowed(#lit)
        },
        // Spanned at the path, so that a function of the wrong type is
        // reported there.
        Topic::Computed(path) => quote_spanned! {path.span()=>
            __outbox::__private::Cow::Owned(
                __outbox::__private::ToString::to_string(&#path(self)),
            )
        },
    };

    let key = match event.key {
        None => quote! {
            __outbox::__private::Option::None
        },
        // Spanned at the key, so that a field that is not `Display` is
        // reported there.
        Some(field) => quote_spanned! {field.span()=>
            __outbox::__private::Option::Some(
                __outbox::__private::ToString::to_string(&self.#field),
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
    let krate = crate_path();
    quote! {
        const _: () = {
            use #krate as __outbox;
            use __outbox::__private::typetag;

            #[typetag::serde(name = #event_type)]
            #[automatically_derived]
            #[allow(unused_qualifications)]
            impl __outbox::OutboxEvent for #ident {
                fn topic(&self) -> __outbox::__private::Cow<'_, str> {
                    #topic
                }

                fn key(&self) -> __outbox::__private::Option<__outbox::__private::String> {
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
            impl __outbox::TypedEvent for #ident {
                const EVENT_TYPE: &'static str = #event_type;
                const SCHEMA_VERSION: u32 = #version;
            }
        };
    }
}

/// The path of the crate that holds `OutboxEvent` for the crate being
/// compiled: `outbox-engine` when it depends on it (under whatever name),
/// else the `outbox` facade, which re-exports it.
fn crate_path() -> TokenStream {
    use proc_macro_crate::{FoundCrate, crate_name};
    let found = crate_name("outbox-engine").or_else(|_| {
        crate_name("outbox").map(|found| match found {
            FoundCrate::Itself => FoundCrate::Name("outbox".to_owned()),
            name => name,
        })
    });
    match found {
        Ok(FoundCrate::Name(name)) => {
            let ident = proc_macro2::Ident::new(&name, proc_macro2::Span::call_site());
            quote!(::#ident)
        }
        // outbox-engine itself, or neither found: name outbox-engine, and let
        // a missing dependency be reported there.
        _ => quote!(::outbox_engine),
    }
}
