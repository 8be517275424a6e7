//! Store conformance: what a claim returns, leases, and renewals.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use chrono::{TimeDelta, Utc};

use super::{TestStore, claim, close, enqueue, enqueue_keys, ids, kept, secs};
use crate::testkit::record;
use crate::{NewRecord, OutboxRecord, Status};

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
    assert_eq!(
        store.stats(Utc::now()).await.unwrap().published,
        kept(&store, 2)
    );
}

/// The ids of `records` of `key`, in their order.
fn key_ids(key: &str, records: &[OutboxRecord]) -> Vec<i64> {
    records
        .iter()
        .filter(|r| r.key.as_deref() == Some(key))
        .map(|r| r.id)
        .collect()
}

/// A large claim takes every available record up to its limit, a prefix
/// of each key, whether its keys have one record each (a store that reads
/// a few keys deep first must then read more keys) or many.
pub async fn a_large_claim_takes_from_many_keys_and_from_deep_ones<S: TestStore>(store: S) {
    let mut keys: Vec<(String, u32)> = (0..300).map(|n| (format!("one{n}"), n)).collect();
    for n in 0..400 {
        keys.push((format!("deep{}", n % 50), 300 + n));
    }
    let pairs: Vec<(&str, u32)> = keys.iter().map(|(k, n)| (k.as_str(), *n)).collect();
    let stored = enqueue_keys(&store, &pairs).await;
    let first = claim(&store, "a", 300).await;
    assert_eq!(first.len(), 300, "the claim stopped short of its limit");
    // Settled, so that the rest of the keys it touched is claimable.
    assert_eq!(store.mark_published("a", &ids(&first)).await.unwrap(), 300);
    let second = claim(&store, "b", 400).await;
    assert_eq!(second.len(), 400, "the claim stopped short of its limit");
    let mut all: Vec<i64> = ids(&first).into_iter().chain(ids(&second)).collect();
    all.sort_unstable();
    assert_eq!(all, ids(&stored), "every record once");
    // Each claim took a prefix of what was left of each key it touched.
    for (key, _) in &keys {
        let all = key_ids(key, &stored);
        let (taken_first, mut taken_second) = (key_ids(key, &first), key_ids(key, &second));
        assert_eq!(
            taken_first,
            all[..taken_first.len()],
            "not a prefix of {key}"
        );
        taken_second.sort_unstable();
        assert_eq!(
            taken_second,
            all[taken_first.len()..],
            "not the rest of {key}"
        );
    }
    assert!(claim(&store, "c", 10).await.is_empty());
}

/// One claim takes, of each key, the earliest pending records: never a
/// later record of a key without the earlier ones.
pub async fn claims_take_a_prefix_of_each_key<S: TestStore>(store: S) {
    let stored = enqueue_keys(&store, &[("k", 1), ("k", 2), ("l", 3), ("k", 4)]).await;
    let first = claim(&store, "a", 2).await;
    assert_eq!(first.len(), 2);
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
        (0, kept(&store, u64::from(KEYS * PER_KEY)))
    );
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
