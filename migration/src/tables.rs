//! The names of the outbox's tables and indexes: one place, read by the
//! migrations, the store (`outbox-sea-orm`) and the `outbox` command.

use std::fmt;

use sea_orm::DbBackend;
use sea_orm::sea_query::{Alias, IntoTableRef, TableRef};

/// The longest table name: its longest index name, `idx_<name>_key_pending`,
/// stays within PostgreSQL's 63 bytes.
pub const MAX_TABLE_NAME: usize = 47;
/// The longest schema name (PostgreSQL's identifier limit).
pub const MAX_SCHEMA_NAME: usize = 63;

/// The names of the outbox's tables, and the PostgreSQL schema they live
/// in: `outbox`, `outbox_keys` and `inbox` in the connection's default
/// schema unless set otherwise.
///
/// Give the same `Tables` to the migration ([`migrate_tables`](crate::migrate_tables)
/// or [`migrations_for`](crate::migrations_for)), the store
/// (`SeaOrmStore::with_tables`), the writers (`SeaOrmStore::enqueue` and
/// friends), the inbox (`outbox_sea_orm::inbox::Inbox`) and the `outbox`
/// command (`--schema`, `--outbox-table`, `--keys-table`, `--inbox-table`).
/// Two outboxes with different names share a database without seeing each
/// other's records.
///
/// Names are lowercase ASCII letters, digits and `_`, starting with a
/// letter or `_`, at most [`MAX_TABLE_NAME`] characters, so they mean the
/// same on every database without quoting rules getting in the way.
///
/// ```
/// use outbox_migration::Tables;
///
/// let billing = Tables::prefixed("billing_").unwrap().schema("accounts").unwrap();
/// assert_eq!(billing.outbox(), "billing_outbox");
/// assert_eq!(billing.keys(), "billing_outbox_keys");
/// assert_eq!(billing.inbox(), "billing_inbox");
/// assert_eq!(billing.schema_name(), Some("accounts"));
/// assert_eq!(Tables::default().outbox(), "outbox");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tables {
    schema: Option<String>,
    outbox: String,
    keys: String,
    inbox: String,
}

impl Default for Tables {
    fn default() -> Self {
        Self {
            schema: None,
            outbox: "outbox".to_owned(),
            keys: "outbox_keys".to_owned(),
            inbox: "inbox".to_owned(),
        }
    }
}

/// A table or schema name that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidName {
    /// What the name is for: `outbox table`, `schema`, ...
    pub what: &'static str,
    /// The name given.
    pub name: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for InvalidName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} name {:?} cannot be used: {}",
            self.what, self.name, self.reason
        )
    }
}

impl std::error::Error for InvalidName {}

fn checked(what: &'static str, name: &str, max: usize) -> Result<String, InvalidName> {
    let refuse = |reason: String| InvalidName {
        what,
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() || name.len() > max {
        return Err(refuse(format!("give 1 to {max} characters")));
    }
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !first_ok
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err(refuse(
            "use lowercase ASCII letters, digits and `_`, starting with a letter or `_`".to_owned(),
        ));
    }
    Ok(name.to_owned())
}

impl Tables {
    /// `<prefix>outbox`, `<prefix>outbox_keys` and `<prefix>inbox`.
    pub fn prefixed(prefix: &str) -> Result<Self, InvalidName> {
        Self::default()
            .with_outbox(&format!("{prefix}outbox"))?
            .with_inbox(&format!("{prefix}inbox"))
    }

    /// The outbox table's name; the keys' table becomes `<name>_keys`
    /// (set it after this with [`with_keys`](Self::with_keys) to name it
    /// otherwise).
    pub fn with_outbox(mut self, name: &str) -> Result<Self, InvalidName> {
        self.outbox = checked("outbox table", name, MAX_TABLE_NAME)?;
        self.keys = checked("keys table", &format!("{name}_keys"), MAX_TABLE_NAME)?;
        Ok(self)
    }

    /// The keys' table's name (one row per key with pending records).
    pub fn with_keys(mut self, name: &str) -> Result<Self, InvalidName> {
        self.keys = checked("keys table", name, MAX_TABLE_NAME)?;
        Ok(self)
    }

    /// The inbox table's name.
    pub fn with_inbox(mut self, name: &str) -> Result<Self, InvalidName> {
        self.inbox = checked("inbox table", name, MAX_TABLE_NAME)?;
        Ok(self)
    }

    /// The PostgreSQL schema of every table (created by the migration when
    /// missing). MySQL/MariaDB and SQLite have none: there the migration
    /// and the store refuse it ([`check_backend`](Self::check_backend)).
    pub fn schema(mut self, name: &str) -> Result<Self, InvalidName> {
        self.schema = Some(checked("schema", name, MAX_SCHEMA_NAME)?);
        Ok(self)
    }

