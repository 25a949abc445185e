//! The SQLite source: an ERP database file opened read-only, read with `rusqlite` on a blocking thread. Rows go
//! to the async side in chunks through a bounded channel ([`Source::row_chunks`]); the values are copied straight
//! from SQLite's row into the slots of a recycled chunk, so a long extract allocates nothing per row or per field
//! once the first chunks exist.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use sqlx::sqlite::SqliteConnectOptions;

use super::{Recycle, Source, SourceError, SqlValue, TextEncoding, blocking, redact_url};
use crate::erp::decode_text;

/// Rows per chunk of [`Source::rows`] (the extract asks [`Source::row_chunks`] for its own size).
const ROWS_CHUNK: usize = 256;
/// Chunks in flight between the reading thread and the stream.
const CHUNKS_IN_FLIGHT: usize = 4;
/// How long a read waits for a writer's lock on the database before failing (what sqlx used).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An SQLite database opened read-only.
#[derive(Debug, Clone)]
pub struct SqliteSource {
    path: PathBuf,
    encoding: TextEncoding,
}

impl SqliteSource {
    /// Open `url_or_path` (`sqlite:///path/erp.db`, `sqlite:erp.db?mode=ro` or a plain file path) read-only. The
    /// file must exist and be an SQLite database: the Connector never creates or writes the ERP database.
    pub async fn open(url_or_path: &str) -> Result<SqliteSource, SourceError> {
        let target = redact_url(url_or_path);
        let open_err = |reason: String| SourceError::Open { target: target.clone(), reason };
        let path = if url_or_path.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url_or_path).map_err(|e| open_err(e.to_string()))?;
            opts.get_filename().to_path_buf()
        } else {
            let path = Path::new(url_or_path);
            if !path.is_file() {
                return Err(open_err("no such file; check the path in the connector configuration".into()));
            }
            path.to_path_buf()
        };
        let p = path.clone();
        // Read the schema once, so that a missing file or one that is not a database fails here, not mid-extract.
        blocking("SQLite", move || {
            let conn = connect(&p).map_err(|e| SourceError::Query(e.to_string()))?;
            conn.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))
                .map_err(|e| SourceError::Query(e.to_string()))
        })
        .await
        .map_err(|e| match e {
            SourceError::Query(reason) => open_err(reason),
            other => other,
        })?;
        Ok(SqliteSource { path, encoding: TextEncoding::Utf8 })
    }

    /// Decode text that is not UTF-8, and BLOBs, from `encoding` (`[erp] encoding`).
    pub fn with_encoding(mut self, encoding: TextEncoding) -> SqliteSource {
        self.encoding = encoding;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// A read-only connection: never creates the file, never writes.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(conn)
}

fn query_err(e: rusqlite::Error) -> SourceError {
    SourceError::Query(e.to_string())
}

impl Source for SqliteSource {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn columns<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        let (path, sql) = (self.path.clone(), sql.to_string());
        Box::pin(blocking("SQLite", move || {
            let conn = connect(&path).map_err(query_err)?;
            let stmt = conn.prepare(&sql).map_err(query_err)?;
            Ok(stmt.column_names().into_iter().map(str::to_string).collect())
        }))
    }

    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
        use futures::StreamExt;
        self.row_chunks(sql, ROWS_CHUNK, Recycle::default())
            .flat_map(|chunk| {
                let items: Vec<Result<Vec<SqlValue>, SourceError>> = match chunk {
                    Ok(rows) => rows.into_iter().map(Ok).collect(),
                    Err(e) => vec![Err(e)],
                };
                futures::stream::iter(items)
            })
            .boxed()
    }

    fn row_chunks<'a>(
        &'a self,
        sql: &'a str,
        chunk_rows: usize,
        recycle: Recycle,
    ) -> BoxStream<'a, Result<Vec<Vec<SqlValue>>, SourceError>> {
        use futures::StreamExt;
        let (path, sql, encoding) = (self.path.clone(), sql.to_string(), self.encoding);
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
        let start = async move {
            tokio::task::spawn_blocking(move || {
                let mut chunks = Chunks { tx, recycle, chunk_rows: chunk_rows.max(1) };
                if let Err(e) = read(&path, &sql, encoding, &mut chunks) {
                    let _ = chunks.tx.blocking_send(Err(e));
                }
            });
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
        };
        futures::stream::once(start).flatten().boxed()
    }
}

type ChunkSender = tokio::sync::mpsc::Sender<Result<Vec<Vec<SqlValue>>, SourceError>>;

struct Chunks {
    tx: ChunkSender,
    recycle: Recycle,
    chunk_rows: usize,
}

impl Chunks {
    /// Send the first `len` rows of `chunk`; `false` if the stream was dropped.
    fn send(&self, mut chunk: Vec<Vec<SqlValue>>, len: usize) -> bool {
        chunk.truncate(len);
        self.tx.blocking_send(Ok(chunk)).is_ok()
    }
}

