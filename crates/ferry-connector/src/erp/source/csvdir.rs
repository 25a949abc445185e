//! The CSV-folder source (`kind = "csv"`, `url` = the folder): an ERP job already exports files, and the mapping's
//! "query" for each standard file picks the columns of one exported file, by header name, in a small strict
//! subset of SQL:
//!
//! ```text
//! SELECT sku, "Unit Price", NULL, 'EA' AS uom, 0, #7 FROM "exports/items.csv"
//!        WITH (delimiter ';', quote '"', header true, encoding 'windows-1252')
//! ```
//!
//! - each selected item is a header name (bare `[A-Za-z_][A-Za-z0-9_]*`, or in double quotes with `""` for a
//!   quote; matched exactly against the trimmed header cell), `#N` (the N-th field, from 1), `*` (every field in
//!   file order), `NULL`, a text `'...'` (`''` for a quote) or a number; any item may take `AS name` (the name
//!   matters for custom files `ut_NNN.csv`, whose header is the selected names);
//! - `FROM` names one file inside the folder, relative to it (subfolders allowed; absolute paths, `..` and links
//!   leading outside the folder are refused);
//! - `WITH (...)` is optional: `delimiter` (one character, default `,`; `'\t'` for a tab), `quote` (one character,
//!   default `"`), `header` (`true`/`false`, default `true`; without a header select with `#N` or `*`) and
//!   `encoding` (default `utf-8`; any WHATWG label such as `windows-1252`, `latin1`, `iso-8859-15`);
//! - keywords are case-insensitive; a trailing `;` is allowed.
//!
//! Every field becomes [`SqlValue::Text`] (an empty field `Null`): the extract converts text to numbers and dates
//! by the standard file's column types, so `2026-11-28`, `2026/11/28` and `12.50` all work. Rows are read as the
//! stream is polled, on a blocking thread, in batches through a bounded channel. Errors name the file, line and
//! column: `items.csv line 17: the row has 5 fields, the header has 6`.

use std::fs::File;
use std::io::BufReader;
use std::path::{Component, Path, PathBuf};

use encoding_rs::Encoding;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use super::{RowSink, Source, SourceError, SqlValue, blocking, blocking_rows};

const BATCH_ROWS: usize = 512;

const SYNTAX: &str = "write SELECT col, \"Col B\", #3, NULL, 'text' FROM \"file.csv\" \
                      [WITH (delimiter ';', header true, encoding 'windows-1252')]";

/// A folder of CSV files exported by the ERP.
#[derive(Debug, Clone)]
pub struct CsvDirSource {
    root: PathBuf,
}

/// One selected item of a [`CsvQuery`].
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A column by header name.
    Column { name: String, alias: Option<String> },
    /// A column by position, from 1.
    Position { n: usize, alias: Option<String> },
    /// Every column, in file order.
    All,
    /// A constant.
    Const { value: SqlValue, alias: Option<String> },
}

/// A parsed CSV-folder query (see the module documentation for the syntax).
#[derive(Debug, Clone, PartialEq)]
pub struct CsvQuery {
    pub items: Vec<Item>,
    /// The file, relative to the folder.
    pub file: String,
    pub delimiter: u8,
    pub quote: u8,
    pub header: bool,
    pub encoding: &'static Encoding,
}

impl CsvDirSource {
    /// Use the folder `dir`, which must exist.
    pub fn open(dir: &str) -> Result<CsvDirSource, SourceError> {
        let path = Path::new(dir);
        let root = path.canonicalize().ok().filter(|p| p.is_dir()).ok_or_else(|| SourceError::Open {
            target: dir.to_string(),
            reason: "no such folder; set [erp] url to the folder the ERP exports its CSV files to".into(),
        })?;
        Ok(CsvDirSource { root })
    }

