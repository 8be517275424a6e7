//! Retries: a [`RetryPolicy`] decides whether a failed record is tried
//! again, a [`Backoff`] decides how long it waits first.

mod backoff;
mod policy;

pub use backoff::{Backoff, ExponentialBackoff};
pub use policy::{MaxAttempts, RetryForever, RetryPolicy};
