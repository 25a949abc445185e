//! Why the Connector is waiting: each repeating step (`sync`, `daily sync`, `receive`) that failed leaves its
//! last error, how often it failed in a row and when it tries again in `<data_dir>/pending.json`; a success
//! clears it. `ferry connector status` reads it, so it can say what is stuck and why even when the Comms
//! server cannot be reached. Written under a temporary name and renamed, so it is never half-written.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The last failure of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailure {
    pub step: String,
    /// Failures in a row.
    pub failures: u32,
    pub last_error: String,
    /// When the first of these failures happened.
    pub since: DateTime<Utc>,
    pub last_at: DateTime<Utc>,
    /// When the running agent tries again; None when nothing retries by itself (a one-off command).
    pub next_retry: Option<DateTime<Utc>>,
}

pub struct Pending {
    path: PathBuf,
}

impl Pending {
    pub fn new(data_dir: &Path) -> Self {
        Pending { path: data_dir.join("pending.json") }
    }

    /// Every step currently failing, oldest failure first.
    pub fn list(&self) -> Vec<StepFailure> {
        let mut all: Vec<StepFailure> =
            std::fs::read(&self.path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        all.sort_by_key(|f| f.since);
        all
    }

    /// Records a failure of `step`, retried after `retry_in` (None: not retried by itself).
    pub fn failed(&self, step: &str, error: &anyhow::Error, retry_in: Option<Duration>) {
        let now = Utc::now();
        let mut all = self.list();
        let next_retry = retry_in.and_then(|d| chrono::Duration::from_std(d).ok()).map(|d| now + d);
        match all.iter_mut().find(|f| f.step == step) {
            Some(f) => {
                f.failures += 1;
                f.last_error = format!("{error:#}");
                f.last_at = now;
                f.next_retry = next_retry;
            }
            None => all.push(StepFailure {
                step: step.to_owned(),
                failures: 1,
                last_error: format!("{error:#}"),
                since: now,
                last_at: now,
                next_retry,
            }),
        }
        self.save(&all);
    }

    /// When the running agent tries a failing `step` again.
    pub fn retry_in(&self, step: &str, delay: Duration) {
        let mut all = self.list();
        if let Some(f) = all.iter_mut().find(|f| f.step == step) {
            f.next_retry = chrono::Duration::from_std(delay).ok().map(|d| Utc::now() + d);
            self.save(&all);
        }
    }

    /// `step` worked: forget its failures.
    pub fn succeeded(&self, step: &str) {
        let mut all = self.list();
        let before = all.len();
        all.retain(|f| f.step != step);
        if all.len() != before {
            self.save(&all);
        }
    }

    fn save(&self, all: &[StepFailure]) {
        // Best effort: this only informs `status`; a full disk must not turn into a second failure.
        let tmp = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(all)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!("cannot record the pending state in {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_per_step_and_cleared_by_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let p = Pending::new(dir.path());
        assert!(p.list().is_empty());
        p.failed("receive", &anyhow::anyhow!("connection refused"), Some(Duration::from_secs(4)));
        p.failed("receive", &anyhow::anyhow!("timed out"), Some(Duration::from_secs(8)));
        p.failed("sync", &anyhow::anyhow!("disk full"), None);
        let all = p.list();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].step.as_str(), all[0].failures, all[0].last_error.as_str()), ("receive", 2, "timed out"));
        assert!(all[0].next_retry.unwrap() > Utc::now());
        assert_eq!(all[1].next_retry, None);
        p.succeeded("receive");
        assert_eq!(p.list().iter().map(|f| f.step.as_str()).collect::<Vec<_>>(), ["sync"]);
    }
}