    /// The file a query names, checked to lie inside the folder.
    fn resolve(&self, file: &str) -> Result<PathBuf, SourceError> {
        let refuse = |why: &str| SourceError::Query(format!("FROM \"{file}\": {why}"));
        if file.is_empty() || file.contains(['\0', '\\']) {
            return Err(refuse("not a file name; name a file inside the CSV folder, e.g. \"items.csv\""));
        }
        let rel = Path::new(file);
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(refuse("must be a path inside the CSV folder, without `..`, `.` or a leading `/`"));
        }
        let path = self.root.join(rel);
        let real = path.canonicalize().map_err(|e| {
            SourceError::Query(format!("cannot open {file} in {}: {e}; check the file name", self.root.display()))
        })?;
        if !real.starts_with(&self.root) {
            return Err(refuse("leads outside the CSV folder (a link?); copy the file into the folder"));
        }
        if !real.is_file() {
            return Err(refuse("is not a file"));
        }
        Ok(real)
    }

    fn reader(&self, q: &CsvQuery) -> Result<csv::Reader<BufReader<File>>, SourceError> {
        let path = self.resolve(&q.file)?;
        let f = File::open(&path).map_err(|e| SourceError::Query(format!("cannot open {}: {e}", q.file)))?;
        Ok(csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(false)
            .delimiter(q.delimiter)
            .quote(q.quote)
            .from_reader(BufReader::new(f)))
    }

    /// Open the file, read the header (or the first row's width) and work out where each item comes from.
    fn plan(&self, sql: &str) -> Result<(CsvQuery, Plan, csv::Reader<BufReader<File>>), SourceError> {
        let q = CsvQuery::parse(sql)?;
        let mut reader = self.reader(&q)?;
        let mut first = csv::ByteRecord::new();
        let has_first = reader.read_byte_record(&mut first).map_err(|e| csv_err(&q.file, 1, &e))?;
        let mut header = Vec::with_capacity(first.len());
        for (i, raw) in first.iter().enumerate() {
            let text = decode(&q, raw, i == 0)
                .map_err(|why| SourceError::Query(format!("{} line 1, column {}: {why}", q.file, i + 1)))?;
            header.push(text.trim().to_string());
        }
        if q.header && !has_first {
            return Err(SourceError::Query(format!("{} is empty: it has no header line", q.file)));
        }
        let width = header.len();
        let mut names = Vec::new();
        let mut outs = Vec::new();
        for item in &q.items {
            match item {
                Item::All => {
                    if !has_first {
                        return Err(SourceError::Query(format!(
                            "{} is empty, so SELECT * has no columns; select with #N",
                            q.file
                        )));
                    }
                    for (i, h) in header.iter().enumerate() {
                        names.push(if q.header { h.clone() } else { format!("#{}", i + 1) });
                        outs.push(Out::Field(i));
                    }
                }
                Item::Column { name, alias } => {
                    if !q.header {
                        return Err(SourceError::Query(format!(
                            "{}: the query names column \"{name}\" but says header false; select with #N",
                            q.file
                        )));
                    }
                    let i = header.iter().position(|h| h == name).ok_or_else(|| {
                        SourceError::Query(format!(
                            "{} has no column \"{name}\"; its header is: {}",
                            q.file,
                            header.join(", ")
                        ))
                    })?;
                    names.push(alias.clone().unwrap_or_else(|| name.clone()));
                    outs.push(Out::Field(i));
                }
                Item::Position { n, alias } => {
                    if has_first && *n > width {
                        return Err(SourceError::Query(format!(
                            "{}: the query selects #{n} but line 1 has {width} fields",
                            q.file
                        )));
                    }
                    names.push(alias.clone().unwrap_or_else(|| {
                        if q.header { header.get(n - 1).cloned().unwrap_or_default() } else { format!("#{n}") }
                    }));
                    outs.push(Out::Field(n - 1));
                }
                Item::Const { value, alias } => {
                    names.push(alias.clone().unwrap_or_else(|| match value {
                        SqlValue::Text(s) | SqlValue::Decimal(s) => s.clone(),
                        SqlValue::Int(n) => n.to_string(),
                        _ => "NULL".into(),
                    }));
                    outs.push(Out::Const(value.clone()));
                }
            }
        }
        let replay = if q.header || !has_first { None } else { Some(first) };
        Ok((q, Plan { names, outs, replay }, reader))
    }

    fn fetch_all(&self, sql: &str, sink: &mut RowSink) -> Result<(), SourceError> {
        let (q, plan, mut reader) = self.plan(sql)?;
        let mut record = csv::ByteRecord::new();
        let mut pending = plan.replay.clone();
        loop {
            let line = reader.position().line();
            let rec = if let Some(r) = pending.take() {
                r
            } else {
                match reader.read_byte_record(&mut record) {
                    Ok(true) => record.clone(),
                    Ok(false) => break,
                    Err(e) => return Err(csv_err(&q.file, line, &e)),
                }
            };
            let line = rec.position().map_or(line, |p| p.line());
            let mut row = Vec::with_capacity(plan.outs.len());
            for out in &plan.outs {
                row.push(match out {
                    Out::Const(v) => v.clone(),
                    Out::Field(i) => {
                        let raw = rec.get(*i).unwrap_or_default();
                        if raw.is_empty() {
                            SqlValue::Null
                        } else {
                            SqlValue::Text(decode(&q, raw, *i == 0 && line == 1).map_err(|why| {
                                SourceError::Query(format!("{} line {line}, column {}: {why}", q.file, i + 1))
                            })?)
                        }
                    }
                });
            }
            if !sink.push(row) {
                return Ok(()); // the stream was dropped: stop reading
            }
        }
        Ok(())
    }
}

