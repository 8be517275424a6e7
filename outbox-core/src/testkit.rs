//! The store conformance suite: the behaviour every [`OutboxStore`] and
//! [`OutboxAdmin`] must show, run by the in-memory store here and by every
//! database backend of `outbox-sea-orm`. The sink conformance suite is in
//! [`sink`]; the crash-point explorer in [`explore`].
//!
//! ```ignore
//! async fn store() -> Option<(MyStore, MyGuard)> { /* a fresh, empty store */ }
//! outbox_engine::store_conformance_tests!(store);
//! ```
//!
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to
//! one `#[tokio::test]` per case, so the calling crate needs `tokio` with
//! the `macros` and `rt-multi-thread` features. The factory returns a fresh,
//! empty store and a guard that lives as long as the test (a database that
//! is dropped with it, or `()`), or `None` to skip the case (a server that
//! cannot be reached outside CI: say so loudly before returning `None`). Each case is also a public function here,
//! to run on its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::{
    ClaimRequest, DeadFilter, DeadLetter, InMemoryStore, NewRecord, OutboxAdmin, OutboxRecord,
    OutboxStore, RecordRef, Retry, Settlement, Status, StoreError, TopicStats,
};

pub mod explore;
pub mod sink;

/// What a store must be to run the suite: a store whose clock a test can
/// move forward.
#[async_trait::async_trait]
pub trait TestStore: OutboxStore + OutboxAdmin + Clone + 'static {
    /// Moves the store's clock (the one its leases, backoff and
    /// availability follow) forward by `by`, for this store and its clones.
    fn advance_clock(&self, by: Duration);

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

const TOPIC: &str = "conformance";

/// A record of `key` whose payload carries `n`.
pub fn record(key: Option<&str>, n: u32) -> NewRecord {
    record_on(TOPIC, key, n)
}

/// A record of `topic` and `key` whose payload carries `n`.
pub fn record_on(topic: &str, key: Option<&str>, n: u32) -> NewRecord {
    let now = Utc::now();
    NewRecord {
        event_id: Uuid::now_v7(),
        topic: topic.to_owned(),
        key: key.map(str::to_owned),
        event_type: "ConformanceEvent".to_owned(),
        schema_version: 1,
        payload: format!(r#"{{"n":{n}}}"#),
        headers: BTreeMap::from([("origin".to_owned(), "testkit".to_owned())]),
        created_at: now,
        available_at: now,
    }
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

fn retry(id: i64, error: &str, delay: Duration) -> Retry {
    Retry {
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

/// Every field of a record comes back as enqueued, ids ascend in enqueue
/// order.
pub async fn enqueue_keeps_every_field<S: TestStore>(store: S) {
    let mut first = record(Some("order-1"), 1).with_header("traceparent", "00-abc-def-01");
    first.schema_version = 3;
    let second = record(None, 2);
    let stored = enqueue(&store, &[first.clone(), second.clone()]).await;
    assert!(
        stored[0].id < stored[1].id,
        "ids must ascend in enqueue order"
    );
    for (new, got) in [first, second].iter().zip(&stored) {
        assert_eq!(got.event_id, new.event_id);
        assert_eq!(got.topic, new.topic);
        assert_eq!(got.key, new.key);
        assert_eq!(got.event_type, new.event_type);
        assert_eq!(got.schema_version, new.schema_version);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&got.payload).unwrap(),
            serde_json::from_str::<serde_json::Value>(&new.payload).unwrap()
        );
        assert_eq!(got.headers, new.headers);
        assert_eq!(got.status, Status::Pending);
        assert_eq!(got.attempts, 0);
        assert_eq!(got.last_error, None);
        assert!(close(got.created_at, new.created_at), "created_at changed");
        // A store may stamp availability with its own clock (the
        // database's) at the insert.
        assert!(
            (got.available_at - new.available_at).abs() <= TimeDelta::seconds(5),
            "available_at changed"
        );
    }
}

/// Claims come in id order, bounded by the limit, and leave the rest.
pub async fn claims_pending_records_in_id_order<S: TestStore>(store: S) {
    let stored = enqueue(&store, &(0..5).map(|n| record(None, n)).collect::<Vec<_>>()).await;
    let first = claim(&store, "a", 3).await;
    assert_eq!(ids(&first), ids(&stored[..3]));
    let second = claim(&store, "b", 10).await;
    assert_eq!(ids(&second), ids(&stored[3..]));
    assert!(claim(&store, "c", 10).await.is_empty());
}

/// A record available later (delayed delivery, backoff) waits until then,
/// on the store's clock.
pub async fn claims_only_available_records<S: TestStore>(store: S) {
    let later = Utc::now() + TimeDelta::minutes(10);
    store
        .enqueue(&[record(None, 1).available_at(later)])
        .await
        .unwrap();
    assert!(claim(&store, "a", 10).await.is_empty());
    store.advance_clock(secs(9 * 60));
    assert!(claim(&store, "a", 10).await.is_empty());
    store.advance_clock(secs(61));
    assert_eq!(claim(&store, "a", 10).await.len(), 1);
}

/// A record under a live lease is not claimed by anyone, its owner
/// included.
pub async fn leased_records_are_not_claimed_again<S: TestStore>(store: S) {
    enqueue(&store, &[record(None, 1), record(None, 2)]).await;
    assert_eq!(claim(&store, "a", 10).await.len(), 2);
    store.advance_clock(secs(29));
    assert!(claim(&store, "b", 10).await.is_empty());
    assert!(claim(&store, "a", 10).await.is_empty());
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.leased), (2, 2));
}

