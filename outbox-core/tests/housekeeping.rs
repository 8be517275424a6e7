//! `Relay::run` runs the store's housekeeping at its interval beside the
//! batches, keeps going when one fails, and never when it is turned off.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use outbox_engine::{
    ClaimRequest, InMemorySink, InMemoryStore, NewRecord, OutboxRecord, OutboxStore, Relay,
    Settled, Settlement, StoreError,
};
use tokio::time::Instant;

/// The in-memory store, counting its housekeeping; every other one fails.
#[derive(Clone, Default)]
struct Counted {
    inner: InMemoryStore,
    housekept: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl OutboxStore for Counted {
    async fn enqueue(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        self.inner.enqueue(records).await
    }
    async fn claim(&self, request: &ClaimRequest) -> Result<Vec<OutboxRecord>, StoreError> {
        self.inner.claim(request).await
    }
    async fn settle(&self, owner: &str, settlement: &Settlement) -> Result<Settled, StoreError> {
        self.inner.settle(owner, settlement).await
    }
    async fn renew(&self, owner: &str, ids: &[i64], lease: Duration) -> Result<u64, StoreError> {
        self.inner.renew(owner, ids, lease).await
    }
    async fn housekeep(&self) -> Result<(), StoreError> {
        let n = self.housekept.fetch_add(1, Ordering::SeqCst);
        if n.is_multiple_of(2) {
            return Err(StoreError::retriable(std::io::Error::other(
                "vacuum failed",
            )));
        }
        Ok(())
    }
}

#[tokio::test]
async fn the_relay_housekeeps_at_its_interval_and_goes_on_after_a_failure() {
    let store = Counted::default();
    let relay = Relay::builder(store.clone(), InMemorySink::new())
        .housekeeping_interval(Some(Duration::from_millis(20)))
        .build()
        .unwrap();
    let housekept = store.housekept.clone();
    relay
        .run(async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            while housekept.load(Ordering::SeqCst) < 4 {
                assert!(Instant::now() < deadline, "housekeeping stopped");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    assert!(store.housekept.load(Ordering::SeqCst) >= 4);
}

#[tokio::test]
async fn no_housekeeping_when_turned_off() {
    let store = Counted::default();
    let relay = Relay::builder(store.clone(), InMemorySink::new())
        .housekeeping_interval(None)
        .poll_interval(Duration::from_millis(5))
        .build()
        .unwrap();
    relay
        .run(tokio::time::sleep(Duration::from_millis(300)))
        .await;
    assert_eq!(store.housekept.load(Ordering::SeqCst), 0);
    let zero = Relay::builder(store, InMemorySink::new())
        .housekeeping_interval(Some(Duration::ZERO))
        .build();
    assert!(
        zero.is_err_and(|e| e.to_string().contains("housekeeping interval")),
        "a zero interval is refused"
    );
}
