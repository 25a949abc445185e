//! The SQLite source: an ERP database file opened read-only.

use std::path::Path;
use std::str::FromStr;

use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteRow};
use sqlx::{AssertSqlSafe, Column, Executor, Row, SqlSafeStr, Statement, TypeInfo, ValueRef};

use super::{Source, SourceError, SqlValue, TextEncoding, redact_url};

/// An SQLite database opened read-only.
#[derive(Debug, Clone)]
pub struct SqliteSource {
    pool: SqlitePool,
    encoding: TextEncoding,
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
        Ok(SqliteSource { pool, encoding: TextEncoding::Utf8 })
    }

    /// Decode text that is not UTF-8, and BLOBs, from `encoding` (`[erp] encoding`).
    pub fn with_encoding(mut self, encoding: TextEncoding) -> SqliteSource {
        self.encoding = encoding;
        self
    }

    /// Use an already opened pool (tests, or a caller that configures its own options).
    pub fn from_pool(pool: SqlitePool) -> SqliteSource {
        SqliteSource { pool, encoding: TextEncoding::Utf8 }
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
            .map(|row| {
                row.map_err(|e| SourceError::Query(e.to_string())).and_then(|r| decode_sqlite_row(&r, self.encoding))
            })
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
fn decode_sqlite_row(row: &SqliteRow, encoding: TextEncoding) -> Result<Vec<SqlValue>, SourceError> {
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
            Ty::Blob => {
                let bytes = row.try_get_unchecked::<Vec<u8>, _>(i).map_err(|e| err(e.to_string()))?;
                match encoding {
                    TextEncoding::Utf8 => SqlValue::Bytes(bytes),
                    legacy => legacy.value_from_bytes(bytes),
                }
            }
            Ty::Text => {
                encoding.value_from_bytes(row.try_get_unchecked::<Vec<u8>, _>(i).map_err(|e| err(e.to_string()))?)
            }
        };
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

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

        // a legacy encoding turns cp1252 text and BLOBs into UTF-8 text
        let src = src.with_encoding(TextEncoding::Windows1252);
        let rows: Vec<_> = src.rows("SELECT CAST(X'43616fe9' AS TEXT), X'80'").collect().await;
        assert_eq!(rows[0].as_ref().unwrap(), &vec![SqlValue::Text("Caoé".into()), SqlValue::Text("€".into())]);

        let e = SqliteSource::open("/nonexistent/erp.db").await.unwrap_err().to_string();
        assert!(e.contains("/nonexistent/erp.db") && e.contains("no such file"), "{e}");
    }
}
