//! A database of a benchmark's own on a server (or a temporary SQLite
//! file), with the outbox tables, dropped when the benchmark is done with
//! it.

use std::path::PathBuf;
use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

/// The servers a benchmark runs on when given no `--database-url`.
pub(crate) const DEFAULT_URLS: [&str; 3] = [
    "postgres://postgres@127.0.0.1:5432/postgres",
    "mysql://root@127.0.0.1:3306",
    "sqlite",
];

/// The business table the writers insert into beside their events.
pub(crate) const ORDERS_TABLE: &str =
    "CREATE TABLE bench_orders (id BIGINT PRIMARY KEY, note TEXT NOT NULL)";

/// A fresh database and how to drop it.
pub(crate) struct BenchDb {
    pub(crate) db: DatabaseConnection,
    /// The URL of the new database, for more pools on it.
    pub(crate) url: String,
    server: Option<(String, String)>,
    dir: Option<PathBuf>,
}

/// Connects with a pool of `max_connections`; `SQLX_LOG` set logs every
/// statement.
pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, String> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(std::env::var("SQLX_LOG").is_ok());
    Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", outbox_sea_orm::redact_url(url)))
}

/// The backend's short name: `postgres`, `mysql` or `sqlite`.
pub(crate) fn label(url: &str) -> &'static str {
    if url.starts_with("postgres") {
        "postgres"
    } else if url.starts_with("mysql") || url.starts_with("mariadb") {
        "mysql"
    } else {
        "sqlite"
    }
}

/// Whether the server of `url` answers (SQLite always does).
pub(crate) async fn reachable(url: &str) -> Result<(), String> {
    if label(url) == "sqlite" {
        return Ok(());
    }
    let admin = connect(url, 1).await?;
    admin.close().await.map_err(|e| e.to_string())
}

impl BenchDb {
    /// A new database `name` on the server of `url` (`sqlite` for a
    /// temporary file), with the outbox tables.
    pub(crate) async fn create(
        url: &str,
        name: &str,
        max_connections: u32,
    ) -> Result<Self, String> {
        let made = Self::create_empty(url, name, max_connections).await?;
        if let Err(error) = Migrator::up(&made.db, None).await {
            made.drop().await;
            return Err(format!("the outbox migration failed: {error}"));
        }
        Ok(made)
    }

    async fn create_empty(url: &str, name: &str, max_connections: u32) -> Result<Self, String> {
        if label(url) == "sqlite" {
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let file = format!("sqlite://{}?mode=rwc", dir.join("outbox.db").display());
            let db = connect(&file, max_connections).await?;
            return Ok(Self {
                db,
                url: file,
                server: None,
                dir: Some(dir),
            });
        }
        let admin = connect(url, 1).await?;
        let (create, drop) = match admin.get_database_backend() {
            DbBackend::Postgres => (
                format!("CREATE DATABASE \"{name}\""),
                format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            ),
            _ => (
                format!("CREATE DATABASE `{name}`"),
                format!("DROP DATABASE IF EXISTS `{name}`"),
            ),
        };
        admin
            .execute_unprepared(&create)
            .await
            .map_err(|e| e.to_string())?;
        let _ = admin.close().await;
        // The server's URL with the new database as its path.
        let (scheme, rest) = url.split_once("://").ok_or("a server URL has a scheme")?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let new_url = format!("{scheme}://{authority}/{name}");
        let db = connect(&new_url, max_connections).await?;
        Ok(Self {
            db,
            url: new_url,
            server: Some((url.to_owned(), drop)),
            dir: None,
        })
    }

