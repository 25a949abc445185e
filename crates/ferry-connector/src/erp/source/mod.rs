//! Where the Connector reads ERP data from: a [`Source`] runs one SQL query and streams its rows as [`SqlValue`]s,
//! never holding a whole result in memory. [`SqliteSource`] reads an SQLite database read-only, [`OdbcSource`] any
//! database with an ODBC driver, [`CsvDirSource`] a folder of CSV files an ERP job exports (its "SQL" is a small
//! strict `SELECT ... FROM "file.csv"`, see [`CsvQuery`]).
//!
//! Error messages say which database or query failed and why, and never contain a password: connection strings
//! are shown through [`redact_url`].

use futures::future::BoxFuture;
use futures::stream::BoxStream;

mod csvdir;
mod mysql;
mod odbc;
mod postgres;
mod sqlite;

pub use csvdir::{CsvDirSource, CsvQuery};
pub use mysql::MySqlSource;
pub use odbc::{OdbcSource, is_odbc_connection_string, with_password};
pub use postgres::PostgresSource;
#[cfg(test)]
pub(crate) use postgres::numeric_to_string as postgres_numeric_to_string;
pub(crate) use postgres::pw_in_url as postgres_pw_in_url;
pub use sqlite::SqliteSource;

use crate::config::ErpConfig;

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
        let end =
            if value.starts_with('{') { braced_end(value) } else { value.find([';', '&']).unwrap_or(value.len()) };
        rest = &value[end..];
    }
}

