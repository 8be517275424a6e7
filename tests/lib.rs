//! Cross-crate suites of the outbox; the tests are under `tests/`.
//!
//! The README's examples are compiled and run here too.
#![doc = include_str!("../README.md")]
