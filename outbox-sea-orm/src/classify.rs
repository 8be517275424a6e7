//! How database failures are classified: with the driver's error codes
//! (SQLSTATE, MySQL error numbers, SQLite result codes), never with
//! message text.

use sea_orm::DbErr;

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
///
/// The codes are read through sqlx's `DatabaseError` trait, which every
/// driver implements, not by downcasting to a driver's own type: SeaORM's
/// driver features are unified across the build, so the connection may be
/// of a database whose feature this crate was built without (the
/// application enabled `sqlx-postgres` itself and calls
/// [`SeaOrmStore::new`](crate::SeaOrmStore::new)).
pub(crate) fn classify(error: &DbErr) -> Class {
    match error {
        DbErr::ConnectionAcquire(_) => Class::Retriable,
        DbErr::Conn(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Exec(sea_orm::RuntimeErr::SqlxError(e))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(e)) => driver::classify_sqlx(e),
        // SeaORM's own connection errors ("Disconnected", a pool that went
        // away); nothing better to go by than the variant.
        DbErr::Conn(_) => Class::Retriable,
        _ => Class::Permanent,
    }
}

/// Whether the statement lost a conflict with another transaction: a
/// deadlock or a serialization failure (SQLSTATE 40001 or 40P01, MySQL's
/// 1213). The whole transaction can be run again at once.
pub(crate) fn is_conflict(error: &DbErr) -> bool {
    match error {
        DbErr::Exec(sea_orm::RuntimeErr::SqlxError(error))
        | DbErr::Query(sea_orm::RuntimeErr::SqlxError(error)) => match &**error {
            sea_orm::sqlx::Error::Database(db) => {
                matches!(db.code().as_deref(), Some("40001" | "40P01"))
            }
            _ => false,
        },
        _ => false,
    }
}

/// What sqlx reports, read the same way for every driver.
mod driver {
    use sea_orm::sqlx::Error as SqlxError;
    use sea_orm::sqlx::error::DatabaseError;

    use super::Class;
    use super::codes::{code_class, mysql_number_in};

    pub(super) fn classify_sqlx(error: &SqlxError) -> Class {
        match error {
            SqlxError::Io(_) | SqlxError::PoolTimedOut | SqlxError::WorkerCrashed => {
                Class::Retriable
            }
            SqlxError::Database(db) => classify_database(db.as_ref()),
            _ => Class::Permanent,
        }
    }

    fn classify_database(error: &dyn DatabaseError) -> Class {
        let code = error.code();
        let code = code.as_deref();
        code_class(code, mysql_number(error, code))
    }

    /// The MySQL/MariaDB error number, which sqlx's trait does not give:
    /// from the driver's own type when this crate's `mysql` feature is on,
    /// else from the number the driver writes before the SQLSTATE.
    fn mysql_number(error: &dyn DatabaseError, code: Option<&str>) -> Option<u16> {
        #[cfg(feature = "mysql")]
        if let Some(my) = error.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
            return Some(my.number());
        }
        mysql_number_in(&error.to_string(), code)
    }
}

/// The tables of codes, apart from sqlx so they can be tested without a
/// server or a driver.
mod codes {
    use super::Class;

    /// Classifies what sqlx's `DatabaseError::code()` gives, with the MySQL or
    /// MariaDB error number when there is one.
    ///
    /// PostgreSQL and MySQL/MariaDB give a five-character SQLSTATE; SQLite
    /// gives its extended result code in decimal (`"5"`, `"517"`, `"2067"`),
    /// which has at most four digits (the largest is 8714). The SQLSTATE
    /// classes the servers use mean the same on both, so one table serves
    /// both; MySQL's numbers go first, for the many errors it reports under
    /// the generic `HY000`.
    pub(crate) fn code_class(code: Option<&str>, mysql_number: Option<u16>) -> Class {
        if let Some(class) = mysql_number.and_then(mysql_class) {
            return class;
        }
        match code {
            Some(sqlstate) if sqlstate.len() == 5 => sqlstate_class(sqlstate),
            Some(code) => code.parse().map_or(Class::Permanent, sqlite_class),
            None => Class::Permanent,
        }
    }

