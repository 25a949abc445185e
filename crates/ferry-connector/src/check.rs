//! Validation of the extract against `DATA-SPEC.md`, before anything is sent: `ferry connector check` runs it on
//! its own (every query, no files written), and `sync` runs the very same checks while extracting, in the same
//! pass, and refuses to send a batch that fails them.
//!
//! Values are converted and checked by the extract's own conversion (`extract::format_value`, which ends in
//! `ferry_proto::spec::parse_field`, the App's check), so `check`, `sync` and the App judge a value identically.
//! On top of the App's field checks, a [`FileCheck`] looks across rows:
//! - **keys** ([`spec::FileSpec::keys`]): no two rows of a file may share one (`stock.csv`: item + location);
//! - **references** ([`spec::FileSpec::refs`]): a code must exist in the file that defines it (a sales row's item
//!   in `master.csv`; location codes in `location.csv`; suppliers in `supplier.csv`; custom group values in
//!   `group.csv` when it is mapped). The defining files are extracted first for this;
//! - an **incremental** file's date column must be filled on every row (a row without it belongs to no window);
//! - `location.csv`, `master.csv`, `stock.csv` and `supplier.csv` should not be empty.
//!
//! # Severities
//! - [`Severity::Error`]: what the App would reject anyway (a broken query, the wrong number of columns, a value of
//!   the wrong type, an empty required value, a code outside its fixed set) and a row without the date of its
//!   incremental column. Errors always block `sync`.
//! - [`Severity::Warning`]: what the App accepts but is almost certainly wrong: duplicate keys, codes that refer to
//!   nothing, an empty essential file. Warnings block `sync` unless `--allow-warnings` (or `allow_warnings = true`
//!   in the mapping).
//!
//! # Memory
//! Only key sets are kept, never rows: per keyed file, one 128-bit hash and the first row number per distinct key
//! (about 40 bytes each), dropped when the file is done; the code sets of `location.csv`, `master.csv`,
//! `supplier.csv` and `group.csv` are kept until the end of the run. Problems are counted without limit but only
//! the first few per file are kept.

use std::collections::HashMap;
use std::collections::hash_map::{DefaultHasher, Entry};
use std::fmt;
use std::hash::Hasher;
use std::sync::Arc;

use ferry_proto::spec::{self, FileSpec, RefTo};

use crate::mapping::Incremental;

/// How bad a problem is (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        }
    }
}

/// Where a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// The file as a whole (its query).
    File,
    /// A column of every row (1-based): the query returns too few or too many columns.
    Column(usize),
    /// One row (1-based, in the order the query returns them).
    Row(u64),
    /// One field: row and column, both 1-based.
    Cell { row: u64, column: usize },
}

/// One finding, printed as `file:row:column: severity: what is wrong; what to do`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub at: At,
    pub severity: Severity,
    /// What is wrong and what to do about it.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (file, sev, msg) = (&self.file, self.severity.as_str(), &self.message);
        match self.at {
            At::File => write!(f, "{file}: {sev}: {msg}"),
            At::Column(c) => write!(f, "{file}:*:{c}: {sev}: {msg}"),
            At::Row(r) => write!(f, "{file}:{r}: {sev}: {msg}"),
            At::Cell { row, column } => write!(f, "{file}:{row}:{column}: {sev}: {msg}"),
        }
    }
}

/// How much of the findings to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckLimits {
    /// Problems kept (and printed) per file; the rest are only counted.
    pub max_problems: usize,
    /// Sample rows kept per file, as CSV lines.
    pub samples: usize,
}

impl Default for CheckLimits {
    fn default() -> Self {
        CheckLimits { max_problems: 20, samples: 3 }
    }
}