/// Runs on a blocking thread: run `sql` and send its rows in chunks, reusing recycled ones. The rows read before
/// an error are sent before it is returned.
fn read(path: &Path, sql: &str, encoding: TextEncoding, chunks: &mut Chunks) -> Result<(), SourceError> {
    let conn = connect(path).map_err(query_err)?;
    let mut stmt = conn.prepare(sql).map_err(query_err)?;
    let n = stmt.column_count();
    let names: Vec<String> = stmt.column_names().into_iter().map(str::to_string).collect();
    let mut rows = stmt.query([]).map_err(query_err)?;
    let mut chunk = chunks.recycle.take().unwrap_or_default();
    let mut len = 0;
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => {
                if len > 0 && !chunks.send(chunk, len) {
                    return Ok(());
                }
                return Err(query_err(e));
            }
        };
        if len == chunk.len() {
            chunk.push(Vec::with_capacity(n));
        }
        let out = &mut chunk[len];
        out.resize(n, SqlValue::Null);
        for (i, slot) in out.iter_mut().enumerate() {
            let value = row.get_ref(i).map_err(|e| SourceError::Decode {
                column: i + 1,
                name: names.get(i).cloned().unwrap_or_default(),
                reason: e.to_string(),
            })?;
            fill_value(slot, value, encoding);
        }
        len += 1;
        if len == chunks.chunk_rows {
            if !chunks.send(chunk, len) {
                return Ok(()); // the stream was dropped: stop reading
            }
            chunk = chunks.recycle.take().unwrap_or_default();
            len = 0;
        }
    }
    if len > 0 {
        chunks.send(chunk, len);
    }
    Ok(())
}

/// Put `value` into `slot` by the type SQLite holds for it (SQLite types values, not columns), reusing the slot's
/// string or bytes when it already holds one: text is UTF-8 if valid, else decoded from a legacy `encoding`, else
/// (UTF-8 configured) bytes; a BLOB is bytes, or text decoded by a legacy encoding.
pub(crate) fn fill_value(slot: &mut SqlValue, value: ValueRef<'_>, encoding: TextEncoding) {
    match value {
        ValueRef::Null => *slot = SqlValue::Null,
        ValueRef::Integer(n) => *slot = SqlValue::Int(n),
        ValueRef::Real(f) => *slot = SqlValue::Float(f),
        ValueRef::Text(b) => fill_text(slot, b, encoding),
        ValueRef::Blob(b) if encoding == TextEncoding::Utf8 => fill_bytes(slot, b),
        ValueRef::Blob(b) => fill_text(slot, b, encoding),
    }
}

pub(crate) fn fill_text(slot: &mut SqlValue, b: &[u8], encoding: TextEncoding) {
    match std::str::from_utf8(b) {
        Ok(s) => match slot {
            SqlValue::Text(t) => {
                t.clear();
                t.push_str(s);
            }
            other => *other = SqlValue::Text(s.to_owned()),
        },
        Err(_) if encoding == TextEncoding::Utf8 => fill_bytes(slot, b),
        Err(_) => *slot = SqlValue::Text(decode_text(b, encoding)),
    }
}

fn fill_bytes(slot: &mut SqlValue, b: &[u8]) {
    match slot {
        SqlValue::Bytes(v) => {
            v.clear();
            v.extend_from_slice(b);
        }
        other => *other = SqlValue::Bytes(b.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use sqlx::Executor;
    use sqlx::sqlite::SqlitePool;

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
        let e = SqliteSource::open(&format!("sqlite:{}", dir.path().join("none.db").display())).await.unwrap_err();
        assert!(e.to_string().starts_with("cannot open the ERP database"), "{e}");
        let not_db = dir.path().join("notes.txt");
        std::fs::write(&not_db, "not a database, just some text that is long enough to have a header").unwrap();
        let e = SqliteSource::open(not_db.to_str().unwrap()).await.unwrap_err().to_string();
        assert!(e.contains("not a database"), "{e}");
        // the sqlx-style URL form reaches the same file
        let src = SqliteSource::open(&format!("sqlite:{}?mode=ro", path.display())).await.unwrap();
        assert_eq!(src.path(), path.as_path());
    }

    /// Chunks come back filled in place: recycled rows and strings are reused, never leak old values (a NULL
    /// or a number in a slot that held text, a shorter text), and a partial chunk comes before a failure.
    #[tokio::test]
    async fn chunks_reuse_recycled_rows_and_stop_at_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&path).create_if_missing(true))
            .await
            .unwrap();
        pool.execute(
            "CREATE TABLE t (id INTEGER, v ANY); INSERT INTO t VALUES (1, 'a long text value'), (2, 'b'), \
             (3, NULL), (4, 7), (5, 'short'), (6, X'ff');",
        )
        .await
        .unwrap();
        pool.close().await;
        let src = SqliteSource::open(path.to_str().unwrap()).await.unwrap();

        let recycle = Recycle::default();
        let mut got = Vec::new();
        let mut chunks = src.row_chunks("SELECT id, v FROM t ORDER BY id", 2, recycle.clone());
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.len() <= 2);
            got.extend(chunk.iter().cloned());
            recycle.give(chunk);
        }
        let want = [
            SqlValue::Text("a long text value".into()),
            SqlValue::Text("b".into()),
            SqlValue::Null,
            SqlValue::Int(7),
            SqlValue::Text("short".into()),
            SqlValue::Bytes(vec![0xff]),
        ];
        assert_eq!(got.len(), 6);
        for (i, (row, v)) in got.iter().zip(want).enumerate() {
            assert_eq!(row, &vec![SqlValue::Int(i as i64 + 1), v]);
        }

        // an error while stepping (a value the query cannot compute) comes after the rows read before it
        let sql = "SELECT id, CASE WHEN id < 4 THEN id ELSE json('x' || id) END FROM t";
        let items: Vec<_> = src.row_chunks(sql, 2, Recycle::default()).collect().await;
        let rows: usize = items.iter().filter_map(|c| c.as_ref().ok()).map(Vec::len).sum();
        assert_eq!(rows, 3, "{items:?}");
        let e = items.last().unwrap().as_ref().unwrap_err().to_string();
        assert!(e.starts_with("the query failed") && e.contains("JSON"), "{e}");

        // dropping the stream stops the reader
        let mut chunks = src.row_chunks(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT i FROM n",
            16,
            Recycle::default(),
        );
        assert_eq!(chunks.next().await.unwrap().unwrap().len(), 16);
        drop(chunks);
    }
}
