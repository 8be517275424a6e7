//! Checks on the model, and the checked event that code is generated from.

use syn::ext::IdentExt;
use syn::{Error, Fields, Ident, LitStr, Result};

use crate::ast::{Input, Shape};
use crate::attr::{Setting, Topic};
use crate::errors::Errors;

/// A checked `#[derive(OutboxEvent)]` input: everything needed to generate
/// the impls, with the defaults filled in.
pub(crate) struct Event<'a> {
    pub(crate) ident: &'a Ident,
    pub(crate) topic: &'a Topic,
    /// The key field, as written in the attribute.
    pub(crate) key: Option<&'a Ident>,
    pub(crate) event_type: LitStr,
    pub(crate) version: u32,
}

impl<'a> Input<'a> {
    /// Checks the input, reporting every mistake along with those recorded
    /// while reading it.
    pub(crate) fn validate(&self, mut errors: Errors) -> Result<Event<'_>> {
        self.check_shape(&mut errors);
        let attrs = &self.attrs;

        let topic = match &attrs.topic {
            // The topic may be among the tokens that could not be read.
            None if attrs.incomplete => None,
            None => {
                errors.push(Error::new_spanned(
                    self.ident,
                    format!(
                        "missing topic: add #[outbox(topic = \"...\")] to `{}`, with a string \
                         literal or a path to a function taking `&Self` and returning a \
                         `Display` value",
                        self.ident,
                    ),
                ));
                None
            }
            Some(setting) => setting.value.as_ref(),
        };
        if let Some(Topic::Literal(lit)) = topic
            && lit.value().is_empty()
        {
            errors.push(Error::new_spanned(
                lit,
                "`topic` must not be empty: write the topic name, as in `topic = \"orders\"`",
            ));
        }

        let event_type = Setting::value(attrs.event_type.as_ref());
        if let Some(lit) = event_type
            && lit.value().is_empty()
        {
            errors.push(Error::new_spanned(
                lit,
                "`event_type` must not be empty: write a name unique to this event, as in \
                 `event_type = \"order.placed\"`, or leave it out to use the struct's name",
            ));
        }

        let version = Setting::value(attrs.version.as_ref());
        if let Some(version) = version
            && version.value == 0
        {
            errors.push(Error::new_spanned(
                &version.literal,
                "`version` must be at least 1: schema versions start at 1",
            ));
        }

        let key = Setting::value(attrs.key.as_ref());
        if let Some(key) = key {
            self.check_key(key, &mut errors);
        }

        errors.finish()?;
        // Without errors, the topic was given and read, and so was any key.
        let Some(topic) = topic else {
            unreachable!("a missing or unreadable topic is always reported")
        };
        Ok(Event {
            ident: self.ident,
            topic,
            key,
            event_type: event_type
                .cloned()
                .unwrap_or_else(|| self.default_event_type()),
            version: version.map_or(1, |version| version.value),
        })
    }

    /// The event type used when none is given: the struct's name.
    pub(crate) fn default_event_type(&self) -> LitStr {
        LitStr::new(&self.ident.unraw().to_string(), self.ident.span())
    }

    /// Only non-generic structs are supported.
    fn check_shape(&self, errors: &mut Errors) {
        const SUPPORTED: &str = "#[derive(OutboxEvent)] supports non-generic structs";
        match &self.shape {
            Shape::Struct(_) => {}
            Shape::Enum(data) => errors.push(Error::new_spanned(
                data.enum_token,
                format!("{SUPPORTED}; enums are not supported: derive it on one struct per event"),
            )),
            Shape::Union(data) => errors.push(Error::new_spanned(
                data.union_token,
                format!("{SUPPORTED}; unions are not supported"),
            )),
        }
        if self.is_generic() {
            errors.push(Error::new_spanned(
                &self.original.generics,
                format!(
                    "{SUPPORTED}; generic structs are not supported, because each event type \
                     must deserialize into one concrete type: remove the generic parameters"
                ),
            ));
        }
    }

    /// `key` must name a named field of the struct.
    fn check_key(&self, key: &Ident, errors: &mut Errors) {
        let Shape::Struct(fields) = &self.shape else {
            // Already reported by the shape check.
            return;
        };
        let names: Vec<Ident> = match fields {
            Fields::Named(fields) => fields
                .named
                .iter()
                .filter_map(|field| field.ident.as_ref().map(IdentExt::unraw))
                .collect(),
            Fields::Unnamed(_) | Fields::Unit => Vec::new(),
        };
        if names.is_empty() {
            errors.push(Error::new_spanned(
                key,
                format!(
                    "`key` names a field, but `{}` has no named fields; leave `key` out to \
                     publish without a key",
                    self.ident,
                ),
            ));
            return;
        }
        if names.iter().any(|name| *name == key.unraw()) {
            return;
        }
        let list = names
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ");
        errors.push(Error::new_spanned(
            key,
            format!(
                "no field `{}` on `{}`: `key` names a field whose value is the message key; \
                 the fields are {list}",
                key.unraw(),
                self.ident,
            ),
        ));
    }
}