    /// The schema, if set.
    pub fn schema_name(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    /// The outbox table's name (without the schema).
    pub fn outbox(&self) -> &str {
        &self.outbox
    }

    /// The keys' table's name (without the schema).
    pub fn keys(&self) -> &str {
        &self.keys
    }

    /// The inbox table's name (without the schema).
    pub fn inbox(&self) -> &str {
        &self.inbox
    }

    /// Whether these are the default names.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Fails when these names cannot be used on `backend`: a schema
    /// outside PostgreSQL, or two tables of one name.
    pub fn check_backend(&self, backend: DbBackend) -> Result<(), InvalidName> {
        if let Some(schema) = &self.schema
            && backend != DbBackend::Postgres
        {
            return Err(InvalidName {
                what: "schema",
                name: schema.clone(),
                reason: format!(
                    "schemas are a PostgreSQL setting, and this is {backend:?}: name the \
                     database in the URL instead (MySQL/MariaDB), or leave the schema out"
                ),
            });
        }
        let names = [&self.outbox, &self.keys, &self.inbox, &self.migrations()];
        for (i, a) in names.iter().enumerate() {
            if names[i + 1..].contains(a) {
                return Err(InvalidName {
                    what: "table",
                    name: (*a).clone(),
                    reason: "two of the outbox's tables would have this name".to_owned(),
                });
            }
        }
        Ok(())
    }

    /// The table the outbox's migrations are recorded in when applied
    /// apart from a service's own: `outbox_migrations`, or
    /// `<outbox>_migrations` for another outbox table name.
    pub fn migrations(&self) -> String {
        format!("{}_migrations", self.outbox)
    }

    /// An index's name: `idx_<table>_<what>`.
    fn index(table: &str, what: &str) -> String {
        format!("idx_{table}_{what}")
    }

    /// Pending records by id (`(status, id)` on MySQL/MariaDB).
    pub fn index_pending(&self) -> String {
        Self::index(&self.outbox, "pending")
    }

    /// Pending records by key and id: the claim's and the refresh's.
    pub fn index_key_pending(&self) -> String {
        Self::index(&self.outbox, "key_pending")
    }

    /// Published records by publication time: the purge's.
    pub fn index_published(&self) -> String {
        Self::index(&self.outbox, "published")
    }

    /// Pending unkeyed records by availability: the claim's.
    pub fn index_keyless(&self) -> String {
        Self::index(&self.outbox, "keyless")
    }

    /// Dead records by id (not on MySQL/MariaDB, whose pending index
    /// serves them).
    pub fn index_dead(&self) -> String {
        Self::index(&self.outbox, "dead")
    }

    /// Keys by `next_at`: the claim's.
    pub fn index_keys_next(&self) -> String {
        Self::index(&self.keys, "next")
    }

    /// Inbox entries by processing time: the inbox purge's.
    pub fn index_inbox_processed(&self) -> String {
        Self::index(&self.inbox, "processed")
    }

    fn table_ref(&self, table: &str) -> TableRef {
        match &self.schema {
            Some(schema) => (Alias::new(schema.as_str()), Alias::new(table)).into_table_ref(),
            None => Alias::new(table).into_table_ref(),
        }
    }

    /// The outbox table for sea-query (schema-qualified when set).
    pub fn outbox_ref(&self) -> TableRef {
        self.table_ref(&self.outbox)
    }

    /// The keys' table for sea-query.
    pub fn keys_ref(&self) -> TableRef {
        self.table_ref(&self.keys)
    }

    /// The inbox table for sea-query.
    pub fn inbox_ref(&self) -> TableRef {
        self.table_ref(&self.inbox)
    }

    /// The migrations' record table for sea-query.
    pub fn migrations_ref(&self) -> TableRef {
        self.table_ref(&self.migrations())
    }

    /// `table` as written in SQL on `backend`, schema-qualified when set
    /// (names are checked, so quoting never meets a quote).
    pub fn qualified(&self, backend: DbBackend, table: &str) -> String {
        match &self.schema {
            Some(schema) => format!(
                "{}.{}",
                Self::quoted(backend, schema),
                Self::quoted(backend, table)
            ),
            None => Self::quoted(backend, table),
        }
    }

    /// `name` quoted as an identifier on `backend`, without a schema.
    pub fn quoted(backend: DbBackend, name: &str) -> String {
        match backend {
            DbBackend::MySql => format!("`{name}`"),
            _ => format!("\"{name}\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_and_derived() {
        let tables = Tables::default().with_outbox("billing_outbox").unwrap();
        assert_eq!(tables.keys(), "billing_outbox_keys");
        assert_eq!(tables.migrations(), "billing_outbox_migrations");
        assert_eq!(tables.index_key_pending(), "idx_billing_outbox_key_pending");
        assert_eq!(Tables::default().index_keys_next(), "idx_outbox_keys_next");
        assert_eq!(Tables::default().migrations(), "outbox_migrations");
        for bad in ["", "Outbox", "1outbox", "out-box", "out box", "o\"x"] {
            let error = Tables::default().with_outbox(bad).unwrap_err();
            assert!(error.to_string().contains("cannot be used"), "{error}");
        }
        let long = "o".repeat(MAX_TABLE_NAME + 1);
        assert!(Tables::default().with_inbox(&long).is_err());
        let longest = "o".repeat(MAX_TABLE_NAME);
        let tables = Tables::default()
            .with_outbox(&longest[..MAX_TABLE_NAME - 5])
            .unwrap();
        assert!(tables.index_key_pending().len() <= 63);
        let schema = Tables::default().schema("accounts").unwrap();
        assert!(schema.check_backend(DbBackend::Postgres).is_ok());
        let error = schema.check_backend(DbBackend::MySql).unwrap_err();
        assert!(error.to_string().contains("PostgreSQL"), "{error}");
        let clash = Tables::default().with_inbox("outbox_keys").unwrap();
        assert!(clash.check_backend(DbBackend::Sqlite).is_err());
        assert_eq!(
            schema.qualified(DbBackend::Postgres, schema.outbox()),
            "\"accounts\".\"outbox\""
        );
        assert_eq!(
            Tables::default().qualified(DbBackend::MySql, "outbox"),
            "`outbox`"
        );
    }
}
