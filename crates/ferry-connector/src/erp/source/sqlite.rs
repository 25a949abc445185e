//! The SQLite source: an ERP database file opened read-only.

use std::path::Path;
use std::str::FromStr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::sqlite::{Sqlite, SqliteConnectOptions, SqlitePool, SqlitePoolOptions, SqliteValueRef};
use sqlx::{Decode, TypeInfo, ValueRef};

use super::{Source, SourceError, SqlValue, TextEncoding, redact_url, sqlx_columns, sqlx_rows};

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
        sqlx_columns(&self.pool, sql, None)
    }

    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
        let encoding = self.encoding;
        sqlx_rows(&self.pool, sql, None, move |raw| decode_value(raw, encoding))
    }
}

fn dec<'r, T: Decode<'r, Sqlite>>(raw: SqliteValueRef<'r>) -> Result<T, String> {
    T::decode(raw).map_err(|e| e.to_string())
}

/// Decode a value by the type SQLite holds for it (SQLite types values, not columns).
fn decode_value(raw: SqliteValueRef<'_>, encoding: TextEncoding) -> Result<SqlValue, String> {
    Ok(match raw.type_info().name() {
        "INTEGER" | "BOOLEAN" | "INT4" => SqlValue::Int(dec::<i64>(raw)?),
        "REAL" => SqlValue::Float(dec::<f64>(raw)?),
        "BLOB" => match encoding {
            TextEncoding::Utf8 => SqlValue::Bytes(dec::<Vec<u8>>(raw)?),
            legacy => legacy.value_from_bytes(dec::<Vec<u8>>(raw)?),
        },
        _ => encoding.value_from_bytes(dec::<Vec<u8>>(raw)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use sqlx::Executor;

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
