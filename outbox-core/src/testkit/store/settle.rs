//! Store conformance: settling a claim's records, by its owner only.

use std::time::Duration;

use chrono::Utc;

use super::{TestStore, claim, dead, enqueue, enqueue_keys, ids, kept, retry, secs};
use crate::Settlement;
use crate::testkit::record;

/// Published records are never claimed again.
pub async fn mark_published_removes_from_claims<S: TestStore>(store: S) {
    enqueue(&store, &(0..4).map(|n| record(None, n)).collect::<Vec<_>>()).await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(store.mark_published("a", &ids(&claimed)).await.unwrap(), 4);
    store.advance_clock(secs(3600));
    assert!(claim(&store, "b", 10).await.is_empty());
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published), (0, kept(&store, 4)));
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

/// A released record is claimable at once, with no attempt counted.
pub async fn release_makes_records_claimable_without_an_attempt<S: TestStore>(store: S) {
    enqueue(&store, &[record(Some("k"), 1)]).await;
    let claimed = claim(&store, "a", 10).await;
    assert_eq!(store.release("a", &ids(&claimed)).await.unwrap(), 1);
    let again = claim(&store, "b", 10).await;
    assert_eq!(ids(&again), ids(&claimed));
    assert_eq!(again[0].attempts, 0);
}

/// One settlement publishes, retries, kills and releases at once, and
/// counts what it changed.
pub async fn settle_applies_every_outcome_at_once<S: TestStore>(store: S) {
    let stored = enqueue_keys(&store, &[("a", 1), ("b", 2), ("b", 3), ("c", 4), ("d", 5)]).await;
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
        (3, 1, kept(&store, 1), 1)
    );
    // b waits for its retry, c is held by its dead record; d is still leased.
    assert!(claim(&store, "y", 10).await.is_empty());
    store.advance_clock(secs(61));
    let next = claim(&store, "y", 10).await;
    assert_eq!(ids(&next), vec![stored[1].id, stored[2].id, stored[4].id]);
}
