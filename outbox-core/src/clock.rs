//! [`Clock`]: where the relay reads the time for its own reports.

use std::fmt::Debug;

use chrono::{DateTime, Utc};

/// A source of the current time.
pub trait Clock: Debug + Send + Sync {
    /// Now.
    fn now(&self) -> DateTime<Utc>;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Proves that [`Clock`] is object safe.
#[allow(dead_code)]
fn assert_object_safe(_: Box<dyn Clock>) {}
