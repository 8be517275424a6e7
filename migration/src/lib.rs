//! The `outbox` table for [`sea-orm-migration`](sea_orm_migration).
//!
//! - [`Migration`]: creates the `outbox` table and its indexes, with column
//!   types per database (PostgreSQL, MySQL/MariaDB, SQLite); its `down`
//!   drops the table.
//! - [`KeyHeads`]: adds `outbox_keys`, the heads of the keys with pending
//!   records, which the claim reads instead of the records behind blocked
//!   keys ([`m20261201_000001_key_heads`]).
//! - [`migrations`]: both, in order.
//! - [`Inbox`]: the consumer's `inbox` table (`outbox_sea_orm::inbox`),
//!   for services that consume outbox events; not part of
//!   [`migrations`] ([`inbox_migrations`]).
//! - [`migrate`]: applies them apart from a service's own migrations,
//!   recorded in `outbox_migrations`; [`Migrator`] is the same as a
//!   `MigratorTrait`.
//!
//! Most services have a `Migrator` already; add the outbox migrations to
//! it, all of them ([`migrations`]), after your own:
//!
//! ```
//! use sea_orm_migration::prelude::*;
//!
//! pub struct Migrator;
//!
//! #[async_trait::async_trait]
//! impl MigratorTrait for Migrator {
//!     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
//!         let mut migrations: Vec<Box<dyn MigrationTrait>> = vec![
//!             // ... your own migrations ...
//!         ];
//!         migrations.extend(outbox_migration::migrations());
//!         migrations
//!     }
//! }
//! ```
//!
//! Or leave your `Migrator` alone and apply the outbox migrations apart,
//! with [`migrate`] at start-up or `outbox migrate` (the `outbox-cli`
//! crate): they record them in a table of their own, `outbox_migrations`
//! ([`MIGRATION_TABLE`]), so your `Migrator` never meets a version it does
//! not know. Both ways work on one database, in either order, and you can
//! switch from one to the other: each migration creates only what does not
//! exist yet, and [`migrate`] takes over the outbox's rows from
//! `seaql_migrations` when a service stops listing the outbox migrations.
//! This crate's command line runs [`Migrator`] (sea-orm-migration's
//! commands, recorded in `outbox_migrations` too):
//!
//! ```text
//! DATABASE_URL=postgres://postgres@127.0.0.1/app cargo run -p outbox-migration --features cli -- up
//! ```
//!
//! # Feature flags
//!
//! - `cli`: the `outbox-migration` binary (sea-orm-migration's command line
//!   with tokio, rustls and the PostgreSQL, MySQL/MariaDB and SQLite
//!   drivers). Without it the library enables no async runtime, TLS stack
//!   or database driver: the application's own `sea-orm` features decide.

#[cfg(feature = "migrations")]
pub use sea_orm_migration::prelude::*;

#[cfg(feature = "migrations")]
mod existing;
#[cfg(feature = "migrations")]
mod m20261128_000001_create_outbox_table;
#[cfg(feature = "migrations")]
pub mod m20261201_000001_key_heads;
#[cfg(feature = "migrations")]
pub mod m20261202_000001_inbox;
#[cfg(feature = "migrations")]
mod run;
mod tables;

#[cfg(feature = "migrations")]
pub use m20261128_000001_create_outbox_table::Migration;
#[cfg(feature = "migrations")]
pub use m20261201_000001_key_heads::Migration as KeyHeads;
#[cfg(feature = "migrations")]
pub use m20261202_000001_inbox::Migration as Inbox;
#[cfg(feature = "migrations")]
pub use run::*;
pub use tables::{InvalidName, MAX_SCHEMA_NAME, MAX_TABLE_NAME, Tables};
