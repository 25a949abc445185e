//! The admin's mapping from ERP to standard files: one SQL query per file of `DATA-SPEC.md`, written in TOML.
//!
//! ```toml
//! allow_warnings = false          # optional: let `sync` send batches whose only problems are warnings
//!
//! [files."stock.csv"]
//! query = "SELECT item, location, ... FROM ..."
//!
//! [files."sales.csv"]
//! query = "SELECT ... FROM sales_lines"
//! incremental = { column = "invoice_date", overlap_days = 3, full_every_days = 7 }
//! ```
//!
//! The query's result columns map by position onto the file's columns in `DATA-SPEC.md` (use `NULL` or `''` for a
//! column the ERP does not have). Custom files `ut_NNN.csv` take any columns; their header row is the query's
//! column names. A standard file with a date column may be [`Incremental`]: after the first full extract, `sync`
//! sends only the rows dated since the last imported batch (minus an overlap), and the App replaces exactly that
//! window. `docs/mapping.md` is the reference for admins; the sample ERP's mapping (`ferry_sample::MAPPING`) is a
//! worked example.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use ferry_proto::spec;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Every file the Connector extracts, by file name (`stock.csv`), with its query.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Mapping {
    #[serde(default)]
    pub files: BTreeMap<String, FileMapping>,
    /// Let `sync` (and the daily extract of `run`) send a batch whose only problems are warnings (unknown codes,
    /// duplicate keys). Errors always block. `sync --allow-warnings` does the same for one run.
    #[serde(default)]
    pub allow_warnings: bool,
}

/// How to extract one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileMapping {
    /// One SQL `SELECT` whose result columns map by position onto the file's columns.
    pub query: String,
    /// Send only a window of recent rows once a full extract has been imported (standard files with a date
    /// column only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
}

impl FileMapping {
    /// A file extracted whole on every run.
    pub fn new(query: impl Into<String>) -> FileMapping {
        FileMapping { query: query.into(), incremental: None }
    }
}

/// Default days of overlap between a window and the previous extract.
pub const DEFAULT_OVERLAP_DAYS: u32 = 3;
/// Default days between two automatic full extracts of an incremental file.
pub const DEFAULT_FULL_EVERY_DAYS: u32 = 7;

/// `incremental = { column = "invoice_date", overlap_days = 3, full_every_days = 7 }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// The date column (named as in `DATA-SPEC.md` / `ferry_proto::spec`, e.g. `invoice_date`) that places a row
    /// in a window. Every row must have one.
    pub column: String,
    /// A window starts this many days before the date of the last imported extract, so rows entered late or
    /// changed since are sent again.
    #[serde(default = "d_overlap")]
    pub overlap_days: u32,
    /// A full extract replaces the whole table when the last imported full one is this many days old.
    #[serde(default = "d_full_every")]
    pub full_every_days: u32,
}

fn d_overlap() -> u32 {
    DEFAULT_OVERLAP_DAYS
}
fn d_full_every() -> u32 {
    DEFAULT_FULL_EVERY_DAYS
}

/// What the journal remembers of an incremental file after the App imported one of its extracts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// The date column the extract windowed on.
    pub column: String,
    /// [`FileMapping::fingerprint`] of the mapping that extract used.
    pub fingerprint: String,
    /// Date of the newest imported extract: the instance holds the file complete as of that day.
    pub through: NaiveDate,
    /// Date of the newest imported full extract of the file.
    pub last_full: NaiveDate,
}

/// How one incremental file is extracted this run, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Full(FullReason),
    /// Only rows dated `from` or later.
    Window {
        from: NaiveDate,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// `sync --full`.
    Forced,
    /// Nothing of this file was imported yet.
    FirstRun,
    /// The query or the column changed since the last imported extract.
    MappingChanged,
    /// The last full extract is `full_every_days` old.
    Scheduled,
}

impl std::fmt::Display for FullReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FullReason::Forced => "--full",
            FullReason::FirstRun => "first run",
            FullReason::MappingChanged => "the query or column changed",
            FullReason::Scheduled => "scheduled full refresh",
        })
    }
}

