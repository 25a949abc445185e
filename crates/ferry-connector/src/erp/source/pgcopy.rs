//! The PostgreSQL extract through `COPY (<query>) TO STDOUT` (text format): the server streams the rows as
//! tab-separated text with no per-row round trip or per-row message decoding in sqlx, and the rows are parsed
//! straight into the slots of recycled chunks ([`Source::row_chunks`](super::Source::row_chunks)), so a long extract
//! allocates nothing per row or per field once the first chunks exist.
//!
//! Every value becomes the same [`SqlValue`] as on the row-by-row path (`postgres.rs`, binary values): the query
//! is prepared first and COPY is used only when every result column has a type whose text form converts exactly
//! ([`CopyType`]); otherwise — `TIMESTAMPTZ` (converted to the Connector's local time), `BYTEA`, arrays, any other
//! type — the query goes the row-by-row way. Floats are sent with `extra_float_digits = 3` (set on the session),
//! so their text form reads back to the same binary value; a `REAL` is read as `f32` and widened as the row path
//! does. Dates and timestamps come in the ISO `DateStyle` the session sets; a date BC or `infinity` is refused with
//! the column named (the row path reads a BC date as a negative year).

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;

use super::postgres::f32_to_f64;
use super::sqlite::fill_text;
use super::{Recycle, SourceError, SqlValue, TextEncoding};

/// How one result column is read from COPY's text form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CopyType {
    Int,
    Float4,
    Float8,
    Numeric,
    Bool,
    Date,
    Timestamp,
    Text,
}

impl CopyType {
    /// The reading of a column of PostgreSQL type `name` (as sqlx names it), `None` when COPY's text form cannot
    /// give the row path's value.
    pub(crate) fn of(name: &str) -> Option<CopyType> {
        Some(match name {
            "INT2" | "INT4" | "INT8" | "OID" => CopyType::Int,
            "FLOAT4" => CopyType::Float4,
            "FLOAT8" => CopyType::Float8,
            "NUMERIC" => CopyType::Numeric,
            "BOOL" => CopyType::Bool,
            "DATE" => CopyType::Date,
            "TIMESTAMP" => CopyType::Timestamp,
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "\"CHAR\"" | "CHAR" | "UNKNOWN" | "JSON" | "JSONB" | "CITEXT"
            | "UUID" => CopyType::Text,
            _ => return None,
        })
    }
}

/// `COPY (<sql>) TO STDOUT`: the query on lines of its own (a trailing `-- comment` stays a comment), without a
/// trailing `;`.
pub(crate) fn copy_statement(sql: &str) -> String {
    let q = sql.trim().trim_end_matches(';').trim_end();
    format!("COPY (\n{q}\n) TO STDOUT")
}

/// The parser's state between chunks of the COPY stream.
struct CopyRows {
    data: BoxStream<'static, sqlx::Result<Bytes>>,
    types: Vec<CopyType>,
    names: Vec<String>,
    encoding: TextEncoding,
    recycle: Recycle,
    chunk_rows: usize,
    /// The start of a row whose end has not arrived yet.
    partial: Vec<u8>,
    /// Complete data not parsed yet (the rest of the last message).
    pending: Bytes,
    /// A field's bytes after unescaping.
    scratch: Vec<u8>,
    done: bool,
    /// An error to give after the rows read before it.
    error: Option<SourceError>,
    password: Option<String>,
}

/// The rows of a running COPY (`data`, from `PgPoolCopyExt::copy_out_raw`) in chunks of up to `chunk_rows`,
/// filled into chunks given back to `recycle`. The rows read before an error come first, then the error.
pub(crate) fn copy_chunks(
    data: BoxStream<'static, sqlx::Result<Bytes>>,
    types: Vec<CopyType>,
    names: Vec<String>,
    encoding: TextEncoding,
    chunk_rows: usize,
    recycle: Recycle,
    password: Option<String>,
) -> BoxStream<'static, Result<Vec<Vec<SqlValue>>, SourceError>> {
    let state = CopyRows {
        data,
        types,
        names,
        encoding,
        recycle,
        chunk_rows: chunk_rows.max(1),
        partial: Vec::new(),
        pending: Bytes::new(),
        scratch: Vec::new(),
        done: false,
        error: None,
        password,
    };
    futures::stream::unfold(state, |mut st| async move {
        if let Some(e) = st.error.take() {
            st.done = true;
            return Some((Err(e), st));
        }
        if st.done {
            return None;
        }
        let mut chunk = st.recycle.take().unwrap_or_default();
        let mut len = 0;
        let result = st.fill(&mut chunk, &mut len).await;
        chunk.truncate(len);
        match result {
            Ok(()) if len == 0 => None,
            Ok(()) => Some((Ok(chunk), st)),
            // the rows read before the error go out first, then the error
            Err(e) if len > 0 => {
                st.error = Some(e);
                Some((Ok(chunk), st))
            }
            Err(e) => {
                st.done = true;
                Some((Err(e), st))
            }
        }
    })
    .boxed()
}

