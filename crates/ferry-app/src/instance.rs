//! One customer's instance: its own SQLite database file, so that no query of one tenant can ever reach the rows
//! of another (`DESIGN.md`, "Identity and isolation").
//!
//! The schema is generated from the static table of `ferry_proto::spec`: one table per standard file
//! (`FileSpec::table`), one column per spec column in order (`Int`/`Flag` as INTEGER, everything else as TEXT —
//! decimals stay exact text, dates ISO `YYYY-MM-DD`; `Unused` columns are not stored), plus `custom_rows` for the
//! free-form `ut_NNN.csv` files and `batch_log`, the record of every batch that was imported or rejected.
//! Rows carry no primary key (a sales line has no identity in `DATA-SPEC.md`): a batch replaces a whole table, or
//! for an incremental file the rows of a date window (`crate::import`); dates being ISO text, a window is a text
//! range (`invoice_date >= '2026-03-07'`).
//! `PRAGMA user_version` carries the schema version so that a later ferry can migrate it.
//!
//! **Invariant**: table and column names in SQL come only from the static spec, never from input; every value is a
//! bound parameter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_proto::api::{BatchState, FileRows, ImportReport};
use ferry_proto::batch::BatchId;
use ferry_proto::spec::{self, Column, FileSpec, Kind};
use sqlx::sqlite::SqliteSynchronous;
use sqlx::{AssertSqlSafe, Row, SqlitePool};

/// Version of the schema this build creates (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

/// Table of the rows of custom files `ut_NNN.csv`: `(file, line, data)` with `data` a JSON object header -> value.
pub const CUSTOM_TABLE: &str = "custom_rows";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("cannot open instance database {}: {source}; check that its directory exists and is writable", path.display())]
    Open { path: PathBuf, source: sqlx::Error },
    #[error(
        "instance database {} has schema version {found}, newer than this ferry understands ({SCHEMA_VERSION}); \
         run a newer ferry",
        path.display()
    )]
    NewerSchema { path: PathBuf, found: i64 },
    #[error("instance database query failed: {0}")]
    Db(sqlx::Error),
    #[error("{0:?} is not a table of the standard extract; use one of the FileSpec tables or custom_rows")]
    UnknownTable(String),
    #[error("the batch log of this instance holds an unreadable record for batch {batch}: {what}")]
    Corrupt { batch: String, what: String },
}

impl From<sqlx::Error> for InstanceError {
    fn from(e: sqlx::Error) -> Self {
        InstanceError::Db(e)
    }
}

pub type Result<T, E = InstanceError> = std::result::Result<T, E>;

/// A tenant's instance database. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Instance {
    pool: SqlitePool,
    path: PathBuf,
    /// Serialises imports into this instance (one writer at a time; readers are never blocked, thanks to WAL).
    import_lock: tokio::sync::Mutex<()>,
}

impl Instance {
    /// Open the instance database at `path`, creating the file and the schema if absent.
    pub async fn open(path: &Path) -> Result<Instance> {
        let open_err = |source| InstanceError::Open { path: path.to_path_buf(), source };
        let options = ferry_io::sqlite::Options {
            max_connections: 2,
            // NORMAL is durable across application crashes in WAL mode; a power cut may lose the last commit,
            // which the Comms server then re-sends (imports are idempotent).
            synchronous: SqliteSynchronous::Normal,
            busy_timeout: Duration::from_secs(30),
            // Bounded memory whatever the batch size: an App server holds many instances open at once, so each
            // gets a modest page cache (16 MiB per connection, 2 connections) and temporary b-trees go to disk.
            cache_size_kib: Some(16 * 1024),
            ..Default::default()
        };
        let pool = ferry_io::sqlite::open(path, &options).await.map_err(open_err)?;
        let inst = Instance { pool, path: path.to_path_buf(), import_lock: tokio::sync::Mutex::new(()) };
        inst.create_schema().await?;
        Ok(inst)
    }

