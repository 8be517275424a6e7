use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;

use super::settlement::SettlementPolicy;
use super::{Chores, Relay, RelayStatus, Wakeup};
use crate::clock::{Clock, SystemClock};
use crate::retry::{Backoff, ExponentialBackoff, MaxAttempts, RetryForever, RetryPolicy};
use crate::{Error, OutboxAdmin, OutboxStore, Sink};

/// [`RelayBuilder::batch_size`]'s default.
const DEFAULT_BATCH_SIZE: usize = 500;

/// [`RelayBuilder::max_in_flight`]'s default, in batches.
const DEFAULT_BATCHES_IN_FLIGHT: usize = 2;

/// The longest lease [`RelayBuilder::lease`] accepts.
const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);

/// The longest relay id: its claim tokens (`<id>#<n>`) fit `locked_by`
/// (255 characters).
const MAX_RELAY_ID: usize = 200;

/// What a dead record does to the later records of its key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeadKeyPolicy {
    /// The dead record holds its key: later records wait until an operator
    /// requeues it (it is then published first) or discards it. Per-key
    /// order is kept. The default.
    #[default]
    Hold,
    /// Later records of the key flow past the dead record; a requeued dead
    /// record then arrives after them.
    Skip,
}

/// Configures a [`Relay`]; made by [`Relay::builder`], checked by
/// [`build`](RelayBuilder::build).
pub struct RelayBuilder<St, Si> {
    store: St,
    sink: Si,
    relay_id: Option<String>,
    batch_size: usize,
    max_in_flight: Option<usize>,
    poll_interval: Duration,
    lease: Duration,
    wakeup: Option<Wakeup>,
    max_attempts: Option<u32>,
    retry_policy: Option<Box<dyn RetryPolicy>>,
    backoff: Box<dyn Backoff>,
    dead_key_policy: DeadKeyPolicy,
    clock: Box<dyn Clock>,
    chores: Chores,
    housekeeping: Option<Duration>,
}

/// How often [`Relay::run`] runs the store's housekeeping by default.
const DEFAULT_HOUSEKEEPING: Duration = Duration::from_secs(10);

impl<St: OutboxStore, Si: Sink> RelayBuilder<St, Si> {
    pub(super) fn new(store: St, sink: Si) -> Self {
        Self {
            store,
            sink,
            relay_id: None,
            batch_size: DEFAULT_BATCH_SIZE,
            max_in_flight: None,
            poll_interval: Duration::from_millis(500),
            lease: Duration::from_secs(30),
            wakeup: None,
            max_attempts: None,
            retry_policy: None,
            backoff: Box::new(ExponentialBackoff::default()),
            dead_key_policy: DeadKeyPolicy::default(),
            clock: Box::new(SystemClock),
            chores: Chores::default(),
            housekeeping: Some(DEFAULT_HOUSEKEEPING),
        }
    }

    /// How often [`Relay::run`] runs the store's housekeeping
    /// ([`OutboxStore::housekeep`]: the SQL store vacuums its tables on
    /// PostgreSQL, so the room settled records leave is used again even
    /// where autovacuum does not run), or `None` for never. Default: 10 s.
    /// Must be greater than zero.
    #[must_use]
    pub fn housekeeping_interval(mut self, every: Option<Duration>) -> Self {
        self.housekeeping = every;
        self
    }

    /// The id written to the records this relay leases. Default: `relay-`
    /// and a fresh UUIDv7, unique per relay. Must not be empty.
    #[must_use]
    pub fn relay_id(mut self, id: impl Into<String>) -> Self {
        self.relay_id = Some(id.into());
        self
    }

