//! Capturing the W3C trace context at enqueue.
//!
//! A `tracing` span carries no W3C trace id of its own; an OpenTelemetry
//! layer gives it one. So the outbox asks the application: install a
//! function with [`set_traceparent_source`] (for example one that formats
//! the current span's OpenTelemetry context), and every record built by
//! [`NewRecord::from_event`](crate::NewRecord::from_event) while it returns
//! `Some` carries a `traceparent` header, which the Kafka sink forwards.

use std::sync::OnceLock;

use crate::Error;

/// The header name of the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";

static SOURCE: OnceLock<fn() -> Option<String>> = OnceLock::new();

/// Installs the function that returns the current `traceparent`
/// (`00-<trace id>-<span id>-<flags>`), or `None` outside a traced span.
/// Call it once, at start-up; a second call fails with [`Error::Config`].
pub fn set_traceparent_source(source: fn() -> Option<String>) -> Result<(), Error> {
    SOURCE.set(source).map_err(|_| {
        Error::Config("a traceparent source is already installed; install it once".into())
    })
}

/// The current `traceparent`, when a source is installed and it has one.
pub(crate) fn current_traceparent() -> Option<String> {
    SOURCE.get().and_then(|source| source())
}
