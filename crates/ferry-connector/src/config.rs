//! `connector.toml`, written by `ferry connector init` and edited by the ERP admin. Relative paths are taken
//! from the directory holding the config file, so the whole Connector can live in one folder. What registration
//! learns (Comms address, pinned fingerprints, tenant) is kept apart in `registration.json`, so the admin's file
//! is never rewritten by the program.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Working folder: journal, spool, registration. Relative to the config file.
    #[serde(default = "d_data")]
    pub data_dir: PathBuf,
    /// The private key (OpenSSH format, mode 0600). Never leaves this machine.
    #[serde(default = "d_key")]
    pub key: PathBuf,
    /// HTTP CONNECT proxy for both HTTPS and SSH: `http://[user:pass@]host:port`; empty = `HTTPS_PROXY` from the
    /// environment (honouring `NO_PROXY`); "none" = connect directly.
    #[serde(default)]
    pub proxy: String,
    pub erp: ErpConfig,
    #[serde(default)]
    pub extract: ExtractConfig,
    /// Downstream: how files from the cloud are applied to the ERP.
    #[serde(default)]
    pub delivery: crate::delivery::DeliveryConfig,
    /// When `ferry connector run` extracts, and how it polls.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Time limits of every connection to the Comms server.
    #[serde(default)]
    pub network: NetworkConfig,
    /// Dir of the config file; paths are resolved against it.
    #[serde(skip)]
    pub base: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpConfig {
    /// `sqlite`, `postgres`, `mysql` (also MariaDB), `odbc` or `csv` (a folder of files the ERP exports).
    pub kind: String,
    /// Database path or URL (`postgres://user@host:5432/erp`, `mysql://user@host:3306/erp`); for `odbc` a
    /// connection string (`Driver=/path/driver.so;Server=...` or `DSN=erp`); for `csv` the folder. A password may
    /// be in the URL, but is better kept apart in `password`, `password_env` or `password_file`.
    pub url: String,
    /// TOML mapping: one SQL query per standard file.
    #[serde(default = "d_mapping")]
    pub mapping: PathBuf,
    /// The database password, written in this file (prefer `password_env` or `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// The name of an environment variable holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// A file holding the password (its first line; relative to the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// How non-UTF-8 text in the ERP is encoded: `utf-8` (default), `windows-1252` or `latin-1`.
    #[serde(default = "d_encoding")]
    pub encoding: String,
}