impl CopyRows {
    /// Parse rows into `chunk` until it holds `chunk_rows` rows or the data ends; `len` counts the rows filled.
    async fn fill(&mut self, chunk: &mut Vec<Vec<SqlValue>>, len: &mut usize) -> Result<(), SourceError> {
        while *len < self.chunk_rows {
            if self.pending.is_empty() {
                match self.data.next().await {
                    Some(Ok(b)) => self.pending = b,
                    Some(Err(e)) => return Err(SourceError::Query(super::scrub(e, self.password.as_deref()))),
                    None => {
                        self.done = true;
                        if !self.partial.is_empty() {
                            return Err(SourceError::Query("the COPY stream ended in the middle of a row".to_string()));
                        }
                        return Ok(());
                    }
                }
            }
            let Some(nl) = self.pending.iter().position(|&b| b == b'\n') else {
                self.partial.extend_from_slice(&self.pending);
                self.pending = Bytes::new();
                continue;
            };
            let rest = self.pending.split_off(nl + 1);
            let line = std::mem::replace(&mut self.pending, rest);
            let line = &line[..nl];
            if *len == chunk.len() {
                chunk.push(Vec::with_capacity(self.types.len()));
            }
            let row = &mut chunk[*len];
            if self.partial.is_empty() {
                parse_row(line, row, &self.types, &self.names, self.encoding, &mut self.scratch)?;
            } else {
                let mut whole = std::mem::take(&mut self.partial);
                whole.extend_from_slice(line);
                let r = parse_row(&whole, row, &self.types, &self.names, self.encoding, &mut self.scratch);
                whole.clear();
                self.partial = whole;
                r?;
            }
            *len += 1;
        }
        Ok(())
    }
}

/// One line of COPY's text format into `row`: fields separated by tabs, `\N` for NULL, backslash escapes.
fn parse_row(
    line: &[u8],
    row: &mut Vec<SqlValue>,
    types: &[CopyType],
    names: &[String],
    encoding: TextEncoding,
    scratch: &mut Vec<u8>,
) -> Result<(), SourceError> {
    row.resize(types.len(), SqlValue::Null);
    let mut fields = line.split(|&b| b == b'\t');
    for (i, (slot, ty)) in row.iter_mut().zip(types).enumerate() {
        let err = |reason: String| SourceError::Decode {
            column: i + 1,
            name: names.get(i).cloned().unwrap_or_default(),
            reason,
        };
        let Some(raw) = fields.next() else {
            return Err(err(format!("the COPY row has {i} fields, the query {}", types.len())));
        };
        if raw == b"\\N" {
            *slot = SqlValue::Null;
            continue;
        }
        let field: &[u8] = if raw.contains(&b'\\') {
            unescape(raw, scratch);
            scratch
        } else {
            raw
        };
        fill(slot, field, *ty, encoding).map_err(err)?;
    }
    if fields.next().is_some() {
        return Err(SourceError::Query(format!("a COPY row has more fields than the query's {}", types.len())));
    }
    Ok(())
}

/// COPY's text escapes (`\\`, `\t`, `\n`, `\r`, `\b`, `\f`, `\v`, octal `\NNN`, hex `\xHH`) undone into `out`.
fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' || i + 1 == raw.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = raw[i + 1];
        i += 2;
        match c {
            b't' => out.push(b'\t'),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut k = 0;
                while k < 2 && i < raw.len() && (b'0'..=b'7').contains(&raw[i]) {
                    v = v * 8 + u32::from(raw[i] - b'0');
                    i += 1;
                    k += 1;
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if i < raw.len() && raw[i].is_ascii_hexdigit() => {
                let mut v = 0u8;
                let mut k = 0;
                while k < 2 && i < raw.len() && raw[i].is_ascii_hexdigit() {
                    v = v * 16 + (raw[i] as char).to_digit(16).unwrap_or(0) as u8;
                    i += 1;
                    k += 1;
                }
                out.push(v);
            }
            other => out.push(other),
        }
    }
}

