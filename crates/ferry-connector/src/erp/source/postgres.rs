//! The PostgreSQL source. Sessions are read-only (`default_transaction_read_only`), rows stream as the server
//! sends them, and every value is decoded by the type PostgreSQL reports for its column: `NUMERIC` exactly (from
//! its base-10000 wire form, never through a float), `TIMESTAMPTZ` as the local date and time of the machine the
//! Connector runs on. The extract ([`Source::row_chunks`]) reads through `COPY (<query>) TO STDOUT` when every
//! column's text form converts exactly (`pgcopy.rs`, the same values), else row by row as here.

use std::fmt::Write as _;
use std::str::FromStr;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolCopyExt, PgPoolOptions, PgValueFormat, PgValueRef, Postgres};
use sqlx::{Decode, TypeInfo, ValueRef};

use super::pgcopy::{CopyType, copy_chunks, copy_statement};
use super::{
    Recycle, Source, SourceError, SqlValue, TextEncoding, chunked, open_hint, redact_url, scrub, sqlx_columns,
    sqlx_rows, untrusted_certificate,
};
use crate::erp::password_in_url as pw_in_url;

/// A PostgreSQL database, reached with a small pool of read-only sessions.
#[derive(Debug, Clone)]
pub struct PostgresSource {
    pool: PgPool,
    encoding: TextEncoding,
    /// Only to scrub it out of driver messages.
    password: Option<String>,
}

impl PostgresSource {
    /// Connect to `url` (`postgres://user@host:5432/db?sslmode=disable`); `password`, if given, replaces the URL's.
    pub async fn open(
        url: &str,
        password: Option<&str>,
        encoding: TextEncoding,
    ) -> Result<PostgresSource, SourceError> {
        let target = redact_url(url);
        let open_err = |e: &dyn std::fmt::Display, untrusted: bool| SourceError::Open {
            target: target.clone(),
            reason: open_hint(scrub(e, password), untrusted, "sslrootcert"),
        };
        let mut opts =
            PgConnectOptions::from_str(url).map_err(|e| open_err(&scrub(e, pw_in_url(url).as_deref()), false))?;
        if let Some(pw) = password {
            opts = opts.password(pw);
        }
        let opts = opts.application_name("ferry-connector").options([
            ("default_transaction_read_only", "on"),
            ("DateStyle", "ISO"),
            ("extra_float_digits", "3"),
        ]);
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(std::time::Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(|e| open_err(&e, untrusted_certificate(&e)))?;
        Ok(PostgresSource { pool, encoding, password: password.map(str::to_owned).or_else(|| pw_in_url(url)) })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Source for PostgresSource {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn columns<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        sqlx_columns(&self.pool, sql, self.password.as_deref())
    }

    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
        let encoding = self.encoding;
        sqlx_rows(&self.pool, sql, self.password.as_deref(), move |raw| decode_value(raw, encoding))
    }

    /// Through `COPY (<sql>) TO STDOUT` when every result column has a type COPY's text form gives exactly
    /// ([`CopyType`]), parsed into recycled chunks (`pgcopy.rs`); otherwise, or if COPY cannot start, row by row.
    fn row_chunks<'a>(
        &'a self,
        sql: &'a str,
        chunk_rows: usize,
        recycle: Recycle,
    ) -> BoxStream<'a, Result<Vec<Vec<SqlValue>>, SourceError>> {
        use futures::StreamExt;
        let start = async move {
            match self.copy_plan(sql).await {
                Some((types, names)) => {
                    let statement = copy_statement(sql);
                    match self.pool.copy_out_raw(&statement).await {
                        Ok(data) => {
                            tracing::debug!("extracting through COPY: {} columns", types.len());
                            return copy_chunks(
                                data,
                                types,
                                names,
                                self.encoding,
                                chunk_rows,
                                recycle,
                                self.password.clone(),
                            );
                        }
                        Err(e) => tracing::debug!(
                            "COPY could not start ({}); reading the query row by row",
                            scrub(e, self.password.as_deref())
                        ),
                    }
                }
                None => tracing::debug!("a result column has no exact COPY text form; reading row by row"),
            }
            chunked(self.rows(sql), chunk_rows)
        };
        futures::stream::once(start).flatten().boxed()
    }
}