/// What the checks found in one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileReport {
    pub file: String,
    /// Rows checked (the rows the file holds).
    pub rows: u64,
    /// Rows the query returned that lie before this run's window (incremental extracts only; not checked).
    pub skipped: u64,
    pub errors: u64,
    pub warnings: u64,
    /// The first problems (at most [`CheckLimits::max_problems`]).
    pub problems: Vec<Problem>,
    /// The first rows, as CSV lines of the file.
    pub samples: Vec<String>,
    /// How the file is extracted (`full`, `window from 2026/03/07 (invoice_date)`, ...), for the report.
    pub note: String,
}

impl FileReport {
    pub fn new(file: &str) -> FileReport {
        FileReport { file: file.to_string(), ..FileReport::default() }
    }

    /// Problems found but not kept.
    pub fn omitted(&self) -> u64 {
        (self.errors + self.warnings).saturating_sub(self.problems.len() as u64)
    }

    /// Count `p` and keep it if there is room.
    pub fn add(&mut self, p: Problem, limits: &CheckLimits) {
        match p.severity {
            Severity::Error => self.errors += 1,
            Severity::Warning => self.warnings += 1,
        }
        if self.problems.len() < limits.max_problems {
            self.problems.push(p);
        }
    }

    fn status(&self) -> String {
        match (self.errors, self.warnings) {
            (0, 0) => "ok".into(),
            (e, 0) => plural(e, "error"),
            (0, w) => plural(w, "warning"),
            (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
        }
    }
}

/// The findings of a whole run, file by file in the order they were checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub files: Vec<FileReport>,
}

impl CheckReport {
    pub fn errors(&self) -> u64 {
        self.files.iter().map(|f| f.errors).sum()
    }
    pub fn warnings(&self) -> u64 {
        self.files.iter().map(|f| f.warnings).sum()
    }
    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }
    pub fn file(&self, name: &str) -> Option<&FileReport> {
        self.files.iter().find(|f| f.file == name)
    }
    /// Every kept problem, file by file.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.files.iter().flat_map(|f| &f.problems)
    }

    /// Would `sync` refuse to send this batch?
    pub fn blocks(&self, allow_warnings: bool) -> bool {
        self.errors() > 0 || (self.warnings() > 0 && !allow_warnings)
    }

    /// `2 errors, 1 warning` / `no problems`.
    pub fn counts(&self) -> String {
        match (self.errors(), self.warnings()) {
            (0, 0) => "no problems".into(),
            (e, 0) => plural(e, "error"),
            (0, w) => plural(w, "warning"),
            (e, w) => format!("{}, {}", plural(e, "error"), plural(w, "warning")),
        }
    }

    /// The report `ferry connector check` prints: per file its rows, a few sample rows and its problems.
    pub fn render(&self, allow_warnings: bool) -> String {
        let mut out = String::new();
        for f in &self.files {
            let note = if f.note.is_empty() { String::new() } else { format!("  [{}]", f.note) };
            out.push_str(&format!("{:<18} {:>10} rows  {}{note}\n", f.file, thousands(f.rows), f.status()));
            for s in &f.samples {
                out.push_str(&format!("    | {s}\n"));
            }
            for p in &f.problems {
                out.push_str(&format!("  {p}\n"));
            }
            if f.omitted() > 0 {
                out.push_str(&format!(
                    "  ... and {} more in {} (the first {} are shown)\n",
                    plural(f.omitted(), "problem"),
                    f.file,
                    f.problems.len()
                ));
            }
        }
        out.push_str(&format!("{} files, {} rows: {}", self.files.len(), thousands(self.rows()), self.counts()));
        out.push_str(if self.errors() > 0 {
            "; `sync` refuses to send this batch: fix the errors (the query in the mapping, or the ERP data)\n"
        } else if self.warnings() > 0 && !allow_warnings {
            "; `sync` refuses to send this batch: fix the warnings, or send anyway with `sync --allow-warnings` \
             (or allow_warnings = true in the mapping)\n"
        } else if self.warnings() > 0 {
            "; warnings are allowed, `sync` would send this batch\n"
        } else {
            "; ready to sync\n"
        });
        out
    }

    /// Why `sync` refused the batch: the counts, the first problems, and what to do.
    pub fn refusal(&self, allow_warnings: bool) -> String {
        const SHOWN: usize = 20;
        let mut out = format!("the extract failed validation ({})", self.counts());
        let shown: Vec<&Problem> =
            self.problems().filter(|p| p.severity == Severity::Error || !allow_warnings).take(SHOWN).collect();
        for p in &shown {
            out.push_str(&format!("\n  {p}"));
        }
        let total = if allow_warnings { self.errors() } else { self.errors() + self.warnings() };
        if total > shown.len() as u64 {
            out.push_str(&format!("\n  ... and {} more", plural(total - shown.len() as u64, "problem")));
        }
        out.push_str("\nnothing was sent; run `ferry connector check` for the full report");
        if self.errors() == 0 {
            out.push_str(", fix the warnings, or send anyway with `ferry connector sync --allow-warnings`");
        }
        out
    }
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{} {what}s", thousands(n)) }
}

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Hashes of the distinct keys of a file, each with the first row (1-based) that had it.
pub type KeySet = HashMap<u128, u64>;