    /// SQLSTATE codes, from PostgreSQL and from MySQL/MariaDB.
    pub(crate) fn sqlstate_class(sqlstate: &str) -> Class {
        match sqlstate {
            // undefined_table (PostgreSQL); MySQL's 1146, no such table
            "42P01" | "42S02" => Class::UndefinedTable,
            // serialization_failure, and MySQL's deadlock (1213);
            // deadlock_detected; statement_completion_unknown
            "40001" | "40P01" | "40003" => Class::Retriable,
            // lock_not_available (NOWAIT, lock_timeout); query_canceled
            // (statement_timeout)
            "55P03" | "57014" => Class::Retriable,
            // read_only_sql_transaction (MySQL's 1792): a writer that became a
            // replica in a failover; the next connection finds the new one
            "25006" => Class::Retriable,
            // admin_shutdown, crash_shutdown, cannot_connect_now,
            // idle_session_timeout (not 57P04, database_dropped)
            "57P01" | "57P02" | "57P03" | "57P05" => Class::Retriable,
            // MySQL/MariaDB: query interrupted (1317), connection killed
            // (1927), max_statement_time exceeded (1969)
            "70100" => Class::Retriable,
            // connection exceptions (MySQL: 08S01 lost or server shutdown,
            // 08004 too many connections); insufficient resources (too many
            // connections, out of memory, disk full)
            s if s.starts_with("08") || s.starts_with("53") => Class::Retriable,
            _ => Class::Permanent,
        }
    }

    /// MySQL and MariaDB error numbers, for what their SQLSTATE does not say;
    /// `None` leaves it to the SQLSTATE.
    pub(crate) fn mysql_class(number: u16) -> Option<Class> {
        match number {
            // no such table
            1146 => Some(Class::UndefinedTable),
            // deadlock, lock wait timeout; query interrupted,
            // max_execution_time (MySQL) or max_statement_time (MariaDB)
            // exceeded
            1213 | 1205 | 1317 | 3024 | 1969 => Some(Class::Retriable),
            // too many connections, too many of this user's; server shutdown;
            // connection killed (MariaDB); disconnected for inactivity (MySQL);
            // server gone away, lost connection (client codes)
            1040 | 1203 | 1053 | 1927 | 4031 | 2006 | 2013 => Some(Class::Retriable),
            // --read-only or --super-read-only (1290, which other options
            // share, none of which the outbox's statements meet), a read-only
            // transaction (1792): a writer that became a replica in a failover
            1290 | 1792 => Some(Class::Retriable),
            // a statement larger than max_allowed_packet (SQLSTATE 08S01, a
            // connection class, yet the same statement fails every time)
            1153 => Some(Class::Permanent),
            _ => None,
        }
    }

    /// SQLite result codes (extended codes carry the primary in the low byte).
    pub(crate) fn sqlite_class(code: i32) -> Class {
        match code & 0xff {
            // SQLITE_BUSY, SQLITE_LOCKED
            5 | 6 => Class::Retriable,
            // SQLITE_ERROR: "no such table" has no code of its own.
            1 => Class::SqliteError,
            _ => Class::Permanent,
        }
    }