/// Past its lease a claim is taken over, and the first owner can no longer
/// settle it.
pub async fn expired_lease_is_taken_over<S: TestStore>(store: S) {
    enqueue(&store, &[record(Some("k"), 1), record(Some("k"), 2)]).await;
    let first = claim(&store, "crashed", 10).await;
    assert_eq!(first.len(), 2);
    store.advance_clock(secs(31));
    let taken = claim(&store, "rescuer", 10).await;
    assert_eq!(
        ids(&taken),
        ids(&first),
        "the rescuer takes over the whole claim"
    );
    assert_eq!(
        store.mark_published("crashed", &ids(&first)).await.unwrap(),
        0
    );
    assert_eq!(
        store.mark_published("rescuer", &ids(&taken)).await.unwrap(),
        2
    );
    assert_eq!(store.stats(Utc::now()).await.unwrap().published, 2);
}

/// Published records are never claimed again.
pub async fn mark_published_removes_from_claims<S: TestStore>(store: S) {
    enqueue(&store, &(0..4).map(|n| record(None, n)).collect::<Vec<_>>()).await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(store.mark_published("a", &ids(&claimed)).await.unwrap(), 4);
    store.advance_clock(secs(3600));
    assert!(claim(&store, "b", 10).await.is_empty());
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published), (0, 4));
}

/// Nothing settles a record leased to someone else, or not leased at all.
pub async fn only_the_lease_owner_settles<S: TestStore>(store: S) {
    let stored = enqueue(&store, &[record(None, 1), record(None, 2)]).await;
    let claimed = claim(&store, "owner", 1).await;
    let leased = claimed[0].id;
    let free = stored[1].id;
    for id in [leased, free] {
        assert_eq!(store.mark_published("thief", &[id]).await.unwrap(), 0);
        let retries = [retry(id, "x", Duration::ZERO)];
        assert_eq!(store.schedule_retry("thief", &retries).await.unwrap(), 0);
        let dead = [dead(id, "x", true)];
        assert_eq!(store.mark_dead("thief", &dead).await.unwrap(), 0);
        assert_eq!(store.release("thief", &[id]).await.unwrap(), 0);
    }
    assert_eq!(
        store.mark_published("owner", &[free]).await.unwrap(),
        0,
        "not leased"
    );
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.leased, stats.dead), (2, 1, 0));
}

/// A retry counts the attempt, keeps the error, and waits for its delay on
/// the store's clock.
pub async fn retry_counts_the_attempt_and_waits<S: TestStore>(store: S) {
    enqueue(&store, &[record(None, 1)]).await;
    let claimed = claim(&store, "a", 10).await;
    let retries = [retry(claimed[0].id, "broker timed out", secs(60))];
    assert_eq!(store.schedule_retry("a", &retries).await.unwrap(), 1);
    store.advance_clock(secs(55));
    assert!(claim(&store, "a", 10).await.is_empty());
    store.advance_clock(secs(6));
    let again = claim(&store, "a", 10).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert_eq!(again[0].last_error.as_deref(), Some("broker timed out"));
}