    /// The backend's short name: `postgres`, `mysql` or `sqlite`.
    pub(crate) fn label(&self) -> &'static str {
        match self.db.get_database_backend() {
            DbBackend::Postgres => "postgres",
            DbBackend::MySql => "mysql",
            _ => "sqlite",
        }
    }

    /// Runs `sql`, saying which statement failed.
    pub(crate) async fn execute(&self, sql: &str) -> Result<(), String> {
        self.db
            .execute_unprepared(sql)
            .await
            .map(drop)
            .map_err(|e| format!("{e}: {sql}"))
    }

    /// Writes every changed page out (PostgreSQL's `CHECKPOINT`; nothing
    /// elsewhere).
    pub(crate) async fn checkpoint(&self) -> Result<(), String> {
        match self.db.get_database_backend() {
            DbBackend::Postgres => self.execute("CHECKPOINT").await,
            _ => Ok(()),
        }
    }

    /// Updates the planner's statistics, as autovacuum would after a load.
    pub(crate) async fn analyze(&self) -> Result<(), String> {
        match self.db.get_database_backend() {
            DbBackend::Postgres => self.execute("VACUUM ANALYZE outbox, outbox_keys").await,
            DbBackend::MySql => self.execute("ANALYZE TABLE outbox, outbox_keys").await,
            _ => self.execute("ANALYZE").await,
        }
    }

    /// The outbox tables' size on disk, in bytes, with their indexes: the
    /// two tables on PostgreSQL (`pg_total_relation_size`), InnoDB's
    /// figures on MySQL/MariaDB (data, indexes and free room; refreshed
    /// by `ANALYZE`), the whole file on SQLite.
    pub(crate) async fn size(&self) -> Result<u64, String> {
        let sql = match self.db.get_database_backend() {
            DbBackend::Postgres => concat!(
                "SELECT CAST(pg_total_relation_size('outbox') ",
                "+ pg_total_relation_size('outbox_keys') AS BIGINT) AS bytes"
            ),
            DbBackend::MySql => concat!(
                "SELECT CAST(SUM(data_length + index_length + data_free) AS SIGNED) AS bytes ",
                "FROM information_schema.tables ",
                "WHERE table_schema = DATABASE() AND table_name IN ('outbox', 'outbox_keys')"
            ),
            _ => {
                "SELECT page_count * page_size AS bytes FROM pragma_page_count(), pragma_page_size()"
            }
        };
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                sql,
            ))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no size")?;
        let bytes: i64 = row.try_get("", "bytes").map_err(|e| e.to_string())?;
        Ok(bytes.max(0) as u64)
    }

    /// PostgreSQL's count of row versions the outbox tables have seen
    /// (`pg_stat_user_tables`), after the statistics of the transactions
    /// done so far are in; `None` elsewhere.
    pub(crate) async fn row_versions(&self) -> Result<Option<RowVersions>, String> {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return Ok(None);
        }
        // Backends report their counts at most once a second.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        self.execute("SELECT pg_stat_clear_snapshot()").await?;
        let row = self
            .db
            .query_one_raw(sea_orm::Statement::from_string(
                DbBackend::Postgres,
                concat!(
                    "SELECT CAST(SUM(n_tup_ins) AS BIGINT) AS inserted, ",
                    "CAST(SUM(n_tup_upd) AS BIGINT) AS updated, ",
                    "CAST(SUM(n_tup_hot_upd) AS BIGINT) AS hot, ",
                    "CAST(SUM(n_tup_del) AS BIGINT) AS deleted, ",
                    "(SELECT CAST(xact_commit AS BIGINT) FROM pg_stat_database ",
                    "WHERE datname = current_database()) AS commits ",
                    "FROM pg_stat_user_tables WHERE relname IN ('outbox', 'outbox_keys')"
                ),
            ))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no statistics")?;
        let get = |column: &str| -> Result<u64, String> {
            let n: i64 = row.try_get("", column).map_err(|e| e.to_string())?;
            Ok(n.max(0) as u64)
        };
        Ok(Some(RowVersions {
            inserted: get("inserted")?,
            updated: get("updated")?,
            hot: get("hot")?,
            deleted: get("deleted")?,
            commits: get("commits")?,
        }))
    }

    /// Records of each status: `(pending, published)`.
    pub(crate) async fn counts(&self) -> Result<(u64, u64), String> {
        let rows = self
            .db
            .query_all_raw(sea_orm::Statement::from_string(
                self.db.get_database_backend(),
                "SELECT status, COUNT(*) AS n FROM outbox GROUP BY status",
            ))
            .await
            .map_err(|e| e.to_string())?;
        let (mut pending, mut published) = (0, 0);
        for row in rows {
            let status: String = row.try_get("", "status").map_err(|e| e.to_string())?;
            let n: i64 = row.try_get("", "n").map_err(|e| e.to_string())?;
            match status.as_str() {
                "pending" => pending = n as u64,
                "published" => published = n as u64,
                _ => {}
            }
        }
        Ok((pending, published))
    }

    /// Closes the pool and drops the database (or deletes the file).
    pub(crate) async fn drop(self) {
        let _ = self.db.close().await;
        if let Some((url, drop)) = self.server
            && let Ok(admin) = connect(&url, 1).await
        {
            let _ = admin.execute_unprepared(&drop).await;
            let _ = admin.close().await;
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Row versions written to the outbox tables (PostgreSQL's statistics):
/// inserted, updated (of which HOT: no new index entry), deleted; and the
/// database's commits.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RowVersions {
    pub(crate) inserted: u64,
    pub(crate) updated: u64,
    pub(crate) hot: u64,
    pub(crate) deleted: u64,
    /// Transactions committed in the database.
    pub(crate) commits: u64,
}

impl RowVersions {
    /// Per event, from `before` to `self`, in words.
    pub(crate) fn per_event(&self, before: &RowVersions, events: u64) -> String {
        let per = |after: u64, before: u64| (after - before) as f64 / events.max(1) as f64;
        let (ins, upd, hot, del) = (
            per(self.inserted, before.inserted),
            per(self.updated, before.updated),
            per(self.hot, before.hot),
            per(self.deleted, before.deleted),
        );
        format!(
            "{:.2} row versions per event: {ins:.2} inserted, {upd:.2} updated ({hot:.2} HOT), \
             {del:.2} deleted; {:.1} commits per 1,000 events",
            ins + upd + del,
            1000.0 * per(self.commits, before.commits)
        )
    }
}