    async fn create_schema(&self) -> Result<()> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let version: i64 = sqlx::query_scalar("PRAGMA user_version").fetch_one(&mut *tx).await?;
        if version > SCHEMA_VERSION {
            return Err(InstanceError::NewerSchema { path: self.path.clone(), found: version });
        }
        for f in spec::STANDARD_FILES {
            sqlx::query(AssertSqlSafe(create_table_sql(f))).execute(&mut *tx).await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS custom_rows (file TEXT NOT NULL, line INTEGER NOT NULL, data TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("CREATE INDEX IF NOT EXISTS custom_rows_file ON custom_rows (file, line)")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS batch_log (batch_id TEXT PRIMARY KEY, state TEXT NOT NULL, detail TEXT, \
             files_json TEXT NOT NULL DEFAULT '[]', imported_at TEXT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        if version < SCHEMA_VERSION {
            sqlx::query(AssertSqlSafe(format!("PRAGMA user_version = {SCHEMA_VERSION}"))).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Close every connection (waits for queries in flight). The instance is unusable afterwards.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn import_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.import_lock
    }

    /// Number of rows in `table`, which must be a table of the standard extract (`FileSpec::table`) or
    /// `custom_rows`.
    pub async fn count_rows(&self, table: &str) -> Result<u64> {
        let table: &'static str = spec::STANDARD_FILES
            .iter()
            .map(|f| f.table)
            .chain([CUSTOM_TABLE])
            .find(|t| *t == table)
            .ok_or_else(|| InstanceError::UnknownTable(table.chars().take(64).collect()))?;
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{table}\"")))
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The recorded outcome of batch `id` (imported or rejected), if this instance has seen it.
    pub async fn batch(&self, id: &BatchId) -> Result<Option<ImportReport>> {
        let row = sqlx::query("SELECT batch_id, state, detail, files_json FROM batch_log WHERE batch_id = ?")
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| report_from_row(&r)).transpose()
    }

    /// Every batch this instance has seen, newest first (batch ids sort by creation time).
    pub async fn batches(&self) -> Result<Vec<ImportReport>> {
        let rows = sqlx::query("SELECT batch_id, state, detail, files_json FROM batch_log ORDER BY batch_id DESC")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(report_from_row).collect()
    }
}

/// Read one `batch_log` row back into the report that was returned when the batch was processed.
pub(crate) fn report_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<ImportReport> {
    let id: String = r.try_get("batch_id")?;
    let state: String = r.try_get("state")?;
    let detail: Option<String> = r.try_get("detail")?;
    let files_json: String = r.try_get("files_json")?;
    report_from_parts(&id, &state, detail, &files_json)
}

/// The report of a `batch_log` row from its columns.
pub(crate) fn report_from_parts(
    id: &str,
    state: &str,
    detail: Option<String>,
    files_json: &str,
) -> Result<ImportReport> {
    let corrupt = |what: String| InstanceError::Corrupt { batch: id.chars().take(64).collect(), what };
    let batch_id = BatchId::parse(id).map_err(|e| corrupt(e.to_string()))?;
    let state = BatchState::parse(state).ok_or_else(|| corrupt(format!("unknown state {state:?}")))?;
    let files: Vec<FileRows> =
        serde_json::from_str(files_json).map_err(|e| corrupt(format!("files_json is not valid: {e}")))?;
    Ok(ImportReport { batch_id, state, detail, files, duplicate: false })
}

/// The columns of `spec` that are stored (all but `Unused`), in file order.
pub(crate) fn stored_columns(spec: &'static FileSpec) -> impl Iterator<Item = &'static Column> {
    spec.columns.iter().filter(|c| c.kind != Kind::Unused)
}

fn sql_type(kind: Kind) -> &'static str {
    match kind {
        Kind::Int | Kind::Flag => "INTEGER",
        _ => "TEXT",
    }
}

fn create_table_sql(f: &'static FileSpec) -> String {
    let cols: Vec<String> = stored_columns(f).map(|c| format!("\"{}\" {}", c.name, sql_type(c.kind))).collect();
    format!("CREATE TABLE IF NOT EXISTS \"{}\" ({})", f.table, cols.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_follows_the_spec() {
        assert_eq!(
            create_table_sql(&spec::LOCATION),
            "CREATE TABLE IF NOT EXISTS \"location\" (\"location\" TEXT, \"description\" TEXT, \"active\" INTEGER, \
             \"location_group\" TEXT, \"location_type\" TEXT)"
        );
        assert!(!create_table_sql(&spec::MASTER).contains("unused"));
        // no spec name needs quoting beyond the double quotes we add
        for f in spec::STANDARD_FILES {
            for name in std::iter::once(f.table).chain(f.columns.iter().map(|c| c.name)) {
                assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'), "{name}");
            }
        }
    }
}