    /// The error number sqlx's MySQL driver writes first when it displays an
    /// error, `1205 (HY000): Lock wait timeout exceeded; ...`, or `2013: ...`
    /// without a SQLSTATE. Only that structured prefix is read, and only when
    /// the SQLSTATE in it is `code`, so no other driver's message is taken for
    /// one; the server's message itself is never looked at.
    pub(crate) fn mysql_number_in(display: &str, code: Option<&str>) -> Option<u16> {
        let end = display.find(|c: char| !c.is_ascii_digit())?;
        let (number, rest) = display.split_at(end);
        let follows = match code {
            Some(code) => rest
                .strip_prefix(" (")
                .and_then(|rest| rest.strip_prefix(code))
                .is_some_and(|rest| rest.starts_with("): ")),
            None => rest.starts_with(": "),
        };
        if follows { number.parse().ok() } else { None }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as StdError;
    use std::fmt;

    use super::codes::{code_class, mysql_class, mysql_number_in, sqlite_class, sqlstate_class};
    use super::*;
    use crate::error::DbError;

    #[test]
    fn sqlstates_are_classified() {
        for missing in ["42P01", "42S02"] {
            assert_eq!(sqlstate_class(missing), Class::UndefinedTable, "{missing}");
        }
        for retriable in [
            "40001", "40P01", "40003", "55P03", "57014", "25006", "57P01", "57P02", "57P03",
            "57P05", "08000", "08006", "08S01", "08004", "53000", "53300", "70100",
        ] {
            assert_eq!(sqlstate_class(retriable), Class::Retriable, "{retriable}");
        }
        // unique violation, database dropped, a rollback for a constraint,
        // insufficient privilege, MySQL's generic state on its own
        for permanent in ["23505", "57P04", "40002", "42501", "HY000"] {
            assert_eq!(sqlstate_class(permanent), Class::Permanent, "{permanent}");
        }
    }

    #[test]
    fn mysql_numbers_are_classified() {
        assert_eq!(mysql_class(1146), Some(Class::UndefinedTable));
        for retriable in [
            1213, 1205, 1317, 3024, 1969, 1040, 1203, 1053, 1927, 4031, 2006, 2013, 1290, 1792,
        ] {
            assert_eq!(
                mysql_class(retriable),
                Some(Class::Retriable),
                "{retriable}"
            );
        }
        // a packet over max_allowed_packet: the same statement fails again
        assert_eq!(mysql_class(1153), Some(Class::Permanent));
        // duplicate entry, data too long: left to the SQLSTATE
        assert_eq!(mysql_class(1062), None);
        assert_eq!(mysql_class(1406), None);
    }

    #[test]
    fn sqlite_codes_are_classified() {
        assert_eq!(sqlite_class(5), Class::Retriable, "SQLITE_BUSY");
        assert_eq!(sqlite_class(517), Class::Retriable, "SQLITE_BUSY_SNAPSHOT");
        assert_eq!(sqlite_class(6), Class::Retriable, "SQLITE_LOCKED");
        assert_eq!(
            sqlite_class(262),
            Class::Retriable,
            "SQLITE_LOCKED_SHAREDCACHE"
        );
        assert_eq!(sqlite_class(1), Class::SqliteError);
        assert_eq!(
            sqlite_class(2067),
            Class::Permanent,
            "SQLITE_CONSTRAINT_UNIQUE"
        );
        assert_eq!(sqlite_class(14), Class::Permanent, "SQLITE_CANTOPEN");
    }

    #[test]
    fn codes_are_classified_whatever_the_driver() {
        // PostgreSQL
        assert_eq!(code_class(Some("40P01"), None), Class::Retriable);
        assert_eq!(code_class(Some("25006"), None), Class::Retriable);
        assert_eq!(code_class(Some("42P01"), None), Class::UndefinedTable);
        assert_eq!(code_class(Some("23505"), None), Class::Permanent);
        // MySQL/MariaDB: the number where the SQLSTATE is generic
        assert_eq!(code_class(Some("40001"), Some(1213)), Class::Retriable);
        assert_eq!(code_class(Some("40001"), None), Class::Retriable);
        assert_eq!(code_class(Some("HY000"), Some(1205)), Class::Retriable);
        assert_eq!(code_class(Some("HY000"), Some(1290)), Class::Retriable);
        assert_eq!(code_class(Some("25006"), Some(1792)), Class::Retriable);
        assert_eq!(code_class(Some("08S01"), Some(1053)), Class::Retriable);
        assert_eq!(code_class(Some("42S02"), Some(1146)), Class::UndefinedTable);
        assert_eq!(code_class(Some("HY000"), Some(1364)), Class::Permanent);
        assert_eq!(code_class(Some("HY000"), None), Class::Permanent);
        assert_eq!(code_class(Some("23000"), Some(1062)), Class::Permanent);
        assert_eq!(code_class(None, Some(2013)), Class::Retriable);
        // SQLite's extended result codes, in decimal
        assert_eq!(code_class(Some("5"), None), Class::Retriable);
        assert_eq!(code_class(Some("517"), None), Class::Retriable);
        assert_eq!(code_class(Some("1"), None), Class::SqliteError);
        assert_eq!(code_class(Some("2067"), None), Class::Permanent);
        // A numeric SQLSTATE whose low byte would read as SQLITE_BUSY.
        assert_eq!(code_class(Some("42501"), None), Class::Permanent);
        assert_eq!(code_class(None, None), Class::Permanent);
    }

    #[test]
    fn the_mysql_number_is_read_from_the_drivers_prefix_only() {
        let lock_wait = "1205 (HY000): Lock wait timeout exceeded; try restarting transaction";
        assert_eq!(mysql_number_in(lock_wait, Some("HY000")), Some(1205));
        assert_eq!(mysql_number_in("2013: Lost connection", None), Some(2013));
        // Another SQLSTATE than the error's, or none where one is due.
        assert_eq!(mysql_number_in(lock_wait, Some("40001")), None);
        assert_eq!(mysql_number_in(lock_wait, None), None);
        // PostgreSQL's and SQLite's messages.
        assert_eq!(mysql_number_in("deadlock detected", Some("40P01")), None);
        assert_eq!(mysql_number_in("database is locked", Some("5")), None);
        assert_eq!(mysql_number_in("1205", Some("HY000")), None);
        assert_eq!(
            mysql_number_in("99999 (HY000): too big", Some("HY000")),
            None
        );
    }

    /// A database error of a driver this crate knows nothing of: only what
    /// sqlx's trait offers.
    mod any_driver {
        use std::borrow::Cow;
        use std::sync::Arc;

        use sea_orm::RuntimeErr;
        use sea_orm::sqlx::error::{DatabaseError, ErrorKind};

        use super::*;

        #[derive(Debug)]
        struct Reported {
            code: Option<&'static str>,
            display: &'static str,
        }

        impl fmt::Display for Reported {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.display)
            }
        }

