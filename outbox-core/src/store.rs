//! The storage side: [`OutboxStore`] for the relay, [`OutboxAdmin`] for
//! operators.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use uuid::Uuid;

use crate::error::StoreError;
use crate::record::{NewRecord, OutboxRecord};

/// What a relay asks of [`OutboxStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The claim's token, written to `locked_by`: settling only touches
    /// records still leased under it. A relay makes a new one per claim
    /// (its id and a sequence number), so two claims never settle each
    /// other's records.
    pub owner: String,
    /// The most records to claim.
    pub limit: usize,
    /// How long the claim holds, on the store's clock: after that another
    /// relay may take the records over.
    pub lease: Duration,
    /// Whether a record the store sets aside as dead while claiming (a row
    /// that cannot be read) holds its key, as a failed publish does under
    /// the relay's default [`DeadLetter::holds_key`].
    pub dead_holds_key: bool,
}

/// A failed record scheduled for another attempt after `delay`: an entry
/// of [`Settlement::retries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledRetry {
    /// The record.
    pub id: i64,
    /// The failure, stored as `last_error`.
    pub error: String,
    /// How long until it becomes available again, counted on the store's
    /// clock (the database's), not the relay's.
    pub delay: Duration,
}

/// A failed record to move to dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record.
    pub id: i64,
    /// The failure, stored as `last_error`.
    pub error: String,
    /// Whether the dead record holds its key: later records of the key wait
    /// until an operator requeues or discards it ([`OutboxAdmin`]). When
    /// false they flow past it, and a requeued record arrives after them.
    pub holds_key: bool,
}

/// What became of the records of one claim, settled in one step:
/// [`OutboxStore::settle`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settlement {
    /// Delivered: mark published.
    pub published: Vec<i64>,
    /// Failed, to try again: count an attempt and wait.
    pub retries: Vec<ScheduledRetry>,
    /// Failed for good: count an attempt and move to dead letters.
    pub dead: Vec<DeadLetter>,
    /// Not attempted (held back behind a failed record of their key, or
    /// given back on shutdown): claimable again at once, no attempt counted.
    pub released: Vec<i64>,
}

impl Settlement {
    /// How many records it settles.
    pub fn len(&self) -> usize {
        self.published.len() + self.retries.len() + self.dead.len() + self.released.len()
    }

    /// Whether it settles nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What [`OutboxStore::settle`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Records changed: those still leased under the claim's token.
    pub changed: u64,
    /// Dead letters that must hold their key, left as they were (pending,
    /// still leased) because a writer's transaction holds that key and the
    /// store does not wait for it: settle them again shortly. Empty for a
    /// store without writers' locks.
    pub deferred: Vec<i64>,
}

impl Settled {
    /// `changed` records changed, nothing deferred.
    pub fn changed(changed: u64) -> Self {
        Self {
            changed,
            deferred: Vec::new(),
        }
    }
}

