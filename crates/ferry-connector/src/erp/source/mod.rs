//! `erp::source`: where the Connector reads ERP data from: a [`Source`] runs one SQL query and streams its rows as [`SqlValue`]s,
//! never holding a whole result in memory. [`SqliteSource`] reads an SQLite database read-only, [`OdbcSource`] any
//! database with an ODBC driver, [`CsvDirSource`] a folder of CSV files an ERP job exports (its "SQL" is a small
//! strict `SELECT ... FROM "file.csv"`, see [`CsvQuery`]).
//!
//! Error messages say which database or query failed and why, and never contain a password: connection strings
//! are shown through [`redact_url`](super::redact_url).

use futures::future::BoxFuture;
use futures::stream::BoxStream;

mod csvdir;
mod mysql;
mod odbc;
mod pgcopy;
mod postgres;
mod sqlite;

pub use csvdir::{CsvDirSource, CsvQuery};
pub use mysql::MySqlSource;
pub use odbc::OdbcSource;
pub use postgres::PostgresSource;
#[cfg(test)]
pub(crate) use postgres::numeric_to_string as postgres_numeric_to_string;
pub use sqlite::SqliteSource;

use super::{ErpConfig, ErpKind, TextEncoding, is_odbc_connection_string, redact_url, scrub, with_password};

/// One value of a result row, by the type the database reports for it at run time.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Int(i64),
    Float(f64),
    /// An exact decimal as the database prints it (`-12.3400`, `0.5`, `7`): never goes through a float.
    Decimal(String),
    Bool(bool),
    Date(chrono::NaiveDate),
    /// A date and time without zone (a zoned timestamp is converted to its local date-time by the source).
    Timestamp(chrono::NaiveDateTime),
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

    /// [`rows`](Source::rows) in chunks of up to `chunk_rows` rows, for bulk readers (the extract). The caller gives
    /// chunks it is done with back to `recycle`, so a source that fills chunks itself (SQLite) reuses their rows and
    /// strings instead of allocating per row and per field. The rows read before an error come first, then the
    /// error. The default groups [`rows`](Source::rows).
    fn row_chunks<'a>(
        &'a self,
        sql: &'a str,
        chunk_rows: usize,
        recycle: Recycle,
    ) -> BoxStream<'a, Result<Vec<Vec<SqlValue>>, SourceError>> {
        let _ = recycle;
        chunked(self.rows(sql), chunk_rows)
    }
}

/// Chunks of rows a consumer is done with, handed back to the source that filled them so that their buffers are
/// reused (see [`Source::row_chunks`]). Holds a few chunks at most; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Recycle(std::sync::Arc<std::sync::Mutex<Vec<Vec<Vec<SqlValue>>>>>);

/// Chunks a [`Recycle`] keeps; more are dropped.
const RECYCLED_CHUNKS: usize = 8;

impl Recycle {
    /// Give back a chunk whose rows were consumed.
    pub fn give(&self, chunk: Vec<Vec<SqlValue>>) {
        if let Ok(mut v) = self.0.lock()
            && v.len() < RECYCLED_CHUNKS
        {
            v.push(chunk);
        }
    }

    /// A chunk to fill again (its rows still hold their old values and buffers), if one was given back.
    pub fn take(&self) -> Option<Vec<Vec<SqlValue>>> {
        self.0.lock().ok()?.pop()
    }
}