/// Dead records keep their error, are listed page by page, and a requeued
/// one is claimable at once with its attempts reset.
pub async fn dead_letters_are_listed_and_requeued<S: TestStore>(store: S) {
    enqueue(&store, &(0..3).map(|n| record(None, n)).collect::<Vec<_>>()).await;
    let claimed = claim(&store, "a", 10).await;
    let dead: Vec<DeadLetter> = claimed
        .iter()
        .map(|r| dead(r.id, &format!("too large: {}", r.id), true))
        .collect();
    assert_eq!(store.mark_dead("a", &dead).await.unwrap(), 3);
    store.advance_clock(secs(3600));
    assert!(
        claim(&store, "a", 10).await.is_empty(),
        "dead is not claimable"
    );

    let page = store.list_dead(&DeadFilter::all(), None, 2).await.unwrap();
    assert_eq!(ids(&page), ids(&claimed[..2]));
    let rest = store
        .list_dead(&DeadFilter::all(), Some(page[1].id), 2)
        .await
        .unwrap();
    assert_eq!(ids(&rest), ids(&claimed[2..]));
    assert_eq!(page[0].status, Status::Dead);
    assert_eq!(page[0].attempts, 1);
    assert_eq!(
        page[0].last_error,
        Some(format!("too large: {}", page[0].id))
    );

    assert!(store.requeue(claimed[1].id).await.unwrap());
    assert!(
        !store.requeue(claimed[1].id).await.unwrap(),
        "no longer dead"
    );
    assert!(!store.requeue(i64::MAX).await.unwrap(), "no such record");
    let revived = claim(&store, "b", 10).await;
    assert_eq!(ids(&revived), vec![claimed[1].id]);
    assert_eq!(revived[0].attempts, 0);
    assert_eq!(revived[0].status, Status::Pending);
    assert_eq!(store.stats(Utc::now()).await.unwrap().dead, 2);
}

/// `requeue_all` revives every dead record and nothing else.
pub async fn requeue_all_revives_every_dead_record<S: TestStore>(store: S) {
    let stored = enqueue(
        &store,
        &[
            record(None, 0),
            record(Some("k"), 1),
            record(Some("k"), 2),
            record(None, 3),
        ],
    )
    .await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(ids(&claimed), ids(&stored));
    let dead: Vec<DeadLetter> = claimed[..2]
        .iter()
        .map(|r| dead(r.id, "boom", true))
        .collect();
    let settlement = Settlement {
        published: vec![claimed[3].id],
        dead,
        released: vec![claimed[2].id],
        ..Settlement::default()
    };
    assert_eq!(store.settle("a", &settlement).await.unwrap().changed, 4);
    assert_eq!(store.requeue_all(&DeadFilter::all()).await.unwrap(), 2);
    assert_eq!(store.requeue_all(&DeadFilter::all()).await.unwrap(), 0);
    let revived = claim(&store, "b", 10).await;
    assert_eq!(ids(&revived), ids(&claimed[..3]), "k flows again, in order");
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.dead), (3, 1, 0));
}

/// A released record is claimable at once, with no attempt counted.
pub async fn release_makes_records_claimable_without_an_attempt<S: TestStore>(store: S) {
    enqueue(&store, &[record(Some("k"), 1)]).await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(store.release("a", &ids(&claimed)).await.unwrap(), 1);
    let again = claim(&store, "b", 10).await;
    assert_eq!(ids(&again), ids(&claimed));
    assert_eq!(again[0].attempts, 0);
}

/// Purge deletes published records older than the cutoff, batch by batch,
/// and nothing else.
pub async fn purge_removes_old_published_in_batches<S: TestStore>(store: S) {
    enqueue(&store, &(0..7).map(|n| record(None, n)).collect::<Vec<_>>()).await;
    let claimed = claim(&store, "a", 10).await;
    let settlement = Settlement {
        published: ids(&claimed[..5]),
        dead: vec![dead(claimed[5].id, "x", true)],
        released: vec![claimed[6].id],
        ..Settlement::default()
    };
    assert_eq!(store.settle("a", &settlement).await.unwrap().changed, 7);

    let before_publish = Utc::now() - TimeDelta::hours(1);
    assert_eq!(store.purge_published(before_publish, 2).await.unwrap(), 0);
    let cutoff = Utc::now() + TimeDelta::seconds(1);
    assert_eq!(store.purge_published(cutoff, 2).await.unwrap(), 5);
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published, stats.dead), (1, 0, 1));
}

/// Stats count by status and report the oldest pending record.
pub async fn stats_count_by_status<S: TestStore>(store: S) {
    let empty = store.stats(Utc::now()).await.unwrap();
    assert_eq!(empty, crate::OutboxStats::default());
    assert_eq!(empty.oldest_pending_age(Utc::now()), Duration::ZERO);

    let mut old = record(None, 1);
    old.created_at = Utc::now() - TimeDelta::minutes(5);
    enqueue(
        &store,
        &[
            old.clone(),
            record(None, 2),
            record(None, 3),
            record(None, 4),
        ],
    )
    .await;
    let claimed = claim(&store, "a", 2).await;
    let settlement = Settlement {
        published: vec![claimed[0].id],
        dead: vec![dead(claimed[1].id, "x", true)],
        ..Settlement::default()
    };
    store.settle("a", &settlement).await.unwrap();
    claim(&store, "b", 1).await;
    let now = Utc::now();
    let stats = store.stats(now).await.unwrap();
    assert_eq!(
        (stats.pending, stats.leased, stats.published, stats.dead),
        (2, 1, 1, 1)
    );
    // The old record was published; the oldest pending is a newer one.
    let oldest = stats.oldest_pending_at.expect("two records pending");
    assert!(oldest > old.created_at + TimeDelta::minutes(4));
    assert!(stats.oldest_pending_age(now + TimeDelta::seconds(10)) >= Duration::from_secs(9));
}

