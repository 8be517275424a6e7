//! The database: its URL, and a store over it with errors that say what
//! to do.

use std::time::Duration;

use anyhow::Context;
use outbox_sea_orm::{Error as StoreError, SeaOrmStore, Tables};
use sea_orm::ConnectOptions;

use crate::Global;

/// The database URL, or a usage error that says where it comes from.
pub(crate) fn database_url(global: &Global) -> anyhow::Result<String> {
    match global.database_url.as_deref().map(str::trim) {
        Some(url) if !url.is_empty() => Ok(url.to_owned()),
        _ => crate::usage_error(
            "no database: pass --database-url or set DATABASE_URL (postgres://user@host/db, \
             mysql://user@host/db or sqlite://FILE)",
        ),
    }
}

/// The tables' names from `--schema`, `--outbox-table`, `--keys-table`
/// and `--inbox-table`, or a usage error that says what is wrong.
pub(crate) fn tables(global: &Global) -> anyhow::Result<Tables> {
    let named = || -> Result<Tables, outbox_sea_orm::InvalidName> {
        let mut tables = Tables::default()
            .with_outbox(global.outbox_table.trim())?
            .with_inbox(global.inbox_table.trim())?;
        if let Some(keys) = &global.keys_table {
            tables = tables.with_keys(keys.trim())?;
        }
        if let Some(schema) = &global.schema {
            tables = tables.schema(schema.trim())?;
        }
        Ok(tables)
    };
    match named() {
        Ok(tables) => Ok(tables),
        Err(error) => crate::usage_error(format!(
            "{error} (--schema, --outbox-table, --keys-table, --inbox-table)"
        )),
    }
}

/// Connection options for a command: a small pool that fails fast when
/// the server is down.
pub(crate) fn options(url: &str, max_connections: u32) -> ConnectOptions {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    options
}

/// A store over the outbox tables at `url`, checked.
pub(crate) async fn store(
    url: &str,
    tables: &Tables,
    max_connections: u32,
) -> anyhow::Result<SeaOrmStore> {
    SeaOrmStore::connect_with_tables(options(url, max_connections), tables)
        .await
        .map_err(|error| explain(error, url))
}

/// The store's error, with the command line's own fix where it has one.
pub(crate) fn explain(error: StoreError, url: &str) -> anyhow::Error {
    match error {
        StoreError::MissingTable { .. } | StoreError::OutdatedTable { .. } => anyhow::anyhow!(
            "{}; the outbox tables are missing or outdated: run `outbox migrate` against this \
             database (with relays stopped)",
            outbox_sea_orm::redact_url(url)
        ),
        error => anyhow::Error::new(error),
    }
}

/// Parses a period such as `7d`, `12h`, `30s` or `500ms`.
pub(crate) fn period(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        format!("`{text}` is not a period ({error}); write it as 7d, 12h, 30m, 30s or 500ms")
    })
}

/// Adds context naming the database to a store error.
pub(crate) trait StoreContext<T> {
    fn doing(self, what: &'static str) -> anyhow::Result<T>;
}

impl<T> StoreContext<T> for Result<T, outbox_engine::StoreError> {
    fn doing(self, what: &'static str) -> anyhow::Result<T> {
        self.map_err(anyhow::Error::new).context(what)
    }
}
