//! Cross-crate suites of the outbox; the tests are under `tests/`.
//!
//! The library holds what the fault-injection suites share:
//!
//! - [`ledger`]: writers that commit business changes with events (some
//!   rolled back on purpose) and record what they committed, in what
//!   order per key; the broker and a consumer that reads back what the
//!   relays published; the check of the log against the promises.
//! - [`faults`]: a store and a sink that wrap the real ones and crash or
//!   fail at chosen points, for relays run in this process.
//!
//! The README's examples are compiled and run here too.
#![doc = include_str!("../README.md")]

pub mod faults;
pub mod ledger;