        impl StdError for Reported {}

        impl DatabaseError for Reported {
            fn message(&self) -> &str {
                self.display
            }

            fn code(&self) -> Option<Cow<'_, str>> {
                self.code.map(Cow::Borrowed)
            }

            fn as_error(&self) -> &(dyn StdError + Send + Sync + 'static) {
                self
            }

            fn as_error_mut(&mut self) -> &mut (dyn StdError + Send + Sync + 'static) {
                self
            }

            fn into_error(self: Box<Self>) -> Box<dyn StdError + Send + Sync + 'static> {
                self
            }

            fn kind(&self) -> ErrorKind {
                ErrorKind::Other
            }
        }

        fn failed(code: Option<&'static str>, display: &'static str) -> DbErr {
            let error = sea_orm::sqlx::Error::Database(Box::new(Reported { code, display }));
            DbErr::Exec(RuntimeErr::SqlxError(Arc::new(error)))
        }

        #[test]
        fn an_unknown_drivers_error_is_classified_by_its_codes() {
            let retriable = [
                failed(Some("40P01"), "deadlock detected"),
                failed(Some("40001"), "could not serialize access"),
                failed(
                    Some("25006"),
                    "cannot execute INSERT in a read-only transaction",
                ),
                failed(
                    Some("40001"),
                    "1213 (40001): Deadlock found when trying to get lock",
                ),
                failed(
                    Some("HY000"),
                    "1205 (HY000): Lock wait timeout exceeded; try restarting transaction",
                ),
                failed(
                    Some("HY000"),
                    "1290 (HY000): The MariaDB server is running with the --read-only option",
                ),
                failed(
                    Some("25006"),
                    "1792 (25006): Cannot execute statement in a READ ONLY transaction.",
                ),
                failed(Some("5"), "database is locked"),
                failed(Some("517"), "database is locked"),
            ];
            for error in retriable {
                assert_eq!(classify(&error), Class::Retriable, "{error}");
                assert!(DbError::from(error).is_retriable());
            }
            let permanent = [
                failed(
                    Some("23505"),
                    "duplicate key value violates unique constraint",
                ),
                failed(
                    Some("23000"),
                    "1062 (23000): Duplicate entry '1' for key 'PRIMARY'",
                ),
                failed(
                    Some("HY000"),
                    "1364 (HY000): Field 'x' doesn't have a default value",
                ),
                failed(Some("2067"), "UNIQUE constraint failed: outbox.event_id"),
            ];
            for error in permanent {
                assert_eq!(classify(&error), Class::Permanent, "{error}");
                assert!(!DbError::from(error).is_retriable());
            }
            assert_eq!(
                classify(&failed(Some("42P01"), "relation \"outbox\" does not exist")),
                Class::UndefinedTable
            );
            assert_eq!(
                classify(&failed(
                    Some("42S02"),
                    "1146 (42S02): Table 'app.outbox' doesn't exist"
                )),
                Class::UndefinedTable
            );
            assert_eq!(
                classify(&failed(Some("1"), "no such table: outbox")),
                Class::SqliteError
            );
        }
    }

    #[test]
    fn pool_exhaustion_is_retriable() {
        let error = DbError::from(DbErr::ConnectionAcquire(sea_orm::ConnAcquireErr::Timeout));
        assert!(error.is_retriable());
        // Shown once: the inner message, and no source repeating it.
        assert_eq!(error.to_string(), "Connection pool timed out");
        assert!(error.source().is_none());
    }
}
