//! In-memory test doubles: [`InMemoryStore`] and [`InMemorySink`].

mod sink;
mod store;

pub use sink::{FailureKind, InMemorySink};
pub use store::{InMemoryStore, OpenWrite};
