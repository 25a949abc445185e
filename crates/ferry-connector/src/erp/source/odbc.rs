//! The ODBC source: any database with an ODBC driver (SQL Server, Progress OpenEdge, Pervasive/Actian Zen, DB2,
//! and PostgreSQL or SQLite through their drivers), reached through the unixODBC driver manager that `odbc-api`
//! builds in (feature `vendored-unix-odbc`). The driver itself is a shared library loaded at run time, named in the
//! connection string (`Driver=/usr/lib/x86_64-linux-gnu/odbc/psqlodbcw.so;Server=...`) or through a DSN of
//! `odbc.ini` (`DSN=erp;UID=ferry`).
//!
//! ODBC calls block, so every query runs on a blocking thread: it fetches row by row, reads each value with
//! `SQLGetData` into the type its column description asks for (so a value of any length is read whole), and sends
//! the rows in batches of [`BATCH_ROWS`] through a channel of a few batches (`super::blocking_rows`): memory stays
//! bounded whatever the size of the result, and dropping the stream stops the thread at the next batch.
//!
//! Types: TINYINT/SMALLINT/INTEGER/BIGINT -> [`SqlValue::Int`] (an unsigned BIGINT -> `Decimal`), DECIMAL/NUMERIC ->
//! [`SqlValue::Decimal`] as the driver prints it (never through a float), REAL/FLOAT/DOUBLE -> `Float`, BIT ->
//! `Bool`, DATE -> `Date`, TIMESTAMP -> `Timestamp`, BINARY/VARBINARY/LONGVARBINARY -> `Bytes`, everything else
//! (CHAR, VARCHAR, WCHAR, TIME, driver-specific types) -> `Text` (or `Bytes` if the driver's text is not UTF-8),
//! NULL -> `Null`.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use odbc_api::sys::{Date, Timestamp};
use odbc_api::{Bit, Connection, ConnectionOptions, Cursor, CursorRow, DataType, Nullable, ResultSetMetadata};

use super::{
    RowSink, Source, SourceError, SqlValue, blocking, blocking_rows, is_odbc_connection_string, redact_url,
    with_password,
};

/// Rows per message from the fetching thread, and messages in flight.
pub const BATCH_ROWS: usize = 256;

/// A database reached through an ODBC driver. Each call opens its own connection on a blocking thread.
#[derive(Clone)]
pub struct OdbcSource {
    inner: Arc<Inner>,
}

struct Inner {
    /// The full connection string, password included: never shown.
    conn_str: String,
    /// The password, if one was given apart from the string, to scrub it from driver messages.
    password: Option<String>,
    /// The connection string without its password, for messages.
    target: String,
}

impl std::fmt::Debug for OdbcSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OdbcSource").field("target", &self.inner.target).finish()
    }
}

impl OdbcSource {
    /// Connect once to check `connection_string` (with `password` appended as `PWD`, if given); the error names the
    /// connection string without its password and says what the driver manager or driver answered.
    pub async fn open(connection_string: &str, password: Option<&str>) -> Result<OdbcSource, SourceError> {
        let conn_str = with_password(connection_string, password);
        let target = redact_url(&conn_str);
        if !is_odbc_connection_string(&conn_str) {
            return Err(SourceError::Open {
                target,
                reason: "this is not an ODBC connection string; write `Driver=/path/to/driver.so;...` or `DSN=name`"
                    .into(),
            });
        }
        let src = OdbcSource {
            inner: Arc::new(Inner {
                conn_str,
                password: password.filter(|p| !p.is_empty()).map(str::to_owned),
                target,
            }),
        };
        let probe = src.clone();
        blocking("ODBC", move || probe.connect().map(drop)).await?;
        Ok(src)
    }

