//! Store conformance: a key's records wait behind its earliest record
//! while that one waits (backoff, a lease, a dead letter, a delay).

use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use super::{TestStore, claim, dead, enqueue, enqueue_keys, ids, retry, secs};
use crate::testkit::record;
use crate::{DeadFilter, OutboxRecord, Settlement};

/// A record in backoff holds back later records of its key, not of others.
pub async fn a_key_in_backoff_blocks_only_itself<S: TestStore>(store: S) {
    let stored = enqueue_keys(&store, &[("k", 1), ("k", 2), ("l", 3)]).await;
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
    let stored = enqueue_keys(&store, &[("k", 1), ("l", 2), ("k", 3), ("l", 4)]).await;
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
