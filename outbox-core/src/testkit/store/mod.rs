//! The store conformance suite (see [`testkit`](crate::testkit)): what a
//! store must be to run it, the macro that runs it, and the helpers its
//! cases share; the cases, by subject, in the files beside this one.

mod admin;
mod claims;
mod keys;
mod settle;
mod writers;

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

pub use self::admin::{
    a_purge_batch_deletes_the_oldest_published_first, dead_letters_are_filtered_by_topic_and_key,
    dead_letters_are_listed_and_requeued, purge_removes_old_published_in_batches,
    records_are_found_by_id_and_event_id, requeue_all_revives_every_dead_record,
    stats_count_by_status, stats_count_by_topic_and_held_records,
};
pub use self::claims::{
    a_large_claim_takes_from_many_keys_and_from_deep_ones, claims_only_available_records,
    claims_pending_records_in_id_order, claims_take_a_prefix_of_each_key,
    concurrent_claimers_get_disjoint_records_in_key_order, enqueue_keeps_every_field,
    expired_lease_is_taken_over, leased_records_are_not_claimed_again,
    renewing_extends_only_the_owners_leases,
};
pub use self::keys::{
    a_dead_record_holds_its_key_until_requeued, a_dead_record_that_does_not_hold_lets_its_key_flow,
    a_delayed_record_holds_its_key_until_due, a_discarded_dead_record_frees_its_key,
    a_key_in_backoff_blocks_only_itself, a_key_leased_elsewhere_blocks_only_itself,
};
pub use self::settle::{
    mark_published_removes_from_claims, only_the_lease_owner_settles,
    release_makes_records_claimable_without_an_attempt, retry_counts_the_attempt_and_waits,
    settle_applies_every_outcome_at_once,
};
pub use self::writers::{
    a_key_a_writer_holds_is_passed_over_and_the_rest_flows, settling_never_waits_for_a_writer,
};

use crate::{
    ClaimRequest, DeadLetter, InMemoryStore, NewRecord, OutboxAdmin, OutboxRecord, OutboxStore,
    ScheduledRetry, StoreError,
};

/// What a store must be to run the suite: a store whose clock a test can
/// move forward.
#[async_trait::async_trait]
pub trait TestStore: OutboxStore + OutboxAdmin + Clone + 'static {
    /// Moves the store's clock (the one its leases, backoff and
    /// availability follow) forward by `by`, for this store and its clones.
    fn advance_clock(&self, by: Duration);

    /// Whether published records stay in the store, marked, until a purge
    /// (a published history), or are deleted as they are published. The
    /// cases expect `published` counts, `find` and purges accordingly.
    fn keeps_published(&self) -> bool {
        true
    }

    /// Begins a writer's transaction that enqueues `records` and stays
    /// open, holding their keys as a business transaction does, until
    /// [`OpenTransaction::commit`]; dropping it rolls back. `None` for a
    /// store whose writers take turns for the whole database (SQLite):
    /// there, an open writer holds up every other writer, the relay's
    /// included, by the database's own design.
    async fn begin_write(
        &self,
        records: &[NewRecord],
    ) -> Result<Option<Box<dyn OpenTransaction>>, StoreError>;
}

/// A writer's transaction left open by [`TestStore::begin_write`]; dropping
/// it rolls back.
#[async_trait::async_trait]
pub trait OpenTransaction: Send + Sync {
    /// Commits it.
    async fn commit(self: Box<Self>) -> Result<(), StoreError>;
}

#[async_trait::async_trait]
impl OpenTransaction for crate::OpenWrite {
    async fn commit(self: Box<Self>) -> Result<(), StoreError> {
        crate::OpenWrite::commit(*self);
        Ok(())
    }
}

#[async_trait::async_trait]
impl TestStore for InMemoryStore {
    fn advance_clock(&self, by: Duration) {
        InMemoryStore::advance_clock(self, by);
    }

    async fn begin_write(
        &self,
        records: &[NewRecord],
    ) -> Result<Option<Box<dyn OpenTransaction>>, StoreError> {
        Ok(Some(Box::new(self.begin(records).await)))
    }
}

/// `n` published records, as the store counts them: `n` where it keeps
/// a published history, none where publishing deletes them.
pub(crate) fn kept<S: TestStore>(store: &S, n: u64) -> u64 {
    if store.keeps_published() { n } else { 0 }
}