/// Group a row stream into chunks of up to `chunk_rows`; a partial chunk goes out before an error.
fn chunked<'a>(
    rows: BoxStream<'a, Result<Vec<SqlValue>, SourceError>>,
    chunk_rows: usize,
) -> BoxStream<'a, Result<Vec<Vec<SqlValue>>, SourceError>> {
    use futures::StreamExt;
    let chunk_rows = chunk_rows.max(1);
    futures::stream::unfold((rows, None::<SourceError>, false), move |(mut rows, pending, done)| async move {
        if let Some(e) = pending {
            return Some((Err(e), (rows, None, true)));
        }
        if done {
            return None;
        }
        let mut chunk = Vec::with_capacity(chunk_rows);
        while chunk.len() < chunk_rows {
            match rows.next().await {
                Some(Ok(row)) => chunk.push(row),
                Some(Err(e)) if chunk.is_empty() => return Some((Err(e), (rows, None, true))),
                Some(Err(e)) => return Some((Ok(chunk), (rows, Some(e), false))),
                None if chunk.is_empty() => return None,
                None => return Some((Ok(chunk), (rows, None, true))),
            }
        }
        Some((Ok(chunk), (rows, None, false)))
    })
    .boxed()
}

/// Decode every column of a sqlx row (SQLite, PostgreSQL, MySQL) with `decode`; NULL is handled here, and an error names
/// the column.
fn decode_sqlx_row<R>(
    row: &R,
    decode: &impl Fn(<R::Database as sqlx::Database>::ValueRef<'_>) -> Result<SqlValue, String>,
) -> Result<Vec<SqlValue>, SourceError>
where
    R: sqlx::Row,
    usize: sqlx::ColumnIndex<R>,
{
    use sqlx::{Column, ValueRef};
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
        out.push(decode(raw).map_err(err)?);
    }
    Ok(out)
}

/// A PostgreSQL or MySQL connection failure with what to do about it: an untrusted TLS certificate
/// ([`untrusted_certificate`]) needs the server's CA in the URL (`ca_param`), anything else is the URL, the
/// password or the server's user.
fn open_hint(reason: String, untrusted: bool, ca_param: &str) -> String {
    if untrusted {
        format!(
            "{reason}; the database server's TLS certificate is not trusted: add {ca_param}=<file of its CA, PEM> to \
             [erp] url (or install the CA in the system's certificate store)"
        )
    } else {
        format!("{reason}; check [erp] url, the password and that the server accepts this user")
    }
}

/// Whether a connection failed because the server's TLS certificate could not be verified: a
/// `rustls::Error::InvalidCertificate` somewhere in the error's chain (an I/O error of the handshake carries it).
fn untrusted_certificate(e: &sqlx::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(_)) = candidate.downcast_ref::<rustls::Error>() {
                return true;
            }
        }
        cur = inner.and_then(|i| i.source()).or_else(|| err.source());
    }
    false
}

/// [`Source::columns`] of a sqlx pool (SQLite, PostgreSQL, MySQL): the query is prepared, not run.
fn sqlx_columns<'a, DB>(
    pool: &'a sqlx::Pool<DB>,
    sql: &'a str,
    password: Option<&'a str>,
) -> futures::future::BoxFuture<'a, Result<Vec<String>, SourceError>>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    use sqlx::{Column, Executor, SqlSafeStr, Statement};
    Box::pin(async move {
        let stmt = pool
            .prepare(sqlx::AssertSqlSafe(sql).into_sql_str())
            .await
            .map_err(|e| SourceError::Query(scrub(e, password)))?;
        Ok(stmt.columns().iter().map(|c| c.name().to_string()).collect())
    })
}

/// [`Source::rows`] of a sqlx pool: rows stream as the server sends them, each value decoded by `decode`.
fn sqlx_rows<'a, DB, F>(
    pool: &'a sqlx::Pool<DB>,
    sql: &'a str,
    password: Option<&'a str>,
    decode: F,
) -> futures::stream::BoxStream<'a, Result<Vec<SqlValue>, SourceError>>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    F: Fn(<DB as sqlx::Database>::ValueRef<'_>) -> Result<SqlValue, String> + Send + Sync + 'a,
{
    use futures::StreamExt;
    sqlx::query::<DB>(sqlx::AssertSqlSafe(sql))
        .fetch(pool)
        .map(move |row| {
            row.map_err(|e| SourceError::Query(scrub(e, password))).and_then(|r| decode_sqlx_row(&r, &decode))
        })
        .boxed()
}