/// One claim takes, of each key, the earliest pending records: never a
/// later record of a key without the earlier ones.
pub async fn claims_take_a_prefix_of_each_key<S: TestStore>(store: S) {
    let stored = enqueue(
        &store,
        &[
            record(Some("k"), 1),
            record(Some("k"), 2),
            record(Some("l"), 3),
            record(Some("k"), 4),
        ],
    )
    .await;
    let first = claim(&store, "a", 2).await;
    assert_eq!(first.len(), 2);
    let key_ids = |key: &str, records: &[OutboxRecord]| -> Vec<i64> {
        records
            .iter()
            .filter(|r| r.key.as_deref() == Some(key))
            .map(|r| r.id)
            .collect()
    };
    for key in ["k", "l"] {
        let taken = key_ids(key, &first);
        let all = key_ids(key, &stored);
        assert_eq!(taken, all[..taken.len()], "not a prefix of {key}");
    }
    // What is left of a key waits behind its leased records; the rest flows.
    let second = claim(&store, "b", 10).await;
    for key in ["k", "l"] {
        let leased = !key_ids(key, &first).is_empty();
        assert_eq!(
            key_ids(key, &second).is_empty(),
            leased,
            "{key}: first claim {first:?}, second {second:?}"
        );
    }
}

/// A record in backoff holds back later records of its key, not of others.
pub async fn a_key_in_backoff_blocks_only_itself<S: TestStore>(store: S) {
    let stored = enqueue(
        &store,
        &[
            record(Some("k"), 1),
            record(Some("k"), 2),
            record(Some("l"), 3),
        ],
    )
    .await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(claimed.len(), 3);
    let settlement = Settlement {
        retries: vec![retry(stored[0].id, "timeout", secs(60))],
        released: vec![stored[1].id],
        published: vec![stored[2].id],
        ..Settlement::default()
    };
    store.settle("a", &settlement).await.unwrap();
    store
        .enqueue(&[record(Some("l"), 4), record(None, 5)])
        .await
        .unwrap();

    store.advance_clock(secs(1));
    let flowing = claim(&store, "a", 10).await;
    assert_eq!(
        flowing.len(),
        2,
        "l and the unkeyed record flow: {flowing:?}"
    );
    assert!(flowing.iter().all(|r| r.key.as_deref() != Some("k")));
    store.mark_published("a", &ids(&flowing)).await.unwrap();

    store.advance_clock(secs(60));
    let after_backoff = claim(&store, "a", 10).await;
    assert_eq!(ids(&after_backoff), ids(&stored[..2]), "k resumes in order");
}

/// A record leased by one relay holds back later records of its key from
/// every other relay.
pub async fn a_key_leased_elsewhere_blocks_only_itself<S: TestStore>(store: S) {
    let stored = enqueue(
        &store,
        &[
            record(Some("k"), 1),
            record(Some("l"), 2),
            record(Some("k"), 3),
            record(Some("l"), 4),
        ],
    )
    .await;
    let first = claim(&store, "a", 1).await;
    assert_eq!(ids(&first), vec![stored[0].id]);
    let second = claim(&store, "b", 10).await;
    assert_eq!(ids(&second), vec![stored[1].id, stored[3].id]);
    store.mark_published("a", &ids(&first)).await.unwrap();
    let third = claim(&store, "c", 10).await;
    assert_eq!(ids(&third), vec![stored[2].id]);
}

/// A dead record that holds its key keeps the key's later records back,
/// other keys flow, and once requeued it is published first.
pub async fn a_dead_record_holds_its_key_until_requeued<S: TestStore>(store: S) {
    let stored = enqueue(&store, &[record(Some("k"), 1), record(Some("k"), 2)]).await;
    let first = claim(&store, "a", 1).await;
    store
        .mark_dead("a", &[dead(first[0].id, "too large", true)])
        .await
        .unwrap();
    store.enqueue(&[record(Some("l"), 3)]).await.unwrap();
    store.advance_clock(secs(3600));
    let flowing = claim(&store, "b", 10).await;
    assert_eq!(flowing.len(), 1, "only l flows: {flowing:?}");
    assert_eq!(flowing[0].key.as_deref(), Some("l"));
    assert!(store.requeue(stored[0].id).await.unwrap());
    let resumed = claim(&store, "c", 10).await;
    assert_eq!(
        ids(&resumed),
        ids(&stored),
        "k resumes from its dead record"
    );
}

