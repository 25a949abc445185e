//! The batch manifest (`manifest.json`): the metadata file of `MISSION.md` that lists, per file, the row count,
//! size and the MD5 (and SHA-256) of the plain CSV, so the App can prove what it received is what was extracted.
//! [`Manifest::parse`] checks everything a hostile or broken sender could get wrong before any file is opened.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// `stock.csv`; the batch carries it as `stock.csv.bz2`.
    pub name: String,
    pub rows: u64,
    /// Size of the plain CSV.
    pub bytes: u64,
    /// Size of the `.bz2` as uploaded.
    pub compressed_bytes: u64,
    pub md5: String,
    pub sha256: String,
}

impl ManifestFile {
    pub fn compressed_name(&self) -> String {
        format!("{}.bz2", self.name)
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
    #[error("manifest is for batch {found}, but it was sent as batch {expected}")]
    WrongBatch { expected: String, found: String },
}

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
        for f in &self.files {
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

    pub fn total_compressed_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.compressed_bytes).sum()
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
            md5: "0".repeat(32),
            sha256: "a".repeat(64),
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
}