/// Where a blocking reader (ODBC, a CSV folder) puts its rows: they go to the stream in batches, through a
/// channel of a few batches, so memory stays bounded whatever the size of the result.
pub(crate) struct RowSink {
    tx: tokio::sync::mpsc::Sender<Result<Vec<Vec<SqlValue>>, SourceError>>,
    batch: Vec<Vec<SqlValue>>,
    batch_rows: usize,
}

impl RowSink {
    /// Queue one row; `false` when the stream was dropped and the reader should stop.
    pub(crate) fn push(&mut self, row: Vec<SqlValue>) -> bool {
        self.batch.push(row);
        self.batch.len() < self.batch_rows || self.tx.blocking_send(Ok(std::mem::take(&mut self.batch))).is_ok()
    }
}

/// Batches of rows in flight between a blocking reader and the stream.
const BATCHES_IN_FLIGHT: usize = 4;

/// [`Source::rows`] of a blocking reader: `fetch` runs on a blocking thread and pushes rows into a [`RowSink`];
/// the rows read before an error come first, then the error.
pub(crate) fn blocking_rows<'a>(
    batch_rows: usize,
    fetch: impl FnOnce(&mut RowSink) -> Result<(), SourceError> + Send + 'static,
) -> futures::stream::BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
    use futures::stream::{self, StreamExt};
    let start = async move {
        let (tx, rx) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
        tokio::task::spawn_blocking(move || {
            let mut sink = RowSink { tx, batch: Vec::with_capacity(batch_rows), batch_rows };
            let result = fetch(&mut sink);
            if !sink.batch.is_empty() {
                let _ = sink.tx.blocking_send(Ok(std::mem::take(&mut sink.batch)));
            }
            if let Err(e) = result {
                let _ = sink.tx.blocking_send(Err(e));
            }
        });
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|batch| (batch, rx)) })
    };
    stream::once(start)
        .flatten()
        .flat_map(|batch| {
            let items: Vec<Result<Vec<SqlValue>, SourceError>> = match batch {
                Ok(rows) => rows.into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            };
            stream::iter(items)
        })
        .boxed()
}

/// Runs a blocking reader's `f` on a blocking thread; `what` names the reader if that thread fails.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T, SourceError> + Send + 'static,
) -> Result<T, SourceError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SourceError::Query(format!("the {what} thread failed: {e}")))?
}

/// Open the source the `[erp]` section configures (its `url` already resolved). The error names the kind and
/// target (password redacted).
pub async fn open_source(erp: &ErpConfig) -> Result<Box<dyn Source>, SourceError> {
    let url = erp.url.as_str();
    let password = || erp.password().map_err(|e| SourceError::Open { target: redact_url(url), reason: e.to_string() });
    let encoding = erp.encoding;
    Ok(match erp.kind {
        ErpKind::Sqlite => Box::new(SqliteSource::open(url).await?.with_encoding(encoding)),
        ErpKind::Postgres => Box::new(PostgresSource::open(url, password()?.as_deref(), encoding).await?),
        ErpKind::MySql => Box::new(MySqlSource::open(url, password()?.as_deref(), encoding).await?),
        ErpKind::Odbc => Box::new(OdbcSource::open(url, password()?.as_deref()).await?),
        ErpKind::Csv => Box::new(CsvDirSource::open(url)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_become_text_by_the_configured_encoding() {
        // valid UTF-8 stays as it is; other bytes are decoded only when a legacy encoding is configured
        assert_eq!(TextEncoding::Windows1252.value_from_bytes("é".into()), SqlValue::Text("é".into()));
        assert_eq!(TextEncoding::Windows1252.value_from_bytes(vec![0xe9]), SqlValue::Text("é".into()));
        assert_eq!(TextEncoding::Utf8.value_from_bytes(vec![0xe9]), SqlValue::Bytes(vec![0xe9]));
    }
}