/// The durable queue the relay works from.
///
/// # The claim contract
///
/// [`claim`](OutboxStore::claim) returns, in `id` order, up to `limit`
/// pending records that are available (`available_at` reached) and not
/// leased, and leases them under `owner` for `lease`. Times are the
/// store's: the database's clock, never the relay's, so relays on hosts
/// whose clocks differ neither steal each other's leases nor write leases
/// that have run out.
///
/// Per-key order: a record is claimable only if every earlier pending
/// record of its key is claimed in the same call, so a record never
/// overtakes an earlier one of its key that is in backoff, delayed, leased
/// by another claim, or dead and holding its key; records of other keys
/// flow, and the cost of a claim does not grow with the records waiting
/// behind blocked keys. Concurrent claimers get disjoint records. A row
/// that cannot be read is moved to dead letters with the reason, and the
/// claim goes on without it.
///
/// [`settle`](OutboxStore::settle) touches only records still leased under
/// `owner`, and returns how many it changed: a claim whose lease ran out
/// and was taken over changes nothing.
///
/// # Never waiting for the service
///
/// The relay's statements never wait for a business transaction. Where a
/// writer's transaction holds a key (it enqueued for it and has not
/// committed), a claim passes the key over, and a settlement changes the
/// key's records without waiting for the key: it leaves what needs the key
/// itself (a dead letter that holds it, see [`Settled::deferred`]) for a
/// later settlement, and the key's next records are claimable at the
/// latest when the claim's lease would have ended. Only writers of one key
/// wait for each other, which is what orders their records.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Writes records outside any business transaction (adapters also offer
    /// an `enqueue` that joins the caller's transaction).
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError>;

    /// Claims a batch under a lease; see the trait docs.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError>;

    /// Applies a [`Settlement`] to records leased under `owner`, all or
    /// nothing, and clears their leases, except for the dead letters it
    /// defers ([`Settled::deferred`]). Never waits for a writer's
    /// transaction (see the trait docs).
    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError>;

    /// Extends the lease of the records `ids` still leased under `owner`
    /// to `lease` from now, on the store's clock; returns how many it
    /// extended (fewer when a lease ran out and another claim took the
    /// records over). The relay renews the leases of a batch that takes
    /// longer than a third of its lease.
    async fn renew(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError>;

    /// Housekeeping the relay runs beside its batches, every
    /// [`housekeeping_interval`](crate::RelayBuilder::housekeeping_interval):
    /// reclaims the room that settled records left in the store, where the
    /// store does not do it by itself (the SQL store vacuums its tables on
    /// PostgreSQL). It must never hold up a writer or a claim, and a crash
    /// in the middle of it must lose nothing. The default does nothing.
    async fn housekeep(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Marks records published: a [`settle`](Self::settle) of just that;
    /// returns how many changed.
    async fn mark_published(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
        let settlement = Settlement {
            published: ids.to_vec(),
            ..Settlement::default()
        };
        Ok(self.settle(owner, &settlement).await?.changed)
    }

    /// Counts a failed attempt, stores the error and makes each record
    /// available again after its delay: a [`settle`](Self::settle) of just
    /// that; returns how many changed.
    async fn schedule_retry(
        &self,
        owner: &str,
        retries: &[ScheduledRetry],
    ) -> Result<u64, StoreError> {
        let settlement = Settlement {
            retries: retries.to_vec(),
            ..Settlement::default()
        };
        Ok(self.settle(owner, &settlement).await?.changed)
    }

    /// Counts a failed attempt, stores the error and moves records to dead:
    /// a [`settle`](Self::settle) of just that; returns how many changed
    /// (deferred ones are not).
    async fn mark_dead(&self, owner: &str, dead: &[DeadLetter]) -> Result<u64, StoreError> {
        let settlement = Settlement {
            dead: dead.to_vec(),
            ..Settlement::default()
        };
        Ok(self.settle(owner, &settlement).await?.changed)
    }

    /// Clears the lease of records without counting an attempt, so they are
    /// claimable again at once: a [`settle`](Self::settle) of just that;
    /// returns how many changed.
    async fn release(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
        let settlement = Settlement {
            released: ids.to_vec(),
            ..Settlement::default()
        };
        Ok(self.settle(owner, &settlement).await?.changed)
    }
}

/// Counts of an outbox, for operators and health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Pending records (including leased, in backoff and held).
    pub pending: u64,
    /// Pending records under a lease that has not run out.
    pub leased: u64,
    /// Pending records whose key a dead record holds: they wait for an
    /// operator to requeue or discard it.
    pub held: u64,
    /// Published records not yet purged.
    pub published: u64,
    /// Dead records.
    pub dead: u64,
    /// When the oldest pending record was enqueued.
    pub oldest_pending_at: Option<DateTime<Utc>>,
    /// Pending and dead records per topic, by topic name (topics with
    /// neither are left out).
    pub topics: Vec<TopicStats>,
}

impl OutboxStats {
    /// How long the oldest pending record has waited at `now` (zero when
    /// nothing is pending).
    pub fn oldest_pending_age(&self, now: DateTime<Utc>) -> Duration {
        age(self.oldest_pending_at, now)
    }
}

/// Counts of one topic's records ([`OutboxStats::topics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicStats {
    /// The topic, as stored (before any prefix the sink adds).
    pub topic: String,
    /// Pending records.
    pub pending: u64,
    /// Dead records.
    pub dead: u64,
    /// When the topic's oldest pending record was enqueued.
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

impl TopicStats {
    /// How long the topic's oldest pending record has waited at `now`.
    pub fn oldest_pending_age(&self, now: DateTime<Utc>) -> Duration {
        age(self.oldest_pending_at, now)
    }
}

fn age(since: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Duration {
    since
        .and_then(|at| (now - at).to_std().ok())
        .unwrap_or_default()
}

/// Which dead records an operator's command applies to: all of them, or
/// those of one topic and/or one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    /// Only records of this topic.
    pub topic: Option<String>,
    /// Only records of this key.
    pub key: Option<String>,
}

impl DeadFilter {
    /// Every dead record.
    pub fn all() -> Self {
        Self::default()
    }

    /// The dead records of `topic`.
    pub fn topic(topic: impl Into<String>) -> Self {
        Self {
            topic: Some(topic.into()),
            key: None,
        }
    }

    /// Whether `record` passes the filter (its status aside).
    pub fn matches(&self, record: &OutboxRecord) -> bool {
        self.topic
            .as_ref()
            .is_none_or(|topic| *topic == record.topic)
            && self
                .key
                .as_ref()
                .is_none_or(|key| record.key.as_ref() == Some(key))
    }
}

/// Names one record, by its row id or by its event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordRef {
    /// The `id` column.
    Id(i64),
    /// The event id (`outbox-event-id` on the message).
    EventId(Uuid),
}

impl fmt::Display for RecordRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "id {id}"),
            Self::EventId(event_id) => write!(f, "event id {event_id}"),
        }
    }
}

