//! The one way Ferry opens a SQLite database (Comms metadata, App instances, the Connector's journal): a sqlx
//! pool in WAL mode with the pragmas the caller asks for. Migrations and schemas stay with each caller.

use std::path::Path;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// How to open one database. The defaults are sqlx's own (foreign keys on, `synchronous = FULL`) plus WAL,
/// file created if missing, and a 10 s busy timeout.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connections in the pool.
    pub max_connections: u32,
    /// How long a statement waits for another connection's write lock.
    pub busy_timeout: Duration,
    pub foreign_keys: bool,
    pub synchronous: SqliteSynchronous,
    /// `PRAGMA cache_size` in KiB per connection (None: SQLite's default).
    pub cache_size_kib: Option<u32>,
    /// Create the database's folder first if it does not exist.
    pub create_folder: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_connections: 2,
            busy_timeout: Duration::from_secs(10),
            foreign_keys: true,
            synchronous: SqliteSynchronous::Full,
            cache_size_kib: None,
            create_folder: false,
        }
    }
}

/// Open (creating if missing) the database file at `path`. A folder that cannot be created is reported as
/// `sqlx::Error::Io`.
pub async fn open(path: &Path, options: &Options) -> sqlx::Result<SqlitePool> {
    if options.create_folder
        && let Some(dir) = path.parent()
    {
        crate::private::create_dir(dir)?;
    }
    // 0600 before SQLite sees it: its -wal and -shm files take the database file's mode.
    if path.parent().is_some_and(Path::exists) {
        crate::private::create_file(path)?;
    }
    let mut connect = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(options.synchronous)
        .busy_timeout(options.busy_timeout)
        .foreign_keys(options.foreign_keys);
    if let Some(kib) = options.cache_size_kib {
        connect = connect.pragma("cache_size", format!("-{kib}"));
    }
    SqlitePoolOptions::new().max_connections(options.max_connections).connect_with(connect).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn opens_in_wal_mode_with_the_asked_pragmas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.db");
        let options = Options { cache_size_kib: Some(4096), create_folder: true, ..Options::default() };
        let pool = open(&path, &options).await.unwrap();
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&pool).await.unwrap();
        assert_eq!(mode, "wal");
        let cache: i64 = sqlx::query_scalar("PRAGMA cache_size").fetch_one(&pool).await.unwrap();
        assert_eq!(cache, -4096);
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys").fetch_one(&pool).await.unwrap();
        assert_eq!(fk, 1);
        pool.close().await;
        let missing = open(&dir.path().join("none/x.db"), &Options::default()).await;
        assert!(missing.is_err());
    }
}
