use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use uuid::Uuid;

use super::{Relay, RelayStatus};
use crate::retry::{Backoff, ExponentialBackoff, MaxAttempts, RetryPolicy};
use crate::{Error, OutboxStore, Sink};

/// The longest lease [`RelayBuilder::lease`] accepts.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// Configures a [`Relay`]; made by [`Relay::builder`], checked by
/// [`build`](RelayBuilder::build).
pub struct RelayBuilder<St, Si> {
    store: St,
    sink: Si,
    relay_id: Option<String>,
    batch_size: usize,
    poll_interval: Duration,
    lease: Duration,
    max_attempts: u32,
    retry_policy: Option<Box<dyn RetryPolicy>>,
    backoff: Box<dyn Backoff>,
}

impl<St: OutboxStore, Si: Sink> RelayBuilder<St, Si> {
    pub(super) fn new(store: St, sink: Si) -> Self {
        Self {
            store,
            sink,
            relay_id: None,
            batch_size: 100,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            max_attempts: MaxAttempts::default().max(),
            retry_policy: None,
            backoff: Box::new(ExponentialBackoff::default()),
        }
    }

    /// The id written to the records this relay leases. Default: `relay-`
    /// and a fresh UUIDv7, unique per relay. Must not be empty.
    #[must_use]
    pub fn relay_id(mut self, id: impl Into<String>) -> Self {
        self.relay_id = Some(id.into());
        self
    }

    /// The most records claimed and published at once. Default: 100. Must
    /// be at least 1.
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// How long [`Relay::run`] waits when the outbox is empty or the store
    /// failed. Default: 500 ms. Must be greater than zero.
    #[must_use]
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long a claim holds before another relay may take the records
    /// over. It must outlast one publish (the sink's delivery timeout) and
    /// the marking that follows. Default: 30 s. Between 1 s and 24 h.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Failed attempts after which a record goes to dead letters: the
    /// default [`MaxAttempts`] policy. Default: 10. At least 1. Ignored when
    /// [`retry_policy`](Self::retry_policy) is set.
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = max_attempts;
        self
    }

    /// Decides whether a retriable failure is retried. Default:
    /// [`MaxAttempts`] with [`max_attempts`](Self::max_attempts).
    #[must_use]
    pub fn retry_policy(mut self, policy: impl RetryPolicy + 'static) -> Self {
        self.retry_policy = Some(Box::new(policy));
        self
    }

    /// How long a failed record waits before its next attempt. Default:
    /// [`ExponentialBackoff::default`] (1 s doubling up to 5 min, with
    /// jitter).
    #[must_use]
    pub fn backoff(mut self, backoff: impl Backoff + 'static) -> Self {
        self.backoff = Box::new(backoff);
        self
    }

    /// Checks the settings and builds the relay.
    pub fn build(self) -> Result<Relay<St, Si>, Error> {
        let relay_id = self
            .relay_id
            .unwrap_or_else(|| format!("relay-{}", Uuid::now_v7()));
        if relay_id.trim().is_empty() {
            return Err(Error::Config("relay id must not be empty".into()));
        }
        if self.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config(
                "poll interval must be greater than zero".into(),
            ));
        }
        if self.lease < Duration::from_secs(1) || self.lease > MAX_LEASE {
            return Err(Error::Config(format!(
                "lease must be between 1s and 24h (got {:?}); it must outlast a publish, and \
                 a crashed relay's records wait that long",
                self.lease
            )));
        }
        let retry_policy = match self.retry_policy {
            Some(policy) => policy,
            None => Box::new(MaxAttempts::new(self.max_attempts)?),
        };
        Ok(Relay {
            store: self.store,
            sink: self.sink,
            status: Mutex::new(RelayStatus::new(relay_id.clone())),
            relay_id,
            batch_size: self.batch_size,
            poll_interval: self.poll_interval,
            lease: self.lease,
            retry_policy,
            backoff: self.backoff,
        })
    }
}

impl<St, Si> fmt::Debug for RelayBuilder<St, Si> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("relay_id", &self.relay_id)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .field("retry_policy", &self.retry_policy)
            .field("backoff", &self.backoff)
            .finish_non_exhaustive()
    }
}