struct Plan {
    names: Vec<String>,
    outs: Vec<Out>,
    /// Without a header the first line was read to learn the width: it is the first data row.
    replay: Option<csv::ByteRecord>,
}

enum Out {
    Field(usize),
    Const(SqlValue),
}

/// One field as text in the query's encoding; a UTF-8 BOM at the very start of the file is dropped.
fn decode(q: &CsvQuery, raw: &[u8], file_start: bool) -> Result<String, String> {
    let raw = if file_start { raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw) } else { raw };
    if q.encoding == encoding_rs::UTF_8 {
        return std::str::from_utf8(raw).map(str::to_owned).map_err(|e| {
            format!(
                "the text is not valid UTF-8 (byte {} of the field); add WITH (encoding 'windows-1252') or the \
                 file's real encoding",
                e.valid_up_to() + 1
            )
        });
    }
    let (text, had_errors) = q.encoding.decode_without_bom_handling(raw);
    if had_errors {
        return Err(format!("the text is not valid {}; check the encoding option", q.encoding.name()));
    }
    Ok(text.into_owned())
}

fn csv_err(file: &str, fallback_line: u64, e: &csv::Error) -> SourceError {
    let line = e.position().map_or(fallback_line, |p| p.line());
    let what = match e.kind() {
        csv::ErrorKind::UnequalLengths { expected_len, len, .. } => {
            format!("the row has {len} fields, the first line has {expected_len}; fix the export (delimiter?)")
        }
        csv::ErrorKind::Io(err) => format!("cannot read the file: {err}"),
        _ => format!("cannot read the CSV: {e}"),
    };
    SourceError::Query(format!("{file} line {line}: {what}"))
}

impl Source for CsvDirSource {
    fn kind(&self) -> &'static str {
        "csv"
    }

    fn columns<'a>(&'a self, sql: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        let me = self.clone();
        let sql = sql.to_string();
        Box::pin(blocking("CSV reader", move || me.plan(&sql).map(|(_, plan, _)| plan.names)))
    }

    fn rows<'a>(&'a self, sql: &'a str) -> BoxStream<'a, Result<Vec<SqlValue>, SourceError>> {
        let me = self.clone();
        let sql = sql.to_string();
        blocking_rows(BATCH_ROWS, move |sink| me.fetch_all(&sql, sink))
    }
}