/// The length of an ODBC `{...}` value at the start of `value` (`}}` is an escaped `}`); all of it if unclosed.
fn braced_end(value: &str) -> usize {
    let b = value.as_bytes();
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'}' {
            if b.get(i + 1) == Some(&b'}') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
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

/// A PostgreSQL or MySQL connection failure with what to do about it: an untrusted TLS certificate needs the
/// server's CA in the URL (`ca_param`), anything else is the URL, the password or the server's user.
fn open_hint(reason: String, ca_param: &str) -> String {
    if reason.contains("certificate") {
        format!(
            "{reason}; the database server's TLS certificate is not trusted: add {ca_param}=<file of its CA, PEM> to \
             [erp] url (or install the CA in the system's certificate store)"
        )
    } else {
        format!("{reason}; check [erp] url, the password and that the server accepts this user")
    }
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

/// Open the source the `[erp]` section configures. The error names the kind and target (password redacted).
pub async fn open_source(erp: &ErpConfig, url: &str) -> Result<Box<dyn Source>, SourceError> {
    let encoding =
        TextEncoding::parse(&erp.encoding).map_err(|reason| SourceError::Open { target: redact_url(url), reason })?;
    match erp.kind.as_str() {
        "sqlite" => Ok(Box::new(SqliteSource::open(url).await?.with_encoding(encoding))),
        "postgres" | "postgresql" => {
            let password = erp.password().map_err(|reason| SourceError::Open { target: redact_url(url), reason })?;
            Ok(Box::new(PostgresSource::open(url, password.as_deref(), encoding).await?))
        }
        "mysql" | "mariadb" => {
            let password = erp.password().map_err(|reason| SourceError::Open { target: redact_url(url), reason })?;
            Ok(Box::new(MySqlSource::open(url, password.as_deref(), encoding).await?))
        }
        "odbc" => {
            let password = erp.password().map_err(|reason| SourceError::Open { target: redact_url(url), reason })?;
            Ok(Box::new(OdbcSource::open(url, password.as_deref()).await?))
        }
        "csv" => Ok(Box::new(CsvDirSource::open(url)?)),
        other => Err(SourceError::Open {
            target: redact_url(url),
            reason: format!("unknown ERP kind {other:?}; use one of: sqlite, postgres, mysql, odbc, csv"),
        }),
    }
}

/// How the ERP stores text that is not UTF-8 (`[erp] encoding`). PostgreSQL and MySQL/MariaDB convert text
/// columns to UTF-8 themselves; the setting applies to byte values (BLOB, BYTEA, VARBINARY, a latin1 column read
/// as bytes) and to text that is not valid UTF-8 (SQLite, a PostgreSQL `SQL_ASCII` database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TextEncoding {
    /// UTF-8: bytes that are valid UTF-8 are text, other bytes stay bytes (and fail in a text column).
    #[default]
    Utf8,
    /// Windows code page 1252 (what most "Latin-1" Windows software and MySQL's `latin1` really write).
    Windows1252,
    /// ISO-8859-1: every byte is the Unicode code point of the same number.
    Latin1,
}

impl TextEncoding {
    /// `utf-8`, `windows-1252` (`cp1252`) or `latin-1` (`iso-8859-1`), any case.
    pub fn parse(name: &str) -> Result<TextEncoding, String> {
        match name.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "" | "utf-8" | "utf8" => Ok(TextEncoding::Utf8),
            "windows-1252" | "cp1252" => Ok(TextEncoding::Windows1252),
            "latin-1" | "latin1" | "iso-8859-1" => Ok(TextEncoding::Latin1),
            _ => Err(format!(
                "encoding {name:?} is not supported; set [erp] encoding to \"utf-8\", \"windows-1252\" or \"latin-1\""
            )),
        }
    }

    /// A byte value as the source should report it: UTF-8 text if valid, else decoded from a legacy encoding,
    /// else (UTF-8 configured) the bytes themselves.
    pub fn value_from_bytes(self, bytes: Vec<u8>) -> SqlValue {
        match String::from_utf8(bytes) {
            Ok(s) => SqlValue::Text(s),
            Err(e) if self == TextEncoding::Utf8 => SqlValue::Bytes(e.into_bytes()),
            Err(e) => SqlValue::Text(decode_text(e.as_bytes(), self)),
        }
    }
}

/// `bytes` in `encoding` as UTF-8 text. Never fails: invalid UTF-8 becomes U+FFFD; every Windows-1252 and Latin-1
/// byte has a character.
pub fn decode_text(bytes: &[u8], encoding: TextEncoding) -> String {
    match encoding {
        TextEncoding::Utf8 => String::from_utf8_lossy(bytes).into_owned(),
        TextEncoding::Windows1252 => encoding_rs::WINDOWS_1252.decode_without_bom_handling(bytes).0.into_owned(),
        TextEncoding::Latin1 => bytes.iter().map(|&b| char::from(b)).collect(),
    }
}

/// `message` with every occurrence of `secret` replaced by `***`: database drivers may quote a connection string.
pub(crate) fn scrub(message: impl std::fmt::Display, secret: Option<&str>) -> String {
    let message = message.to_string();
    match secret {
        Some(s) if !s.is_empty() => message.replace(s, "***"),
        _ => message,
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
        assert_eq!(redact_url("DSN=erp;PWD={a;b}}c};UID=x"), "DSN=erp;PWD=***;UID=x");
        assert_eq!(redact_url("DSN=erp;PWD={a;b"), "DSN=erp;PWD=***");
    }

    #[test]
    fn legacy_encodings_become_utf8() {
        let cp1252 = b"Caf\xe9 \x80 \x93quoted\x94 na\xefve";
        assert_eq!(decode_text(cp1252, TextEncoding::Windows1252), "Café € “quoted” naïve");
        assert_eq!(decode_text(b"Caf\xe9 \xff", TextEncoding::Latin1), "Café ÿ");
        assert_eq!(decode_text(b"\x80", TextEncoding::Latin1), "\u{80}");
        assert_eq!(TextEncoding::parse("Windows-1252").unwrap(), TextEncoding::Windows1252);
        assert_eq!(TextEncoding::parse("latin1").unwrap(), TextEncoding::Latin1);
        assert_eq!(TextEncoding::parse("").unwrap(), TextEncoding::Utf8);
        assert!(TextEncoding::parse("ebcdic").unwrap_err().contains("windows-1252"));
        // valid UTF-8 stays as it is; other bytes are decoded only when a legacy encoding is configured
        assert_eq!(TextEncoding::Windows1252.value_from_bytes("é".into()), SqlValue::Text("é".into()));
        assert_eq!(TextEncoding::Windows1252.value_from_bytes(vec![0xe9]), SqlValue::Text("é".into()));
        assert_eq!(TextEncoding::Utf8.value_from_bytes(vec![0xe9]), SqlValue::Bytes(vec![0xe9]));
        assert_eq!(scrub("bad url postgres://u:hunter2@h", Some("hunter2")), "bad url postgres://u:***@h");
    }
}