/// Discarding a dead record that holds its key lets the key's later
/// records flow; the record stays dead, with the discard noted.
pub async fn a_discarded_dead_record_frees_its_key<S: TestStore>(store: S) {
    let stored = enqueue(&store, &[record(Some("k"), 1), record(Some("k"), 2)]).await;
    let first = claim(&store, "a", 1).await;
    store
        .mark_dead("a", &[dead(first[0].id, "too large", true)])
        .await
        .unwrap();
    assert!(claim(&store, "b", 10).await.is_empty());
    assert!(!store.discard(stored[1].id).await.unwrap(), "not dead");
    assert!(store.discard(stored[0].id).await.unwrap());
    assert!(
        !store.discard(stored[0].id).await.unwrap(),
        "holds nothing now"
    );
    let next = claim(&store, "b", 10).await;
    assert_eq!(ids(&next), vec![stored[1].id]);
    let listed = store.list_dead(&DeadFilter::all(), None, 10).await.unwrap();
    assert_eq!(ids(&listed), vec![stored[0].id]);
    let error = listed[0].last_error.as_deref().unwrap_or_default();
    assert!(
        error.contains("discarded") && error.contains("too large"),
        "{error}"
    );
}

/// A dead record that does not hold its key lets the key's later records
/// flow at once.
pub async fn a_dead_record_that_does_not_hold_lets_its_key_flow<S: TestStore>(store: S) {
    let stored = enqueue(&store, &[record(Some("k"), 1), record(Some("k"), 2)]).await;
    let first = claim(&store, "a", 1).await;
    assert!(claim(&store, "b", 10).await.is_empty());
    store
        .mark_dead("a", &[dead(first[0].id, "too large", false)])
        .await
        .unwrap();
    let next = claim(&store, "b", 10).await;
    assert_eq!(ids(&next), vec![stored[1].id]);
    assert!(!store.discard(stored[0].id).await.unwrap(), "holds nothing");
}

/// A delayed record holds its key until it is due: later records of the
/// key wait for it, other keys flow.
pub async fn a_delayed_record_holds_its_key_until_due<S: TestStore>(store: S) {
    let later = Utc::now() + TimeDelta::minutes(5);
    let delayed = record(Some("k"), 1).available_at(later);
    let records = [delayed, record(Some("k"), 2), record(Some("l"), 3)];
    store.enqueue(&records).await.unwrap();
    let event_ids =
        |claimed: &[OutboxRecord]| -> Vec<Uuid> { claimed.iter().map(|r| r.event_id).collect() };
    let now = claim(&store, "a", 10).await;
    assert_eq!(event_ids(&now), vec![records[2].event_id]);
    store.mark_published("a", &ids(&now)).await.unwrap();
    store.advance_clock(secs(301));
    let due = claim(&store, "b", 10).await;
    assert_eq!(
        event_ids(&due),
        vec![records[0].event_id, records[1].event_id]
    );
}

/// One settlement publishes, retries, kills and releases at once, and
/// counts what it changed.
pub async fn settle_applies_every_outcome_at_once<S: TestStore>(store: S) {
    let stored = enqueue(
        &store,
        &[
            record(Some("a"), 1),
            record(Some("b"), 2),
            record(Some("b"), 3),
            record(Some("c"), 4),
            record(Some("d"), 5),
        ],
    )
    .await;
    let claimed = claim(&store, "x", 10).await;
    assert_eq!(claimed.len(), 5);
    let settlement = Settlement {
        published: vec![stored[0].id],
        retries: vec![retry(stored[1].id, "timeout", secs(60))],
        released: vec![stored[2].id],
        dead: vec![dead(stored[3].id, "too large", true)],
    };
    assert_eq!(store.settle("x", &settlement).await.unwrap().changed, 4);
    assert_eq!(
        store.settle("x", &settlement).await.unwrap().changed,
        0,
        "settled"
    );
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!(
        (stats.pending, stats.leased, stats.published, stats.dead),
        (3, 1, 1, 1)
    );
    // b waits for its retry, c is held by its dead record; d is still leased.
    assert!(claim(&store, "y", 10).await.is_empty());
    store.advance_clock(secs(61));
    let next = claim(&store, "y", 10).await;
    assert_eq!(ids(&next), vec![stored[1].id, stored[2].id, stored[4].id]);
}