impl PostgresSource {
    /// Whether the extract reads `sql` through `COPY ... TO STDOUT` ([`Source::row_chunks`]): every result column
    /// has a type whose text form gives the row path's value exactly. (COPY may still fail to start; the extract
    /// then reads row by row.)
    pub async fn reads_with_copy(&self, sql: &str) -> bool {
        self.copy_plan(sql).await.is_some()
    }

    /// How each result column of `sql` is read from COPY's text form, and its name; `None` when a column's type
    /// has no exact text reading (or the query cannot be prepared: the row path then reports why).
    async fn copy_plan(&self, sql: &str) -> Option<(Vec<CopyType>, Vec<String>)> {
        use sqlx::{Column, Executor, SqlSafeStr, Statement};
        let stmt = self.pool.prepare(sqlx::AssertSqlSafe(sql).into_sql_str()).await.ok()?;
        let types = stmt.columns().iter().map(|c| CopyType::of(c.type_info().name())).collect::<Option<Vec<_>>>()?;
        let names = stmt.columns().iter().map(|c| c.name().to_string()).collect();
        Some((types, names))
    }
}

fn dec<'r, T: Decode<'r, Postgres>>(raw: PgValueRef<'r>) -> Result<T, String> {
    T::decode(raw).map_err(|e| e.to_string())
}

fn decode_value(raw: PgValueRef<'_>, encoding: TextEncoding) -> Result<SqlValue, String> {
    let ty = raw.type_info().name().to_string();
    if raw.format() == PgValueFormat::Text {
        let bytes = raw.as_bytes().map_err(|e| e.to_string())?;
        return Ok(match ty.as_str() {
            "NUMERIC" | "INT2" | "INT4" | "INT8" => SqlValue::Decimal(String::from_utf8_lossy(bytes).into_owned()),
            _ => encoding.value_from_bytes(bytes.to_vec()),
        });
    }
    Ok(match ty.as_str() {
        "INT2" => SqlValue::Int(dec::<i16>(raw)?.into()),
        "INT4" => SqlValue::Int(dec::<i32>(raw)?.into()),
        "INT8" => SqlValue::Int(dec::<i64>(raw)?),
        "OID" => SqlValue::Int(dec::<sqlx::postgres::types::Oid>(raw)?.0.into()),
        "FLOAT4" => SqlValue::Float(f32_to_f64(dec::<f32>(raw)?)),
        "FLOAT8" => SqlValue::Float(dec::<f64>(raw)?),
        "NUMERIC" => SqlValue::Decimal(numeric_to_string(raw.as_bytes().map_err(|e| e.to_string())?)?),
        "BOOL" => SqlValue::Bool(dec::<bool>(raw)?),
        "DATE" => SqlValue::Date(dec::<chrono::NaiveDate>(raw)?),
        "TIMESTAMP" => SqlValue::Timestamp(dec::<chrono::NaiveDateTime>(raw)?),
        "TIMESTAMPTZ" => {
            SqlValue::Timestamp(dec::<chrono::DateTime<chrono::Utc>>(raw)?.with_timezone(&chrono::Local).naive_local())
        }
        "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "\"CHAR\"" | "CHAR" | "UNKNOWN" | "JSON" | "CITEXT" | "BYTEA" => {
            encoding.value_from_bytes(raw.as_bytes().map_err(|e| e.to_string())?.to_vec())
        }
        "JSONB" => {
            let b = raw.as_bytes().map_err(|e| e.to_string())?;
            encoding.value_from_bytes(b.get(1..).unwrap_or_default().to_vec())
        }
        "UUID" => {
            let b = raw.as_bytes().map_err(|e| e.to_string())?;
            let h = hex::encode(b);
            if h.len() != 32 {
                return Err("a UUID of the wrong length".into());
            }
            SqlValue::Text(format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..]))
        }
        other => {
            return Err(format!(
                "the PostgreSQL type {other} cannot be read; cast the column in the query (e.g. col::text or \
                 col::numeric)"
            ));
        }
    })
}

