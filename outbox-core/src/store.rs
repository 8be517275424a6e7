//! The storage side: [`OutboxStore`] for the relay, [`OutboxAdmin`] for
//! operators.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::record::{NewRecord, OutboxRecord};

/// What a relay asks of [`OutboxStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRequest {
    /// The relay's id, written to `locked_by`; later calls only touch
    /// records still leased to it.
    pub owner: String,
    /// The most records to claim.
    pub limit: usize,
    /// How long the claim holds: past `now + lease` another relay may take
    /// the records over.
    pub lease: Duration,
    /// The relay's clock. Records available after `now`, or leased until
    /// after `now`, are not claimable.
    pub now: DateTime<Utc>,
}

impl ClaimRequest {
    /// When the lease of this claim ends.
    pub fn lease_until(&self) -> DateTime<Utc> {
        chrono::Duration::from_std(self.lease)
            .ok()
            .and_then(|lease| self.now.checked_add_signed(lease))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// A failed record to try again at `retry_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// The record.
    pub id: i64,
    /// The failure, stored as `last_error`.
    pub error: String,
    /// When it becomes available again.
    pub retry_at: DateTime<Utc>,
}

/// A failed record to move to dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The record.
    pub id: i64,
    /// The failure, stored as `last_error`.
    pub error: String,
}

/// The durable queue the relay works from.
///
/// # The claim contract
///
/// [`claim`](OutboxStore::claim) returns, in `id` order, up to `limit`
/// pending records that are available (`available_at <= now`) and not
/// leased (`locked_until` unset or before `now`), and leases them to
/// `owner` until `now + lease`. Per-key order: a record is claimable only
/// if every earlier pending record of its key is claimed in the same call,
/// so a record never overtakes an earlier one of its key that is in
/// backoff, leased by another relay, or still failing, while records of
/// other keys flow. Concurrent claimers get disjoint records.
///
/// The other methods touch only records still leased to `owner`, and return
/// how many they changed: a relay whose lease ran out and was taken over
/// changes nothing.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Writes records outside any business transaction (adapters also offer
    /// an `enqueue` that joins the caller's transaction).
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError>;

    /// Claims a batch under a lease; see the trait docs.
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError>;

    /// Marks records published and clears their lease.
    async fn mark_published(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError>;

    /// Counts a failed attempt, stores the error, clears the lease and makes
    /// each record available again at its `retry_at`.
    async fn schedule_retry(&self, owner: &str, retries: &[Retry]) -> Result<u64, StoreError>;

    /// Counts a failed attempt, stores the error and moves records to dead.
    async fn mark_dead(&self, owner: &str, dead: &[DeadLetter]) -> Result<u64, StoreError>;

    /// Clears the lease of records without counting an attempt, so they are
    /// claimable again at once (on shutdown, or when held back behind a
    /// failed record of their key).
    async fn release(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError>;
}

/// Counts of an outbox, for operators and health checks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Pending records (including leased and in backoff).
    pub pending: u64,
    /// Pending records under a lease that has not run out.
    pub leased: u64,
    /// Published records not yet purged.
    pub published: u64,
    /// Dead records.
    pub dead: u64,
    /// When the oldest pending record was enqueued.
    pub oldest_pending_at: Option<DateTime<Utc>>,
}

impl OutboxStats {
    /// How long the oldest pending record has waited at `now` (zero when
    /// nothing is pending).
    pub fn oldest_pending_age(&self, now: DateTime<Utc>) -> Duration {
        self.oldest_pending_at
            .and_then(|at| (now - at).to_std().ok())
            .unwrap_or_default()
    }
}

/// Operations for people and housekeeping jobs, apart from the relay's.
#[async_trait]
pub trait OutboxAdmin: Send + Sync {
    /// Dead records in `id` order, `limit` at most, starting after
    /// `after_id` (pass the last id seen to page).
    async fn list_dead(
        &self,
        after_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<OutboxRecord>, StoreError>;

    /// Moves one dead record back to pending, available now, with its
    /// attempts reset (its last error is kept). Returns whether the record
    /// was dead.
    async fn requeue(&self, id: i64) -> Result<bool, StoreError>;

    /// Moves every dead record back to pending, as [`requeue`](Self::requeue)
    /// does; returns how many.
    async fn requeue_all(&self) -> Result<u64, StoreError>;

    /// Deletes published records published before `before`, `batch_size`
    /// rows per statement (so no statement holds many locks), until none is
    /// left; returns how many.
    async fn purge_published(
        &self,
        before: DateTime<Utc>,
        batch_size: usize,
    ) -> Result<u64, StoreError>;

    /// Counts by status, leases held at `now`, and the oldest pending
    /// record.
    async fn stats(&self, now: DateTime<Utc>) -> Result<OutboxStats, StoreError>;
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
            async fn mark_published(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
                (**self).mark_published(owner, ids).await
            }
            async fn schedule_retry(&self, owner: &str, retries: &[Retry]) -> Result<u64, StoreError> {
                (**self).schedule_retry(owner, retries).await
            }
            async fn mark_dead(&self, owner: &str, dead: &[DeadLetter]) -> Result<u64, StoreError> {
                (**self).mark_dead(owner, dead).await
            }
            async fn release(&self, owner: &str, ids: &[i64]) -> Result<u64, StoreError> {
                (**self).release(owner, ids).await
            }
        }
    )*};
}

forward_store!(Box, Arc);

/// Proves that [`OutboxStore`] and [`OutboxAdmin`] are object safe.
#[allow(dead_code)]
fn assert_object_safe(_: Box<dyn OutboxStore>, _: Box<dyn OutboxAdmin>) {}
