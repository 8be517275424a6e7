//! [`Error`], what it converts into, and [`DbError`]; [`fail`] turns a
//! failed statement into one, with the classification of database failures
//! in `classify.rs`.

use std::error::Error as StdError;
use std::fmt;

use outbox_engine::StoreError;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

pub(crate) use crate::classify::{Class, classify, is_conflict};

/// Everything that can go wrong in `outbox-sea-orm`.
///
/// [`is_retriable`](Error::is_retriable) says whether doing the same thing
/// again later can succeed (a lost connection, a deadlock, a lock timeout,
/// a busy SQLite database); everything else needs a person.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The event did not serialize to JSON; nothing was written.
    #[error(transparent)]
    Event(outbox_engine::Error),

    /// The event does not fit the outbox table; nothing was written.
    #[error("cannot enqueue event `{event_type}`: {reason}")]
    InvalidEvent {
        /// The event type.
        event_type: String,
        /// What does not fit, and the limit.
        reason: String,
    },

    /// The `outbox` table is missing: the migration has not run.
    #[error(
        "the outbox table does not exist in {}; run the outbox migration \
         (`outbox migrate`, outbox_migration::Migrator, or add outbox_migration::migrations() to your Migrator)",
        .database.as_deref().unwrap_or("the connected database")
    )]
    MissingTable {
        /// The database that lacks it, when it could be named.
        database: Option<String>,
    },

    /// The `outbox` table exists, but a later outbox migration has not run
    /// (the `outbox_keys` table is missing).
    #[error(
        "the outbox tables in {} are from an older version: outbox_keys is missing; run the \
         outbox migrations (`outbox migrate`, outbox_migration::Migrator, or add outbox_migration::migrations() to your \
         Migrator) with the relays stopped",
        .database.as_deref().unwrap_or("the connected database")
    )]
    OutdatedTable {
        /// The database, when it could be named.
        database: Option<String>,
    },

    /// The database URL's scheme is none the store knows.
    #[error(
        "unsupported database URL scheme `{scheme}`: the outbox store supports postgres:// \
         (feature `postgres`, {}), mysql:// for MySQL and MariaDB (feature `mysql`, {}) and \
         sqlite:// (feature `sqlite`, {})",
        enabled(cfg!(feature = "postgres")),
        enabled(cfg!(feature = "mysql")),
        enabled(cfg!(feature = "sqlite"))
    )]
    UnsupportedScheme {
        /// The scheme of the URL (what comes before `:`).
        scheme: String,
    },

    /// The URL names a database whose feature is not enabled.
    #[error(
        "the database URL uses {scheme}, but outbox-sea-orm was built without its `{feature}` \
         feature; enable it: outbox-sea-orm = {{ features = [\"{feature}\"] }}"
    )]
    BackendDisabled {
        /// The scheme, such as `mysql://`.
        scheme: &'static str,
        /// The feature that enables it.
        feature: &'static str,
    },

    /// The store could not connect.
    #[error("cannot connect to the database at {url} (is the server running, and the URL right?)")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// Why.
        #[source]
        source: DbError,
    },

    /// A statement failed.
    #[error("cannot {operation}")]
    Database {
        /// What the store was doing, such as `claim outbox records`.
        operation: &'static str,
        /// Why.
        #[source]
        source: DbError,
    },

    /// A stored row holds a value the outbox does not understand.
    #[error("outbox record {id} is invalid: {reason}")]
    InvalidRow {
        /// The row's id.
        id: i64,
        /// What is wrong with it.
        reason: String,
    },

    /// An argument the store cannot work with.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn enabled(on: bool) -> &'static str {
    if on { "enabled" } else { "not enabled" }
}

impl Error {
    /// Whether doing the same thing again later can succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Error::Connect { source, .. } | Error::Database { source, .. } => source.is_retriable(),
            _ => false,
        }
    }

    /// The database error underneath, if any.
    pub fn db_err(&self) -> Option<&DbErr> {
        match self {
            Error::Connect { source, .. } | Error::Database { source, .. } => {
                Some(source.get_ref())
            }
            _ => None,
        }
    }
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        if error.is_retriable() {
            StoreError::retriable(error)
        } else {
            StoreError::permanent(error)
        }
    }
}

/// For code that must return SeaORM's error: a `?` on `enqueue` inside
/// `db.transaction::<_, _, DbErr>(...)` or in an `ActiveModelBehavior`
/// hook. A failed statement or connection gives back SeaORM's own error,
/// unchanged (its driver error and codes are still there, for the caller's
/// retry logic); any other error (an event that does not serialize or
/// fit, a missing table) becomes [`DbErr::Custom`] with its whole message,
/// causes included.
impl From<Error> for DbErr {
    fn from(error: Error) -> Self {
        match error {
            Error::Connect { source, .. } | Error::Database { source, .. } => source.into_inner(),
            other => DbErr::Custom(outbox_engine::error_chain(&other)),
        }
    }
}

impl From<Error> for outbox_engine::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Event(inner) => inner,
            other => outbox_engine::Error::Store(other.into()),
        }
    }
}

/// A [`DbErr`], shown once in an error report.
///
/// SeaORM's errors repeat their cause: a `DbErr` displays its runtime error
/// and also returns it as its source. This wrapper displays the innermost
/// message and returns no source, so a report names each cause once. The
/// `DbErr` itself is at [`get_ref`](DbError::get_ref).
pub struct DbError(DbErr);