/// A 128-bit hash of a key's parts (two SipHash passes with different prefixes): collisions are negligible even
/// for billions of keys, and a key costs 16 bytes however long its codes are.
fn key_hash<'a>(parts: impl IntoIterator<Item = &'a str>) -> u128 {
    let (mut a, mut b) = (DefaultHasher::new(), DefaultHasher::new());
    b.write_u8(0xA5);
    for p in parts {
        a.write(p.as_bytes());
        a.write_u8(0x1F);
        b.write(p.as_bytes());
        b.write_u8(0x1F);
    }
    (u128::from(a.finish()) << 64) | u128::from(b.finish())
}

/// The codes defined by the files checked so far (the first key of `location.csv`, `master.csv`, `supplier.csv`,
/// `group.csv`), for the reference checks of later files. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Known {
    sets: HashMap<&'static str, Arc<KeySet>>,
}

impl Known {
    /// Does any file refer to the codes of `file`?
    pub fn is_referenced(file: &str) -> bool {
        spec::STANDARD_FILES.iter().flat_map(|f| f.refs).any(|r| r.to.files().contains(&file))
    }

    pub fn insert(&mut self, file: &'static str, codes: Arc<KeySet>) {
        self.sets.insert(file, codes);
    }
}

/// The order in which files are checked: the files that define codes first (location, master, supplier, group),
/// then the others in the order given.
pub fn check_order<T>(files: Vec<(&str, T)>) -> Vec<(&str, T)> {
    let mut files = files;
    files.sort_by_key(|(name, _)| !Known::is_referenced(name));
    files
}

struct KeyCheck {
    columns: Vec<usize>,
    seen: KeySet,
}

struct RefCheck {
    column: usize,
    to: RefTo,
    /// Group number of a [`RefTo::Group`] as text (the first part of group.csv's key).
    group: Option<String>,
    sets: Vec<Arc<KeySet>>,
}

/// Why one field of a row is not valid: told apart by kind, so the report can say what to do about each.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A required column is empty (NULL or empty text).
    #[error("{column} is required but empty")]
    RequiredEmpty { column: String },
    /// The spec's check ([`ferry_proto::spec::parse_field`]) refused the value; the message names the column.
    #[error("{0}")]
    Spec(String),
    /// The database value cannot become a value of the column's kind; the message does not name the column.
    #[error("{0}")]
    Conversion(String),
}

/// The cross-row checks of one file, fed row by row with the converted (plain) values by the extract pipeline.
pub struct FileCheck {
    report: FileReport,
    limits: CheckLimits,
    spec: Option<&'static FileSpec>,
    keys: Vec<KeyCheck>,
    refs: Vec<RefCheck>,
    /// The incremental column (0-based), which every row must fill.
    date_required: Option<usize>,
    /// Columns whose plain value [`FileCheck::row`] reads.
    wanted: Vec<bool>,
    /// Keep the first key's set for the files that refer to this one.
    keeps_codes: bool,
    /// Extracted as a window: an empty file is fine.
    windowed: bool,
}

