use std::error::Error as StdError;
use std::fmt::Debug;

use crate::Error;

/// Decides whether a record whose publish failed with a retriable error is
/// tried again, or moved to dead letters.
///
/// Permanent failures never reach the policy: they go to dead letters at
/// once.
pub trait RetryPolicy: Debug + Send + Sync {
    /// `attempts` counts the failed attempts including this one (1 after
    /// the first failure).
    fn should_retry(&self, attempts: u32, error: &(dyn StdError + 'static)) -> bool;
}

/// Retries for as long as it takes: the default. A retriable failure (a
/// broker down, a topic not created yet) never makes a record dead, however
/// long it lasts; the backoff keeps the attempts apart.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryForever;

impl RetryPolicy for RetryForever {
    fn should_retry(&self, _attempts: u32, _error: &(dyn StdError + 'static)) -> bool {
        true
    }
}

/// Retries until a record has failed `max` times, then gives up: a limit
/// to set only where a dead letter is better than waiting, since an outage
/// longer than the attempts' backoff makes records dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxAttempts {
    max: u32,
}

impl MaxAttempts {
    /// Gives up after `max` failed attempts; `max` must be at least 1 (1
    /// means never retry).
    pub fn new(max: u32) -> Result<Self, Error> {
        if max == 0 {
            return Err(Error::Config(
                "max attempts must be at least 1 (1 means: never retry)".into(),
            ));
        }
        Ok(Self { max })
    }

    /// The number of attempts after which a record goes to dead letters.
    pub fn max(&self) -> u32 {
        self.max
    }
}

impl RetryPolicy for MaxAttempts {
    fn should_retry(&self, attempts: u32, _error: &(dyn StdError + 'static)) -> bool {
        attempts < self.max
    }
}

/// Proves that [`RetryPolicy`] is object safe.
#[allow(dead_code)]
fn assert_object_safe(_: Box<dyn RetryPolicy>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_until_max_failures() {
        let policy = MaxAttempts::new(3).unwrap();
        let error = std::io::Error::other("boom");
        assert!(policy.should_retry(1, &error));
        assert!(policy.should_retry(2, &error));
        assert!(!policy.should_retry(3, &error));
    }

    #[test]
    fn zero_attempts_is_rejected() {
        let error = MaxAttempts::new(0).unwrap_err();
        assert!(error.to_string().contains("at least 1"), "{error}");
    }
}
