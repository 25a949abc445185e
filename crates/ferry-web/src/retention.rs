//! Retention (`[retention]` in app.toml and comms.toml): the files of batches in a final state are removed once
//! they are older than `keep_secs` (default 7 days), by a sweep at start and every `sweep_every_secs` (default
//! 1 hour). The database rows and the audit log are kept. Each server says what to sweep; this module holds the
//! settings and the loop.

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Files of a batch in a final state are kept this long after it reached that state. Default 7 days.
    pub keep_secs: u64,
    /// How often the sweep runs (also once at start). Default 3600 (hourly).
    pub sweep_every_secs: u64,
}

pub const DEFAULT_KEEP_SECS: u64 = 7 * 24 * 3600;

impl Default for Retention {
    fn default() -> Self {
        Retention { keep_secs: DEFAULT_KEEP_SECS, sweep_every_secs: 3600 }
    }
}

impl Retention {
    pub fn keep(&self) -> Duration {
        Duration::from_secs(self.keep_secs)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        if self.sweep_every_secs == 0 {
            anyhow::bail!("[retention] sweep_every_secs must be at least 1 (3600 is the default)");
        }
        Ok(())
    }

    /// Runs `sweep` now and then every `sweep_every_secs` until `shutdown`. `sweep` returns how many batches'
    /// files it removed (logged when not zero) or what failed (logged; the next sweep tries again).
    pub async fn run<F, Fut>(self, what: &'static str, shutdown: impl Future<Output = ()> + Send, sweep: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = anyhow::Result<usize>>,
    {
        tokio::pin!(shutdown);
        loop {
            match sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(
                    removed = n,
                    keep_secs = self.keep_secs,
                    "retention: removed the files of {n} {what}"
                ),
                Err(e) => tracing::warn!("retention sweep of {what} failed (retried at the next sweep): {e:#}"),
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(Duration::from_secs(self.sweep_every_secs.max(1))) => {}
            }
        }
    }
}

/// The names of the sub-folders of `dir` (none if it does not exist).
pub fn subdirs(dir: &std::path::Path) -> Vec<(String, std::path::PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    rd.filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| Some((e.file_name().to_str()?.to_string(), e.path())))
        .collect()
}

/// How long ago `path` was last modified (zero if unknown or in the future).
pub fn age(path: &std::path::Path) -> Duration {
    std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).unwrap_or(Duration::ZERO)
}
