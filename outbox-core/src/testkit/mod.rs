//! The store conformance suite: the behaviour every
//! [`OutboxStore`](crate::OutboxStore) and [`OutboxAdmin`](crate::OutboxAdmin)
//! must show, run by the in-memory store here and by every
//! database backend of `outbox-sea-orm`. The sink conformance suite is in
//! [`sink`]; the crash-point explorer in [`explore`]; records for tests
//! are made by [`record`], [`record_on`] and [`batch`].
//!
//! ```ignore
//! async fn store() -> Option<(MyStore, MyGuard)> { /* a fresh, empty store */ }
//! outbox_engine::store_conformance_tests!(store);
//! ```
//!
//! [`store_conformance_tests!`](crate::store_conformance_tests) expands to
//! one `#[tokio::test]` per case, so the calling crate needs `tokio` with
//! the `macros` and `rt-multi-thread` features. The factory returns a fresh,
//! empty store and a guard that lives as long as the test (a database that
//! is dropped with it, or `()`), or `None` to skip the case (a server that
//! cannot be reached outside CI: say so loudly before returning `None`).
//! Each case is also a public function here, to run on its own.

pub mod explore;
mod records;
pub mod sink;
mod store;

pub use self::records::{batch, record, record_on};
pub use self::store::*;
