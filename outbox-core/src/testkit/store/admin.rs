//! Store conformance: the operator's side, [`OutboxAdmin`](crate::OutboxAdmin):
//! dead letters, purges, statistics, lookups.

use std::time::Duration;

use chrono::{TimeDelta, Utc};
use uuid::Uuid;

use super::{TestStore, claim, dead, enqueue, ids, kept, secs};
use crate::testkit::{record, record_on};
use crate::{DeadFilter, DeadLetter, RecordRef, Settlement, Status, TopicStats};

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
    assert_eq!(
        (stats.pending, stats.published, stats.dead),
        (3, kept(&store, 1), 0)
    );
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
    // Without a history, publishing deleted them already: nothing else
    // goes.
    assert_eq!(
        store.purge_published(cutoff, 2).await.unwrap(),
        kept(&store, 5)
    );
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
        (2, 1, kept(&store, 1), 1)
    );
    // The old record was published; the oldest pending is a newer one.
    let oldest = stats.oldest_pending_at.expect("two records pending");
    assert!(oldest > old.created_at + TimeDelta::minutes(4));
    assert!(stats.oldest_pending_age(now + TimeDelta::seconds(10)) >= Duration::from_secs(9));
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
    if store.keeps_published() {
        let by_id = by_id.expect("the published record is found by id");
        assert_eq!(by_id.event_id, stored[0].event_id);
        assert_eq!(by_id.status, Status::Published);
    } else {
        assert_eq!(by_id, None, "publishing deleted the record");
    }
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
    assert_eq!(
        store.purge_published_batch(cutoff, 2).await.unwrap(),
        kept(&store, 2)
    );
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
    if store.keeps_published() {
        assert_eq!(
            left,
            ids(&stored[..3]),
            "the two published first (ids 4 and 3) are gone; the pending one stays"
        );
    } else {
        assert_eq!(left, ids(&stored[..1]), "only the pending one is left");
    }
    let stats = store.stats(Utc::now()).await.unwrap();
    assert_eq!((stats.pending, stats.published), (1, kept(&store, 2)));
    let past = Utc::now() - TimeDelta::hours(1);
    assert_eq!(store.purge_published_batch(past, 10).await.unwrap(), 0);
}
