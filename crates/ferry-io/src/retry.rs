//! How every network step of Ferry retries: exponential backoff with jitter ([`Backoff`]), and a failure log
//! that says each distinct error once per interval with a count instead of once per attempt ([`FailureLog`]),
//! so a Connector that cannot reach its server for a week writes a few lines an hour, not thousands. Also
//! [`disk_full`], which turns "no space left on device" anywhere in an error chain into a message naming the
//! disk.
//!
//! Jitter keeps many Connectors that lost the same server from all coming back in the same second.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng as _;

/// Exponential backoff with "equal jitter": the n-th delay is drawn from `[d/2, d]` where
/// `d = min(max, base * 2^n)`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Backoff { base, max: max.max(base), failures: 0 }
    }

    /// The delay before the next attempt after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let spread = ceiling.saturating_sub(half).as_millis() as u64;
        half + Duration::from_millis(rand::thread_rng().gen_range(0..=spread))
    }

    /// The largest delay the next failure can bring.
    fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// Rate-limited failure lines for one repeating step (`what`): the first failure, and any *different* error,
/// is logged at once; the same error again only once per `interval`, with how often it happened meanwhile;
/// the first success after failures is logged as a recovery.
#[derive(Debug)]
pub struct FailureLog {
    what: String,
    interval: Duration,
    last: Option<Repeating>,
}

#[derive(Debug)]
struct Repeating {
    error: String,
    logged_at: Instant,
    /// Failures with this error since it was last logged.
    unlogged: u64,
    /// Failures in a row, any error.
    total: u64,
}

impl FailureLog {
    pub fn new(what: impl Into<String>, interval: Duration) -> Self {
        FailureLog { what: what.into(), interval, last: None }
    }

    /// A failure with `error`, retried in `retry_in`: the line to log now, or None if it is a repeat within the
    /// interval.
    pub fn failure(&mut self, error: &str, retry_in: Duration) -> Option<String> {
        let now = Instant::now();
        let retry = format!("{:.1} s", retry_in.as_secs_f64());
        match &mut self.last {
            Some(r) if r.error == error => {
                r.unlogged += 1;
                r.total += 1;
                if now.duration_since(r.logged_at) < self.interval {
                    return None;
                }
                let line = format!(
                    "{} still failing ({} times in a row, {} since the last report), retrying in {retry}: {error}",
                    self.what, r.total, r.unlogged
                );
                r.logged_at = now;
                r.unlogged = 0;
                Some(line)
            }
            prev => {
                let total = prev.as_ref().map_or(0, |p| p.total) + 1;
                *prev = Some(Repeating { error: error.to_owned(), logged_at: now, unlogged: 0, total });
                let nth = if total > 1 { format!(" ({total} times in a row)") } else { String::new() };
                Some(format!("{} failed{nth}, retrying in {retry}: {error}", self.what))
            }
        }
    }

    /// A success: a recovery line if it had been failing.
    pub fn success(&mut self) -> Option<String> {
        self.last.take().map(|r| format!("{} works again after {} failed attempts", self.what, r.total))
    }
}

/// A step failed because the local disk holding `disk` is full. [`disk_full`] adds it to an error chain as context;
/// [`is_disk_full`] finds it by type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the disk holding {} is full (no space left on device): free some space there and run again; nothing partial \
     was kept",
    disk.display()
)]
pub struct DiskFull {
    pub disk: PathBuf,
}

/// If `err`'s chain holds a local "no space left on device" (an `io::Error` of kind `StorageFull` or
/// `QuotaExceeded`, or SQLite's `SQLITE_FULL`), the error with a [`DiskFull`] naming `path`, the folder the step
/// was writing to; otherwise `err` unchanged. Only the innermost caller that names a disk adds this: an error
/// that already carries a [`DiskFull`] is returned as it is.
pub fn disk_full(err: anyhow::Error, path: &Path) -> anyhow::Error {
    if named_disk(&err).is_none() && local_disk_full(&err) {
        err.context(DiskFull { disk: path.to_path_buf() })
    } else {
        err
    }
}

/// The [`DiskFull`] anywhere in `err` (as context at any depth, or as an error in its chain).
pub fn named_disk(err: &anyhow::Error) -> Option<&DiskFull> {
    err.downcast_ref::<DiskFull>().or_else(|| err.chain().find_map(|e| e.downcast_ref::<DiskFull>()))
}