impl FileCheck {
    /// The checks of `file` (a standard or a custom file), given its incremental setting, whether this run
    /// extracts it as a window, and the codes known from the files checked before it.
    pub fn new(
        file: &str,
        incremental: Option<&Incremental>,
        windowed: bool,
        known: &Known,
        limits: CheckLimits,
    ) -> FileCheck {
        let spec = spec::file_spec(file);
        let width = spec.map_or(0, |s| s.columns.len());
        let mut check = FileCheck {
            report: FileReport::new(file),
            limits,
            spec,
            keys: Vec::new(),
            refs: Vec::new(),
            date_required: None,
            wanted: vec![false; width],
            keeps_codes: Known::is_referenced(file),
            windowed,
        };
        let Some(spec) = spec else {
            return check;
        };
        let index = |name: &str| spec.column_index(name);
        for key in spec.keys {
            let columns: Vec<usize> = key.iter().filter_map(|c| index(c)).collect();
            check.keys.push(KeyCheck { columns, seen: KeySet::new() });
        }
        for r in spec.refs {
            let sets: Vec<Arc<KeySet>> = r.to.files().iter().filter_map(|f| known.sets.get(f).cloned()).collect();
            if let (Some(column), false) = (index(r.column), sets.is_empty()) {
                let group = match r.to {
                    RefTo::Group(n) => Some(n.to_string()),
                    _ => None,
                };
                check.refs.push(RefCheck { column, to: r.to, group, sets });
            }
        }
        check.date_required = incremental.and_then(|i| index(&i.column));
        let wanted = check
            .keys
            .iter()
            .flat_map(|k| k.columns.iter().copied())
            .chain(check.refs.iter().map(|r| r.column))
            .chain(check.date_required);
        for c in wanted.collect::<Vec<_>>() {
            if let Some(w) = check.wanted.get_mut(c) {
                *w = true;
            }
        }
        check
    }

    /// Does [`FileCheck::row`] read the plain value of column `i` (0-based)?
    pub fn wants(&self, i: usize) -> bool {
        self.wanted.get(i).copied().unwrap_or(false)
    }

    /// Does the report still want sample rows?
    pub fn wants_sample(&self) -> bool {
        self.report.samples.len() < self.limits.samples
    }

    pub fn sample(&mut self, line: &str) {
        if self.wants_sample() {
            self.report.samples.push(line.chars().take(240).collect());
        }
    }

    pub fn add(&mut self, p: Problem) {
        self.report.add(p, &self.limits);
    }

    pub fn report(&self) -> &FileReport {
        &self.report
    }

    /// A problem with the file as a whole or one of its columns.
    pub fn file_problem(&mut self, at: At, severity: Severity, message: String) {
        let file = self.report.file.clone();
        self.add(Problem { file, at, severity, message });
    }

    /// A row was skipped: it lies before this run's window.
    pub fn skipped(&mut self) {
        self.report.skipped += 1;
    }

    /// The value of column `i` (0-based) of row `row` could not be converted, or failed the spec's check.
    pub fn field_error(&mut self, row: u64, i: usize, why: &FieldError) {
        let (name, required) = self.spec.and_then(|s| s.columns.get(i)).map_or(("?", false), |c| (c.name, c.required));
        let file = self.report.file.clone();
        let what = match why {
            FieldError::Conversion(reason) => format!("{name}: {reason}"),
            FieldError::RequiredEmpty { .. } | FieldError::Spec(_) => why.to_string(),
        };
        let todo = if required && matches!(why, FieldError::RequiredEmpty { .. }) {
            format!(
                "return a value on every row (e.g. COALESCE) or leave such rows out of the query for {file} in the \
                 mapping"
            )
        } else {
            format!("fix column {} of the query for {file} in the mapping, or the ERP data", i + 1)
        };
        let message = format!("{what}; {todo}");
        self.add(Problem { file, at: At::Cell { row, column: i + 1 }, severity: Severity::Error, message });
    }