/// A password: read from the config, never shown by `Debug` or in messages.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl ErpConfig {
    /// An `[erp]` section with this kind and URL and everything else at its default.
    pub fn new(kind: &str, url: &str) -> ErpConfig {
        ErpConfig {
            kind: kind.into(),
            url: url.into(),
            mapping: d_mapping(),
            password: None,
            password_env: None,
            password_file: None,
            encoding: d_encoding(),
        }
    }

    /// The password from `password`, `password_env` or `password_file` (at most one may be set), or `None`.
    /// The error says which setting is wrong and never contains the password.
    pub fn password(&self) -> Result<Option<String>, String> {
        let set = [self.password.is_some(), self.password_env.is_some(), self.password_file.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err("set only one of [erp] password, password_env and password_file".into());
        }
        if let Some(p) = &self.password {
            return Ok(Some(p.0.clone()));
        }
        if let Some(var) = &self.password_env {
            return match std::env::var(var) {
                Ok(v) => Ok(Some(v)),
                Err(_) => Err(format!(
                    "[erp] password_env names the environment variable {var:?}, which is not set (or not UTF-8); \
                     set it for the Connector's service"
                )),
            };
        }
        if let Some(path) = &self.password_file {
            return match std::fs::read_to_string(path) {
                Ok(text) => Ok(Some(text.lines().next().unwrap_or("").to_string())),
                Err(e) => Err(format!(
                    "cannot read the password file {} ([erp] password_file): {e}; check the path and its permissions",
                    path.display()
                )),
            };
        }
        Ok(None)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractConfig {
    /// bzip2 level 1-9.
    pub level: u32,
    /// Compression threads; 0 = all cores.
    pub threads: usize,
    /// How long `sync` waits for the App's verdict before returning (seconds; 0 = don't wait).
    pub wait_secs: u64,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        ExtractConfig { level: 9, threads: 0, wait_secs: 600 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Local time of the daily extract, `HH:MM` (24 h). Empty: no scheduled extract.
    pub daily_at: String,
    /// Seconds each `GET /v1/files` long-poll waits for a file (the Comms server caps it at 60).
    pub poll_wait_secs: u64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig { daily_at: "02:00".into(), poll_wait_secs: 25 }
    }
}

impl ScheduleConfig {
    /// The daily time, if set and valid.
    pub fn daily_time(&self) -> anyhow::Result<Option<chrono::NaiveTime>> {
        if self.daily_at.trim().is_empty() {
            return Ok(None);
        }
        chrono::NaiveTime::parse_from_str(self.daily_at.trim(), "%H:%M")
            .map(Some)
            .map_err(|_| anyhow::anyhow!("schedule.daily_at {:?} is not a time like \"02:00\"", self.daily_at))
    }
}

/// `[network]`: no call to the Comms server waits forever; a stalled one fails with an error naming the limit and
/// is retried with backoff.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Seconds to open a connection: TCP (and proxy tunnel), then the TLS or SSH handshake and the login.
    pub connect_timeout_secs: u64,
    /// Seconds one web-service call, or one SFTP request, may go unanswered. A long-poll waits this much longer
    /// than its own wait.
    pub timeout_secs: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig { connect_timeout_secs: 30, timeout_secs: 60 }
    }
}

impl NetworkConfig {
    pub fn connect_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.connect_timeout_secs.max(1))
    }
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.max(1))
    }
}

fn d_data() -> PathBuf {
    PathBuf::from("data")
}
fn d_key() -> PathBuf {
    PathBuf::from("keys/ferry_key")
}
fn d_mapping() -> PathBuf {
    PathBuf::from("mapping.toml")
}
fn d_encoding() -> String {
    "utf-8".into()
}

impl ConnectorConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the connector config {} (create one with `ferry connector init`)", path.display())
        })?;
        let mut cfg: ConnectorConfig =
            toml::from_str(&text).with_context(|| format!("{} is not a valid connector config", path.display()))?;
        cfg.base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        if !matches!(cfg.erp.kind.as_str(), "sqlite" | "postgres" | "postgresql" | "mysql" | "mariadb" | "odbc" | "csv")
        {
            bail!(
                "erp.kind {:?} is not supported by this build; use \"sqlite\", \"postgres\", \"mysql\", \"odbc\" or \"csv\"",
                cfg.erp.kind
            );
        }
        crate::source::TextEncoding::parse(&cfg.erp.encoding).map_err(anyhow::Error::msg)?;
        if let Some(p) = cfg.erp.password_file.take() {
            cfg.erp.password_file = Some(cfg.resolve(&p));
        }
        cfg.schedule.daily_time()?;
        if !(1..=9).contains(&cfg.extract.level) {
            bail!("extract.level must be between 1 and 9");
        }
        Ok(cfg)
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() { p.to_path_buf() } else { self.base.join(p) }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.resolve(&self.data_dir)
    }
    pub fn key_path(&self) -> PathBuf {
        self.resolve(&self.key)
    }
    pub fn mapping_path(&self) -> PathBuf {
        self.resolve(&self.erp.mapping)
    }
    pub fn spool_dir(&self) -> PathBuf {
        self.data_dir().join("spool")
    }
    pub fn registration_path(&self) -> PathBuf {
        self.data_dir().join("registration.json")
    }
    pub fn journal_path(&self) -> PathBuf {
        self.data_dir().join("journal.db")
    }

    /// The ERP database path/URL; a relative sqlite path or CSV folder is taken from the config's folder; an ODBC
    /// connection string comes back as written (without the password, which [`ErpConfig::password`] gives).
    pub fn erp_url(&self) -> String {
        let u = &self.erp.url;
        match self.erp.kind.as_str() {
            "odbc" => u.clone(),
            "csv" => self.resolve(Path::new(u)).display().to_string(),
            _ if u.contains(':') => u.clone(),
            _ => self.resolve(Path::new(u)).display().to_string(),
        }
    }
}

