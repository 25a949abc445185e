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
mod odbc;
mod sqlite;

pub use csvdir::{CsvDirSource, CsvQuery};
pub use odbc::{OdbcSource, is_odbc_connection_string, with_password};
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

/// Open the source the `[erp]` section configures. The error names the kind and target (password redacted).
pub async fn open_source(erp: &ErpConfig, url: &str) -> Result<Box<dyn Source>, SourceError> {
    match erp.kind.as_str() {
        "sqlite" => Ok(Box::new(SqliteSource::open(url).await?)),
        "odbc" => {
            let password =
                erp.password().map_err(|e| SourceError::Open { target: redact_url(url), reason: format!("{e:#}") })?;
            Ok(Box::new(OdbcSource::open(url, password.as_deref()).await?))
        }
        "csv" => Ok(Box::new(CsvDirSource::open(url)?)),
        other => Err(SourceError::Open {
            target: redact_url(url),
            reason: format!("unknown ERP kind {other:?}; use one of: sqlite, odbc, csv"),
        }),
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
}