    /// One converted row: `plain[i]` holds column `i`'s value as it goes into the CSV (unquoted) for every column
    /// [`wanted`](FileCheck::wants) whose conversion succeeded (`ok[i]`).
    pub fn row(&mut self, row: u64, plain: &[String], ok: &[bool]) {
        self.report.rows += 1;
        let Some(spec) = self.spec else {
            return;
        };
        let value = |i: usize| -> Option<&str> {
            (ok.get(i).copied().unwrap_or(false)).then(|| plain.get(i).map(String::as_str)).flatten()
        };
        let mut found = Vec::new();

        if let Some(d) = self.date_required
            && value(d) == Some("")
        {
            let col = spec.columns[d].name;
            found.push((
                d,
                Severity::Error,
                format!(
                    "{col} is empty, but {file} is incremental on {col}: every row needs that date; return one, \
                     leave such rows out (WHERE ... IS NOT NULL), or remove `incremental` from the mapping",
                    file = spec.name
                ),
            ));
        }
        for key in &mut self.keys {
            if key.columns.iter().any(|&c| value(c).is_none_or(str::is_empty)) {
                continue; // a key column is empty (or invalid, already reported): nothing to compare
            }
            // no allocation per row: the parts are hashed in place
            match key.seen.entry(key_hash(key.columns.iter().map(|&c| value(c).unwrap_or_default()))) {
                Entry::Vacant(v) => {
                    v.insert(row);
                }
                Entry::Occupied(o) => {
                    let parts: Vec<&str> = key.columns.iter().map(|&c| value(c).unwrap_or_default()).collect();
                    let names: Vec<&str> = key.columns.iter().map(|&c| spec.columns[c].name).collect();
                    let shown: Vec<String> =
                        names.iter().zip(&parts).map(|(n, v)| format!("{n} {:?}", short(v))).collect();
                    found.push((
                        key.columns[0],
                        Severity::Warning,
                        format!(
                            "duplicate key: {} repeats row {}; {} must be unique in {}: remove the duplicate from \
                             the query (GROUP BY, DISTINCT or a tighter JOIN)",
                            shown.join(", "),
                            o.get(),
                            names.join(" + "),
                            spec.name
                        ),
                    ));
                }
            }
        }
        for r in &self.refs {
            let Some(v) = value(r.column).filter(|v| !v.is_empty()) else {
                continue;
            };
            let h = match &r.group {
                Some(g) => key_hash([g.as_str(), v]),
                None => key_hash([v]),
            };
            if !r.sets.iter().any(|s| s.contains_key(&h)) {
                let col = spec.columns[r.column].name;
                let defining = r.to.files().join(" or ");
                found.push((
                    r.column,
                    Severity::Warning,
                    format!(
                        "{col} {:?} is not {}; add it to the query for {defining}, or leave rows with it out of the \
                         query for {}",
                        short(v),
                        r.to.describe(),
                        spec.name
                    ),
                ));
            }
        }
        for (i, severity, message) in found {
            let file = self.report.file.clone();
            self.add(Problem { file, at: At::Cell { row, column: i + 1 }, severity, message });
        }
    }

    /// The file is done: its report, and the codes it defines if other files refer to them.
    pub fn finish(mut self) -> (FileReport, Option<Arc<KeySet>>) {
        let essential = ["location.csv", "master.csv", "stock.csv", "supplier.csv"];
        if self.report.rows == 0 && !self.windowed && essential.contains(&self.report.file.as_str()) {
            let file = self.report.file.clone();
            let message = format!(
                "the query returned no rows; the App cannot plan without {file}: check the query's WHERE and JOINs"
            );
            self.add(Problem { file, at: At::File, severity: Severity::Warning, message });
        }
        let codes = (self.keeps_codes && !self.keys.is_empty()).then(|| Arc::new(self.keys.swap_remove(0).seen));
        (self.report, codes)
    }
}