/// Claimers running at once never share a record, and a record is only
/// claimed once every earlier record of its key is published.
pub async fn concurrent_claimers_get_disjoint_records_in_key_order<S: TestStore>(store: S) {
    const KEYS: u32 = 20;
    const PER_KEY: u32 = 15;
    let records: Vec<NewRecord> = (0..PER_KEY)
        .flat_map(|n| (0..KEYS).map(move |k| (k, n)))
        .map(|(k, n)| record(Some(&format!("key-{k}")), n))
        .collect();
    let stored = enqueue(&store, &records).await;
    let key_of: Arc<HashMap<i64, String>> = Arc::new(
        stored
            .iter()
            .map(|r| (r.id, r.key.clone().unwrap()))
            .collect(),
    );
    let published: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let claims: Arc<Mutex<Vec<i64>>> = Arc::default();

    let mut tasks = Vec::new();
    for claimer in 0..6 {
        let (store, key_of, published, claims) = (
            store.clone(),
            key_of.clone(),
            published.clone(),
            claims.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let owner = format!("claimer-{claimer}");
            let mut idle = 0;
            while idle < 50 {
                let batch = claim(&store, &owner, 7).await;
                if batch.is_empty() {
                    idle += 1;
                    tokio::task::yield_now().await;
                    continue;
                }
                idle = 0;
                let batch_ids = ids(&batch);
                {
                    let done = published.lock().unwrap();
                    for record in &batch {
                        let key = &key_of[&record.id];
                        let earlier_unpublished = key_of.iter().filter(|(id, k)| {
                            *k == key
                                && **id < record.id
                                && !done.contains(id)
                                && !batch_ids.contains(id)
                        });
                        assert_eq!(
                            earlier_unpublished.count(),
                            0,
                            "{owner} claimed record {} of {key} before an earlier one was \
                             published",
                            record.id
                        );
                    }
                }
                claims.lock().unwrap().extend(&batch_ids);
                // Noted before the mark, so a claim that follows the mark
                // always sees it.
                published.lock().unwrap().extend(&batch_ids);
                let marked = store.mark_published(&owner, &batch_ids).await.unwrap();
                assert_eq!(marked, batch_ids.len() as u64);
            }
        }));
    }
    for task in tasks {
        task.await.expect("a claimer failed");
    }
    let mut claimed = claims.lock().unwrap().clone();
    let total = claimed.len();
    claimed.sort_unstable();
    claimed.dedup();
    assert_eq!(claimed.len(), total, "a record was claimed twice");
    assert_eq!(claimed, ids(&stored), "every record was claimed");
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!(
        (stats.pending, stats.published),
        (0, u64::from(KEYS * PER_KEY))
    );
}

/// Dead records are listed and requeued by topic and by key; other dead
/// records stay dead.
pub async fn dead_letters_are_filtered_by_topic_and_key<S: TestStore>(store: S) {
    let stored = enqueue(
        &store,
        &[
            record_on("orders", Some("a"), 0),
            record_on("orders", Some("b"), 1),
            record_on("payments", Some("a"), 2),
            record_on("payments", None, 3),
        ],
    )
    .await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(ids(&claimed), ids(&stored));
    let dead: Vec<DeadLetter> = claimed.iter().map(|r| dead(r.id, "boom", true)).collect();
    assert_eq!(store.mark_dead("a", &dead).await.unwrap(), 4);

    let listed = |filter: DeadFilter| {
        let store = store.clone();
        async move { ids(&store.list_dead(&filter, None, 10).await.unwrap()) }
    };
    assert_eq!(listed(DeadFilter::all()).await, ids(&stored));
    assert_eq!(listed(DeadFilter::topic("orders")).await, ids(&stored[..2]));
    let key_a = DeadFilter {
        topic: None,
        key: Some("a".to_owned()),
    };
    assert_eq!(
        listed(key_a.clone()).await,
        vec![stored[0].id, stored[2].id]
    );
    let payments_a = DeadFilter {
        topic: Some("payments".to_owned()),
        key: Some("a".to_owned()),
    };
    assert_eq!(listed(payments_a).await, vec![stored[2].id]);
    assert!(listed(DeadFilter::topic("nothing")).await.is_empty());

    assert_eq!(
        store
            .requeue_all(&DeadFilter::topic("payments"))
            .await
            .unwrap(),
        2
    );
    assert_eq!(listed(DeadFilter::all()).await, ids(&stored[..2]));
    let revived = claim(&store, "b", 10).await;
    assert_eq!(
        ids(&revived),
        vec![stored[3].id],
        "key a stays held by the dead orders record; the keyless record flows"
    );
    assert_eq!(store.requeue_all(&key_a).await.unwrap(), 1);
    assert_eq!(listed(DeadFilter::all()).await, vec![stored[1].id]);
}

