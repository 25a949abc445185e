//! Batch ids: unique, sortable by creation time, and safe to use as a path component and a URL segment.
//! Format: `YYYYMMDDTHHMMSSZ-` followed by 8 lowercase hex digits, e.g. `20261128T051600Z-3fa2b7c1`.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BatchId(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid batch id {0:?}: expected YYYYMMDDTHHMMSSZ-xxxxxxxx (8 lowercase hex digits)")]
pub struct BadBatchId(pub String);

impl BatchId {
    pub fn new(now: DateTime<Utc>) -> Self {
        let suffix: u32 = rand::thread_rng().r#gen();
        BatchId(format!("{}-{suffix:08x}", now.format("%Y%m%dT%H%M%SZ")))
    }

    pub fn parse(s: &str) -> Result<Self, BadBatchId> {
        let b = s.as_bytes();
        let ok = b.len() == 25
            && b.iter().enumerate().all(|(i, c)| match i {
                8 => *c == b'T',
                15 => *c == b'Z',
                16 => *c == b'-',
                0..=14 => c.is_ascii_digit(),
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(c),
            });
        if ok { Ok(BatchId(s.to_string())) } else { Err(BadBatchId(s.chars().take(64).collect())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for BatchId {
    type Error = BadBatchId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        BatchId::parse(&s)
    }
}

impl From<BatchId> for String {
    fn from(b: BatchId) -> String {
        b.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_parse_and_sort_by_time() {
        let a = BatchId::new("2026-01-01T00:00:00Z".parse().unwrap());
        let b = BatchId::new("2026-01-02T00:00:00Z".parse().unwrap());
        assert!(a < b);
        assert_eq!(BatchId::parse(a.as_str()).unwrap(), a);
    }

    #[test]
    fn rejects_path_tricks_and_junk() {
        for bad in ["", "../x", "20261128T051600Z-3fa2b7c", "20261128T051600Z-3fa2b7c1/..", "20261128T051600Z-3FA2B7C1"]
        {
            assert!(BatchId::parse(bad).is_err(), "{bad}");
        }
    }
}