    pub(crate) fn connect(&self) -> Result<Connection<'static>, SourceError> {
        let open_err = |reason: String| SourceError::Open { target: self.inner.target.clone(), reason };
        let env = odbc_api::environment()
            .map_err(|e| open_err(format!("cannot start the ODBC driver manager: {}", self.scrub(&e.to_string()))))?;
        env.connect_with_connection_string(&self.inner.conn_str, ConnectionOptions::default()).map_err(|e| {
            open_err(format!("{}; check the driver path or DSN, server, user and password", self.scrub(&e.to_string())))
        })
    }

    /// A driver message without the password, should a driver ever echo the connection string.
    fn scrub(&self, msg: &str) -> String {
        let msg = redact_url(msg);
        match &self.inner.password {
            Some(p) if msg.contains(p.as_str()) => msg.replace(p.as_str(), "***"),
            _ => msg,
        }
    }

    fn query_err(&self, e: odbc_api::Error) -> SourceError {
        SourceError::Query(self.scrub(&e.to_string()))
    }

    fn column_names(&self, sql: &str) -> Result<Vec<String>, SourceError> {
        let conn = self.connect()?;
        let mut prepared = conn.prepare(sql).map_err(|e| self.query_err(e))?;
        let names = prepared
            .column_names()
            .map_err(|e| self.query_err(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.query_err(e))?;
        if names.is_empty() {
            return Err(SourceError::Query("the statement returns no columns; write a SELECT".into()));
        }
        Ok(names)
    }

    /// Runs on the blocking thread: fetch every row and send them in batches until done or the receiver is gone.
    fn fetch_all(&self, sql: &str, sink: &mut RowSink) -> Result<(), SourceError> {
        let conn = self.connect()?;
        let Some(mut cursor) = conn.execute(sql, (), None).map_err(|e| self.query_err(e))? else {
            return Err(SourceError::Query("the statement returns no rows; write a SELECT".into()));
        };
        let n = cursor.num_result_cols().map_err(|e| self.query_err(e))?;
        let n = u16::try_from(n).unwrap_or(0);
        let mut kinds = Vec::with_capacity(n.into());
        let mut names = Vec::with_capacity(n.into());
        for col in 1..=n {
            let ty = cursor.col_data_type(col).map_err(|e| self.query_err(e))?;
            let unsigned = matches!(ty, DataType::BigInt) && cursor.column_is_unsigned(col).unwrap_or(false);
            kinds.push(if unsigned { Kind::Decimal } else { Kind::of(&ty) });
            names.push(cursor.col_name(col).map_err(|e| self.query_err(e))?);
        }
        let mut buf = Vec::new();
        while let Some(mut row) = cursor.next_row().map_err(|e| self.query_err(e))? {
            let mut values = Vec::with_capacity(kinds.len());
            for (i, kind) in kinds.iter().enumerate() {
                let v = read_value(&mut row, i as u16 + 1, *kind, &mut buf).map_err(|reason| SourceError::Decode {
                    column: i + 1,
                    name: names[i].clone(),
                    reason: self.scrub(&reason),
                })?;
                values.push(v);
            }
            if !sink.push(values) {
                return Ok(()); // the stream was dropped: stop reading
            }
        }
        Ok(())
    }
}

/// What a column is read as, from its ODBC description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Decimal,
    Float,
    Bool,
    Date,
    Timestamp,
    Text,
    Bytes,
}

impl Kind {
    fn of(ty: &DataType) -> Kind {
        match ty {
            DataType::TinyInt | DataType::SmallInt | DataType::Integer | DataType::BigInt => Kind::Int,
            DataType::Decimal { .. } | DataType::Numeric { .. } => Kind::Decimal,
            DataType::Float { .. } | DataType::Real | DataType::Double => Kind::Float,
            DataType::Bit => Kind::Bool,
            DataType::Date => Kind::Date,
            DataType::Timestamp { .. } => Kind::Timestamp,
            DataType::Binary { .. } | DataType::Varbinary { .. } | DataType::LongVarbinary { .. } => Kind::Bytes,
            _ => Kind::Text,
        }
    }
}