// ---- the query syntax ----

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    /// A bare word (keyword or column name).
    Word(String),
    /// `"..."`: a column or file name.
    Quoted(String),
    /// `'...'`: a text constant or option value.
    Str(String),
    Number(String),
    Position(usize),
    Star,
    Comma,
    Open,
    Close,
}

fn syntax_err(at: usize, what: &str) -> SourceError {
    SourceError::Query(format!("the CSV query is not valid at character {}: {what}; {SYNTAX}", at + 1))
}

fn tokenize(s: &str) -> Result<Vec<(usize, Tok)>, SourceError> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let start = i;
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {
                i += 1;
                continue;
            }
            b';' if s[i + 1..].trim().is_empty() => break,
            b'*' | b',' | b'(' | b')' => {
                i += 1;
                let tok = match c {
                    b'*' => Tok::Star,
                    b',' => Tok::Comma,
                    b'(' => Tok::Open,
                    _ => Tok::Close,
                };
                out.push((start, tok));
            }
            b'"' | b'\'' => {
                let mut text = String::new();
                i += 1;
                loop {
                    let Some(rel) = s[i..].find(c as char) else {
                        return Err(syntax_err(start, "the quote is never closed"));
                    };
                    text.push_str(&s[i..i + rel]);
                    i += rel + 1;
                    if b.get(i) == Some(&c) {
                        text.push(c as char);
                        i += 1;
                    } else {
                        break;
                    }
                }
                out.push((start, if c == b'"' { Tok::Quoted(text) } else { Tok::Str(text) }));
            }
            b'#' => {
                i += 1;
                let digits = b[i..].iter().take_while(|d| d.is_ascii_digit()).count();
                let n = s[i..i + digits].parse::<usize>().ok().filter(|n| *n >= 1);
                let Some(n) = n else {
                    return Err(syntax_err(start, "`#` must be followed by a column number from 1"));
                };
                i += digits;
                out.push((start, Tok::Position(n)));
            }
            b'-' | b'0'..=b'9' => {
                i += 1;
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                let text = &s[start..i];
                let valid = {
                    let digits = text.strip_prefix('-').unwrap_or(text);
                    let mut parts = digits.split('.');
                    let whole = parts.next().unwrap_or("");
                    let frac = parts.next();
                    !whole.is_empty()
                        && parts.next().is_none()
                        && frac.is_none_or(|f| !f.is_empty())
                        && digits.bytes().all(|d| d.is_ascii_digit() || d == b'.')
                };
                if !valid {
                    return Err(syntax_err(start, &format!("`{text}` is not a number")));
                }
                out.push((start, Tok::Number(text.to_string())));
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                out.push((start, Tok::Word(s[start..i].to_string())));
            }
            _ => {
                let ch = s[i..].chars().next().unwrap_or('?');
                return Err(syntax_err(start, &format!("unexpected `{ch}`")));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }
    fn at(&self) -> usize {
        self.toks.get(self.pos).map_or(self.len, |(a, _)| *a)
    }
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }
    fn is_kw(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }
    fn expect_kw(&mut self, kw: &str) -> Result<(), SourceError> {
        if self.is_kw(kw) {
            self.pos += 1;
            Ok(())
        } else {
            Err(syntax_err(self.at(), &format!("expected {}", kw.to_ascii_uppercase())))
        }
    }
    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), SourceError> {
        if self.peek() == Some(&tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(syntax_err(self.at(), &format!("expected {what}")))
        }
    }
    fn alias(&mut self) -> Result<Option<String>, SourceError> {
        if !self.is_kw("as") {
            return Ok(None);
        }
        self.pos += 1;
        match self.next() {
            Some(Tok::Word(w)) if !is_reserved(&w) => Ok(Some(w)),
            Some(Tok::Quoted(q)) => Ok(Some(q)),
            _ => Err(syntax_err(self.toks.get(self.pos - 1).map_or(self.len, |t| t.0), "expected a name after AS")),
        }
    }
}

