use std::fmt::Debug;
use std::time::Duration;

use rand::Rng;

use crate::Error;

/// Computes how long a failed record waits before its next attempt.
pub trait Backoff: Debug + Send + Sync {
    /// The wait after failed attempt number `attempts` (1 after the first
    /// failure).
    fn delay(&self, attempts: u32) -> Duration;
}

/// Exponential backoff with jitter, bounded by a maximum: the `n`th retry
/// waits a random time in `[d/2, d]` where `d = min(base * 2^(n-1), max)`
/// ("equal jitter": the wait grows steadily while retries of many records
/// that failed together spread out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExponentialBackoff {
    base: Duration,
    max: Duration,
}

impl ExponentialBackoff {
    /// A backoff starting at `base` and never exceeding `max`. Fails when
    /// `base` is zero or greater than `max`.
    pub fn new(base: Duration, max: Duration) -> Result<Self, Error> {
        if base.is_zero() {
            return Err(Error::Config(
                "backoff base must be greater than zero".into(),
            ));
        }
        if base > max {
            return Err(Error::Config(format!(
                "backoff base ({base:?}) must not exceed its maximum ({max:?})"
            )));
        }
        Ok(Self { base, max })
    }

    /// The upper bound of the wait after `attempts` failures, before jitter.
    pub fn ceiling(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(32);
        self.base
            .saturating_mul(1u32 << doublings.min(31))
            .min(self.max)
    }
}

impl Default for ExponentialBackoff {
    /// Starts at 1 second, at most 5 minutes.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff for ExponentialBackoff {
    fn delay(&self, attempts: u32) -> Duration {
        let ceiling = self.ceiling(attempts);
        let half = ceiling / 2;
        half + rand::rng().random_range(Duration::ZERO..=ceiling - half)
    }
}

/// Proves that [`Backoff`] is object safe.
#[allow(dead_code)]
fn assert_object_safe(_: Box<dyn Backoff>) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_until_the_maximum() {
        let backoff =
            ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(1)).unwrap();
        assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(4), Duration::from_millis(800));
        assert_eq!(backoff.ceiling(5), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_half_and_whole_ceiling() {
        let backoff =
            ExponentialBackoff::new(Duration::from_millis(100), Duration::from_secs(10)).unwrap();
        let delays: Vec<_> = (0..200).map(|_| backoff.delay(3)).collect();
        assert!(delays.iter().all(|d| *d >= Duration::from_millis(200)));
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(400)));
        // Jitter: not every retry waits the same time.
        assert!(delays.iter().any(|d| *d != delays[0]));
    }

    #[test]
    fn rejects_zero_base_and_base_above_max() {
        assert!(ExponentialBackoff::new(Duration::ZERO, Duration::from_secs(1)).is_err());
        let error =
            ExponentialBackoff::new(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert!(error.to_string().contains("must not exceed"), "{error}");
    }
}