/// The problem of a query that returns `got` columns for a file of `DATA-SPEC.md` that has `cols`, if any.
pub fn column_count(file: &str, got: usize, cols: &[spec::Column]) -> Option<Problem> {
    let expected = cols.len();
    let message = match got.cmp(&expected) {
        std::cmp::Ordering::Equal => return None,
        std::cmp::Ordering::Less => {
            let missing = &cols[got..];
            let required: Vec<&str> = missing.iter().filter(|c| c.required).map(|c| c.name).collect();
            let required =
                if required.is_empty() { String::new() } else { format!(" (required: {})", required.join(", ")) };
            format!(
                "the query returns {got} columns, DATA-SPEC.md {file} has {expected}: column {} ({}) and after are \
                 missing{required}; add them to the SELECT in order ('' AS {} for a column the ERP lacks)",
                got + 1,
                missing[0].name,
                missing[0].name
            )
        }
        std::cmp::Ordering::Greater => format!(
            "the query returns {got} columns, DATA-SPEC.md {file} has {expected}: remove the last {} (from column {} \
             on) or fix the query",
            got - expected,
            expected + 1
        ),
    };
    Some(Problem { file: file.to_string(), at: At::Column(got.min(expected) + 1), severity: Severity::Error, message })
}

fn short(v: &str) -> String {
    v.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Feed rows of plain values (all converted fine) into a check.
    fn feed(check: &mut FileCheck, rows: &[&[&str]]) {
        for (i, r) in rows.iter().enumerate() {
            let plain = strings(r);
            check.row(i as u64 + 1, &plain, &vec![true; plain.len()]);
        }
    }

    fn location_codes(codes: &[&str]) -> Known {
        let mut c = FileCheck::new("location.csv", None, false, &Known::default(), CheckLimits::default());
        let rows: Vec<Vec<&str>> = codes.iter().map(|c| vec![*c, "", "", "", ""]).collect();
        feed(&mut c, &rows.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let (report, set) = c.finish();
        assert_eq!(report.errors + report.warnings, 0);
        let mut known = Known::default();
        known.insert("location.csv", set.expect("location codes are kept"));
        known
    }

    #[test]
    fn duplicates_and_unknown_codes_are_warnings_with_their_place() {
        let mut known = location_codes(&["L1", "L2"]);
        let mut m = FileCheck::new("master.csv", None, false, &known, CheckLimits::default());
        feed(&mut m, &[&["A1", "", "", "", "", "", "", "", "u1"], &["B2", "", "", "", "", "", "", "", "u1"]]);
        let (report, items) = m.finish();
        assert_eq!((report.errors, report.warnings), (0, 1), "{:?}", report.problems);
        let p = report.problems[0].to_string();
        assert!(p.starts_with("master.csv:2:9: warning: duplicate key: uid \"u1\" repeats row 1"), "{p}");
        known.insert("master.csv", items.unwrap());

        let mut s = FileCheck::new("sales.csv", None, false, &known, CheckLimits::default());
        feed(
            &mut s,
            &[
                &["A1", "L1", "", "2026/03/01", "2026/03/01", "1", "", "", "", ""],
                &["A1", "L1", "", "2026/03/01", "2026/03/01", "1", "", "", "", ""], // same line again: fine in sales
                &["X9", "L3", "", "2026/03/01", "2026/03/01", "1", "", "", "", ""],
            ],
        );
        let (report, codes) = s.finish();
        assert!(codes.is_none());
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(lines[0].starts_with("sales.csv:3:1: warning: item \"X9\" is not an item of master.csv;"), "{lines:?}");
        assert!(lines[1].starts_with("sales.csv:3:2: warning: location \"L3\" is not a location of location.csv"));

        // stock: item + location is the key; a supplier is not checked when supplier.csv was not seen
        let mut st = FileCheck::new("stock.csv", None, false, &known, CheckLimits { max_problems: 1, samples: 0 });
        let row = |item: &'static str| -> Vec<&'static str> {
            let mut r = vec![""; 21];
            r[0] = item;
            r[1] = "L1";
            r[10] = "S-unknown";
            r
        };
        let (a, b, c) = (row("A1"), row("B2"), row("A1"));
        feed(&mut st, &[&a, &b, &c, &c]);
        let (report, _) = st.finish();
        assert_eq!((report.warnings, report.problems.len(), report.omitted()), (2, 1, 1));
        assert!(report.problems[0].to_string().contains("item \"A1\", location \"L1\" repeats row 1"));
    }

    #[test]
    fn incremental_date_is_required_and_field_errors_say_what_to_do() {
        let inc = Incremental { column: "invoice_date".into(), overlap_days: 3, full_every_days: 7 };
        let mut s = FileCheck::new("sales.csv", Some(&inc), false, &Known::default(), CheckLimits::default());
        assert!(s.wants(4) && !s.wants(3));
        feed(&mut s, &[&["A1", "L1", "", "2026/03/01", "", "1", "", "", "", ""]]);
        s.field_error(2, 5, &FieldError::RequiredEmpty { column: "qty".into() });
        s.field_error(2, 3, &FieldError::Conversion("the number 45000 is not a date; return YYYY-MM-DD".into()));
        let (report, _) = s.finish();
        let lines: Vec<String> = report.problems.iter().map(ToString::to_string).collect();
        assert!(lines[0].starts_with("sales.csv:1:5: error: invoice_date is empty, but sales.csv is incremental"));
        assert!(lines[1].starts_with("sales.csv:2:6: error: qty is required but empty; return a value on every row"));
        assert!(lines[2].starts_with("sales.csv:2:4: error: order_date: the number 45000 is not a date"), "{lines:?}");
        assert!(lines[2].ends_with("fix column 4 of the query for sales.csv in the mapping, or the ERP data"));
    }

    #[test]
    fn column_counts_point_at_the_first_missing_or_extra_column() {
        let p = column_count("sales.csv", 5, spec::SALES.columns).unwrap().to_string();
        assert!(p.starts_with("sales.csv:*:6: error: the query returns 5 columns, DATA-SPEC.md sales.csv has 10"));
        assert!(p.contains("column 6 (qty) and after are missing (required: qty)"), "{p}");
        let p = column_count("supplier.csv", 6, spec::SUPPLIER.columns).unwrap().to_string();
        assert!(p.starts_with("supplier.csv:*:5: error:") && p.contains("remove the last 2"), "{p}");
        assert!(column_count("supplier.csv", 4, spec::SUPPLIER.columns).is_none());
    }

    #[test]
    fn empty_essential_files_warn_and_reports_render() {
        let (r, _) = FileCheck::new("master.csv", None, false, &Known::default(), CheckLimits::default()).finish();
        assert!(r.problems[0].to_string().starts_with("master.csv: warning: the query returned no rows"));
        let (r2, _) = FileCheck::new("co.csv", None, false, &Known::default(), CheckLimits::default()).finish();
        assert!(r2.problems.is_empty());
        let report = CheckReport { files: vec![r, r2] };
        assert!(report.blocks(false) && !report.blocks(true));
        let text = report.render(false);
        assert!(text.contains("master.csv") && text.contains("1 warning") && text.contains("--allow-warnings"));
        assert!(report.refusal(false).contains("nothing was sent"));
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(thousands(12), "12");
    }

    #[test]
    fn defining_files_come_first() {
        let files =
            vec![("stock.csv", 1), ("location.csv", 2), ("sales.csv", 3), ("supplier.csv", 4), ("group.csv", 5)];
        let order: Vec<&str> = check_order(files).into_iter().map(|(n, _)| n).collect();
        assert_eq!(order, ["location.csv", "supplier.csv", "group.csv", "stock.csv", "sales.csv"]);
    }
}