/// Expands to one `#[tokio::test]` per conformance case, each calling
/// `$factory().await` for a fresh `Some((store, guard))`, or `None` to skip.
#[macro_export]
macro_rules! store_conformance_tests {
    ($factory:path) => {
        $crate::store_conformance_tests!(@cases $factory;
            enqueue_keeps_every_field,
            claims_pending_records_in_id_order,
            claims_only_available_records,
            leased_records_are_not_claimed_again,
            expired_lease_is_taken_over,
            mark_published_removes_from_claims,
            only_the_lease_owner_settles,
            retry_counts_the_attempt_and_waits,
            dead_letters_are_listed_and_requeued,
            requeue_all_revives_every_dead_record,
            release_makes_records_claimable_without_an_attempt,
            purge_removes_old_published_in_batches,
            stats_count_by_status,
            claims_take_a_prefix_of_each_key,
            a_large_claim_takes_from_many_keys_and_from_deep_ones,
            a_key_in_backoff_blocks_only_itself,
            a_key_leased_elsewhere_blocks_only_itself,
            a_dead_record_holds_its_key_until_requeued,
            a_discarded_dead_record_frees_its_key,
            a_dead_record_that_does_not_hold_lets_its_key_flow,
            a_delayed_record_holds_its_key_until_due,
            settle_applies_every_outcome_at_once,
            concurrent_claimers_get_disjoint_records_in_key_order,
            dead_letters_are_filtered_by_topic_and_key,
            records_are_found_by_id_and_event_id,
            stats_count_by_topic_and_held_records,
            a_purge_batch_deletes_the_oldest_published_first,
            a_key_a_writer_holds_is_passed_over_and_the_rest_flows,
            settling_never_waits_for_a_writer,
            renewing_extends_only_the_owners_leases,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some((store, _guard)) = $factory().await else {
                    return;
                };
                $crate::testkit::$case(store).await;
            }
        )*
    };
}

fn claim_request(owner: &str, limit: usize) -> ClaimRequest {
    ClaimRequest {
        owner: owner.to_owned(),
        limit,
        lease: Duration::from_secs(30),
        dead_holds_key: true,
    }
}

async fn claim<S: TestStore>(store: &S, owner: &str, limit: usize) -> Vec<OutboxRecord> {
    store
        .claim(&claim_request(owner, limit))
        .await
        .expect("claim failed")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn retry(id: i64, error: &str, delay: Duration) -> ScheduledRetry {
    ScheduledRetry {
        id,
        error: error.to_owned(),
        delay,
    }
}

fn dead(id: i64, error: &str, holds_key: bool) -> DeadLetter {
    DeadLetter {
        id,
        error: error.to_owned(),
        holds_key,
    }
}

/// Enqueues a record of each `(key, n)`, in order, and reads them back
/// (see [`enqueue`]).
async fn enqueue_keys<S: TestStore>(store: &S, keys: &[(&str, u32)]) -> Vec<OutboxRecord> {
    let records: Vec<NewRecord> = keys
        .iter()
        .map(|(key, n)| crate::testkit::record(Some(key), *n))
        .collect();
    enqueue(store, &records).await
}

async fn enqueue<S: TestStore>(store: &S, records: &[NewRecord]) -> Vec<OutboxRecord> {
    store.enqueue(records).await.expect("enqueue failed");
    // Read them back through a claim, then release.
    let all = claim(store, "reader", usize::MAX >> 1).await;
    let ids: Vec<i64> = all.iter().map(|r| r.id).collect();
    store.release("reader", &ids).await.expect("release failed");
    let wanted: HashSet<Uuid> = records.iter().map(|r| r.event_id).collect();
    let mut found: Vec<OutboxRecord> = all
        .into_iter()
        .filter(|r| wanted.contains(&r.event_id))
        .collect();
    found.sort_by_key(|r| r.id);
    assert_eq!(
        found.len(),
        records.len(),
        "not every enqueued record was stored"
    );
    found
}

fn ids(records: &[OutboxRecord]) -> Vec<i64> {
    records.iter().map(|r| r.id).collect()
}

fn close(a: DateTime<Utc>, b: DateTime<Utc>) -> bool {
    (a - b).abs() <= TimeDelta::milliseconds(1)
}
