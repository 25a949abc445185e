//! The batch manifest (`manifest.json`): the metadata file of `MISSION.md` that lists, per file, the row count,
//! size and the MD5 (and SHA-256) of the plain CSV, so the App can prove what it received is what was extracted.
//! [`Manifest::parse`] checks everything a hostile or broken sender could get wrong before any file is opened.
//!
//! # Full files and windows
//! Each file says what it replaces in the instance ([`ManifestFile::scope`]):
//! - `"scope": "full"` — the file holds every row: the App replaces the whole table;
//! - `"scope": {"window": {"column": "invoice_date", "from": "2026-03-07"}}` — the file holds exactly the rows whose
//!   `column` is on or after `from` (an incremental extract): the App deletes the rows of that table with
//!   `column >= from` and inserts the file's rows, in the same all-or-nothing transaction as the rest of the batch.
//!
//! A batch with at least one window has `mode: incremental`. Backward compatibility: a manifest without `scope`
//! (written by a ferry before incremental extracts) means what it always meant — in a `full` batch every file is
//! full; in an `incremental` batch a file without a scope is appended.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::batch::BatchId;
use crate::spec;

/// Name of the manifest inside a batch directory.
pub const MANIFEST_NAME: &str = "manifest.json";
/// Largest manifest accepted (it lists at most a few dozen files).
pub const MAX_MANIFEST_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Full,
    Incremental,
}

/// What one file of a batch replaces in the instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every row of the file: the whole table is replaced.
    Full,
    /// Only the rows dated on or after [`Window::from`]: those rows of the table are replaced.
    Window(Window),
}

/// The rows an incremental file replaces: those whose date `column` is on or after `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// A date column of the file, named as in `ferry_proto::spec` (`invoice_date`).
    pub column: String,
    /// First day of the window (ISO `YYYY-MM-DD` in JSON).
    pub from: NaiveDate,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// `stock.csv`; the batch carries it as `stock.csv.bz2`.
    pub name: String,
    pub rows: u64,
    /// Size of the plain CSV.
    pub bytes: u64,
    /// Size of the `.bz2` as uploaded.
    pub compressed_bytes: u64,
    /// SHA-256 of the `.bz2` as uploaded (64 lower-case hex digits): the Comms server checks the file it
    /// received against it without reading the CSV, and relays exactly those bytes. Absent in manifests of
    /// older ferry versions (the Comms server then records what it measured at completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_sha256: Option<String>,
    pub md5: String,
    pub sha256: String,
    /// Full file or window (see the module documentation); absent in manifests of older ferry versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<Scope>,
}

impl ManifestFile {
    pub fn compressed_name(&self) -> String {
        format!("{}.bz2", self.name)
    }

    /// The window this file replaces, if it is an incremental file.
    pub fn window(&self) -> Option<&Window> {
        match &self.scope {
            Some(Scope::Window(w)) => Some(w),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub batch_id: BatchId,
    /// Informational only: the receiver always uses the tenant of the authenticated key.
    #[serde(default)]
    pub tenant: String,
    pub spec_version: String,
    pub connector_version: String,
    pub mode: Mode,
    pub extract_started: DateTime<Utc>,
    pub extract_finished: DateTime<Utc>,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("manifest is for spec version {0:?}; this server accepts version {v}", v = crate::SPEC_VERSION)]
    SpecVersion(String),
    #[error("manifest names file {0:?}, which is not a standard file of DATA-SPEC.md nor ut_NNN.csv")]
    UnknownFile(String),
    #[error("manifest lists {0} twice")]
    Duplicate(String),
    #[error("manifest entry for {file}: {what}")]
    BadEntry { file: String, what: String },
    #[error("full batch is missing the required file {0}")]
    MissingRequired(String),
    #[error(
        "manifest's {what} add up to more than {max} (a file says {file}); no batch is that large: check how the \
         manifest was written",
        max = MAX_TOTAL
    )]
    TooLarge64 { what: &'static str, file: String },
    #[error("manifest is for batch {found}, but it was sent as batch {expected}")]
    WrongBatch { expected: String, found: String },
}