/// An `f32` as the `f64` of its shortest decimal form (`1.1f32` -> `1.1`, not `1.100000023841858`).
pub(crate) fn f32_to_f64(f: f32) -> f64 {
    f.to_string().parse().unwrap_or(f64::from(f))
}

const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// The binary wire form of `NUMERIC` (digit count, weight, sign, display scale, base-10000 digits) as the decimal
/// text PostgreSQL prints, with exactly `dscale` fraction digits.
pub(crate) fn numeric_to_string(buf: &[u8]) -> Result<String, String> {
    let word = |i: usize| buf.get(i..i + 2).map(|b| u16::from_be_bytes([b[0], b[1]]));
    let bad = || "a damaged NUMERIC value".to_string();
    let ndigits = usize::from(word(0).ok_or_else(bad)?);
    let weight = i64::from(word(2).ok_or_else(bad)? as i16);
    let sign = word(4).ok_or_else(bad)?;
    let dscale = usize::from(word(6).ok_or_else(bad)? & 0x3FFF);
    match sign {
        NUMERIC_NAN => return Err("NUMERIC NaN has no CSV form; filter it out or COALESCE it in the query".into()),
        NUMERIC_PINF | NUMERIC_NINF => {
            return Err("an infinite NUMERIC has no CSV form; filter it out in the query".into());
        }
        _ => {}
    }
    let mut digits = Vec::with_capacity(ndigits);
    for k in 0..ndigits {
        let d = word(8 + 2 * k).ok_or_else(bad)?;
        if d > 9999 {
            return Err(bad());
        }
        digits.push(d);
    }
    let digit =
        |k: i64| if k < 0 { 0 } else { usize::try_from(k).ok().and_then(|k| digits.get(k)).copied().unwrap_or(0) };
    let mut s = String::with_capacity(ndigits * 4 + dscale + 3);
    if sign == NUMERIC_NEG {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        for k in 0..=weight {
            let _ = if k == 0 { write!(s, "{}", digit(k)) } else { write!(s, "{:04}", digit(k)) };
        }
    }
    if dscale > 0 {
        s.push('.');
        let start = s.len();
        let mut k = weight + 1;
        while s.len() - start < dscale {
            let _ = write!(s, "{:04}", digit(k));
            k += 1;
        }
        s.truncate(start + dscale);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(ndigits: u16, weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut b = Vec::new();
        for w in [ndigits, weight as u16, sign, dscale] {
            b.extend(w.to_be_bytes());
        }
        for d in digits {
            b.extend(d.to_be_bytes());
        }
        b
    }

    #[test]
    fn numeric_wire_form_is_printed_exactly() {
        // base-10000 groups around the point: 1234|5678|9012 . 3456, weight 2 (the first group is 10000^2)
        assert_eq!(numeric_to_string(&wire(4, 2, 0, 4, &[1234, 5678, 9012, 3456])).unwrap(), "123456789012.3456");
        assert_eq!(numeric_to_string(&wire(2, 0, 0, 4, &[12, 3400])).unwrap(), "12.3400");
        assert_eq!(numeric_to_string(&wire(1, -1, NUMERIC_NEG, 2, &[5000])).unwrap(), "-0.50");
        assert_eq!(numeric_to_string(&wire(1, -2, 0, 6, &[1200])).unwrap(), "0.000012");
        assert_eq!(numeric_to_string(&wire(0, 0, 0, 0, &[])).unwrap(), "0");
        assert_eq!(numeric_to_string(&wire(1, 1, 0, 0, &[7])).unwrap(), "70000");
        assert_eq!(numeric_to_string(&wire(0, 0, 0, 3, &[])).unwrap(), "0.000");
        assert!(numeric_to_string(&wire(0, 0, NUMERIC_NAN, 0, &[])).unwrap_err().contains("NaN"));
        assert!(numeric_to_string(&wire(3, 0, 0, 0, &[1])).is_err(), "truncated input is an error, not a panic");
        assert!(numeric_to_string(&[0, 1]).is_err());
    }

    #[test]
    fn f32_keeps_its_short_form() {
        assert_eq!(f32_to_f64(1.1), 1.1);
        assert_eq!(f32_to_f64(-0.25), -0.25);
    }
}
