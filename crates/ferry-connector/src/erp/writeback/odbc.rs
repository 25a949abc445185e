//! The write-back through ODBC ([`OdbcWriteBack`]): blocking calls on a blocking thread. Autocommit is off, so all
//! records of the file are one transaction, committed at the end or rolled back on the first error. Values are
//! bound as text parameters (NULL for an empty field); the driver converts them to the column types.

use futures::future::BoxFuture;

use super::{WriteBack, WriteBackError, WriteJob, check_count, field, next_record, record_err};
use crate::erp::{ErpKind, redact_url};

/// A database reached through an ODBC driver. Each file is written over a connection of its own.
pub struct OdbcWriteBack {
    /// The full connection string, password included: never shown.
    conn_str: String,
    /// The connection string without its password, for messages.
    target: String,
}

impl OdbcWriteBack {
    /// `conn_str` may carry `PWD=`; `target` is it without the password.
    pub fn new(conn_str: String, target: String) -> OdbcWriteBack {
        OdbcWriteBack { conn_str, target }
    }
}

impl WriteBack for OdbcWriteBack {
    fn kind(&self) -> ErpKind {
        ErpKind::Odbc
    }

    fn apply(&mut self, job: WriteJob) -> BoxFuture<'_, Result<Option<u64>, WriteBackError>> {
        let (conn_str, target) = (self.conn_str.clone(), self.target.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || apply_odbc(&conn_str, job)).await.map_err(|e| {
                WriteBackError::Database { target, reason: format!("the ODBC write-back thread failed: {e}") }
            })?
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// The ODBC write-back (blocking): `conn_str` may carry `PWD=`; every message shows it redacted.
fn apply_odbc(conn_str: &str, mut job: WriteJob) -> Result<Option<u64>, WriteBackError> {
    use odbc_api::IntoParameter;

    let (name, ledger, plan) = (job.file.as_str(), job.ledger.as_ref(), &job.statements);
    let rows = &mut job.records;
    let target = redact_url(conn_str);
    let scrub = |e: odbc_api::Error| redact_url(&e.to_string());
    let db_err = |reason: String| WriteBackError::Database { target: target.clone(), reason };
    let env =
        odbc_api::environment().map_err(|e| db_err(format!("cannot start the ODBC driver manager: {}", scrub(e))))?;
    let conn = env
        .connect_with_connection_string(conn_str, odbc_api::ConnectionOptions::default())
        .map_err(|e| db_err(format!("cannot open it for the write-back: {}", scrub(e))))?;
    if let Some(l) = ledger {
        // before the transaction, and only an attempt: databases without `IF NOT EXISTS` need it created by hand
        let _ = conn.execute(&l.create_sql(), (), None);
    }
    conn.set_autocommit(false).map_err(|e| db_err(format!("cannot start a transaction: {}", scrub(e))))?;
    let result = (|| {
        if let Some(l) = ledger {
            let id = l.file_id.as_str().into_parameter();
            let found = match conn.execute(&l.check_sql(false), &id, None) {
                Ok(Some(mut cursor)) => {
                    use odbc_api::Cursor;
                    cursor.next_row().map_err(|e| l.error(scrub(e)))?.is_some()
                }
                Ok(None) => false,
                Err(e) => return Err(l.error(scrub(e))),
            };
            if found {
                return Ok(None);
            }
        }
        let mut prepared = Vec::with_capacity(plan.len());
        for (i, s) in plan.iter().enumerate() {
            let mut stmt = conn
                .prepare(&s.sql)
                .map_err(|e| record_err(name, 1, format!("delivery.sql[{i}] is not valid: {}", scrub(e))))?;
            check_count(stmt.num_params().ok().map(usize::from), s, i, name)?;
            prepared.push(stmt);
        }
        let mut record = csv::StringRecord::new();
        let mut count = 0u64;
        while let Some(line) = next_record(rows, &mut record, name)? {
            count += 1;
            for (i, (s, stmt)) in plan.iter().zip(prepared.iter_mut()).enumerate() {
                let params: Vec<_> =
                    s.columns.iter().map(|&c| field(&record, c).map(str::to_owned).into_parameter()).collect();
                stmt.execute(&params[..]).map_err(|e| {
                    record_err(name, line, format!("row {count}: delivery.sql[{i}] failed: {}", scrub(e)))
                })?;
            }
        }
        if let Some(l) = ledger {
            let (id, file, at) = l.values();
            let params = (&id.into_parameter(), &file.into_parameter(), &at.into_parameter());
            conn.execute(&l.record_sql(false), params, None).map_err(|e| l.error(scrub(e)))?;
        }
        Ok(Some(count))
    })();
    match result {
        Ok(count) => {
            conn.commit().map_err(|e| db_err(format!("cannot commit the write-back: {}", scrub(e))))?;
            Ok(count)
        }
        Err(e) => {
            let _ = conn.rollback();
            Err(e)
        }
    }
}