/// The largest total of rows, bytes or compressed bytes a manifest may announce (and any one file): what a
/// SQLite integer holds.
pub const MAX_TOTAL: u64 = i64::MAX as u64;

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

impl Manifest {
    /// Parse and check a manifest received from the network.
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        m.check()?;
        Ok(m)
    }

    /// The checks of [`Manifest::parse`], for a manifest already deserialised elsewhere (e.g. in an API body).
    pub fn check(&self) -> Result<(), ManifestError> {
        if self.spec_version != crate::SPEC_VERSION {
            return Err(ManifestError::SpecVersion(self.spec_version.chars().take(16).collect()));
        }
        let mut seen = HashSet::new();
        let mut totals = [0u64; 3];
        for f in &self.files {
            // Checked sums: every total of rows and sizes fits in a SQLite integer, none wraps around.
            for (i, (what, v)) in
                [("rows", f.rows), ("bytes", f.bytes), ("compressed_bytes", f.compressed_bytes)].into_iter().enumerate()
            {
                match totals[i].checked_add(v) {
                    Some(t) if t <= MAX_TOTAL => totals[i] = t,
                    _ => {
                        let file = format!("{}: {v}", f.name.chars().take(80).collect::<String>());
                        return Err(ManifestError::TooLarge64 { what, file });
                    }
                }
            }
            if !spec::is_known_file(&f.name) {
                return Err(ManifestError::UnknownFile(f.name.chars().take(80).collect()));
            }
            if !seen.insert(f.name.as_str()) {
                return Err(ManifestError::Duplicate(f.name.clone()));
            }
            let bad = |what: &str| ManifestError::BadEntry { file: f.name.clone(), what: what.to_string() };
            if !is_hex(&f.md5, 32) {
                return Err(bad("md5 must be 32 lowercase hex digits"));
            }
            if !is_hex(&f.sha256, 64) {
                return Err(bad("sha256 must be 64 lowercase hex digits"));
            }
            if f.compressed_sha256.as_deref().is_some_and(|h| !is_hex(h, 64)) {
                return Err(bad("compressed_sha256 must be 64 lowercase hex digits"));
            }
            if let Some(w) = f.window() {
                if self.mode == Mode::Full {
                    return Err(bad("a window in a full batch; a batch with windows has mode \"incremental\""));
                }
                let Some(spec) = spec::file_spec(&f.name) else {
                    return Err(bad("a custom file cannot be a window; send it full"));
                };
                if !spec.date_columns().any(|c| c == w.column) {
                    let dates = spec.date_columns().collect::<Vec<_>>().join(", ");
                    let what = if dates.is_empty() {
                        "the file has no date column to window on; send it full".to_string()
                    } else {
                        format!(
                            "window column {:?} is not a date column of the file; use one of {dates}",
                            w.column.chars().take(40).collect::<String>()
                        )
                    };
                    return Err(bad(&what));
                }
            }
        }
        if self.mode == Mode::Full {
            for req in spec::STANDARD_FILES.iter().filter(|f| f.required) {
                if !seen.contains(req.name) {
                    return Err(ManifestError::MissingRequired(req.name.to_string()));
                }
            }
        }
        Ok(())
    }

    /// Check that this manifest belongs to the batch it was sent for.
    pub fn check_batch(&self, expected: &BatchId) -> Result<(), ManifestError> {
        if &self.batch_id != expected {
            return Err(ManifestError::WrongBatch { expected: expected.to_string(), found: self.batch_id.to_string() });
        }
        Ok(())
    }

    /// The sum of the files' compressed sizes (saturating: a checked manifest stays under [`MAX_TOTAL`]).
    pub fn total_compressed_bytes(&self) -> u64 {
        self.files.iter().fold(0u64, |a, f| a.saturating_add(f.compressed_bytes))
    }

    /// The sum of the files' rows (saturating: a checked manifest stays under [`MAX_TOTAL`]).
    pub fn total_rows(&self) -> u64 {
        self.files.iter().fold(0u64, |a, f| a.saturating_add(f.rows))
    }
}

