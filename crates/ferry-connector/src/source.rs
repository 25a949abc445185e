//! Where the Connector reads ERP data from: a [`Source`] runs one SQL query and streams its rows as [`SqlValue`]s,
//! never holding a whole result in memory. [`SqliteSource`] reads an SQLite database read-only; PostgreSQL,
//! MySQL/MariaDB and ODBC sources implement the same trait.
//!
//! Error messages say which database or query failed and why, and never contain a password: connection strings
//! are shown through [`redact_url`].

use std::path::Path;
use std::str::FromStr;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef};

/// One value of a result row, by the type the database reports for it at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The database could not be opened; `target` is already free of passwords.
    #[error("cannot open the ERP database {target}: {reason}")]
    Open { target: String, reason: String },
    /// The database refused or failed the query.
    #[error("the query failed: {0}")]
    Query(String),
    /// A value of a result row could not be read.
    #[error("cannot read column {column} ({name}) of a result row: {reason}")]
    Decode { column: usize, name: String, reason: String },
}

/// A database the Connector extracts from. Object safe, so the configured kind is chosen at run time.
pub trait Source: Send + Sync {
    /// Short name of the kind of source (`sqlite`, `postgres`, ...), for logs and `status`.
    fn kind(&self) -> &'static str;

    /// The names of the columns `sql` returns, without running it to completion (prepares the statement).
    fn columns<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>>;

    /// Run `sql` and stream its rows, each with one value per result column. Rows are read as the stream is polled;
    /// dropping the stream cancels the query.
    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>>;
}

/// An SQLite database opened read-only.
#[derive(Debug, Clone)]
pub struct SqliteSource {
    pool: SqlitePool,
}

impl SqliteSource {
    /// Open `url_or_path` (`sqlite:///path/erp.db`, `sqlite:erp.db?mode=ro` or a plain file path) read-only. The
    /// file must exist: the Connector never creates or writes the ERP database.
    pub async fn open(url_or_path: &str) -> Result<SqliteSource, SourceError> {
        let target = redact_url(url_or_path);
        let open_err = |reason: String| SourceError::Open { target: target.clone(), reason };
        let opts = if url_or_path.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url_or_path).map_err(|e| open_err(e.to_string()))?
        } else {
            let path = Path::new(url_or_path);
            if !path.is_file() {
                return Err(open_err("no such file; check the path in the connector configuration".into()));
            }
            SqliteConnectOptions::new().filename(path)
        };
        let opts = opts.read_only(true).create_if_missing(false).foreign_keys(false);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        Ok(SqliteSource { pool })
    }

    /// Use an already opened pool (tests, or a caller that configures its own options).
    pub fn from_pool(pool: SqlitePool) -> SqliteSource {
        SqliteSource { pool }
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

impl Source for SqliteSource {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn columns<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            let stmt = (&self.pool)
                .prepare(AssertSqlSafe(sql).into_sql_str())
                .await
                .map_err(|e| SourceError::Query(e.to_string()))?;
            Ok(stmt.columns().iter().map(|c| c.name().to_string()).collect())
        })
    }

    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
        sqlx::query(AssertSqlSafe(sql))
            .fetch(&self.pool)
            .map(|row| row.map_err(|e| SourceError::Query(e.to_string())).and_then(|r| decode_sqlite_row(&r)))
            .boxed()
    }
}

enum Ty {
    Int,
    Float,
    Text,
    Blob,
}

/// Decode each column by the type of the value SQLite holds (SQLite types values, not columns).
fn decode_sqlite_row(row: &SqliteRow) -> Result<Vec<SqlValue>, SourceError> {
    let n = row.columns().len();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let err =
            |reason: String| SourceError::Decode { column: i + 1, name: row.columns()[i].name().to_string(), reason };
        let raw = row.try_get_raw(i).map_err(|e| err(e.to_string()))?;
        if raw.is_null() {
            out.push(SqlValue::Null);
            continue;
        }
        let ty = match raw.type_info().name() {
            "INTEGER" | "BOOLEAN" | "INT4" => Ty::Int,
            "REAL" => Ty::Float,
            "BLOB" => Ty::Blob,
            _ => Ty::Text,
        };
        let v = match ty {
            Ty::Int => SqlValue::Int(row.try_get_unchecked::<i64, _>(i).map_err(|e| err(e.to_string()))?),
            Ty::Float => SqlValue::Float(row.try_get_unchecked::<f64, _>(i).map_err(|e| err(e.to_string()))?),
            Ty::Blob => SqlValue::Bytes(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(|e| err(e.to_string()))?),
            Ty::Text => match row.try_get_unchecked::<Vec<u8>, _>(i) {
                Ok(bytes) => match String::from_utf8(bytes) {
                    Ok(s) => SqlValue::Text(s),
                    Err(e) => SqlValue::Bytes(e.into_bytes()),
                },
                Err(e) => return Err(err(e.to_string())),
            },
        };
        out.push(v);
    }
    Ok(out)
}

