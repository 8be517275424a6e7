//! The store conformance suite of `outbox-engine`, on every backend.

#![cfg(all(feature = "postgres", feature = "mysql", feature = "sqlite"))]

mod common;

mod postgres {
    outbox_engine::store_conformance_tests!(super::common::postgres_store);
}

mod mysql {
    outbox_engine::store_conformance_tests!(super::common::mysql_store);
}

mod sqlite_file {
    outbox_engine::store_conformance_tests!(super::common::sqlite_file_store);
}

mod sqlite_memory {
    outbox_engine::store_conformance_tests!(super::common::sqlite_memory_store);
}
