//! The MySQL/MariaDB source. Sessions are read-only (`SET SESSION TRANSACTION READ ONLY`) and use `utf8mb4`, so
//! the server converts text columns of any character set (e.g. `latin1`) to UTF-8; byte columns (`BLOB`,
//! `VARBINARY`) that hold legacy text are decoded with `[erp] encoding`. `DECIMAL` arrives as exact text,
//! `TINYINT(1)` (MySQL's `BOOLEAN`) as the integer it holds, and zero dates (`0000-00-00`) are NULL.

use std::str::FromStr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::mysql::{MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlValueRef};
use sqlx::{Decode, Executor, TypeInfo, ValueRef};

use super::postgres::f32_to_f64;
use super::{
    Source, SourceError, SqlValue, TextEncoding, open_hint, redact_url, scrub, sqlx_columns, sqlx_rows,
    untrusted_certificate,
};
use crate::erp::password_in_url as pw_in_url;

/// A MySQL or MariaDB database, reached with a small pool of read-only sessions.
#[derive(Debug, Clone)]
pub struct MySqlSource {
    pool: MySqlPool,
    encoding: TextEncoding,
    /// Only to scrub it out of driver messages.
    password: Option<String>,
}

impl MySqlSource {
    /// Connect to `url` (`mysql://user@host:3306/db`, `mariadb://...`); `password`, if given, replaces the URL's.
    pub async fn open(url: &str, password: Option<&str>, encoding: TextEncoding) -> Result<MySqlSource, SourceError> {
        let target = redact_url(url);
        let open_err = |e: &dyn std::fmt::Display, untrusted: bool| SourceError::Open {
            target: target.clone(),
            reason: open_hint(scrub(e, password), untrusted, "ssl-ca"),
        };
        let mut opts =
            MySqlConnectOptions::from_str(url).map_err(|e| open_err(&scrub(e, pw_in_url(url).as_deref()), false))?;
        if let Some(pw) = password {
            opts = opts.password(pw);
        }
        let opts = opts.charset("utf8mb4");
        let pool = MySqlPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|e| open_err(&e, untrusted_certificate(&e)))?;
        Ok(MySqlSource { pool, encoding, password: password.map(str::to_owned).or_else(|| pw_in_url(url)) })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

impl Source for MySqlSource {
    fn kind(&self) -> &'static str {
        "mysql"
    }

    fn columns<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        sqlx_columns(&self.pool, sql, self.password.as_deref())
    }

    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
        let encoding = self.encoding;
        sqlx_rows(&self.pool, sql, self.password.as_deref(), move |raw| decode_value(raw, encoding))
    }
}

fn dec<'r, T: Decode<'r, MySql>>(raw: MySqlValueRef<'r>) -> Result<T, String> {
    T::decode(raw).map_err(|e| e.to_string())
}

fn decode_value(raw: MySqlValueRef<'_>, encoding: TextEncoding) -> Result<SqlValue, String> {
    let ty = raw.type_info().name().to_string();
    Ok(match ty.as_str() {
        "BOOLEAN" | "TINYINT" | "SMALLINT" | "MEDIUMINT" | "INT" | "BIGINT" => SqlValue::Int(dec::<i64>(raw)?),
        "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "MEDIUMINT UNSIGNED" | "INT UNSIGNED" | "BIGINT UNSIGNED"
        | "YEAR" | "BIT" => {
            let n = dec::<u64>(raw)?;
            i64::try_from(n).map_or_else(|_| SqlValue::Decimal(n.to_string()), SqlValue::Int)
        }
        "FLOAT" => SqlValue::Float(f32_to_f64(dec::<f32>(raw)?)),
        "DOUBLE" => SqlValue::Float(dec::<f64>(raw)?),
        "DECIMAL" => SqlValue::Decimal(dec::<String>(raw)?),
        "DATE" => match dec::<chrono::NaiveDate>(raw.clone()) {
            Ok(d) => SqlValue::Date(d),
            Err(_) if is_zero_date(raw.clone()) => SqlValue::Null,
            Err(e) => return Err(e),
        },
        "DATETIME" | "TIMESTAMP" => match dec::<chrono::NaiveDateTime>(raw.clone()) {
            Ok(t) => SqlValue::Timestamp(t),
            Err(_) if is_zero_date(raw.clone()) => SqlValue::Null,
            Err(e) => return Err(e),
        },
        "CHAR" | "VARCHAR" | "TINYTEXT" | "TEXT" | "MEDIUMTEXT" | "LONGTEXT" | "ENUM" | "SET" | "JSON" | "BINARY"
        | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" => {
            encoding.value_from_bytes(dec::<Vec<u8>>(raw)?)
        }
        "NULL" => SqlValue::Null,
        other => {
            return Err(format!(
                "the MySQL type {other} cannot be read; cast the column in the query (e.g. CAST(col AS CHAR))"
            ));
        }
    })
}

/// MySQL's "zero" date or date-time (`0000-00-00`), which has no calendar date: read as NULL.
fn is_zero_date(raw: MySqlValueRef<'_>) -> bool {
    match dec::<Vec<u8>>(raw) {
        // binary protocol: a length byte of 0 (or all-zero fields); text protocol: "0000-00-00..."
        Ok(b) => {
            b.first().is_none_or(|len| *len == 0) || b.starts_with(b"0000-00-00") || b[1..].iter().all(|x| *x == 0)
        }
        Err(_) => false,
    }
}
