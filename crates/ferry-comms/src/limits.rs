//! Per-tenant limits: the `[limits]` defaults of `comms.toml`, per-tenant overrides stored in the database
//! (`ferry comms tenant limits`), the bytes each tenant uploaded today, and the one wording of a refusal —
//! which limit, its value, what was attempted and what to do.

use std::collections::HashMap;
use std::sync::{Mutex, RwLock};

use crate::db::Db;
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};

const GIB: u64 = 1024 * 1024 * 1024;

/// The limits of one tenant. In `comms.toml` (`[limits]`) they are the defaults of every tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest batch: the sum of its compressed files, in bytes (checked at completion).
    pub max_batch_bytes: u64,
    /// Most files in one batch (checked at completion).
    pub max_batch_files: u64,
    /// Most bytes a tenant may write over SFTP in one UTC day (checked on every write).
    pub upload_bytes_per_day: u64,
    /// Largest file a tenant may write over SFTP, in bytes (checked on every write).
    pub max_upload_file_bytes: u64,
    /// Largest downstream file (plain size) the App may send a tenant (checked when the App announces it).
    pub max_download_file_bytes: u64,
    /// Most SFTP sessions a tenant may have open at once on this server (checked at login).
    pub max_sftp_sessions: u64,
    /// Most open file and directory handles in one SFTP session (checked at every open).
    pub max_open_handles: u64,
    /// Most files and directories in a tenant's SFTP area (checked when one is created).
    pub max_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_batch_bytes: 20 * GIB,
            max_batch_files: 200,
            upload_bytes_per_day: 100 * GIB,
            max_upload_file_bytes: 10 * GIB,
            max_download_file_bytes: GIB,
            max_sftp_sessions: 8,
            max_open_handles: 64,
            max_files: 10_000,
        }
    }
}

/// One of the [`Limits`], by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    MaxBatchBytes,
    MaxBatchFiles,
    UploadBytesPerDay,
    MaxUploadFileBytes,
    MaxDownloadFileBytes,
    MaxSftpSessions,
    MaxOpenHandles,
    MaxFiles,
}

impl Limit {
    pub const ALL: [Limit; 8] = [
        Limit::MaxBatchBytes,
        Limit::MaxBatchFiles,
        Limit::UploadBytesPerDay,
        Limit::MaxUploadFileBytes,
        Limit::MaxDownloadFileBytes,
        Limit::MaxSftpSessions,
        Limit::MaxOpenHandles,
        Limit::MaxFiles,
    ];