/// A connection string fit for messages and logs: the password of `scheme://user:password@host/...` and any
/// `password=`/`pwd=` parameter (ODBC style, query string) replaced by `***`. Plain paths come back unchanged.
pub fn redact_url(url: &str) -> String {
    let mut s = url.to_string();
    if let Some(scheme_end) = s.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = s[rest_start..].find(['/', '?', '#']).map_or(s.len(), |i| rest_start + i);
        if let Some(at) = s[rest_start..authority_end].rfind('@') {
            let userinfo = &s[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                s.replace_range(rest_start + colon + 1..rest_start + at, "***");
            }
        }
    }
    redact_params(&s)
}

fn redact_params(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let lower = rest.to_ascii_lowercase();
        let hit = ["password=", "pwd="]
            .iter()
            .filter_map(|k| {
                lower
                    .match_indices(k)
                    .find(|(i, _)| *i == 0 || matches!(lower.as_bytes()[i - 1], b';' | b'&' | b'?' | b' '))
                    .map(|(i, _)| (i, k.len()))
            })
            .min();
        let Some((i, klen)) = hit else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i + klen]);
        out.push_str("***");
        let value = &rest[i + klen..];
        let end = value.find([';', '&']).unwrap_or(value.len());
        rest = &value[end..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("postgres://erp:s3cr@t@db:5432/erp"), "postgres://erp:***@db:5432/erp");
        assert_eq!(redact_url("mysql://erp@db/erp"), "mysql://erp@db/erp");
        assert_eq!(redact_url("/var/lib/erp.db"), "/var/lib/erp.db");
        assert_eq!(redact_url("DSN=erp;UID=ferry;PWD=hunter2;X=1"), "DSN=erp;UID=ferry;PWD=***;X=1");
        assert_eq!(redact_url("postgres://db/erp?user=a&password=b"), "postgres://db/erp?user=a&password=***");
    }

    #[tokio::test]
    async fn decodes_by_runtime_type_and_streams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path).create_if_missing(true))
            .await
            .unwrap();
        pool.execute("CREATE TABLE t (a ANY, b TEXT); INSERT INTO t VALUES (1, 'x'), (1.5, NULL), ('é', X'00ff');")
            .await
            .unwrap();
        pool.close().await;

        let src = SqliteSource::open(path.to_str().unwrap()).await.unwrap();
        assert_eq!(src.kind(), "sqlite");
        assert_eq!(src.columns("SELECT a, b AS bee FROM t").await.unwrap(), vec!["a", "bee"]);
        let rows: Vec<_> = src.rows("SELECT a, b FROM t ORDER BY rowid").collect().await;
        let rows: Vec<_> = rows.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(rows[0], vec![SqlValue::Int(1), SqlValue::Text("x".into())]);
        assert_eq!(rows[1], vec![SqlValue::Float(1.5), SqlValue::Null]);
        assert_eq!(rows[2], vec![SqlValue::Text("é".into()), SqlValue::Bytes(vec![0, 255])]);

        let e = src.columns("SELECT nope FROM t").await.unwrap_err().to_string();
        assert!(e.starts_with("the query failed") && e.contains("nope"), "{e}");
        assert!(src.rows("INSERT INTO t VALUES (2, 'y')").collect::<Vec<_>>().await[0].is_err(), "must be read-only");

        let e = SqliteSource::open("/nonexistent/erp.db").await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/erp.db") && e.contains("no such file"), "{e}");
    }
}
