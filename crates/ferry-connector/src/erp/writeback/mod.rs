//! `erp::writeback`: the SQL write-back of downstream files into the ERP database. A [`WriteBack`] runs the
//! configured statements once per CSV record of one file, every value bound as a parameter (never written into
//! the SQL text), all records in **one transaction**: a failing record rolls the whole file back and the error
//! says `file:line` and why.
//!
//! Two backends, chosen by [`open_writeback`] from the [`ErpConfig`]: [`sqlx_db`] (SQLite, PostgreSQL and
//! MySQL/MariaDB, one implementation; every database of those kinds is opened read-write here and nowhere else)
//! and [`odbc`] (any ODBC driver; also chosen when `url` is an ODBC connection string).
//!
//! The optional ERP-side **ledger** ([`Ledger`], `[delivery] ledger_table`) belongs to the write-back: the
//! file's id is looked up and recorded in the same transaction as its rows, so a file the ledger holds is never
//! written back twice, even after a crash between the ERP's commit and the Connector's journal.

use std::io::Read;

use futures::future::BoxFuture;

use super::{ErpConfig, ErpKind, is_odbc_connection_string, redact_url, with_password};

pub mod odbc;
pub mod sqlx_db;

/// The columns of the ledger table: the Connector creates it with `CREATE TABLE IF NOT EXISTS` where the database
/// understands that; elsewhere (SQL Server and other ODBC databases) an admin runs `CREATE TABLE <name> (<these
/// columns>)` once.
pub const LEDGER_COLUMNS: &str =
    "file_id VARCHAR(64) NOT NULL PRIMARY KEY, file_name VARCHAR(255) NOT NULL, applied_at VARCHAR(32) NOT NULL";

/// A database the Connector writes downstream files back into. Object safe, so the configured kind is chosen at
/// run time; one value is one open connection, used for one or more files, then [`close`](WriteBack::close)d.
pub trait WriteBack: Send {
    /// The kind of database (for logs).
    fn kind(&self) -> ErpKind;

    /// Runs `job`: its statements for every remaining record of its rows, in one transaction together with the
    /// ledger's check and record. `Ok(Some(rows))` when committed, `Ok(None)` when the ledger already holds the
    /// file (nothing was written); on an error nothing of the file was written.
    fn apply(&mut self, job: WriteJob) -> BoxFuture<'_, Result<Option<u64>, WriteBackError>>;

    /// Opens a **page transaction** around the next files' [`apply`](WriteBack::apply) calls: each file then runs
    /// in a savepoint of it (a failing file rolls back to its savepoint, alone) and nothing is committed until
    /// [`commit_page`](WriteBack::commit_page). `ledger` is the ledger of the page's files: its table is created
    /// (if missing) before the transaction starts. `Ok(false)`: not supported here (ODBC), each file commits alone.
    fn begin_page<'a>(&'a mut self, ledger: &'a Ledger) -> BoxFuture<'a, Result<bool, WriteBackError>> {
        let _ = ledger;
        Box::pin(async { Ok(false) })
    }

    /// Commits the page transaction [`begin_page`](WriteBack::begin_page) opened (a no-op without one). On an
    /// error nothing of the page's files was written.
    fn commit_page(&mut self) -> BoxFuture<'_, Result<(), WriteBackError>> {
        Box::pin(async { Ok(()) })
    }

    /// Closes the connection (best effort); an open page transaction is rolled back.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// The CSV records a [`WriteJob`] writes: the header already read, the reader at the first data record.
pub type Records = csv::Reader<Box<dyn Read + Send>>;

/// One file to write back.
pub struct WriteJob {
    /// The file's name, for messages (`po_000001.csv:4: ...`).
    pub file: String,
    /// The statements, each run once per record.
    pub statements: Vec<Statement>,
    /// The data records.
    pub records: Records,
    /// The ledger to check and record the file in, if one is configured.
    pub ledger: Option<Ledger>,
}

/// One configured statement (`delivery.sql[i]`), prepared for one file: SQL with `?` placeholders (numbered for
/// the databases that need it by the backend) and which field of a record feeds each placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Statement {
    pub sql: String,
    /// The record's field (0-based) bound to each `?`, in order; an empty field is bound as NULL.
    pub columns: Vec<usize>,
}

/// Why a write-back failed; nothing of the file was written either way.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteBackError {
    /// The database could not be opened, or refused the transaction as a whole. `target` is free of passwords.
    #[error("the ERP database {target}: {reason}")]
    Database { target: String, reason: String },
    /// A record failed at `file:line` (a CSV error, a value that does not fit, a statement the database refused,
    /// an unusable ledger).
    #[error("{file}:{line}: {reason}")]
    Record { file: String, line: u64, reason: String },
}

/// Opens the write-back `erp` configures (its `url` already resolved): ODBC for `kind = "odbc"` or an ODBC
/// connection string, else the sqlx backend of its kind. The error names the target, never the password.
pub async fn open_writeback(erp: &ErpConfig) -> Result<Box<dyn WriteBack>, WriteBackError> {
    if erp.kind == ErpKind::Odbc || is_odbc_connection_string(&erp.url) {
        let target = redact_url(&erp.url);
        let password =
            erp.password().map_err(|e| WriteBackError::Database { target: target.clone(), reason: e.to_string() })?;
        return Ok(Box::new(odbc::OdbcWriteBack::new(with_password(&erp.url, password.as_deref()), target)));
    }
    Ok(Box::new(sqlx_db::SqlxWriteBack::open(erp).await?))
}

