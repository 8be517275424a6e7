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
//! - [`Migrator`]: a migrator with just these, for services that keep no
//!   migrations of their own.
//!
//! Most services have a `Migrator` already; add the outbox migrations to
//! it:
//!
//! ```
//! use sea_orm_migration::prelude::*;
//!
//! pub struct Migrator;
//!
//! #[async_trait::async_trait]
//! impl MigratorTrait for Migrator {
//!     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
//!         vec![
//!             // ... your own migrations ...
//!             Box::new(outbox_migration::Migration),
//!         ]
//!     }
//! }
//! ```
//!
//! Or run this crate's [`Migrator`] at start-up
//! (`outbox_migration::Migrator::up(&db, None).await?`), or `outbox migrate`
//! (the `outbox-cli` crate), or this crate's own command line:
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

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_outbox_table;
pub mod m20261201_000001_key_heads;
pub mod m20261202_000001_inbox;

pub use m20261128_000001_create_outbox_table::Migration;
pub use m20261201_000001_key_heads::Migration as KeyHeads;
pub use m20261202_000001_inbox::Migration as Inbox;

/// Every outbox migration, in order: add them to your own `Migrator`.
pub fn migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(Migration), Box::new(KeyHeads)]
}

/// The consumer's inbox migration: add it to your `Migrator` in a service
/// that handles outbox events.
pub fn inbox_migrations() -> Vec<Box<dyn MigrationTrait>> {
    vec![Box::new(Inbox)]
}

/// Runs the outbox migrations, for services without a migrator of their
/// own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        migrations()
    }
}
