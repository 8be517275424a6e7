//! The in-memory store passes the store conformance suite.

use outbox_core::InMemoryStore;

async fn store() -> Option<(InMemoryStore, ())> {
    Some((InMemoryStore::new(), ()))
}

outbox_core::store_conformance_tests!(store);