/// One field's text into `slot` as the row path would have read the value, reusing the slot's string.
fn fill(slot: &mut SqlValue, field: &[u8], ty: CopyType, encoding: TextEncoding) -> Result<(), String> {
    let text = || std::str::from_utf8(field).map_err(|_| "not valid UTF-8".to_string());
    match ty {
        CopyType::Text => fill_text(slot, field, encoding),
        CopyType::Int => {
            let t = text()?;
            *slot = SqlValue::Int(t.parse().map_err(|e| format!("{t:?} is not an integer: {e}"))?);
        }
        CopyType::Float4 => {
            let t = text()?;
            let f: f32 = t.parse().map_err(|e| format!("{t:?} is not a number: {e}"))?;
            *slot = SqlValue::Float(f32_to_f64(f));
        }
        CopyType::Float8 => {
            let t = text()?;
            *slot = SqlValue::Float(t.parse().map_err(|e| format!("{t:?} is not a number: {e}"))?);
        }
        CopyType::Numeric => {
            let t = text()?;
            match t {
                "NaN" => return Err("NUMERIC NaN has no CSV form; filter it out or COALESCE it in the query".into()),
                "Infinity" | "-Infinity" => {
                    return Err("an infinite NUMERIC has no CSV form; filter it out in the query".into());
                }
                _ => {}
            }
            match slot {
                SqlValue::Decimal(s) => {
                    s.clear();
                    s.push_str(t);
                }
                other => *other = SqlValue::Decimal(t.to_owned()),
            }
        }
        CopyType::Bool => {
            *slot = SqlValue::Bool(match field {
                b"t" => true,
                b"f" => false,
                _ => return Err(format!("{:?} is not a boolean", String::from_utf8_lossy(field))),
            });
        }
        CopyType::Date => {
            let t = text()?;
            let d = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d")
                .map_err(|e| format!("the date {t:?} cannot be read ({e}); cast or filter it in the query"))?;
            *slot = SqlValue::Date(d);
        }
        CopyType::Timestamp => {
            let t = text()?;
            let d = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f")
                .map_err(|e| format!("the timestamp {t:?} cannot be read ({e}); cast or filter it in the query"))?;
            *slot = SqlValue::Timestamp(d);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows_of(data: &[&'static [u8]], types: Vec<CopyType>, chunk: usize) -> Vec<Result<Vec<Vec<SqlValue>>, String>> {
        let parts: Vec<sqlx::Result<Bytes>> = data.iter().map(|d| Ok(Bytes::from_static(d))).collect();
        let names = (1..=types.len()).map(|i| format!("c{i}")).collect();
        let s = copy_chunks(
            futures::stream::iter(parts).boxed(),
            types,
            names,
            TextEncoding::Utf8,
            chunk,
            Recycle::default(),
            None,
        );
        futures::executor::block_on(s.map(|r| r.map_err(|e| e.to_string())).collect())
    }

    #[test]
    fn text_rows_become_the_row_paths_values() {
        use CopyType::*;
        let types = vec![Int, Float4, Float8, Numeric, Bool, Date, Timestamp, Text];
        // a row split across messages, escapes, NULLs
        let got = rows_of(
            &[
                b"7\t1.1\t0.1\t-12.3400\tt\t2026-03-10\t2026-03-10 12:34:56.5\ta\\tb\\\\c\\nd\n-3\t\\N\t1e",
                b"+300\t0\tf\t2026-01-01\t2026-01-01 00:00:00\t\\N\n",
            ],
            types,
            256,
        );
        let rows = got[0].as_ref().unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(rows.len(), 2);
        let d = |y, m, dd| chrono::NaiveDate::from_ymd_opt(y, m, dd).unwrap();
        assert_eq!(
            rows[0],
            vec![
                SqlValue::Int(7),
                SqlValue::Float(1.1),
                SqlValue::Float(0.1),
                SqlValue::Decimal("-12.3400".into()),
                SqlValue::Bool(true),
                SqlValue::Date(d(2026, 3, 10)),
                SqlValue::Timestamp(d(2026, 3, 10).and_hms_milli_opt(12, 34, 56, 500).unwrap()),
                SqlValue::Text("a\tb\\c\nd".into()),
            ]
        );
        assert_eq!(rows[1][0], SqlValue::Int(-3));
        assert_eq!(rows[1][1], SqlValue::Null);
        assert_eq!(rows[1][2], SqlValue::Float(1e300));
        assert_eq!(rows[1][7], SqlValue::Null);
    }

    #[test]
    fn chunks_are_cut_and_errors_come_after_the_rows_before_them() {
        use CopyType::*;
        let got = rows_of(&[b"1\n2\n3\n", b"x\n4\n"], vec![Int], 2);
        assert_eq!(got.len(), 3, "{got:?}");
        assert_eq!(got[0].as_ref().unwrap().len(), 2);
        assert_eq!(got[1].as_ref().unwrap(), &vec![vec![SqlValue::Int(3)]]);
        let e = got[2].as_ref().unwrap_err();
        assert!(e.contains("column 1 (c1)") && e.contains("\"x\" is not an integer"), "{e}");
        let nan = rows_of(&[b"NaN\n"], vec![Numeric], 8);
        assert!(nan[0].as_ref().unwrap_err().contains("NaN has no CSV form"), "{nan:?}");
        let cut = rows_of(&[b"1\n2"], vec![Int], 8);
        assert!(cut[1].as_ref().unwrap_err().contains("middle of a row"), "{cut:?}");
        let wide = rows_of(&[b"1\t2\n"], vec![Int], 8);
        assert!(wide[0].is_err(), "{wide:?}");
    }

    #[test]
    fn escapes_and_statement() {
        let mut out = Vec::new();
        unescape(b"\\101\\x41\\\\\\v", &mut out);
        assert_eq!(out, b"AA\\\x0b");
        assert_eq!(copy_statement(" SELECT 1 -- all\n ;  "), "COPY (\nSELECT 1 -- all\n) TO STDOUT");
        assert_eq!(CopyType::of("TIMESTAMPTZ"), None);
        assert_eq!(CopyType::of("INT8"), Some(CopyType::Int));
    }
}