/// The ERP-side record of applied files (`[delivery] ledger_table`), read and written in the write-back's
/// transaction. The table name was checked by [`valid_table_name`]; the values are bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub table: String,
    pub file_id: String,
    pub name: String,
}

impl Ledger {
    pub(crate) fn create_sql(&self) -> String {
        format!("CREATE TABLE IF NOT EXISTS {} ({})", self.table, LEDGER_COLUMNS)
    }

    pub(crate) fn check_sql(&self, numbered: bool) -> String {
        let p = if numbered { "$1" } else { "?" };
        format!("SELECT file_id FROM {} WHERE file_id = {p}", self.table)
    }

    pub(crate) fn record_sql(&self, numbered: bool) -> String {
        let (a, b, c) = if numbered { ("$1", "$2", "$3") } else { ("?", "?", "?") };
        format!("INSERT INTO {} (file_id, file_name, applied_at) VALUES ({a}, {b}, {c})", self.table)
    }

    /// The values of the record: file id, file name, time applied (UTC, RFC 3339).
    pub(crate) fn values(&self) -> (String, String, String) {
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        (self.file_id.clone(), self.name.clone(), at)
    }

    pub(crate) fn error(&self, e: impl std::fmt::Display) -> WriteBackError {
        record_err(
            &self.name,
            1,
            format!(
                "the ledger table {t} cannot be used: {e}; create it with: CREATE TABLE {t} ({LEDGER_COLUMNS})",
                t = self.table
            ),
        )
    }
}

/// `name` or `schema.name`, each part letters, digits and `_`, not starting with a digit.
pub fn valid_table_name(t: &str) -> bool {
    let part = |p: &str| {
        p.len() <= 63
            && p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = t.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| part(p))
}

/// `?` placeholders numbered `$1, $2, ...` (PostgreSQL's form), outside quoted strings, quoted names and
/// comments. A statement that already uses `$n` is returned unchanged.
pub fn numbered_placeholders(sql: &str) -> String {
    if sql.contains("$1") {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break; // a doubled quote simply closes and reopens
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '?' => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            _ => out.push(c),
        }
    }
    out
}

/// Reads the next CSV record; `Ok(None)` at the end. Returns the record's line.
pub(crate) fn next_record<R: Read>(
    rows: &mut csv::Reader<R>,
    record: &mut csv::StringRecord,
    name: &str,
) -> Result<Option<u64>, WriteBackError> {
    let line_before = rows.position().line();
    match rows.read_record(record) {
        Ok(true) => Ok(Some(record.position().map_or(line_before, |p| p.line()))),
        Ok(false) => Ok(None),
        Err(e) => Err(csv_error(name, line_before, &e)),
    }
}

/// Field `c` of `record`, `None` (bound as NULL) when empty or missing.
pub(crate) fn field(record: &csv::StringRecord, c: usize) -> Option<&str> {
    record.get(c).filter(|v| !v.is_empty())
}

pub(crate) fn record_err(file: &str, line: u64, reason: String) -> WriteBackError {
    WriteBackError::Record { file: file.to_string(), line, reason }
}

/// A CSV error of `file` as a [`WriteBackError::Record`] with its line (`fallback_line` if the error has none).
pub fn csv_error(file: &str, fallback_line: u64, e: &csv::Error) -> WriteBackError {
    let line = e.position().map_or(fallback_line, |p| p.line());
    let reason = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the row has {len} fields, the header has {expected_len}")
        }
        csv::ErrorKind::Utf8 { .. } => "the row is not valid UTF-8".to_string(),
        _ => format!("cannot read the CSV: {e}"),
    };
    record_err(file, line, reason)
}

/// Refuses a statement whose placeholder count (as the database reports it, if it does) differs from its params.
pub(crate) fn check_count(
    placeholders: Option<usize>,
    s: &Statement,
    i: usize,
    name: &str,
) -> Result<(), WriteBackError> {
    match placeholders {
        Some(n) if n != s.columns.len() => Err(record_err(
            name,
            1,
            format!("delivery.sql[{i}] has {n} ? placeholders but lists {} params", s.columns.len()),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_marks_become_numbered_outside_quotes() {
        assert_eq!(numbered_placeholders("INSERT INTO t(a, b) VALUES (?, ?)"), "INSERT INTO t(a, b) VALUES ($1, $2)");
        assert_eq!(
            numbered_placeholders("UPDATE \"w?\" SET c = '?' || ? -- why?\nWHERE d = ?"),
            "UPDATE \"w?\" SET c = '?' || $1 -- why?\nWHERE d = $2"
        );
        assert_eq!(numbered_placeholders("SELECT $1, '?'"), "SELECT $1, '?'");
    }

    #[test]
    fn ledger_table_names_are_plain_identifiers() {
        assert!(valid_table_name("ferry_applied") && valid_table_name("erp.ferry_applied"));
        for bad in ["ferry applied", "x;DROP TABLE t", "1abc", "a.b.c", ""] {
            assert!(!valid_table_name(bad), "{bad}");
        }
    }
}