/// `find` returns one record by id or by event id, whatever its status,
/// and `None` for neither.
pub async fn records_are_found_by_id_and_event_id<S: TestStore>(store: S) {
    let stored = enqueue(&store, &[record(Some("k"), 1), record(Some("k"), 2)]).await;
    let claimed = claim(&store, "a", 1).await;
    store.mark_published("a", &ids(&claimed)).await.unwrap();

    let by_id = store.find(RecordRef::Id(stored[0].id)).await.unwrap();
    let by_id = by_id.expect("the published record is found by id");
    assert_eq!(by_id.event_id, stored[0].event_id);
    assert_eq!(by_id.status, Status::Published);
    let by_event = store
        .find(RecordRef::EventId(stored[1].event_id))
        .await
        .unwrap()
        .expect("the pending record is found by event id");
    assert_eq!(by_event.id, stored[1].id);
    assert_eq!(by_event.payload, stored[1].payload);
    assert_eq!(by_event.status, Status::Pending);
    assert!(store.find(RecordRef::Id(i64::MAX)).await.unwrap().is_none());
    assert!(
        store
            .find(RecordRef::EventId(Uuid::now_v7()))
            .await
            .unwrap()
            .is_none()
    );
}

/// Stats count pending and dead records per topic, with each topic's
/// oldest pending record, and the pending records held behind a dead one.
pub async fn stats_count_by_topic_and_held_records<S: TestStore>(store: S) {
    let mut old = record_on("orders", Some("held"), 0);
    old.created_at = Utc::now() - TimeDelta::minutes(10);
    let stored = enqueue(
        &store,
        &[
            old.clone(),
            record_on("orders", Some("held"), 1),
            record_on("orders", Some("held"), 2),
            record_on("orders", Some("free"), 3),
            record_on("payments", None, 4),
        ],
    )
    .await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(ids(&claimed), ids(&stored));
    let settlement = Settlement {
        dead: vec![dead(stored[0].id, "boom", true)],
        released: ids(&stored[1..]),
        ..Settlement::default()
    };
    assert_eq!(store.settle("a", &settlement).await.unwrap().changed, 5);
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.held, stats.dead), (4, 2, 1));
    let topic = |name: &str| -> TopicStats {
        stats
            .topics
            .iter()
            .find(|topic| topic.topic == name)
            .cloned()
            .unwrap_or_else(|| panic!("no stats for topic {name}: {:?}", stats.topics))
    };
    let orders = topic("orders");
    assert_eq!((orders.pending, orders.dead), (3, 1));
    let payments = topic("payments");
    assert_eq!((payments.pending, payments.dead), (1, 0));
    assert_eq!(stats.topics.len(), 2);
    // The dead record is the oldest; the oldest pending ones are newer.
    for topic in [&orders, &payments] {
        let oldest = topic.oldest_pending_at.expect("records pending");
        assert!(oldest > old.created_at + TimeDelta::minutes(9), "{topic:?}");
    }
    assert!(
        payments.oldest_pending_at >= orders.oldest_pending_at,
        "payments' record came last"
    );

    assert!(store.discard(stored[0].id).await.unwrap());
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.held, stats.dead), (4, 0, 1));
}

/// One purge batch deletes at most its limit, the earliest published
/// first, and leaves everything else.
pub async fn a_purge_batch_deletes_the_oldest_published_first<S: TestStore>(store: S) {
    let stored = enqueue(&store, &(0..5).map(|n| record(None, n)).collect::<Vec<_>>()).await;
    // Published in reverse id order, a clock step apart.
    for record in stored[1..].iter().rev() {
        let claimed = claim(&store, "a", 10).await;
        store.mark_published("a", &[record.id]).await.unwrap();
        let rest: Vec<i64> = ids(&claimed)
            .into_iter()
            .filter(|id| *id != record.id)
            .collect();
        store.release("a", &rest).await.unwrap();
        store.advance_clock(secs(1));
    }
    let cutoff = Utc::now() + TimeDelta::hours(1);
    assert_eq!(store.purge_published_batch(cutoff, 2).await.unwrap(), 2);
    let mut left = Vec::new();
    for record in &stored {
        if store
            .find(RecordRef::Id(record.id))
            .await
            .unwrap()
            .is_some()
        {
            left.push(record.id);
        }
    }
    assert_eq!(
        left,
        ids(&stored[..3]),
        "the two published first (ids 4 and 3) are gone; the pending one stays"
    );
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published), (1, 2));
    let past = Utc::now() - TimeDelta::hours(1);
    assert_eq!(store.purge_published_batch(past, 10).await.unwrap(), 0);
}

/// How long a store statement may take before it counts as waiting for a
/// writer's transaction: far more than any statement here needs, far less
/// than forever.
const NO_WAIT: Duration = Duration::from_secs(10);

/// Opens a writer's transaction, or says why the case does not apply.
async fn open_writer<S: TestStore>(
    store: &S,
    records: &[NewRecord],
    case: &str,
) -> Option<Box<dyn OpenTransaction>> {
    let open = tokio::time::timeout(NO_WAIT, store.begin_write(records))
        .await
        .expect("a writer waited for the relay")
        .expect("begin_write failed");
    if open.is_none() {
        eprintln!(
            "{case}: not applicable to this store, whose writers take turns for the whole \
             database"
        );
    }
    open
}