impl From<i64> for RecordRef {
    fn from(id: i64) -> Self {
        Self::Id(id)
    }
}

impl From<Uuid> for RecordRef {
    fn from(event_id: Uuid) -> Self {
        Self::EventId(event_id)
    }
}

/// Parses a row id (`42`) or an event id (a UUID).
impl FromStr for RecordRef {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if let Ok(id) = text.parse::<i64>() {
            return Ok(Self::Id(id));
        }
        Uuid::parse_str(text).map(Self::EventId).map_err(|_| {
            format!(
                "`{text}` is neither a record id (a number, such as 42) nor an event id (a \
                 UUID, such as 0190b6e4-7a1c-7c3e-9f00-2a4be3e1c0de)"
            )
        })
    }
}

/// Operations for people and housekeeping jobs, apart from the relay's.
#[async_trait]
pub trait OutboxAdmin: Send + Sync {
    /// Dead records that pass `filter`, in `id` order, `limit` at most,
    /// starting after `after_id` (pass the last id seen to page). A row
    /// that cannot be read is listed anyway, with what is wrong in its
    /// last error.
    async fn list_dead(
        &self,
        filter: &DeadFilter,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError>;

    /// One record, whatever its status, by id or event id; `None` when
    /// there is none: never written, purged, or published by a store that
    /// deletes what it publishes (the SQL store's default).
    async fn find(&self, record: RecordRef) -> Result<Option<OutboxRecord>, StoreError>;

    /// Moves one dead record back to pending, available now, with its
    /// attempts reset (its last error is kept); if it held its key, the key
    /// flows again from it. Returns whether the record was dead.
    async fn requeue(&self, id: i64) -> Result<bool, StoreError>;

    /// Moves every dead record that passes `filter` back to pending, as
    /// [`requeue`](Self::requeue) does; returns how many.
    async fn requeue_all(&self, filter: &DeadFilter) -> Result<u64, StoreError>;

    /// Gives up on a dead record for good: it stays in the table as dead,
    /// with the discard noted in its last error, and no longer holds its
    /// key, so the key's later records flow. Returns whether the record was
    /// dead and holding its key (discarding one that holds nothing changes
    /// nothing).
    async fn discard(&self, id: i64) -> Result<bool, StoreError>;

    /// Deletes at most `limit` published records published before `before`,
    /// oldest first, in one short step (one statement and transaction in
    /// the SQL store); returns how many. Fewer than `limit` means none is
    /// left.
    async fn purge_published_batch(
        &self,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64, StoreError>;

    /// Housekeeping after a purge, in batches of `batch_size`: the SQL
    /// store deletes the keys left with nothing pending and registers the
    /// keys of records that another client inserted without one. The
    /// default does nothing.
    async fn tidy(&self, batch_size: usize) -> Result<(), StoreError> {
        let _ = batch_size;
        Ok(())
    }

    /// Deletes published records published before `before`, `batch_size`
    /// at a time ([`purge_published_batch`](Self::purge_published_batch)),
    /// until none is left, then [`tidy`](Self::tidy)s; returns how many
    /// records it deleted.
    async fn purge_published(
        &self,
        before: DateTime<Utc>,
        batch_size: usize,
    ) -> Result<u64, StoreError> {
        if batch_size == 0 {
            return Err(StoreError::permanent("purge batch size must be at least 1"));
        }
        let mut total = 0;
        loop {
            let deleted = self.purge_published_batch(before, batch_size).await?;
            total += deleted;
            if deleted < batch_size as u64 {
                break;
            }
        }
        self.tidy(batch_size).await?;
        Ok(total)
    }

    /// Counts by status and topic, leases held at `now`, records held
    /// behind dead ones, and the oldest pending record. It reads every
    /// pending and dead record (published ones are counted through an
    /// index in the SQL store): cheap next to a relay's work, not free on
    /// a backlog of millions.
    async fn stats(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError>;

    /// The backlog, for gauges read every few seconds on every relay:
    /// [`stats`](Self::stats) without counting the published records
    /// (`published` is 0), so it costs what the pending and dead records
    /// cost, never the published history. The default calls `stats`.
    async fn backlog(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError> {
        self.stats(now).await
    }
}

macro_rules! forward_store {
    ($($wrapper:ident),*) => {$(
        #[async_trait]
        impl<S: OutboxStore + ?Sized> OutboxStore for $wrapper<S> {
            async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
                (**self).enqueue(records).await
            }
            async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
                (**self).claim(request).await
            }
            async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
                (**self).settle(owner, settlement).await
            }
            async fn renew(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
                (**self).renew(owner, ids, lease).await
            }
            async fn housekeep(&self) -> Result<(), StoreError> {
                (**self).housekeep().await
            }
        }
    )*};
}

forward_store!(Box, Arc);

/// Proves that [`OutboxStore`] and [`OutboxAdmin`] are object safe.
#[allow(dead_code)]
fn assert_object_safe(_: Box<dyn OutboxStore>, _: Box<dyn OutboxAdmin>) {}
