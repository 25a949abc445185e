//! `[delivery] date_format = "iso"`: the dates of a downstream order file rewritten from DATA-SPEC's `YYYY/MM/DD`
//! to ISO 8601's `YYYY-MM-DD`, for ERP import tools that expect ISO dates.
//!
//! Only the date columns of the order layout (DATA-SPEC.md, "Downstream files": `order_number, line, item,
//! location, supplier, qty, unit_cost, order_date, due_date, comment`) change, found by their header names
//! `order_date` and `due_date` wherever they stand; a file whose header row names neither is copied unchanged.
//! In those columns a value that is exactly `YYYY/MM/DD` (digits; quoted or not) becomes `YYYY-MM-DD`; anything
//! else (empty, already ISO, free text) stays as it is. Every other byte — other columns, quoting, line ends,
//! a missing last line end — is copied exactly, and the output has the input's length. Streams: memory is one
//! header row (at most [`MAX_HEADER_BYTES`]) and one date field, whatever the file's size.
//!
//! The reader follows RFC 4180 as the `csv` crate does: a field that starts with `"` is quoted (`""` inside it
//! is a quote, and `,` and line ends inside it belong to the field); a `"` inside an unquoted field is data.
//! Imports nothing from the crate.

use std::io::{self, BufRead, Read, Write};

/// The header names of the order layout's date columns.
pub const DATE_COLUMNS: [&str; 2] = ["order_date", "due_date"];

/// A header row longer than this is not an order layout: the file is copied unchanged.
pub const MAX_HEADER_BYTES: u64 = 64 * 1024;

/// A date field is at most `"YYYY/MM/DD"` plus a `\r`; longer fields are copied as they are.
const MAX_DATE_FIELD: usize = 13;

/// Copies `input` to `output`, rewriting the order dates as ISO (see the [module docs](self)). Returns how many
/// values were rewritten.
pub fn copy_with_iso_dates(mut input: impl BufRead, mut output: impl Write) -> io::Result<u64> {
    let mut header = Vec::new();
    (&mut input).take(MAX_HEADER_BYTES).read_until(b'\n', &mut header)?;
    output.write_all(&header)?;
    let columns = date_columns(&header);
    if columns.is_empty() || !header.ends_with(b"\n") {
        io::copy(&mut input, &mut output)?;
        output.flush()?;
        return Ok(0);
    }
    let mut rewriter = Rewriter::new(columns, io::BufWriter::new(output));
    loop {
        let buf = input.fill_buf()?;
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        rewriter.feed(buf)?;
        input.consume(n);
    }
    rewriter.finish()
}

/// The positions of the date columns in a header row (names compared after unquoting and trimming).
fn date_columns(header: &[u8]) -> Vec<usize> {
    let Ok(text) = std::str::from_utf8(header) else { return Vec::new() };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(text.as_bytes());
    let Some(Ok(record)) = reader.records().next() else { return Vec::new() };
    record.iter().enumerate().filter(|(_, name)| DATE_COLUMNS.contains(&name.trim())).map(|(i, _)| i).collect()
}

/// The streaming state: which field of the current record the next byte belongs to, and whether it is inside
/// quotes; a date column's field is held back until its end, everything else is written through.
struct Rewriter<W: Write> {
    out: W,
    columns: Vec<usize>,
    /// Index of the current field in its record.
    field: usize,
    /// No byte of the current field seen yet.
    at_start: bool,
    /// The current field started with a quote.
    quoted: bool,
    /// ... and the quotes seen so far leave it open (`""` toggles twice).
    in_quotes: bool,
    /// The current field is a date column's and is held back here (None once it grew too long for a date).
    held: Option<Vec<u8>>,
    rewritten: u64,
}

impl<W: Write> Rewriter<W> {
    fn new(columns: Vec<usize>, out: W) -> Self {
        let mut r = Rewriter {
            out,
            columns,
            field: 0,
            at_start: true,
            quoted: false,
            in_quotes: false,
            held: None,
            rewritten: 0,
        };
        r.start_field(0);
        r
    }

