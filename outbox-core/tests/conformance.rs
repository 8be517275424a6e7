//! The in-memory store passes the store conformance suite.

use outbox_engine::InMemoryStore;

async fn store() -> Option<(InMemoryStore, ())> {
    Some((InMemoryStore::new(), ()))
}

outbox_engine::store_conformance_tests!(store);