impl DbError {
    /// The SeaORM error.
    pub fn get_ref(&self) -> &DbErr {
        &self.0
    }

    /// The SeaORM error, by value.
    pub fn into_inner(self) -> DbErr {
        self.0
    }

    /// Whether the failure may go away: a lost or refused connection, an
    /// exhausted pool, a deadlock, a lock or statement timeout, a server
    /// shutting down or turned read-only by a failover, a busy SQLite
    /// database.
    pub fn is_retriable(&self) -> bool {
        classify(&self.0) == Class::Retriable
    }
}

impl From<DbErr> for DbError {
    fn from(error: DbErr) -> Self {
        Self(error)
    }
}

impl fmt::Debug for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.source() {
            Some(inner) => fmt::Display::fmt(inner, f),
            None => fmt::Display::fmt(&self.0, f),
        }
    }
}

impl StdError for DbError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.0.source().and_then(StdError::source)
    }
}

/// Turns a failed statement into an [`Error`], telling a missing outbox
/// table apart (on SQLite by looking it up in `sqlite_master`).
pub(crate) async fn fail<C: ConnectionTrait>(
    db: &C,
    operation: &'static str,
    error: DbErr,
) -> Error {
    let missing = match classify(&error) {
        Class::UndefinedTable => true,
        Class::SqliteError => matches!(outbox_table_exists(db).await, Ok(false)),
        Class::Retriable | Class::Permanent => false,
    };
    if missing {
        // On PostgreSQL inside the caller's failed transaction this lookup
        // fails too; the message then says "the connected database".
        let database = database_name(db).await.ok().flatten();
        return Error::MissingTable { database };
    }
    Error::Database {
        operation,
        source: error.into(),
    }
}

async fn outbox_table_exists<C: ConnectionTrait>(db: &C) -> Result<bool, DbErr> {
    let statement = Statement::from_string(
        db.get_database_backend(),
        "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = 'outbox'",
    );
    let row = db.query_one_raw(statement).await?;
    Ok(row
        .map(|r| r.try_get::<i64>("", "n"))
        .transpose()?
        .unwrap_or(0)
        > 0)
}

/// Names the connected database for a person: `PostgreSQL database "app"`.
pub(crate) async fn database_name<C: ConnectionTrait>(db: &C) -> Result<Option<String>, DbErr> {
    let backend = db.get_database_backend();
    let (sql, describe): (&str, fn(String) -> String) = match backend {
        DbBackend::Postgres => ("SELECT current_database() AS name", |name| {
            format!("PostgreSQL database \"{name}\"")
        }),
        DbBackend::MySql => ("SELECT DATABASE() AS name", |name| {
            format!("MySQL/MariaDB database `{name}`")
        }),
        DbBackend::Sqlite => (
            "SELECT file AS name FROM pragma_database_list WHERE name = 'main'",
            |file| {
                if file.is_empty() {
                    "the in-memory SQLite database".to_owned()
                } else {
                    format!("SQLite database {file}")
                }
            },
        ),
        _ => return Ok(None),
    };
    let row = db
        .query_one_raw(Statement::from_string(backend, sql))
        .await?;
    let name: Option<String> = match row {
        Some(row) => row.try_get("", "name")?,
        None => None,
    };
    Ok(name.map(describe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_say_what_to_do() {
        let missing = Error::MissingTable {
            database: Some("PostgreSQL database \"app\"".into()),
        };
        let text = missing.to_string();
        assert!(
            text.contains("does not exist in PostgreSQL database \"app\""),
            "{text}"
        );
        assert!(text.contains("outbox_migration::Migrator"), "{text}");
        assert!(!missing.is_retriable());

        let scheme = Error::UnsupportedScheme {
            scheme: "redis".into(),
        };
        let text = scheme.to_string();
        for word in ["`redis`", "postgres://", "mysql://", "sqlite://"] {
            assert!(text.contains(word), "{text}");
        }
    }

    #[test]
    fn converts_into_seaorms_error_keeping_the_message_and_the_database_error() {
        let invalid = Error::InvalidEvent {
            event_type: "OrderPlaced".into(),
            reason: "the key is longer than 255 characters".into(),
        };
        match DbErr::from(invalid) {
            DbErr::Custom(message) => assert_eq!(
                message,
                "cannot enqueue event `OrderPlaced`: the key is longer than 255 characters"
            ),
            other => panic!("{other:?}"),
        }
        let timeout = Error::Database {
            operation: "write events to the outbox",
            source: DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout).into(),
        };
        assert!(matches!(
            DbErr::from(timeout),
            DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout)
        ));
    }

    #[test]
    fn converts_to_store_errors_by_class() {
        let retriable: StoreError = Error::Database {
            operation: "claim outbox records",
            source: DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout).into(),
        }
        .into();
        assert!(retriable.is_retriable());
        assert_eq!(retriable.to_string(), "cannot claim outbox records");
        assert_eq!(
            retriable.source().unwrap().to_string(),
            "Connection pool timed out"
        );
        let permanent: StoreError = Error::MissingTable { database: None }.into();
        assert!(!permanent.is_retriable());
    }
}