    fn start_field(&mut self, field: usize) {
        self.field = field;
        self.at_start = true;
        self.quoted = false;
        self.in_quotes = false;
        self.held = self.columns.contains(&field).then(|| Vec::with_capacity(MAX_DATE_FIELD + 1));
    }

    fn feed(&mut self, buf: &[u8]) -> io::Result<()> {
        // `from`: the first byte of `buf` neither written nor held yet.
        let mut from = 0;
        for (i, &b) in buf.iter().enumerate() {
            if !self.in_quotes && (b == b',' || b == b'\n') {
                if self.held.is_some() {
                    self.release()?; // every byte of the field was held: from == i
                }
                self.start_field(if b == b'\n' { 0 } else { self.field + 1 });
                if self.held.is_some() {
                    // write up to and including the separator; the new field is held from the next byte
                    self.out.write_all(&buf[from..=i])?;
                    from = i + 1;
                }
                continue;
            }
            if b == b'"' {
                if self.at_start {
                    self.quoted = true;
                    self.in_quotes = true;
                } else if self.quoted {
                    self.in_quotes = !self.in_quotes;
                }
            }
            self.at_start = false;
            if let Some(held) = &mut self.held {
                held.push(b);
                from = i + 1;
                if held.len() > MAX_DATE_FIELD {
                    // not a date: write what was held and pass the rest of the field through
                    self.out.write_all(held)?;
                    self.held = None;
                }
            }
        }
        if self.held.is_none() {
            self.out.write_all(&buf[from..])?;
        }
        Ok(())
    }

    /// Writes the held date field, rewritten if it is a date.
    fn release(&mut self) -> io::Result<()> {
        let Some(mut held) = self.held.take() else { return Ok(()) };
        if rewrite_date(&mut held) {
            self.rewritten += 1;
        }
        self.out.write_all(&held)
    }

    fn finish(mut self) -> io::Result<u64> {
        self.release()?;
        self.out.flush()?;
        Ok(self.rewritten)
    }
}

