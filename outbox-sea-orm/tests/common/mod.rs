//! A fresh database per test, dropped afterwards (also when the test
//! panics), on PostgreSQL, MariaDB/MySQL, a SQLite file and in-memory
//! SQLite.
//!
//! `POSTGRES_URL` and `MYSQL_URL` point at other servers. When a server
//! cannot be reached, a test prints `SKIPPED: ...` and passes, unless
//! `CI=true`, where it fails.

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use outbox_sea_orm::SeaOrmStore;
use outbox_sea_orm::migration::{Migrator, MigratorTrait, Tables};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr};
use uuid::Uuid;

/// The backends the tests run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    MySql,
    SqliteFile,
    SqliteMemory,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Postgres => "PostgreSQL",
            Backend::MySql => "MariaDB/MySQL",
            Backend::SqliteFile => "SQLite (file)",
            Backend::SqliteMemory => "SQLite (in memory)",
        }
    }

    fn start_hint(self) -> &'static str {
        match self {
            Backend::Postgres => {
                "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 or set POSTGRES_URL"
            }
            Backend::MySql => {
                "start it with `start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd` \
                 or set MYSQL_URL"
            }
            _ => "",
        }
    }
}

/// The server URL of PostgreSQL (a database to connect to for `CREATE
/// DATABASE`).
pub fn postgres_url() -> String {
    std::env::var("POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The server URL of MariaDB/MySQL.
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_owned())
}

/// `url` with its path (the database) replaced by `/name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (url, String::new()),
    };
    let (scheme, rest) = base.split_once("://").expect("a server URL has a scheme");
    let authority = rest.split('/').next().unwrap_or_default();
    format!("{scheme}://{authority}/{name}{query}")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// What to undo when the test ends.
#[derive(Debug)]
enum Cleanup {
    Server {
        backend: Backend,
        admin_url: String,
        name: String,
    },
    Dir(tempfile::TempDir),
    Nothing,
}

/// A fresh database with the outbox migration applied (or not, with
/// [`TestDb::without_outbox`]), dropped on drop.
#[derive(Debug)]
pub struct TestDb {
    pub backend: Backend,
    pub db: DatabaseConnection,
    /// The URL of the test database.
    pub url: String,
    /// The tables' names the store works on.
    pub tables: Tables,
    cleanup: Cleanup,
}

impl TestDb {
    /// A migrated database, or `None` (after a loud SKIPPED line) when the
    /// server is unreachable outside CI.
    pub async fn new(backend: Backend) -> Option<Self> {
        Self::create(backend, true).await
    }

    /// An empty database without the outbox table.
    pub async fn without_outbox(backend: Backend) -> Option<Self> {
        Self::create(backend, false).await
    }

    /// A database migrated with the tables `tables` names (and the
    /// inbox), whose [`store`](Self::store) works on them.
    pub async fn with_tables(backend: Backend, tables: &Tables) -> Option<Self> {
        let mut db = Self::create(backend, false).await?;
        outbox_sea_orm::migration::migrate_tables(&db.db, tables, true)
            .await
            .expect("the outbox migration failed");
        db.tables = tables.clone();
        Some(db)
    }

    async fn create(backend: Backend, migrate: bool) -> Option<Self> {
        match Self::try_create(backend, migrate).await {
            Ok(db) => Some(db),
            Err(Unreachable { url, error }) => {
                if in_ci() {
                    panic!(
                        "{} unreachable at {url} (CI=true, so this fails): {error}",
                        backend.label()
                    );
                }
                eprintln!(
                    "\n*** SKIPPED: {} unreachable at {url}: {error}; {} ***\n",
                    backend.label(),
                    backend.start_hint()
                );
                None
            }
        }
    }

