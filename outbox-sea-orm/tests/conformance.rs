//! The store conformance suite of `outbox-engine`, on every backend, and
//! again on tables of other names (a prefix, and a schema on PostgreSQL).

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

mod postgres_named {
    outbox_engine::store_conformance_tests!(super::common::postgres_named_store);
}

mod mysql_named {
    outbox_engine::store_conformance_tests!(super::common::mysql_named_store);
}

mod sqlite_named {
    outbox_engine::store_conformance_tests!(super::common::sqlite_named_store);
}