/// What `register` learned; everything later connects with exactly these pins.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Registration {
    pub comms_url: String,
    pub tls_fingerprint: String,
    pub tenant: String,
    pub key_fingerprint: String,
    pub ssh_addr: String,
    pub ssh_host_key_fingerprint: String,
    pub registered_at: chrono::DateTime<chrono::Utc>,
}

impl Registration {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| "this connector is not registered yet: run `ferry connector register --token <token>`")?;
        serde_json::from_str(&text).with_context(|| format!("{} is damaged: register again", path.display()))
    }

    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// The skeleton `init` writes.
pub fn skeleton(erp_url: &str) -> String {
    format!(
        r#"# Ferry Connector configuration. Relative paths are relative to this file.
# Working folder: local journal, spool of compressed batches, registration details.
data_dir = "data"
# Private key (mode 0600). Generated by `ferry connector init`; it never leaves this machine.
key = "keys/ferry_key"
# HTTP CONNECT proxy for HTTPS and SSH alike, e.g. "http://user:password@proxy.corp:3128".
# Empty: use HTTPS_PROXY / NO_PROXY from the environment; "none": always connect directly.
proxy = ""

[erp]
# Source database: "sqlite", "postgres" (url = "postgres://user@host:5432/erp"), "mysql" (MySQL/MariaDB,
# url = "mysql://user@host:3306/erp"), "odbc" (url = "Driver=/path/driver.so;Server=...;UID=..." or "DSN=name")
# or "csv" (url = the folder an ERP job exports CSV files to).
kind = "sqlite"
url = "{erp_url}"
# The database password, kept out of the URL: from an environment variable, a file, or (least safe) written here.
# password_env = "FERRY_ERP_PASSWORD"
# password_file = "erp-password.txt"
# Encoding of text the ERP stores in bytes or non-UTF-8 text: "utf-8", "windows-1252" or "latin-1".
encoding = "utf-8"
# One SQL query per standard file of DATA-SPEC.md.
mapping = "mapping.toml"

[extract]
# bzip2 level (1-9) and compression threads (0 = all cores).
level = 9
threads = 0
# Seconds `sync` waits for the import verdict (0 = return once the upload is complete).
wait_secs = 600

[schedule]
# `ferry connector run` extracts daily at this local time (HH:MM; "" = only on demand with `sync`).
daily_at = "02:00"
# Seconds each poll for files from the cloud waits (files arrive within a second of being ready).
poll_wait_secs = 25

[network]
# Seconds to open a connection to the Comms server (TCP/proxy, TLS or SSH handshake, login), and seconds one
# call or SFTP request may go unanswered; a stalled peer fails with a clear error and is retried with backoff.
connect_timeout_secs = 30
timeout_secs = 60

[delivery]
# Files from the cloud (recommended orders, reports) are written here, complete or not at all.
inbound_dir = "from_cloud"
# Optional SQL write-back: each CSV row of matching files bound into the statement, one transaction per file.
# only = ["po_"]
# [[delivery.sql]]
# statement = "INSERT INTO recommended_orders(order_number, line, item, location, supplier, qty, due_date) VALUES (?, ?, ?, ?, ?, ?, ?)"
# params = ["order_number", "line", "item", "location", "supplier", "qty", "due_date"]
# Exactly once across crashes: each applied file's id is recorded in this ERP table in the write-back's own
# transaction, and a file already recorded is never written back again (docs/sources.md).
# ledger_table = "ferry_applied"
# Optional command run with each delivered file: {{file}} is replaced by its path.
# command = ["/opt/erp/bin/import-orders", "{{file}}"]
"#
    )
}