    async fn try_create(backend: Backend, migrate: bool) -> Result<Self, Unreachable> {
        let name = format!("outbox_test_{}", Uuid::now_v7().simple());
        let (url, cleanup, max_connections) = match backend {
            Backend::Postgres | Backend::MySql => {
                let admin_url = match backend {
                    Backend::Postgres => postgres_url(),
                    _ => mysql_url(),
                };
                let admin = connect(&admin_url, 1).await.map_err(|error| Unreachable {
                    url: admin_url.clone(),
                    error,
                })?;
                let create = match backend {
                    Backend::Postgres => format!("CREATE DATABASE \"{name}\""),
                    _ => format!("CREATE DATABASE `{name}`"),
                };
                admin
                    .execute_unprepared(&create)
                    .await
                    .expect("CREATE DATABASE failed");
                admin.close().await.ok();
                let url = with_database(&admin_url, &name);
                let cleanup = Cleanup::Server {
                    backend,
                    admin_url,
                    name,
                };
                (url, cleanup, 12)
            }
            Backend::SqliteFile => {
                let dir = tempfile::Builder::new()
                    .prefix(&name)
                    .tempdir()
                    .expect("cannot create a temp dir");
                let url = format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("outbox.db").display()
                );
                (url, Cleanup::Dir(dir), 4)
            }
            // One connection: more would share one in-memory database,
            // which admits a single writer.
            Backend::SqliteMemory => ("sqlite::memory:".to_owned(), Cleanup::Nothing, 1),
        };
        // From here on, dropping `this` drops the database.
        let mut this = TestDb {
            backend,
            db: DatabaseConnection::default(),
            url: url.clone(),
            tables: Tables::default(),
            cleanup,
        };
        this.db = connect(&url, max_connections)
            .await
            .unwrap_or_else(|error| {
                panic!("cannot connect to the new test database {url}: {error}")
            });
        if migrate {
            Migrator::up(&this.db, None)
                .await
                .expect("the outbox migration failed");
        }
        Ok(this)
    }

    /// A store over this database.
    pub fn store(&self) -> SeaOrmStore {
        SeaOrmStore::new(self.db.clone())
            .with_tables(&self.tables)
            .expect("tables this database has")
    }

    /// Runs one statement (DDL, bulk inserts) on this database.
    pub async fn exec(&self, sql: &str) {
        self.db
            .execute_unprepared(sql)
            .await
            .unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    pub fn db_backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }
}

#[derive(Debug)]
struct Unreachable {
    url: String,
    error: DbErr,
}

async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(std::env::var("SQLX_LOG").is_ok());
    Database::connect(options).await
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Server {
                backend,
                admin_url,
                name,
            } => {
                let (backend, admin_url, name) = (*backend, admin_url.clone(), name.clone());
                // Drop runs inside the test's runtime (also while a panic
                // unwinds); a thread with its own runtime drops the
                // database synchronously.
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for the cleanup");
                    runtime.block_on(drop_database(backend, &admin_url, &name))
                })
                .join();
                match dropped {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => eprintln!("warning: cannot drop test database: {error}"),
                    Err(_) => eprintln!("warning: dropping the test database panicked"),
                }
            }
            // The directory removes itself when the field drops, after the
            // connections (declared before it) have closed.
            Cleanup::Dir(_) => {}
            Cleanup::Nothing => {}
        }
    }
}

async fn drop_database(backend: Backend, admin_url: &str, name: &str) -> Result<(), DbErr> {
    let admin = connect(admin_url, 1).await?;
    match backend {
        Backend::Postgres => {
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .await?;
        }
        _ => {
            // A test that panicked may leave a transaction open on its
            // connections, which would hold DROP DATABASE up: end them
            // first, as PostgreSQL's FORCE does.
            admin
                .execute_unprepared("SET lock_wait_timeout = 30")
                .await?;
            let connections = admin
                .query_all_raw(sea_orm::Statement::from_sql_and_values(
                    DbBackend::MySql,
                    "SELECT CAST(id AS SIGNED) FROM information_schema.processlist WHERE db = ?",
                    [name.into()],
                ))
                .await?;
            for connection in connections {
                let id: i64 = connection
                    .try_get_by_index(0)
                    .expect("a connection id from the processlist");
                // The connection may have ended on its own meanwhile.
                admin
                    .execute_unprepared(&format!("KILL CONNECTION {id}"))
                    .await
                    .ok();
            }
            admin
                .execute_unprepared(&format!("DROP DATABASE IF EXISTS `{name}`"))
                .await?;
        }
    }
    admin.close().await.ok();
    Ok(())
}

