//! Store conformance: a writer's open transaction holds up neither
//! claims nor settlements.

use std::time::Duration;

use super::{OpenTransaction, TestStore, claim, dead, enqueue, enqueue_keys, ids, secs};
use crate::testkit::record;
use crate::{NewRecord, OutboxRecord, RecordRef, Settlement, Status};

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
    let first = enqueue_keys(&store, &[("a", 1), ("b", 1), ("c", 1)]).await;
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