/// Claims, failing when the claim waits for a writer.
async fn claim_without_waiting<S: TestStore>(store: &S, owner: &str) -> Vec<OutboxRecord> {
    tokio::time::timeout(NO_WAIT, claim(store, owner, 100))
        .await
        .expect("the claim waited for a writer's transaction")
}

/// A writer's open transaction holds its key: claims pass the key over,
/// its committed records included (they wait until the writer commits or
/// rolls back), and the other keys flow; after the commit the key's
/// records come in commit order.
pub async fn a_key_a_writer_holds_is_passed_over_and_the_rest_flows<S: TestStore>(store: S) {
    let first = enqueue(&store, &[record(Some("a"), 1), record(Some("b"), 1)]).await;
    let Some(writer) = open_writer(
        &store,
        &[record(Some("a"), 2)],
        "a_key_a_writer_holds_is_passed_over_and_the_rest_flows",
    )
    .await
    else {
        return;
    };
    let claimed = claim_without_waiting(&store, "r").await;
    assert_eq!(ids(&claimed), vec![first[1].id], "only key b flows");
    store.mark_published("r", &ids(&claimed)).await.unwrap();
    writer.commit().await.expect("commit failed");
    let claimed = claim_without_waiting(&store, "r").await;
    assert_eq!(claimed.len(), 2, "key a flows after the commit");
    assert_eq!(claimed[0].id, first[0].id);
    assert_eq!(claimed[1].payload, r#"{"n":2}"#);
}

/// A settlement changes the records of a key a writer holds without
/// waiting for it; only a dead letter that must hold that key is deferred
/// (left pending and leased), and settles once the writer is done.
pub async fn settling_never_waits_for_a_writer<S: TestStore>(store: S) {
    let first = enqueue(
        &store,
        &[
            record(Some("a"), 1),
            record(Some("b"), 1),
            record(Some("c"), 1),
        ],
    )
    .await;
    let claimed = claim(&store, "r", 10).await;
    assert_eq!(claimed.len(), 3);
    let Some(writer) = open_writer(
        &store,
        &[record(Some("a"), 2), record(Some("c"), 2)],
        "settling_never_waits_for_a_writer",
    )
    .await
    else {
        return;
    };
    let settlement = Settlement {
        published: vec![first[0].id, first[1].id],
        dead: vec![dead(first[2].id, "too large", true)],
        ..Settlement::default()
    };
    let settled = tokio::time::timeout(NO_WAIT, store.settle("r", &settlement))
        .await
        .expect("the settlement waited for a writer's transaction")
        .unwrap();
    assert_eq!(settled.changed, 2, "the published records changed");
    assert_eq!(settled.deferred, vec![first[2].id], "the dead letter waits");
    let still = store
        .find(RecordRef::Id(first[2].id))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(still.status, Status::Pending);
    assert_eq!(
        store.renew("r", &[first[2].id], secs(30)).await.unwrap(),
        1,
        "still leased to the batch"
    );
    writer.commit().await.expect("commit failed");
    let settlement = Settlement {
        dead: vec![dead(first[2].id, "too large", true)],
        ..Settlement::default()
    };
    let settled = store.settle("r", &settlement).await.unwrap();
    assert_eq!((settled.changed, settled.deferred.len()), (1, 0));
    store.advance_clock(secs(31));
    let claimed = claim(&store, "r2", 10).await;
    let keys: Vec<Option<&str>> = claimed.iter().map(|r| r.key.as_deref()).collect();
    assert_eq!(keys, vec![Some("a")], "c is held by its dead record");
}

/// A renewal extends the leases still held by its owner, from now.
pub async fn renewing_extends_only_the_owners_leases<S: TestStore>(store: S) {
    let first = enqueue(&store, &[record(Some("a"), 1), record(None, 2)]).await;
    let claimed = claim(&store, "owner", 10).await;
    assert_eq!(claimed.len(), 2);
    store.advance_clock(secs(20));
    assert_eq!(
        store.renew("owner", &ids(&first), secs(30)).await.unwrap(),
        2
    );
    assert_eq!(
        store.renew("thief", &ids(&first), secs(30)).await.unwrap(),
        0
    );
    store.advance_clock(secs(20));
    assert!(
        claim(&store, "other", 10).await.is_empty(),
        "the renewed leases hold past the first lease's end"
    );
    store.advance_clock(secs(11));
    let taken = claim(&store, "other", 10).await;
    assert_eq!(
        ids(&taken),
        ids(&first),
        "taken over once the renewal ran out"
    );
    assert_eq!(
        store.renew("owner", &ids(&first), secs(30)).await.unwrap(),
        0
    );
}