fn is_reserved(w: &str) -> bool {
    ["select", "from", "with", "as", "null", "true", "false"].iter().any(|k| w.eq_ignore_ascii_case(k))
}

impl CsvQuery {
    /// Parse `sql` strictly; the error says where and what was expected, and shows the syntax.
    pub fn parse(sql: &str) -> Result<CsvQuery, SourceError> {
        let mut p = Parser { toks: tokenize(sql)?, pos: 0, len: sql.len() };
        p.expect_kw("select")?;
        let mut items = Vec::new();
        loop {
            let at = p.at();
            let item = match p.next() {
                Some(Tok::Star) => Item::All,
                Some(Tok::Word(w)) if w.eq_ignore_ascii_case("null") => {
                    Item::Const { value: SqlValue::Null, alias: p.alias()? }
                }
                Some(Tok::Word(w)) if !is_reserved(&w) => Item::Column { name: w, alias: p.alias()? },
                Some(Tok::Quoted(name)) => Item::Column { name, alias: p.alias()? },
                Some(Tok::Position(n)) => Item::Position { n, alias: p.alias()? },
                Some(Tok::Str(s)) => Item::Const { value: SqlValue::Text(s), alias: p.alias()? },
                Some(Tok::Number(n)) => {
                    let value = match n.parse::<i64>() {
                        Ok(i) => SqlValue::Int(i),
                        Err(_) => SqlValue::Decimal(n),
                    };
                    Item::Const { value, alias: p.alias()? }
                }
                _ => return Err(syntax_err(at, "expected a column name, #N, *, NULL, 'text' or a number")),
            };
            items.push(item);
            if p.peek() == Some(&Tok::Comma) {
                p.pos += 1;
            } else {
                break;
            }
        }
        p.expect_kw("from")?;
        let at = p.at();
        let file = match p.next() {
            Some(Tok::Quoted(f)) | Some(Tok::Str(f)) => f,
            _ => return Err(syntax_err(at, "expected the file name in double quotes, e.g. \"items.csv\"")),
        };
        let mut q = CsvQuery { items, file, delimiter: b',', quote: b'"', header: true, encoding: encoding_rs::UTF_8 };
        if p.is_kw("with") {
            p.pos += 1;
            p.expect(Tok::Open, "`(` after WITH")?;
            loop {
                let at = p.at();
                let Some(Tok::Word(key)) = p.next() else {
                    return Err(syntax_err(at, "expected an option: delimiter, quote, header or encoding"));
                };
                let vat = p.at();
                let value = p.next();
                q.set_option(&key.to_ascii_lowercase(), value, at, vat)?;
                match p.next() {
                    Some(Tok::Comma) => continue,
                    Some(Tok::Close) => break,
                    _ => return Err(syntax_err(p.toks.get(p.pos - 1).map_or(p.len, |t| t.0), "expected `,` or `)`")),
                }
            }
        }
        if p.pos < p.toks.len() {
            return Err(syntax_err(p.at(), "unexpected text after the query"));
        }
        Ok(q)
    }