    /// The key in `[limits]`, in the database and (with `-` for `_`) the `tenant limits` flag.
    pub fn key(self) -> &'static str {
        match self {
            Limit::MaxBatchBytes => "max_batch_bytes",
            Limit::MaxBatchFiles => "max_batch_files",
            Limit::UploadBytesPerDay => "upload_bytes_per_day",
            Limit::MaxUploadFileBytes => "max_upload_file_bytes",
            Limit::MaxDownloadFileBytes => "max_download_file_bytes",
            Limit::MaxSftpSessions => "max_sftp_sessions",
            Limit::MaxOpenHandles => "max_open_handles",
            Limit::MaxFiles => "max_files",
        }
    }

    pub fn parse(key: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|l| l.key() == key)
    }

    pub fn unit(self) -> &'static str {
        match self {
            Limit::MaxBatchFiles | Limit::MaxFiles => "files",
            Limit::MaxSftpSessions => "sessions",
            Limit::MaxOpenHandles => "handles",
            _ => "bytes",
        }
    }

    /// What a sender can do about a refusal, besides asking for a higher limit.
    fn advice(self) -> &'static str {
        match self {
            Limit::MaxBatchBytes => "send less data per batch (e.g. an incremental extract)",
            Limit::MaxBatchFiles => "send fewer files per batch",
            Limit::UploadBytesPerDay => "wait for the next UTC day",
            Limit::MaxUploadFileBytes => "split the data into smaller files",
            Limit::MaxDownloadFileBytes => "split the file into smaller ones",
            Limit::MaxSftpSessions => "close other sessions first",
            Limit::MaxOpenHandles => "close some handles first",
            Limit::MaxFiles => "remove files you no longer need",
        }
    }

    pub fn get(self, l: &Limits) -> u64 {
        match self {
            Limit::MaxBatchBytes => l.max_batch_bytes,
            Limit::MaxBatchFiles => l.max_batch_files,
            Limit::UploadBytesPerDay => l.upload_bytes_per_day,
            Limit::MaxUploadFileBytes => l.max_upload_file_bytes,
            Limit::MaxDownloadFileBytes => l.max_download_file_bytes,
            Limit::MaxSftpSessions => l.max_sftp_sessions,
            Limit::MaxOpenHandles => l.max_open_handles,
            Limit::MaxFiles => l.max_files,
        }
    }

    pub fn set(self, l: &mut Limits, v: u64) {
        match self {
            Limit::MaxBatchBytes => l.max_batch_bytes = v,
            Limit::MaxBatchFiles => l.max_batch_files = v,
            Limit::UploadBytesPerDay => l.upload_bytes_per_day = v,
            Limit::MaxUploadFileBytes => l.max_upload_file_bytes = v,
            Limit::MaxDownloadFileBytes => l.max_download_file_bytes = v,
            Limit::MaxSftpSessions => l.max_sftp_sessions = v,
            Limit::MaxOpenHandles => l.max_open_handles = v,
            Limit::MaxFiles => l.max_files = v,
        }
    }

    /// The refusal message: `what` (e.g. "this batch is") `attempted` units, the limit and its value, what to
    /// do. Safe to send to the tenant it concerns.
    pub fn refusal(self, tenant: &str, value: u64, what: &str, attempted: u64) -> String {
        let unit = self.unit();
        format!(
            "{what} {attempted} {unit}, above the limit {key} = {value} {unit} for tenant {tenant}; {advice}, or ask \
             the operator to raise it (`ferry comms tenant limits {tenant} --{flag} <N>`)",
            key = self.key(),
            advice = self.advice(),
            flag = self.key().replace('_', "-"),
        )
    }
}