#[cfg(test)]
pub(crate) fn sample() -> Manifest {
    let files = spec::STANDARD_FILES
        .iter()
        .filter(|f| f.required)
        .map(|f| ManifestFile {
            name: f.name.to_string(),
            rows: 1,
            bytes: 10,
            compressed_bytes: 50,
            compressed_sha256: None,
            md5: "0".repeat(32),
            sha256: "a".repeat(64),
            scope: None,
        })
        .collect();
    Manifest {
        batch_id: BatchId::parse("20261128T051600Z-3fa2b7c1").unwrap(),
        tenant: "acme".into(),
        spec_version: crate::SPEC_VERSION.into(),
        connector_version: "0.1.0".into(),
        mode: Mode::Full,
        extract_started: Utc::now(),
        extract_finished: Utc::now(),
        files,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = sample();
        let j = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&j).unwrap(), m);
    }

    #[test]
    fn rejects_bad_manifests() {
        let mut m = sample();
        m.files[0].name = "../../etc/passwd".into();
        assert!(matches!(m.check(), Err(ManifestError::UnknownFile(_))));
        let mut m = sample();
        m.files.push(m.files[0].clone());
        assert!(matches!(m.check(), Err(ManifestError::Duplicate(_))));
        let mut m = sample();
        m.files.retain(|f| f.name != "sales.csv");
        assert_eq!(m.check(), Err(ManifestError::MissingRequired("sales.csv".into())));
        m.mode = Mode::Incremental;
        assert!(m.check().is_ok());
        let mut m = sample();
        m.files[1].md5 = "XYZ".into();
        assert!(matches!(m.check(), Err(ManifestError::BadEntry { .. })));
        assert!(matches!(Manifest::parse(b"{\"batch_id\":\"../x\"}"), Err(ManifestError::Json(_))));
        let other = BatchId::parse("20261128T051600Z-00000000").unwrap();
        assert!(sample().check_batch(&other).is_err());
    }

    fn window(column: &str) -> Option<Scope> {
        Some(Scope::Window(Window { column: column.into(), from: NaiveDate::from_ymd_opt(2026, 3, 7).unwrap() }))
    }

    #[test]
    fn scopes_are_checked_and_old_manifests_still_parse() {
        // the JSON an older ferry wrote: no scope at all
        let mut old = serde_json::to_value(sample()).unwrap();
        for f in old["files"].as_array_mut().unwrap() {
            assert!(f.get("scope").is_none(), "no scope is written when there is none");
            f.as_object_mut().unwrap().remove("scope");
        }
        let m = Manifest::parse(&serde_json::to_vec(&old).unwrap()).unwrap();
        assert!(m.files.iter().all(|f| f.scope.is_none() && f.window().is_none()));

        let mut m = sample();
        m.mode = Mode::Incremental;
        for f in &mut m.files {
            f.scope = Some(Scope::Full);
        }
        let sales = m.files.iter().position(|f| f.name == "sales.csv").unwrap();
        m.files[sales].scope = window("invoice_date");
        m.check().unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""scope":{"window":{"column":"invoice_date","from":"2026-03-07"}}"#), "{json}");
        assert!(json.contains(r#""scope":"full""#), "{json}");
        assert_eq!(Manifest::parse(json.as_bytes()).unwrap(), m);
        assert_eq!(m.files[sales].window().unwrap().column, "invoice_date");

        let mut bad = m.clone();
        bad.mode = Mode::Full;
        assert!(bad.check().unwrap_err().to_string().contains("incremental"));
        let mut bad = m.clone();
        bad.files[sales].scope = window("qty");
        let e = bad.check().unwrap_err().to_string();
        assert!(e.contains("sales.csv") && e.contains("order_date, invoice_date"), "{e}");
        let mut bad = m.clone();
        let loc = bad.files.iter().position(|f| f.name == "location.csv").unwrap();
        bad.files[loc].scope = window("location");
        assert!(bad.check().unwrap_err().to_string().contains("no date column"));
        let mut bad = m;
        bad.files[sales].name = "ut_001.csv".into();
        assert!(bad.check().unwrap_err().to_string().contains("custom file"));
    }
}
