//! A database of a benchmark's own on a server (or a temporary SQLite
//! file), dropped when the benchmark is done with it. Included by the
//! benchmark programs (`#[path]`), not a library.

use std::path::PathBuf;
use std::time::Duration;

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend};

/// The servers a benchmark runs on when given no `--database-url`.
pub(crate) const DEFAULT_URLS: [&str; 3] = [
    "postgres://postgres@127.0.0.1:5432/postgres",
    "mysql://root@127.0.0.1:3306",
    "sqlite",
];

/// A fresh database and how to drop it.
pub(crate) struct BenchDb {
    pub(crate) db: DatabaseConnection,
    server: Option<(String, String)>,
    dir: Option<PathBuf>,
}

/// Connects with a small pool; `SQLX_LOG` set logs every statement.
pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, String> {
    let mut options = ConnectOptions::new(url);
    options
        .max_connections(max_connections)
        .connect_timeout(Duration::from_secs(5))
        .sqlx_logging(std::env::var("SQLX_LOG").is_ok());
    Database::connect(options).await.map_err(|e| e.to_string())
}

impl BenchDb {
    /// A new database `name` on the server of `url` (`sqlite` for a
    /// temporary file).
    pub(crate) async fn create(
        url: &str,
        name: &str,
        max_connections: u32,
    ) -> Result<Self, String> {
        if url == "sqlite" || url.starts_with("sqlite:") {
            let dir = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let file = format!("sqlite://{}?mode=rwc", dir.join("outbox.db").display());
            let db = connect(&file, max_connections).await?;
            return Ok(Self {
                db,
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
        // The server's URL with the new database as its path.
        let (scheme, rest) = url.split_once("://").ok_or("a server URL has a scheme")?;
        let authority = rest.split(['/', '?']).next().unwrap_or_default();
        let db = connect(&format!("{scheme}://{authority}/{name}"), max_connections).await?;
        Ok(Self {
            db,
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

    /// Closes the pool and drops the database (or deletes the file).
    pub(crate) async fn drop(self) {
        let _ = self.db.close().await;
        if let Some((url, drop)) = self.server
            && let Ok(admin) = connect(&url, 1).await
        {
            let _ = admin.execute_unprepared(&drop).await;
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}
