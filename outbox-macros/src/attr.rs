//! Reading `#[outbox(...)]` attributes.
//!
//! Every key is read with [`syn::meta::parse_nested_meta`]. A mistake in a
//! value (a wrong kind of literal, an unknown or repeated key) is recorded
//! and reading goes on with the next key, so that all mistakes in an
//! attribute are reported together. Only tokens that cannot be read at all
//! end the attribute.

use proc_macro2::Group;
use quote::ToTokens;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{
    Attribute, Error, Expr, ExprLit, ExprPath, Ident, Lit, LitInt, LitStr, Path, Result, Token,
};

use crate::errors::Errors;

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

impl<T> Setting<T> {
    /// The value, if it could be read.
    pub(crate) fn value(setting: Option<&Self>) -> Option<&T> {
        setting.and_then(|setting| setting.value.as_ref())
    }
}

/// The keys `#[outbox(...)]` accepts, as listed in error messages.
const KEYS: &str = "`topic`, `key`, `event_type`, `version`";

/// Reads all `#[outbox(...)]` attributes among `attrs`.
pub(crate) fn get(attrs: &[Attribute], errors: &mut Errors) -> Attrs {
    let mut out = Attrs::default();
    for attr in attrs {
        if !attr.path().is_ident("outbox") {
            continue;
        }
        if let Err(error) = attr.parse_nested_meta(|meta| parse_key(&mut out, meta, errors)) {
            errors.push(error);
            out.incomplete = true;
        }
    }
    out
}

/// Reads one `key = value` of an `#[outbox(...)]` list.
fn parse_key(attrs: &mut Attrs, meta: ParseNestedMeta<'_>, errors: &mut Errors) -> Result<()> {
    let Some(key) = meta.path.get_ident().cloned() else {
        errors.push(unknown_key(&meta));
        return skip_value(&meta);
    };
    if key == "topic" {
        let value = read_value(&meta, &key, errors, topic)?;
        set(&mut attrs.topic, &key, value, errors);
    } else if key == "key" {
        let value = read_value(&meta, &key, errors, field)?;
        set(&mut attrs.key, &key, value, errors);
    } else if key == "event_type" {
        let value = read_value(&meta, &key, errors, event_type)?;
        set(&mut attrs.event_type, &key, value, errors);
    } else if key == "version" {
        let value = read_value(&meta, &key, errors, version)?;
        set(&mut attrs.version, &key, value, errors);
    } else {
        errors.push(unknown_key(&meta));
        return skip_value(&meta);
    }
    Ok(())
}

/// Reads the `= value` after a known key as an expression and converts it
/// with `convert`. `Ok(None)` means a mistake that has been recorded in
/// `errors`; `Err` means tokens that cannot be read.
fn read_value<T>(
    meta: &ParseNestedMeta<'_>,
    key: &Ident,
    errors: &mut Errors,
    convert: fn(Expr) -> Result<T>,
) -> Result<Option<T>> {
    if !meta.input.peek(Token![=]) {
        errors.push(Error::new(
            key.span(),
            format!("expected `{key} = ...`: {}", expected(&key.to_string())),
        ));
        skip_value(meta)?;
        return Ok(None);
    }
    let expr: Expr = meta.value()?.parse()?;
    match convert(expr) {
        Ok(value) => Ok(Some(value)),
        Err(error) => {
            errors.push(error);
            Ok(None)
        }
    }
}

/// What each known key takes, for error messages.
fn expected(key: &str) -> &'static str {
    match key {
        "topic" => {
            "`topic` takes a string literal, as in `topic = \"orders\"`, or a path to a function \
             taking `&Self` and returning a `Display` value, as in `topic = topic_of`"
        }
        "key" => {
            "`key` takes the name of a field whose value is the message key, as in `key = order_id`"
        }
        "event_type" => {
            "`event_type` takes a string literal, as in `event_type = \"order.placed\"`"
        }
        _ => "`version` takes an integer literal from 1, as in `version = 2`",
    }
}

/// Stores a key's value, reporting a key given twice.
fn set<T>(slot: &mut Option<Setting<T>>, key: &Ident, value: Option<T>, errors: &mut Errors) {
    if slot.is_some() {
        errors.push(Error::new(
            key.span(),
            format!("duplicate `{key}`: give each key of #[outbox(...)] once"),
        ));
    } else {
        *slot = Some(Setting { value });
    }
}

/// `topic = "literal"` or `topic = path::to::function`.
fn topic(expr: Expr) -> Result<Topic> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit),
            attrs,
        }) if attrs.is_empty() => Ok(Topic::Literal(lit)),
        Expr::Path(ExprPath {
            attrs, qself, path, ..
        }) if attrs.is_empty() && qself.is_none() => Ok(Topic::Computed(path)),
        other => Err(Error::new_spanned(other, expected("topic"))),
    }
}

/// `key = field`.
fn field(expr: Expr) -> Result<Ident> {
    if let Expr::Path(ExprPath {
        attrs, qself, path, ..
    }) = &expr
        && attrs.is_empty()
        && qself.is_none()
        && let Some(ident) = path.get_ident()
    {
        return Ok(ident.clone());
    }
    Err(Error::new_spanned(expr, expected("key")))
}

/// `event_type = "literal"`.
fn event_type(expr: Expr) -> Result<syn::LitStr> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Str(lit),
            attrs,
        }) if attrs.is_empty() => Ok(lit),
        other => Err(Error::new_spanned(other, expected("event_type"))),
    }
}

/// `version = N`, with `N` an unsuffixed or `u32` integer literal that fits
/// in a `u32`. Zero is read here and rejected by the checks.
fn version(expr: Expr) -> Result<Version> {
    let Expr::Lit(ExprLit {
        lit: Lit::Int(literal),
        attrs,
    }) = expr
    else {
        return Err(Error::new_spanned(expr, expected("version")));
    };
    if !attrs.is_empty() {
        return Err(Error::new(
            attrs[0].span(),
            "attributes are not allowed on `version`",
        ));
    }
    if !matches!(literal.suffix(), "" | "u32") {
        return Err(Error::new_spanned(
            &literal,
            format!(
                "`version` is a u32: write `{}` without the `{}` suffix",
                literal.base10_digits(),
                literal.suffix(),
            ),
        ));
    }
    let value = literal.base10_parse::<u32>().map_err(|_| {
        Error::new_spanned(&literal, "`version` must fit in a u32 (at most 4294967295)")
    })?;
    Ok(Version { value, literal })
}

/// The error for a key that `#[outbox(...)]` does not know.
fn unknown_key(meta: &ParseNestedMeta<'_>) -> Error {
    let path = meta.path.to_token_stream().to_string().replace(' ', "");
    Error::new_spanned(
        &meta.path,
        format!("unknown key `{path}` in #[outbox(...)]; expected one of {KEYS}"),
    )
}

/// Skips the value of a key that was already reported, so that reading can
/// go on with the next key: `= expression`, `(...)` or nothing.
fn skip_value(meta: &ParseNestedMeta<'_>) -> Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<Group>()?;
    }
    Ok(())
}