    /// The most records claimed at once, as one batch. Default: 500. Must
    /// be at least 1.
    #[must_use]
    pub fn batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size;
        self
    }

    /// The most records [`Relay::run`] has in flight (claimed and not yet
    /// settled) at once, over all its batches: the next batch is claimed
    /// while earlier ones are published and settled, once there is room
    /// for half a batch, and asks for no more than there is room for, so
    /// the database and the broker round trips overlap, and records that
    /// are slow to publish take up only their own room. Default: twice the
    /// batch size (1,000 with the default batch). Must be at least 1; with
    /// the batch size, batches overlap by half a batch at most.
    #[must_use]
    pub fn max_in_flight(mut self, records: usize) -> Self {
        self.max_in_flight = Some(records);
        self
    }

    /// The signal that wakes the relay when records are committed in this
    /// process (see [`Wakeup`]). Default: a signal of its own, which
    /// [`Relay::wakeup`] returns.
    #[must_use]
    pub fn wakeup(mut self, wakeup: Wakeup) -> Self {
        self.wakeup = Some(wakeup);
        self
    }

    /// The longest wait between claims when the outbox is empty (the relay
    /// polls sooner right after it found work, see [`Relay::run`]), and
    /// the first pause after a failure. Default: 500 ms. Must be greater
    /// than zero.
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

    /// A limit on retriable failures: after `max_attempts` failed attempts
    /// a record goes to dead letters (the [`MaxAttempts`] policy). Default:
    /// none ([`RetryForever`]): a retriable failure never makes a record
    /// dead, however long an outage lasts. At least 1. Ignored when
    /// [`retry_policy`](Self::retry_policy) is set.
    #[must_use]
    pub fn max_attempts(mut self, max_attempts: u32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Decides whether a retriable failure is retried. Default:
    /// [`RetryForever`], or [`MaxAttempts`] when
    /// [`max_attempts`](Self::max_attempts) is set.
    #[must_use]
    pub fn retry_policy(mut self, policy: impl RetryPolicy + 'static) -> Self {
        self.retry_policy = Some(Box::new(policy));
        self
    }

    /// What a dead record does to the later records of its key. Default:
    /// [`DeadKeyPolicy::Hold`].
    #[must_use]
    pub fn dead_key_policy(mut self, policy: DeadKeyPolicy) -> Self {
        self.dead_key_policy = policy;
        self
    }

    /// The clock of the relay's own reports: [`RelayStatus`] times and the
    /// publish-lag histogram. Leases, availability and backoff never use
    /// it: they follow the store's clock (the database's). Default: the
    /// system clock.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Box::new(clock);
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

    /// How often [`Relay::run`] purges published records when
    /// [`retain_published`](Self::retain_published) is set. Default: 60 s.
    /// Must be greater than zero.
    #[must_use]
    pub fn purge_interval(mut self, interval: Duration) -> Self {
        self.chores.purge_every = interval;
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
        if relay_id.chars().count() > MAX_RELAY_ID {
            return Err(Error::Config(format!(
                "relay id must be at most {MAX_RELAY_ID} characters (got {}): its claim \
                 tokens are stored in the outbox's locked_by column",
                relay_id.chars().count()
            )));
        }
        if self.batch_size == 0 {
            return Err(Error::Config("batch size must be at least 1".into()));
        }
        let max_in_flight = self
            .max_in_flight
            .unwrap_or(self.batch_size.saturating_mul(DEFAULT_BATCHES_IN_FLIGHT));
        if max_in_flight == 0 {
            return Err(Error::Config(
                "the most records in flight must be at least 1".into(),
            ));
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
        if self.housekeeping.is_some_and(|every| every.is_zero()) {
            return Err(Error::Config(
                "housekeeping interval must be greater than zero".into(),
            ));
        }
        if self.chores.purge_every.is_zero() {
            return Err(Error::Config(
                "purge interval must be greater than zero".into(),
            ));
        }
        if self
            .chores
            .backlog_every
            .is_some_and(|every| every.is_zero())
        {
            return Err(Error::Config(
                "backlog report interval must be greater than zero".into(),
            ));
        }
        let retry_policy: Box<dyn RetryPolicy> = match (self.retry_policy, self.max_attempts) {
            (Some(policy), _) => policy,
            (None, Some(max)) => Box::new(MaxAttempts::new(max)?),
            (None, None) => Box::new(RetryForever),
        };
        Ok(Relay {
            store: self.store,
            sink: self.sink,
            status: Mutex::new(RelayStatus::new(relay_id.clone())),
            relay_id,
            batch_size: self.batch_size,
            max_in_flight,
            poll_interval: self.poll_interval,
            lease: self.lease,
            wakeup: self.wakeup.unwrap_or_default(),
            policy: SettlementPolicy {
                retry_policy,
                backoff: self.backoff,
                dead_key_policy: self.dead_key_policy,
            },
            clock: self.clock,
            chores: self.chores,
            housekeeping: self.housekeeping,
            claims: Default::default(),
            in_flight: Default::default(),
            room: Default::default(),
            stopping: Default::default(),
        })
    }
}

/// Settings that need the store's [`OutboxAdmin`] side too.
impl<St: OutboxStore + OutboxAdmin + Clone + 'static, Si: Sink> RelayBuilder<St, Si> {
    /// Keeps published records for `period`, then deletes them: while
    /// [`Relay::run`] runs, every [`purge_interval`](Self::purge_interval)
    /// it deletes those published before `period` ago in batches of 1,000
    /// records, one short transaction each with a pause between them, so
    /// the purge never holds locks long enough to slow claims or writers;
    /// then it tidies the store ([`OutboxAdmin::tidy`]). Several relays
    /// may purge at once. Default: off (published records stay until
    /// something purges them, such as `outbox purge`).
    #[must_use]
    pub fn retain_published(mut self, period: Duration) -> Self {
        self.chores.admin = Some(Arc::new(self.store.clone()));
        self.chores.retain = Some(period);
        self
    }

    /// Reports the backlog through the `metrics` facade every `every` while
    /// [`Relay::run`] runs: the gauges `outbox_pending_records`,
    /// `outbox_dead_records` and `outbox_oldest_pending_age_seconds` per
    /// `topic`, and `outbox_held_records` and `outbox_leased_records`
    /// ([`OutboxAdmin::stats`]). Default: off. Every relay that reports
    /// reports the same figures: aggregate them with `max`, not `sum`.
    #[must_use]
    pub fn report_backlog(mut self, every: Duration) -> Self {
        self.chores.admin = Some(Arc::new(self.store.clone()));
        self.chores.backlog_every = Some(every);
        self
    }
}

impl<St, Si> fmt::Debug for RelayBuilder<St, Si> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("relay_id", &self.relay_id)
            .field("batch_size", &self.batch_size)
            .field("max_in_flight", &self.max_in_flight)
            .field("poll_interval", &self.poll_interval)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .field("retry_policy", &self.retry_policy)
            .field("backoff", &self.backoff)
            .field("dead_key_policy", &self.dead_key_policy)
            .field("clock", &self.clock)
            .field("chores", &self.chores)
            .field("housekeeping", &self.housekeeping)
            .finish_non_exhaustive()
    }
}