    fn set_option(&mut self, key: &str, value: Option<Tok>, at: usize, vat: usize) -> Result<(), SourceError> {
        let one_char = |v: Option<Tok>, what: &str| -> Result<u8, SourceError> {
            match v {
                Some(Tok::Str(s)) if s == "\\t" => Ok(b'\t'),
                Some(Tok::Str(s)) if s.len() == 1 && s.is_ascii() && s != "\n" && s != "\r" => Ok(s.as_bytes()[0]),
                _ => Err(syntax_err(vat, &format!("{what} must be one ASCII character in single quotes, e.g. ';'"))),
            }
        };
        match key {
            "delimiter" => self.delimiter = one_char(value, "delimiter")?,
            "quote" => self.quote = one_char(value, "quote")?,
            "header" => {
                self.header = match value {
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("true") => true,
                    Some(Tok::Word(w)) if w.eq_ignore_ascii_case("false") => false,
                    _ => return Err(syntax_err(vat, "header must be true or false")),
                }
            }
            "encoding" => {
                let Some(Tok::Str(label)) = value else {
                    return Err(syntax_err(vat, "encoding must be a name in single quotes, e.g. 'windows-1252'"));
                };
                let enc = Encoding::for_label(label.trim().as_bytes()).ok_or_else(|| {
                    syntax_err(vat, &format!("unknown encoding '{label}'; use e.g. 'utf-8', 'windows-1252', 'latin1'"))
                })?;
                if enc.output_encoding() != enc {
                    return Err(syntax_err(vat, &format!("{} files are not supported; export UTF-8", enc.name())));
                }
                self.encoding = enc;
            }
            _ => {
                return Err(syntax_err(at, &format!("unknown option {key}; use delimiter, quote, header or encoding")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_syntax() {
        let q = CsvQuery::parse(
            "select sku, \"Unit \"\"Price\"\"\", NULL, 'it''s' AS note, -1.50, 7, #3 as third FROM \"exp/items.csv\"\n \
             WITH (delimiter ';', quote '''', header false, encoding 'latin1');",
        )
        .unwrap();
        assert_eq!(q.file, "exp/items.csv");
        assert_eq!((q.delimiter, q.quote, q.header, q.encoding.name()), (b';', b'\'', false, "windows-1252"));
        assert_eq!(q.items[0], Item::Column { name: "sku".into(), alias: None });
        assert_eq!(q.items[1], Item::Column { name: "Unit \"Price\"".into(), alias: None });
        assert_eq!(q.items[2], Item::Const { value: SqlValue::Null, alias: None });
        assert_eq!(q.items[3], Item::Const { value: SqlValue::Text("it's".into()), alias: Some("note".into()) });
        assert_eq!(q.items[4], Item::Const { value: SqlValue::Decimal("-1.50".into()), alias: None });
        assert_eq!(q.items[5], Item::Const { value: SqlValue::Int(7), alias: None });
        assert_eq!(q.items[6], Item::Position { n: 3, alias: Some("third".into()) });
        let q = CsvQuery::parse("SELECT * FROM 'a.csv' WITH (delimiter '\\t')").unwrap();
        assert_eq!((q.items.clone(), q.delimiter, q.header), (vec![Item::All], b'\t', true));
    }

    #[test]
    fn syntax_errors_say_where_and_what() {
        for (sql, want) in [
            ("SELECT a b FROM \"x.csv\"", "character 10: expected FROM"),
            ("SELECT FROM \"x.csv\"", "character 8: expected a column name"),
            ("SELECT a FROM items", "character 15: expected the file name in double quotes"),
            ("SELECT a FROM \"x.csv\" WITH (sep ';')", "unknown option sep"),
            ("SELECT a FROM \"x.csv\" WITH (delimiter ';;')", "delimiter must be one ASCII character"),
            ("SELECT a FROM \"x.csv\" WITH (encoding 'utf-16le')", "UTF-16LE files are not supported"),
            ("SELECT a FROM \"x.csv\" WITH (encoding 'klingon')", "unknown encoding 'klingon'"),
            ("SELECT a FROM \"x.csv\" WHERE a", "unexpected text after the query"),
            ("SELECT 'a FROM \"x.csv\"", "the quote is never closed"),
            ("SELECT #0 FROM \"x.csv\"", "column number from 1"),
            ("SELECT 1.2.3 FROM \"x.csv\"", "`1.2.3` is not a number"),
            ("SELECT a FROM \"x.csv\"; DROP TABLE t", "unexpected `;`"),
        ] {
            let e = CsvQuery::parse(sql).unwrap_err().to_string();
            assert!(e.contains(want), "{sql}: {e}");
            assert!(e.contains("SELECT col"), "shows the syntax: {e}");
        }
    }
}