/// Factories for the conformance suite: a fresh, migrated database each.
pub async fn postgres_store() -> Option<(SeaOrmStore, TestDb)> {
    let db = TestDb::new(Backend::Postgres).await?;
    Some((db.store(), db))
}

pub async fn mysql_store() -> Option<(SeaOrmStore, TestDb)> {
    let db = TestDb::new(Backend::MySql).await?;
    Some((db.store(), db))
}

pub async fn sqlite_file_store() -> Option<(SeaOrmStore, TestDb)> {
    let db = TestDb::new(Backend::SqliteFile).await?;
    Some((db.store(), db))
}

/// Other names than the defaults: a prefix everywhere, and a schema on
/// PostgreSQL.
pub fn other_names(backend: Backend) -> Tables {
    let tables = Tables::prefixed("billing_").unwrap();
    match backend {
        Backend::Postgres => tables.schema("accounts").unwrap(),
        _ => tables,
    }
}

/// Factories for the conformance suite on tables of other names, keeping
/// a published history (the stores above delete what they publish).
pub async fn postgres_named_store() -> Option<(SeaOrmStore, TestDb)> {
    let db = TestDb::with_tables(Backend::Postgres, &other_names(Backend::Postgres)).await?;
    Some((db.store().keep_published(), db))
}

pub async fn mysql_named_store() -> Option<(SeaOrmStore, TestDb)> {
    let db = TestDb::with_tables(Backend::MySql, &other_names(Backend::MySql)).await?;
    Some((db.store().keep_published(), db))
}

pub async fn sqlite_named_store() -> Option<(SeaOrmStore, TestDb)> {
    let db = TestDb::with_tables(Backend::SqliteFile, &other_names(Backend::SqliteFile)).await?;
    Some((db.store().keep_published(), db))
}

pub async fn sqlite_memory_store() -> Option<(SeaOrmStore, TestDb)> {
    let db = TestDb::new(Backend::SqliteMemory).await?;
    Some((db.store(), db))
}

/// Waits until `condition` holds, checking every few milliseconds, and
/// fails after `deadline`.
pub async fn wait_until<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = std::time::Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Generates one `#[tokio::test]` per backend for each named async fn
/// taking a [`TestDb`]: `backend_tests!(fn_a, fn_b);`.
#[macro_export]
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = $crate::common::TestDb::new($crate::common::Backend::Postgres).await else { return };
                    super::$case(db).await;
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = $crate::common::TestDb::new($crate::common::Backend::MySql).await else { return };
                    super::$case(db).await;
                }
            )*
        }
        mod sqlite_file {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = $crate::common::TestDb::new($crate::common::Backend::SqliteFile).await else { return };
                    super::$case(db).await;
                }
            )*
        }
        mod sqlite_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(db) = $crate::common::TestDb::new($crate::common::Backend::SqliteMemory).await else { return };
                    super::$case(db).await;
                }
            )*
        }
    };
}

/// One `#[tokio::test]` per named backend for an async fn taking a
/// [`TestDb`]: `on!(scenario: Postgres, MySql, SqliteFile);`.
#[macro_export]
macro_rules! on {
    ($test:ident: $($backend:ident),*) => {
        mod $test {
            $(
                #[allow(non_snake_case)]
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $backend() {
                    let Some(db) = $crate::common::TestDb::new($crate::common::Backend::$backend).await else {
                        return;
                    };
                    super::$test(db).await;
                }
            )*
        }
    };
}