/// `10G`, `512M`, `64k`, `1000` (binary multiples) -> bytes or a plain count.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                't' => 1 << 40,
                _ => return Err(format!("{s:?}: unknown unit {c:?}; use a number with K, M, G or T")),
            };
            (t.get(..i).unwrap_or(""), m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| format!("{s:?} is not a size: use e.g. 500M, 10G or 1000"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// The effective limits of every tenant (defaults + overrides), reloaded from the database with the keys.
pub struct TenantLimits {
    defaults: Limits,
    overrides: RwLock<HashMap<String, Limits>>,
}

impl TenantLimits {
    pub fn new(defaults: Limits) -> Self {
        TenantLimits { defaults, overrides: RwLock::new(HashMap::new()) }
    }

    pub fn of(&self, tenant: &str) -> Limits {
        self.overrides.read().ok().and_then(|m| m.get(tenant).copied()).unwrap_or(self.defaults)
    }

    pub async fn reload(&self, pool: &Db) -> sqlx::Result<()> {
        let mut fresh: HashMap<String, Limits> = HashMap::new();
        for (tenant, name, value) in crate::db::all_tenant_limits(pool).await? {
            let Some(limit) = Limit::parse(&name) else { continue };
            limit.set(fresh.entry(tenant).or_insert(self.defaults), u64::try_from(value).unwrap_or(0));
        }
        if let Ok(mut m) = self.overrides.write() {
            *m = fresh;
        }
        Ok(())
    }
}

/// Bytes uploaded per tenant today: counted in memory on every SFTP write, written to the database every
/// few seconds, read back at start so a restart does not reset the day.
#[derive(Default)]
pub struct Usage(Mutex<HashMap<String, DayCount>>);

#[derive(Debug, Clone, Copy)]
struct DayCount {
    day: NaiveDate,
    bytes: u64,
    unsaved: u64,
}

impl Usage {
    /// Count `bytes` more for `tenant` unless that would pass `per_day`; Err(bytes so far today) if it would.
    pub fn charge(&self, tenant: &str, bytes: u64, per_day: u64) -> Result<(), u64> {
        let today = Utc::now().date_naive();
        let Ok(mut m) = self.0.lock() else { return Ok(()) };
        let c = m.entry(tenant.to_string()).or_insert(DayCount { day: today, bytes: 0, unsaved: 0 });
        if c.day != today {
            *c = DayCount { day: today, bytes: 0, unsaved: 0 };
        }
        let after = c.bytes.saturating_add(bytes);
        if after > per_day {
            return Err(c.bytes);
        }
        c.bytes = after;
        c.unsaved = c.unsaved.saturating_add(bytes);
        Ok(())
    }

    /// Bytes `tenant` uploaded today (UTC).
    pub fn today(&self, tenant: &str) -> u64 {
        let today = Utc::now().date_naive();
        self.0.lock().ok().and_then(|m| m.get(tenant).filter(|c| c.day == today).map(|c| c.bytes)).unwrap_or(0)
    }

    /// Today's counts from the database (at start).
    pub async fn load(&self, pool: &Db) -> sqlx::Result<()> {
        let today = Utc::now().date_naive();
        let rows = crate::db::upload_usage_on(pool, &today.to_string()).await?;
        if let Ok(mut m) = self.0.lock() {
            for (tenant, bytes) in rows {
                let c = m.entry(tenant).or_insert(DayCount { day: today, bytes: 0, unsaved: 0 });
                c.bytes = c.bytes.max(u64::try_from(bytes).unwrap_or(0));
            }
        }
        Ok(())
    }

    /// Write the bytes counted since the last save.
    pub async fn save(&self, pool: &Db) -> sqlx::Result<()> {
        let pending: Vec<(String, NaiveDate, u64)> = match self.0.lock() {
            Ok(mut m) => m
                .iter_mut()
                .filter(|(_, c)| c.unsaved > 0)
                .map(|(t, c)| (t.clone(), c.day, std::mem::take(&mut c.unsaved)))
                .collect(),
            Err(_) => return Ok(()),
        };
        for (tenant, day, bytes) in pending {
            crate::db::add_upload_usage(pool, &tenant, &day.to_string(), bytes).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("64k"), Ok(64 * 1024));
        assert_eq!(parse_size(" 10G "), Ok(10 * GIB));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert!(parse_size("10X").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn every_limit_round_trips_by_name_and_the_refusal_says_what_to_do() {
        let mut l = Limits::default();
        for (i, limit) in Limit::ALL.into_iter().enumerate() {
            assert_eq!(Limit::parse(limit.key()), Some(limit));
            limit.set(&mut l, i as u64 + 1);
            assert_eq!(limit.get(&l), i as u64 + 1);
        }
        let m = Limit::MaxBatchFiles.refusal("acme", 5, "this batch has", 12);
        assert!(m.contains("12 files") && m.contains("max_batch_files = 5"), "{m}");
        assert!(m.contains("ferry comms tenant limits acme --max-batch-files"), "{m}");
    }

    #[test]
    fn the_daily_quota_refuses_past_the_limit_and_starts_again_each_day() {
        let u = Usage::default();
        assert!(u.charge("a", 60, 100).is_ok());
        assert_eq!(u.charge("a", 50, 100), Err(60));
        assert!(u.charge("a", 40, 100).is_ok());
        assert!(u.charge("b", 100, 100).is_ok(), "tenants are counted apart");
        if let Ok(mut m) = u.0.lock()
            && let Some(c) = m.get_mut("a")
        {
            c.day = c.day.pred_opt().unwrap_or(c.day);
        }
        assert!(u.charge("a", 100, 100).is_ok(), "a new day starts from zero");
    }
}
