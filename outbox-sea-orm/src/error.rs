//! [`Error`], and how database failures are classified.

use std::error::Error as StdError;
use std::fmt;

use outbox_core::StoreError;
use sea_orm::{ConnectionTrait, DbBackend, DbErr, Statement};

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
    Event(outbox_core::Error),

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
         (migration::Migrator, or add migration::Migration to your Migrator)",
        .database.as_deref().unwrap_or("the connected database")
    )]
    MissingTable {
        /// The database that lacks it, when it could be named.
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

impl From<Error> for outbox_core::Error {
    fn from(error: Error) -> Self {
        match error {
            Error::Event(inner) => inner,
            other => outbox_core::Error::Store(other.into()),
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
    /// shutting down, a busy SQLite database.
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

/// What a database error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// It may go away by itself.
    Retriable,
    /// It will not.
    Permanent,
    /// The table (the outbox, presumably) does not exist.
    UndefinedTable,
    /// SQLite's generic `SQLITE_ERROR`: a missing table among others.
    SqliteError,
}

/// Classifies with the driver's error codes, never with message text.
pub(crate) fn classify(error: &DbErr) -> Class {
    match error {
        DbErr::ConnectionAcquire(_) => Class::Retriable,
        #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => classify_sqlx(e),
        // SeaORM's own connection errors ("Disconnected", a pool that went
        // away); nothing better to go by than the variant.
        DbErr::Conn(_) => Class::Retriable,
        _ => Class::Permanent,
    }
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn classify_sqlx(error: &sea_orm::sqlx::Error) -> Class {
    use sea_orm::sqlx::Error as E;
    match error {
        E::Io(_) | E::PoolTimedOut | E::WorkerCrashed => Class::Retriable,
        E::Database(db) => classify_database(db.as_ref()),
        _ => Class::Permanent,
    }
}

#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn classify_database(error: &dyn sea_orm::sqlx::error::DatabaseError) -> Class {
    #[cfg(feature = "sqlite")]
    use sea_orm::sqlx::error::DatabaseError as _;
    #[cfg(feature = "postgres")]
    if let Some(pg) = error.try_downcast_ref::<sea_orm::sqlx::postgres::PgDatabaseError>() {
        return postgres_class(pg.code());
    }
    #[cfg(feature = "mysql")]
    if let Some(my) = error.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return mysql_class(my.number());
    }
    #[cfg(feature = "sqlite")]
    if let Some(lite) = error.try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>() {
        // sqlx exposes the extended result code only through `code()`.
        let code = lite.code().and_then(|c| c.parse::<i32>().ok()).unwrap_or(1);
        return sqlite_class(code);
    }
    let _ = error;
    Class::Permanent
}

/// PostgreSQL SQLSTATE codes.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) fn postgres_class(sqlstate: &str) -> Class {
    match sqlstate {
        "42P01" => Class::UndefinedTable,
        // serialization_failure, deadlock_detected, lock_not_available,
        // statement_completion_unknown, query_canceled (statement timeout)
        "40001" | "40P01" | "55P03" | "40003" | "57014" => Class::Retriable,
        // connection exceptions; admin, crash and startup shutdowns;
        // insufficient resources (too many connections, out of memory)
        s if s.starts_with("08") || s.starts_with("57P") || s.starts_with("53") => Class::Retriable,
        _ => Class::Permanent,
    }
}

/// MySQL and MariaDB error numbers.
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn mysql_class(number: u16) -> Class {
    match number {
        1146 => Class::UndefinedTable,
        // deadlock, lock wait timeout, too many connections, server
        // shutdown, connection killed (MariaDB), server gone away, lost
        // connection, query interrupted
        1213 | 1205 | 1040 | 1053 | 1927 | 2006 | 2013 | 1317 => Class::Retriable,
        _ => Class::Permanent,
    }
}

/// SQLite result codes (extended codes carry the primary in the low byte).
#[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
pub(crate) fn sqlite_class(code: i32) -> Class {
    match code & 0xff {
        // SQLITE_BUSY, SQLITE_LOCKED
        5 | 6 => Class::Retriable,
        // SQLITE_ERROR: "no such table" has no code of its own.
        1 => Class::SqliteError,
        _ => Class::Permanent,
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
    fn codes_are_classified() {
        assert_eq!(postgres_class("42P01"), Class::UndefinedTable);
        assert_eq!(postgres_class("40P01"), Class::Retriable);
        assert_eq!(postgres_class("08006"), Class::Retriable);
        assert_eq!(postgres_class("57P01"), Class::Retriable);
        assert_eq!(postgres_class("23505"), Class::Permanent);
        assert_eq!(mysql_class(1146), Class::UndefinedTable);
        assert_eq!(mysql_class(1213), Class::Retriable);
        assert_eq!(mysql_class(1062), Class::Permanent);
        assert_eq!(sqlite_class(5), Class::Retriable);
        assert_eq!(sqlite_class(517), Class::Retriable, "SQLITE_BUSY_SNAPSHOT");
        assert_eq!(sqlite_class(1), Class::SqliteError);
        assert_eq!(
            sqlite_class(2067),
            Class::Permanent,
            "SQLITE_CONSTRAINT_UNIQUE"
        );
    }

    #[test]
    fn pool_exhaustion_is_retriable() {
        let error = DbError::from(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout));
        assert!(error.is_retriable());
        // Shown once: the inner message, and no source repeating it.
        assert_eq!(error.to_string(), "Connection pool timed out");
        assert!(error.source().is_none());
    }

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
        assert!(text.contains("migration::Migrator"), "{text}");
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