impl Incremental {
    /// Full or window for this run, from the watermark of the last imported extract (if any), today's date, and
    /// `sync --full`. The window starts `overlap_days` before the last imported extract's date (never after
    /// today).
    pub fn decide(&self, fingerprint: &str, last: Option<&Watermark>, today: NaiveDate, force_full: bool) -> Decision {
        let Some(w) = last else {
            return Decision::Full(if force_full { FullReason::Forced } else { FullReason::FirstRun });
        };
        if force_full {
            return Decision::Full(FullReason::Forced);
        }
        if w.column != self.column || w.fingerprint != fingerprint {
            return Decision::Full(FullReason::MappingChanged);
        }
        if (today - w.last_full).num_days() >= i64::from(self.full_every_days) {
            return Decision::Full(FullReason::Scheduled);
        }
        let from = w.through.min(today) - chrono::Duration::days(i64::from(self.overlap_days));
        Decision::Window { from }
    }
}

impl FileMapping {
    /// A short hash of what decides which rows the file holds (query and window column): when it changes, the
    /// next extract of an incremental file is full.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(self.query.trim().as_bytes());
        h.update([0]);
        h.update(self.incremental.as_ref().map_or("", |i| i.column.as_str()).as_bytes());
        hex::encode(&h.finalize()[..8])
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    #[error("the mapping is not valid TOML: {0}")]
    Toml(String),
    #[error("the mapping names file {key:?}, which is not a file of DATA-SPEC.md; use one of {valid} or ut_NNN.csv")]
    UnknownFile { key: String, valid: String },
    #[error("the mapping has no query for the required file {0}; add a [files.\"{0}\"] section with a query")]
    MissingRequired(String),
    #[error("the query for {0} is empty; write a SELECT or remove the [files.\"{0}\"] section")]
    EmptyQuery(String),
    #[error("{file} cannot be incremental: {why}")]
    Incremental { file: String, why: String },
}