/// `YYYY/MM/DD`, `"YYYY/MM/DD"`, either followed by `\r`: the slashes become dashes. False (untouched) otherwise.
fn rewrite_date(field: &mut [u8]) -> bool {
    let end = field.len() - usize::from(field.last() == Some(&b'\r'));
    let mut core = &mut field[..end];
    if core.len() == 12 && core[0] == b'"' && core[11] == b'"' {
        core = &mut core[1..11];
    }
    let is_date = core.len() == 10
        && core.iter().enumerate().all(|(i, &c)| if i == 4 || i == 7 { c == b'/' } else { c.is_ascii_digit() });
    if is_date {
        core[4] = b'-';
        core[7] = b'-';
    }
    is_date
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn iso(input: &str) -> (String, u64) {
        let mut out = Vec::new();
        let n = copy_with_iso_dates(input.as_bytes(), &mut out).unwrap();
        (String::from_utf8(out).unwrap(), n)
    }

    const HEADER: &str = "order_number,line,item,location,supplier,qty,unit_cost,order_date,due_date,comment\n";

    #[test]
    fn only_the_date_columns_change() {
        let body = "REC-1,1,A1,L1,S1,24,1.20,2026/11/28,2026/12/05,\"rop=3, ss=1 due 2026/12/05\"\n\
                    \"REC,2\",2,\"B\"\"2\",L1,S1,10,0.40,\"2026/11/28\",,2026/12/05\n\
                    REC-3,1,C3,L1,S1,1,0.1,2026-11-28,soon,\n";
        let (out, n) = iso(&format!("{HEADER}{body}"));
        let expected = "REC-1,1,A1,L1,S1,24,1.20,2026-11-28,2026-12-05,\"rop=3, ss=1 due 2026/12/05\"\n\
                        \"REC,2\",2,\"B\"\"2\",L1,S1,10,0.40,\"2026-11-28\",,2026/12/05\n\
                        REC-3,1,C3,L1,S1,1,0.1,2026-11-28,soon,\n";
        assert_eq!(out, format!("{HEADER}{expected}"));
        assert_eq!(n, 3);
    }

    #[test]
    fn columns_are_found_by_name_line_ends_are_kept_and_a_last_line_without_end_is_converted() {
        let (out, n) = iso("due_date,\"x\"\r\n2026/01/02,a\"b\r\n2026/01/03,\"c\nd\"\r\n2026/01/04");
        assert_eq!(out, "due_date,\"x\"\r\n2026-01-02,a\"b\r\n2026-01-03,\"c\nd\"\r\n2026-01-04");
        assert_eq!(n, 3);
        let (out, _) = iso("x,due_date\r\n1,2026/01/02\r\n");
        assert_eq!(out, "x,due_date\r\n1,2026-01-02\r\n");
    }

    #[test]
    fn files_without_the_order_layout_are_copied_unchanged() {
        for text in ["", "\n", "report,date\n1,2026/01/02\n", "no header line end 2026/01/02", "due_date"] {
            assert_eq!(iso(text), (text.to_string(), 0), "{text:?}");
        }
        let long = format!("{},due_date\n1,2026/01/02\n", "x".repeat(MAX_HEADER_BYTES as usize));
        assert_eq!(iso(&long).0, long);
        // not quite dates
        let odd = "due_date\n2026/1/02\n2026/01/02x\n\"2026/01/02\n 2026/01/02\n2026/01/02/03\n20260/01/02\n";
        assert_eq!(iso(odd), (odd.to_string(), 0));
    }

    /// One field of a generated file and what the conversion makes of it in a date column.
    fn field() -> impl Strategy<Value = (String, bool)> {
        let date = (1000u32..9999, 1u32..13, 1u32..29).prop_map(|(y, m, d)| format!("{y:04}/{m:02}/{d:02}"));
        prop_oneof![
            date.clone().prop_map(|d| (d, true)),
            date.prop_map(|d| (format!("\"{d}\""), true)),
            "[a-z0-9 /.-]{0,14}".prop_map(|s| (s, false)),
            "[a-z0-9 ,/\"\n-]{0,14}".prop_map(|s| (format!("\"{}\"", s.replace('"', "\"\"")), false)),
        ]
    }

    proptest! {
        /// Generated files of the order layout with every kind of field, read in chunks of any size: exactly
        /// the date values in the date columns change, nothing else.
        #[test]
        fn the_rewrite_is_byte_exact_outside_date_values(
            rows in prop::collection::vec(prop::collection::vec(field(), 10), 0..20),
            crlf in any::<bool>(),
            last_end in any::<bool>(),
            chunk in 1usize..64,
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let mut input = HEADER.replace('\n', eol);
            let mut expected = input.clone();
            let mut dates = 0;
            for (r, row) in rows.iter().enumerate() {
                for (i, (text, is_date)) in row.iter().enumerate() {
                    if i > 0 {
                        input.push(',');
                        expected.push(',');
                    }
                    input.push_str(text);
                    // in a date column a generated date converts, and so would free text that spells one
                    let mut converted = text.clone().into_bytes();
                    let converts = (i == 7 || i == 8) && rewrite_date(&mut converted);
                    prop_assert!(converts || !(*is_date && (i == 7 || i == 8)), "{text:?}");
                    if converts {
                        dates += 1;
                        expected.push_str(std::str::from_utf8(&converted).unwrap());
                    } else {
                        expected.push_str(text);
                    }
                }
                if r + 1 < rows.len() || last_end {
                    input.push_str(eol);
                    expected.push_str(eol);
                }
            }
            let mut out = Vec::new();
            let reader = io::BufReader::with_capacity(chunk, input.as_bytes());
            let n = copy_with_iso_dates(reader, &mut out).unwrap();
            prop_assert_eq!(String::from_utf8(out).unwrap(), expected);
            prop_assert_eq!(n, dates);
        }
    }
}