fn local_disk_full(err: &anyhow::Error) -> bool {
    err.chain().any(|e| {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
                || matches!(io.raw_os_error(), Some(28) | Some(122));
        }
        // SQLITE_FULL (13): "database or disk is full"
        matches!(e.downcast_ref::<sqlx::Error>(), Some(sqlx::Error::Database(d)) if d.code().as_deref() == Some("13"))
    })
}

/// What a peer's SFTP server answers when its disk is full (`ferry-sftp`; SFTP v3 has no status code for it, so
/// the message is all that crosses the wire).
pub const PEER_DISK_FULL: &str = "the server's disk is full";

/// Whether an error chain says a disk is full, here ([`DiskFull`], or a local disk-full error not named yet) or
/// at a peer (its SFTP answer [`PEER_DISK_FULL`]). Such a step is not retried at once: it waits for someone to
/// free space.
pub fn is_disk_full(err: &anyhow::Error) -> bool {
    named_disk(err).is_some() || local_disk_full(err) || err.chain().any(|e| e.to_string().contains(PEER_DISK_FULL))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_up_to_the_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut ceilings = Vec::new();
        for _ in 0..8 {
            let c = b.ceiling();
            let d = b.next_delay();
            assert!(d >= c / 2 && d <= c, "{d:?} not within [{:?}, {c:?}]", c / 2);
            ceilings.push(c.as_millis());
        }
        assert_eq!(ceilings, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(b.failures(), 8);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        // jitter: many draws at the same step are not all equal
        let draws: std::collections::BTreeSet<_> =
            (0..50).map(|_| Backoff::new(Duration::from_secs(10), Duration::from_secs(10)).next_delay()).collect();
        assert!(draws.len() > 5);
        // no overflow after very many failures
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(300));
        }
    }

    #[test]
    fn the_same_error_is_logged_once_per_interval_with_a_count() {
        let mut log = FailureLog::new("relay", Duration::from_millis(200));
        let wait = Duration::from_secs(1);
        let first = log.failure("connection refused", wait).unwrap();
        assert!(first.starts_with("relay failed, retrying in 1.0 s: connection refused"), "{first}");
        assert_eq!(log.failure("connection refused", wait), None);
        assert_eq!(log.failure("connection refused", wait), None);
        // a different error is news
        let other = log.failure("host key mismatch", wait).unwrap();
        assert!(other.contains("(4 times in a row)"), "{other}");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(log.failure("connection refused", wait).map(|l| l.contains("failed (5 times")), Some(true));
        assert_eq!(log.failure("connection refused", wait), None);
        std::thread::sleep(Duration::from_millis(250));
        let again = log.failure("connection refused", wait).unwrap();
        assert!(again.contains("still failing (7 times in a row, 2 since the last report)"), "{again}");
        assert_eq!(log.success().unwrap(), "relay works again after 7 failed attempts");
        assert_eq!(log.success(), None);
    }

    #[test]
    fn disk_full_errors_name_the_disk() {
        let io = std::io::Error::from_raw_os_error(28);
        let err = disk_full(anyhow::Error::new(io).context("writing master.csv.bz2"), Path::new("/srv/spool"));
        let text = format!("{err:#}");
        assert!(text.starts_with("the disk holding /srv/spool is full"), "{text}");
        assert_eq!(named_disk(&err), Some(&DiskFull { disk: "/srv/spool".into() }));
        assert!(is_disk_full(&err.context("syncing")));
        let err = disk_full(anyhow::Error::new(std::io::Error::from_raw_os_error(28)), Path::new("/srv/spool"));
        let remote = anyhow::anyhow!("sftp upload failed: the server's disk is full; try again later");
        assert!(is_disk_full(&remote));
        assert_eq!(named_disk(&remote), None);
        // a text that merely looks like a named disk is not one
        let lookalike = anyhow::anyhow!("the disk holding /x is full");
        assert_eq!(named_disk(&lookalike), None);
        // a peer's full disk is not ours: no local path is named
        assert_eq!(
            format!("{:#}", disk_full(remote, Path::new("/srv"))),
            "sftp upload failed: the server's disk is full; try again later"
        );
        // named once, by the innermost caller that knows the path
        let twice = format!("{:#}", disk_full(err, Path::new("/srv")));
        assert_eq!(twice.matches("the disk holding").count(), 1, "{twice}");
        let other = disk_full(anyhow::anyhow!("connection reset"), Path::new("/x"));
        assert_eq!(format!("{other:#}"), "connection reset");
    }
}