fn read_value(row: &mut CursorRow<'_>, col: u16, kind: Kind, buf: &mut Vec<u8>) -> Result<SqlValue, String> {
    let e = |e: odbc_api::Error| e.to_string();
    Ok(match kind {
        Kind::Int => {
            let mut v = Nullable::<i64>::null();
            row.get_data(col, &mut v).map_err(e)?;
            v.into_opt().map_or(SqlValue::Null, SqlValue::Int)
        }
        Kind::Float => {
            let mut v = Nullable::<f64>::null();
            row.get_data(col, &mut v).map_err(e)?;
            v.into_opt().map_or(SqlValue::Null, SqlValue::Float)
        }
        Kind::Bool => {
            let mut v = Nullable::<Bit>::null();
            row.get_data(col, &mut v).map_err(e)?;
            v.into_opt().map_or(SqlValue::Null, |b| SqlValue::Bool(b.as_bool()))
        }
        Kind::Date => {
            let mut v = Nullable::<Date>::null();
            row.get_data(col, &mut v).map_err(e)?;
            match v.into_opt() {
                None => SqlValue::Null,
                Some(d) => SqlValue::Date(
                    chrono::NaiveDate::from_ymd_opt(d.year.into(), d.month.into(), d.day.into())
                        .ok_or_else(|| format!("{:04}-{:02}-{:02} is not a valid date", d.year, d.month, d.day))?,
                ),
            }
        }
        Kind::Timestamp => {
            let mut v = Nullable::<Timestamp>::null();
            row.get_data(col, &mut v).map_err(e)?;
            match v.into_opt() {
                None => SqlValue::Null,
                Some(t) => {
                    let date = chrono::NaiveDate::from_ymd_opt(t.year.into(), t.month.into(), t.day.into());
                    let time = chrono::NaiveTime::from_hms_nano_opt(
                        t.hour.into(),
                        t.minute.into(),
                        t.second.into(),
                        t.fraction,
                    );
                    match (date, time) {
                        (Some(d), Some(tm)) => SqlValue::Timestamp(d.and_time(tm)),
                        _ => {
                            return Err(format!(
                                "{:04}-{:02}-{:02} {:02}:{:02}:{:02} is not a valid timestamp",
                                t.year, t.month, t.day, t.hour, t.minute, t.second
                            ));
                        }
                    }
                }
            }
        }
        Kind::Decimal => {
            if !row.get_text(col, buf).map_err(e)? {
                return Ok(SqlValue::Null);
            }
            SqlValue::Decimal(String::from_utf8_lossy(buf).trim().to_string())
        }
        Kind::Text => {
            if !row.get_text(col, buf).map_err(e)? {
                return Ok(SqlValue::Null);
            }
            match String::from_utf8(std::mem::take(buf)) {
                Ok(s) => SqlValue::Text(s),
                Err(err) => SqlValue::Bytes(err.into_bytes()),
            }
        }
        Kind::Bytes => {
            if !row.get_binary(col, buf).map_err(e)? {
                return Ok(SqlValue::Null);
            }
            SqlValue::Bytes(std::mem::take(buf))
        }
    })
}

impl Source for OdbcSource {
    fn kind(&self) -> &'static str {
        "odbc"
    }

    fn columns<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        let me = self.clone();
        let sql = sql.to_string();
        Box::pin(blocking("ODBC", move || me.column_names(&sql)))
    }

    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
        let me = self.clone();
        let sql = sql.to_string();
        blocking_rows(BATCH_ROWS, move |sink| me.fetch_all(&sql, sink))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_driver_is_an_open_error_without_the_password() {
        let e = OdbcSource::open("Driver=/nonexistent/driver.so;Database=x", Some("hunter2"))
            .await
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("cannot open the ERP database Driver=/nonexistent/driver.so"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = OdbcSource::open("/var/lib/erp.db", None).await.unwrap_err().to_string();
        assert!(e.contains("not an ODBC connection string"), "{e}");
    }
}