impl Mapping {
    /// Parse and [`validate`](Mapping::validate) a mapping. Sections other than `[files."..."]` are ignored, so the
    /// mapping may live in a larger configuration file.
    pub fn from_toml(text: &str) -> Result<Mapping, MappingError> {
        let m: Mapping = toml::from_str(text).map_err(|e| MappingError::Toml(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Check that every key is a standard file or `ut_NNN.csv`, that no query is empty, and that every required file
    /// of `DATA-SPEC.md` has a query.
    pub fn validate(&self) -> Result<(), MappingError> {
        for (key, file) in &self.files {
            if !spec::is_known_file(key) {
                let valid = spec::STANDARD_FILES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ");
                return Err(MappingError::UnknownFile { key: key.chars().take(80).collect(), valid });
            }
            if file.query.trim().is_empty() {
                return Err(MappingError::EmptyQuery(key.clone()));
            }
            if let Some(inc) = &file.incremental {
                check_incremental(key, inc)?;
            }
        }
        for req in spec::STANDARD_FILES.iter().filter(|f| f.required) {
            if !self.files.contains_key(req.name) {
                return Err(MappingError::MissingRequired(req.name.to_string()));
            }
        }
        Ok(())
    }

    /// The incremental settings of `file`, if it is mapped as incremental.
    pub fn incremental(&self, file: &str) -> Option<&Incremental> {
        self.files.get(file).and_then(|f| f.incremental.as_ref())
    }

    /// The mapped files in batch order: standard files in the order of `DATA-SPEC.md`, then custom files by name.
    pub fn ordered(&self) -> Vec<(&str, &FileMapping)> {
        let mut out: Vec<(&str, &FileMapping)> =
            spec::STANDARD_FILES.iter().filter_map(|f| self.files.get(f.name).map(|m| (f.name, m))).collect();
        out.extend(self.files.iter().filter(|(k, _)| spec::is_custom_file(k)).map(|(k, m)| (k.as_str(), m)));
        out
    }
}

fn check_incremental(file: &str, inc: &Incremental) -> Result<(), MappingError> {
    let err = |why: String| MappingError::Incremental { file: file.to_string(), why };
    let Some(fs) = spec::file_spec(file) else {
        return Err(err("custom files are always sent whole; remove `incremental`".into()));
    };
    let dates: Vec<&str> = fs.date_columns().collect();
    if dates.is_empty() {
        return Err(err("it has no date column; remove `incremental`".into()));
    }
    if !dates.contains(&inc.column.as_str()) {
        return Err(err(format!(
            "column {:?} is not one of its date columns; use one of {}",
            inc.column.chars().take(40).collect::<String>(),
            dates.join(", ")
        )));
    }
    if inc.full_every_days == 0 {
        return Err(err("full_every_days must be at least 1".into()));
    }
    if inc.overlap_days > 3660 {
        return Err(err(
            "overlap_days is more than ten years; remove `incremental` to always send the file whole".into()
        ));
    }
    Ok(())
}

/// A commented blank mapping for a real ERP (what `ferry connector init` writes without `--sample`): every standard
/// file of `DATA-SPEC.md` as a commented-out `[files."..."]` block with its columns in order, their kinds and
/// which are required, and a query template selecting `NULL` for each. The admin uncomments the blocks of the
/// files the ERP has (the required ones at least) and replaces each `NULL` with the ERP's column. As written it
/// is valid TOML with no files, which `validate` refuses by naming the first required file.
pub fn blank_mapping(erp_kind: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Ferry Connector mapping: one SQL query per standard file of DATA-SPEC.md (docs/mapping.md).\n\
         # Written blank by `ferry connector init` for an ERP of kind {erp_kind:?}: every block below is commented out.\n\
         # For each file the ERP has, uncomment its block (the files marked REQUIRED at least) and replace each NULL\n\
         # with the ERP's column or an expression, keeping the order: result columns map by position. Leave NULL\n\
         # for a column the ERP lacks (a required column must not be empty). Then `ferry connector check`.\n\
         # Dates may come back as YYYY-MM-DD, YYYY-MM-DD HH:MM:SS or YYYY/MM/DD.\n\
         # (`ferry connector init --sample` writes the worked mapping of the sample ERP instead.)\n\
         \n\
         # allow_warnings = false   # let `sync` send batches whose only problems are warnings"
    );
    for f in spec::STANDARD_FILES {
        let _ = writeln!(out);
        let need = if f.required { "REQUIRED in every full batch" } else { "optional" };
        let _ = writeln!(out, "# ---- {} ({need}; {} columns) ----", f.name, f.columns.len());
        for (i, c) in f.columns.iter().enumerate() {
            let kind = match c.kind {
                spec::Kind::Text => "text".to_string(),
                spec::Kind::Code => "code".to_string(),
                spec::Kind::Int => "whole number".to_string(),
                spec::Kind::Dec => "decimal".to_string(),
                spec::Kind::Date => "date".to_string(),
                spec::Kind::OneOf(v) => format!("one of {}", v.join("/")),
                spec::Kind::Flag => "1 or 0".to_string(),
                spec::Kind::Unused => "unused: always NULL".to_string(),
            };
            let req = if c.required { ", required" } else { "" };
            let refers = f.refs.iter().find(|r| r.column == c.name).map(|r| format!(", {}", r.to.describe()));
            let _ = writeln!(out, "#   {:>2} {:<18} {kind}{req}{}", i + 1, c.name, refers.unwrap_or_default());
        }
        let _ = writeln!(out, "# [files.\"{}\"]", f.name);
        let _ = writeln!(out, "# query = \"\"\"");
        let _ = writeln!(out, "# SELECT");
        for (i, c) in f.columns.iter().enumerate() {
            let comma = if i + 1 < f.columns.len() { "," } else { "" };
            let _ = writeln!(out, "#   NULL AS {}{comma}", c.name);
        }
        let _ = writeln!(out, "# FROM erp_table");
        let _ = writeln!(out, "# \"\"\"");
        if let Some(d) = f.date_columns().next() {
            let _ = writeln!(
                out,
                "# incremental = {{ column = \"{d}\", overlap_days = {DEFAULT_OVERLAP_DAYS}, full_every_days = \
                 {DEFAULT_FULL_EVERY_DAYS} }}   # optional: send only recent rows"
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample ERP's mapping: a real, complete mapping to test against.
    fn default_mapping() -> &'static str {
        ferry_sample::MAPPING
    }

    #[test]
    fn default_mapping_is_valid_and_covers_required_files() {
        let m = Mapping::from_toml(default_mapping()).unwrap();
        for f in spec::STANDARD_FILES.iter().filter(|f| f.required) {
            assert!(m.files.contains_key(f.name), "{}", f.name);
        }
        let order: Vec<_> = m.ordered().into_iter().map(|(n, _)| n).collect();
        assert_eq!(order[0], "location.csv");
    }

    #[test]
    fn errors_name_the_problem() {
        let base = default_mapping();
        let bad = format!("{base}\n[files.\"stocks.csv\"]\nquery = \"SELECT 1\"\n");
        let e = Mapping::from_toml(&bad).unwrap_err().to_string();
        assert!(e.contains("\"stocks.csv\"") && e.contains("stock.csv") && e.contains("ut_NNN.csv"), "{e}");

        let e = Mapping::from_toml("[files.\"location.csv\"]\nquery = \"SELECT 1\"\n").unwrap_err();
        assert_eq!(e, MappingError::MissingRequired("master.csv".into()));
        assert!(e.to_string().contains("master.csv"));

        let typo = base.replacen("query = \"\"\"\nSELECT wh_code", "querry = \"\"\"\nSELECT wh_code", 1);
        assert!(matches!(Mapping::from_toml(&typo), Err(MappingError::Toml(_))));

        let custom = format!("{base}\n[files.\"ut_001.csv\"]\nquery = \"SELECT 1 AS a\"\n");
        let m = Mapping::from_toml(&custom).unwrap();
        assert_eq!(m.ordered().last().unwrap().0, "ut_001.csv");

        let empty = format!("{base}\n[files.\"ut_002.csv\"]\nquery = \"  \"\n");
        assert_eq!(Mapping::from_toml(&empty).unwrap_err(), MappingError::EmptyQuery("ut_002.csv".into()));
    }

    /// The default mapping with `[files."NAME"]` given `incremental = INC`.
    fn with_incremental(name: &str, inc: &str) -> Result<Mapping, MappingError> {
        let mut m = Mapping::from_toml(default_mapping()).unwrap();
        let text = format!("[files.\"{name}\"]\nquery = \"SELECT 1\"\nincremental = {inc}\n");
        let extra: Mapping = toml::from_str(&text).map_err(|e| MappingError::Toml(e.to_string()))?;
        m.files.extend(extra.files);
        m.validate().map(|_| m)
    }

    #[test]
    fn incremental_settings_are_checked() {
        let m = Mapping::from_toml(default_mapping()).unwrap();
        let inc = m.incremental("sales.csv").unwrap();
        assert_eq!((inc.column.as_str(), inc.overlap_days, inc.full_every_days), ("invoice_date", 7, 7));
        assert!(m.incremental("stock.csv").is_none() && !m.allow_warnings);

        let m = with_incremental("pohist.csv", "{ column = \"receipt_date\" }").unwrap();
        let inc = m.incremental("pohist.csv").unwrap();
        assert_eq!((inc.overlap_days, inc.full_every_days), (DEFAULT_OVERLAP_DAYS, DEFAULT_FULL_EVERY_DAYS));

        let e = with_incremental("sales.csv", "{ column = \"date\" }").unwrap_err().to_string();
        assert!(e.contains("sales.csv cannot be incremental") && e.contains("order_date, invoice_date"), "{e}");
        let e = with_incremental("location.csv", "{ column = \"date\" }").unwrap_err().to_string();
        assert!(e.contains("no date column"), "{e}");
        let e = with_incremental("ut_007.csv", "{ column = \"day\" }").unwrap_err().to_string();
        assert!(e.contains("custom files"), "{e}");
        let e = with_incremental("sales.csv", "{ column = \"invoice_date\", full_every_days = 0 }").unwrap_err();
        assert!(e.to_string().contains("at least 1"), "{e}");
        let e = with_incremental("sales.csv", "{ column = \"invoice_date\", overlap = 3 }").unwrap_err();
        assert!(matches!(e, MappingError::Toml(ref t) if t.contains("overlap")), "{e}");

        let top = format!("allow_warnings = true\n{}", default_mapping());
        assert!(Mapping::from_toml(&top).unwrap().allow_warnings);
    }

    fn day(d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 3, d).unwrap()
    }

    #[test]
    fn full_or_window_is_decided_from_the_watermark() {
        let inc = Incremental { column: "invoice_date".into(), overlap_days: 3, full_every_days: 7 };
        let fp = "f1";
        let wm =
            Watermark { column: "invoice_date".into(), fingerprint: fp.into(), through: day(10), last_full: day(10) };
        // first run, forced, changed mapping, schedule
        assert_eq!(inc.decide(fp, None, day(11), false), Decision::Full(FullReason::FirstRun));
        assert_eq!(inc.decide(fp, Some(&wm), day(11), true), Decision::Full(FullReason::Forced));
        assert_eq!(inc.decide("f2", Some(&wm), day(11), false), Decision::Full(FullReason::MappingChanged));
        let other_col = Watermark { column: "order_date".into(), ..wm.clone() };
        assert_eq!(inc.decide(fp, Some(&other_col), day(11), false), Decision::Full(FullReason::MappingChanged));
        assert_eq!(inc.decide(fp, Some(&wm), day(17), false), Decision::Full(FullReason::Scheduled));
        // otherwise a window from the last imported extract's date minus the overlap
        assert_eq!(inc.decide(fp, Some(&wm), day(11), false), Decision::Window { from: day(7) });
        assert_eq!(inc.decide(fp, Some(&wm), day(16), false), Decision::Window { from: day(7) });
        let later = Watermark { through: day(14), ..wm.clone() };
        assert_eq!(inc.decide(fp, Some(&later), day(15), false), Decision::Window { from: day(11) });
        // a clock set back never puts the window after today
        assert_eq!(inc.decide(fp, Some(&later), day(12), false), Decision::Window { from: day(9) });
        let no_overlap = Incremental { overlap_days: 0, ..inc.clone() };
        assert_eq!(no_overlap.decide(fp, Some(&wm), day(11), false), Decision::Window { from: day(10) });
    }

    #[test]
    fn fingerprint_follows_query_and_column_only() {
        let a = FileMapping {
            query: "SELECT 1".into(),
            incremental: Some(Incremental { column: "invoice_date".into(), overlap_days: 3, full_every_days: 7 }),
        };
        let mut b = a.clone();
        b.incremental.as_mut().unwrap().overlap_days = 9;
        b.query = "  SELECT 1\n".into();
        assert_eq!(a.fingerprint(), b.fingerprint());
        b.query = "SELECT 2".into();
        assert_ne!(a.fingerprint(), b.fingerprint());
        let mut c = a.clone();
        c.incremental.as_mut().unwrap().column = "order_date".into();
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }

    #[test]
    fn blank_mapping_lists_every_standard_file_and_parses() {
        let text = blank_mapping("postgres");
        // as written: valid TOML with no files, refused by naming the first required file
        let m: Mapping = toml::from_str(&text).expect("valid TOML");
        assert!(m.files.is_empty());
        assert_eq!(m.validate(), Err(MappingError::MissingRequired("location.csv".into())));
        for f in spec::STANDARD_FILES {
            assert!(text.contains(&format!("# [files.\"{}\"]", f.name)), "{} listed", f.name);
            for c in f.columns {
                assert!(text.contains(&format!("NULL AS {}", c.name)), "{}: column {}", f.name, c.name);
            }
        }
        assert!(text.contains("REQUIRED"));
        // uncommented, every block is a mapping of all twelve files with a column per position
        let mut uncommented = String::new();
        let mut in_block = false;
        for l in text.lines() {
            if l.starts_with("# [files.") {
                in_block = true;
            } else if l.starts_with("# ----") {
                in_block = false;
            }
            if in_block && let Some(rest) = l.strip_prefix("# ") {
                uncommented.push_str(rest);
                uncommented.push('\n');
            }
        }
        let m = Mapping::from_toml(&uncommented);
        let m = m.unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        assert_eq!(m.files.len(), spec::STANDARD_FILES.len());
        for f in spec::STANDARD_FILES {
            let q = &m.files[f.name].query;
            assert_eq!(q.matches("NULL AS").count(), f.columns.len(), "{}", f.name);
        }
    }
}
