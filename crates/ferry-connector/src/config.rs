//! `connector.toml`, written by `ferry connector init` and edited by the ERP admin. Relative paths are taken
//! from the directory holding the config file, so the whole Connector can live in one folder. What registration
//! learns (Comms address, pinned fingerprints, tenant) is kept apart in `registration.json`, so the admin's file
//! is never rewritten by the program.
//!
//! Parsed once, in two steps (as ripgrep does): serde reads the TOML into a raw form that mirrors the file
//! ([`RawConfig`], every key and default as documented), then [`ConnectorConfig::load`] validates it into typed
//! values — the ERP kind and encoding as enums ([`ErpConfig`]), `daily_at` as a time, every path absolute —
//! before anything runs. Each error names the key that is wrong and what to write instead.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::delivery::DeliveryConfig;
use crate::erp::{ErpConfig, ErpKind, Password, Secret, TextEncoding};

/// The Connector's configuration, validated: what the rest of the Connector reads.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    /// The folder holding the config file; relative paths in it were resolved against this folder.
    pub base: PathBuf,
    /// HTTP CONNECT proxy for both HTTPS and SSH: `http://[user:pass@]host:port`; empty = `HTTPS_PROXY` from the
    /// environment (honouring `NO_PROXY`); "none" = connect directly.
    pub proxy: String,
    /// The ERP database (`[erp]`), its `url` resolved.
    pub erp: ErpConfig,
    pub extract: ExtractConfig,
    /// Downstream: how files from the cloud are applied to the ERP; `inbound_dir` resolved.
    pub delivery: DeliveryConfig,
    /// When `ferry connector run` extracts, and how it polls.
    pub schedule: ScheduleConfig,
    /// Time limits of every connection to the Comms server.
    pub network: NetworkConfig,
    paths: Paths,
}

/// Every file and folder of the Connector, absolute, computed once by [`ConnectorConfig::load`].
#[derive(Debug, Clone)]
struct Paths {
    data_dir: PathBuf,
    key: PathBuf,
    mapping: PathBuf,
    spool: PathBuf,
    registration: PathBuf,
    journal: PathBuf,
}

/// `connector.toml` as written: what serde reads, before validation. Field names are the TOML keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Working folder: journal, spool, registration. Relative to the config file.
    #[serde(default = "d_data")]
    pub data_dir: PathBuf,
    /// The private key (OpenSSH format, mode 0600). Never leaves this machine.
    #[serde(default = "d_key")]
    pub key: PathBuf,
    #[serde(default)]
    pub proxy: String,
    pub erp: RawErpConfig,
    #[serde(default)]
    pub extract: ExtractConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub schedule: RawScheduleConfig,
    #[serde(default)]
    pub network: NetworkConfig,
}

/// `[erp]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawErpConfig {
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

/// `[schedule]` as written.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RawScheduleConfig {
    /// Local time of the daily extract, `HH:MM` (24 h). Empty: no scheduled extract.
    pub daily_at: String,
    /// Seconds each `GET /v1/files` long-poll waits for a file (the Comms server caps it at 60).
    pub poll_wait_secs: u64,
}

impl Default for RawScheduleConfig {
    fn default() -> Self {
        RawScheduleConfig { daily_at: "02:00".into(), poll_wait_secs: 25 }
    }
}

/// `[schedule]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleConfig {
    /// Local time of the daily extract; `None`: no scheduled extract (`daily_at = ""`).
    pub daily_at: Option<chrono::NaiveTime>,
    /// Seconds each `GET /v1/files` long-poll waits for a file (the Comms server caps it at 60).
    pub poll_wait_secs: u64,
}

impl RawScheduleConfig {
    fn validate(self) -> anyhow::Result<ScheduleConfig> {
        let at = self.daily_at.trim();
        let daily_at = if at.is_empty() {
            None
        } else {
            Some(chrono::NaiveTime::parse_from_str(at, "%H:%M").map_err(|_| {
                anyhow::anyhow!(
                    "schedule.daily_at {:?} is not a time like \"02:00\" (HH:MM, 24 h; \"\" for no daily extract)",
                    self.daily_at
                )
            })?)
        };
        Ok(ScheduleConfig { daily_at, poll_wait_secs: self.poll_wait_secs })
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

/// `p` taken relative to `base` unless it is absolute.
fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

impl RawErpConfig {
    /// The typed `[erp]`: kind and encoding parsed, at most one password source, paths resolved against `base`.
    fn validate(self, base: &Path) -> anyhow::Result<ErpConfig> {
        let kind = ErpKind::parse(&self.kind)?;
        let encoding = TextEncoding::parse(&self.encoding)?;
        let password = match (self.password, self.password_env, self.password_file) {
            (None, None, None) => Password::None,
            (Some(p), None, None) => Password::Inline(p),
            (None, Some(var), None) => Password::Env(var),
            (None, None, Some(file)) => Password::File(resolve(base, &file)),
            _ => anyhow::bail!("set only one of [erp] password, password_env and password_file"),
        };
        Ok(ErpConfig { kind, url: self.url, password, encoding }.resolve_url(base))
    }
}

impl RawConfig {
    /// The typed config; `base` is the folder of the config file.
    pub fn validate(self, base: &Path) -> anyhow::Result<ConnectorConfig> {
        if !(1..=9).contains(&self.extract.level) {
            anyhow::bail!("extract.level must be between 1 and 9");
        }
        let data_dir = resolve(base, &self.data_dir);
        let paths = Paths {
            key: resolve(base, &self.key),
            mapping: resolve(base, &self.erp.mapping),
            spool: data_dir.join("spool"),
            registration: data_dir.join("registration.json"),
            journal: data_dir.join("journal.db"),
            data_dir,
        };
        let mut delivery = self.delivery;
        delivery.inbound_dir = delivery.inbound_dir.map(|d| resolve(base, &d));
        Ok(ConnectorConfig {
            base: base.to_path_buf(),
            proxy: self.proxy,
            erp: self.erp.validate(base)?,
            extract: self.extract,
            delivery,
            schedule: self.schedule.validate()?,
            network: self.network,
            paths,
        })
    }
}

impl ConnectorConfig {
    /// Reads and validates `path`; every path in it is resolved against its folder.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the connector config {} (create one with `ferry connector init`)", path.display())
        })?;
        let raw: RawConfig =
            toml::from_str(&text).with_context(|| format!("{} is not a valid connector config", path.display()))?;
        // every path in the config resolves against the config's folder, made absolute once here: `{file}` for a
        // delivery command and the log lines then name files a service or another working folder can find
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = std::path::absolute(&base).unwrap_or(base);
        raw.validate(&base)
    }

    /// Working folder: journal, spool, registration (`data_dir`).
    pub fn data_dir(&self) -> &Path {
        &self.paths.data_dir
    }
    /// The private key (`key`).
    pub fn key_path(&self) -> &Path {
        &self.paths.key
    }
    /// The mapping (`[erp] mapping`).
    pub fn mapping_path(&self) -> &Path {
        &self.paths.mapping
    }
    /// Where extracted batches wait to be sent (`<data_dir>/spool`).
    pub fn spool_dir(&self) -> &Path {
        &self.paths.spool
    }
    /// What registration learned (`<data_dir>/registration.json`).
    pub fn registration_path(&self) -> &Path {
        &self.paths.registration
    }
    /// The local journal (`<data_dir>/journal.db`).
    pub fn journal_path(&self) -> &Path {
        &self.paths.journal
    }

    /// The ERP database path/URL as resolved at load (the same as `erp.url`): a relative sqlite path or CSV folder
    /// is taken from the config's folder; an ODBC connection string comes back as written (without the password,
    /// which [`ErpConfig::password`] gives).
    pub fn erp_url(&self) -> String {
        self.erp.url.clone()
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

/// What `init` writes into the `[erp]` section of the skeleton.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitErp {
    /// `[erp] kind`: "sqlite", "postgres", "mysql", "odbc" or "csv".
    pub kind: String,
    /// `[erp] url`: a file or folder path (any platform's form, e.g. `C:\ERP\data.db`) or a URL / connection
    /// string.
    pub url: String,
    /// `[erp] password`, written into the file (which is then made readable by its owner only).
    pub password: Option<String>,
}

impl InitErp {
    /// A SQLite ERP database at `path`.
    pub fn sqlite(path: impl Into<String>) -> InitErp {
        InitErp { kind: "sqlite".into(), url: path.into(), password: None }
    }
}

/// `value` as a TOML string, serialised by the TOML library: backslashes (Windows paths, UNC shares), quotes and
/// control characters come back exactly as given.
pub fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// The skeleton `init` writes. Every value is serialised by the TOML library, never pasted into quotes.
pub fn skeleton(erp: &InitErp) -> String {
    let kind = toml_string(&erp.kind);
    let url = toml_string(&erp.url);
    let password = match &erp.password {
        Some(p) => format!(
            "# Written by `init --erp-password-stdin`; the file is readable by its owner only. Safer: password_env or \
             password_file.\npassword = {}",
            toml_string(p)
        ),
        None => "# password_env = \"FERRY_ERP_PASSWORD\"\n# password_file = \"erp-password.txt\"".to_string(),
    };
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
kind = {kind}
url = {url}
# The database password, kept out of the URL: from an environment variable, a file, or (least safe) written here.
{password}
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
# `ferry connector run` extracts daily at this local time (HH:MM; "" = only on demand with `sync`), and at start
# when nothing was sent yet or today's time has passed with no extract since (a manual `sync` counts).
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
# Optional command run with each delivered file: {{file}} is replaced by its absolute path, {{id}} by the file's
# id (also in the environment as FERRY_FILE_ID). A file delivered again (after a crash, or a failed command)
# keeps its id: a command that records the ids it imported and skips a known one never imports a file twice.
# command = ["/opt/erp/bin/import-orders", "{{file}}", "--reference", "{{id}}"]
# Dates in the order files the inbound folder and the command get: "spec" (YYYY/MM/DD, as DATA-SPEC.md) or
# "iso" (YYYY-MM-DD, for ERP import tools that expect ISO dates; only the order_date and due_date columns change).
date_format = "spec"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> anyhow::Result<ConnectorConfig> {
        let raw: RawConfig = toml::from_str(text)?;
        raw.validate(Path::new("/opt/ferry"))
    }

    #[test]
    fn the_skeleton_loads_into_typed_values_with_paths_resolved() {
        let cfg = load(&skeleton(&InitErp::sqlite("erp.db"))).unwrap();
        assert_eq!(cfg.erp.kind, ErpKind::Sqlite);
        assert_eq!(cfg.erp.url, "/opt/ferry/erp.db");
        assert_eq!(cfg.erp.encoding, TextEncoding::Utf8);
        assert_eq!(cfg.erp.password, Password::None);
        assert_eq!(cfg.schedule.daily_at, chrono::NaiveTime::from_hms_opt(2, 0, 0));
        assert_eq!(cfg.data_dir(), Path::new("/opt/ferry/data"));
        assert_eq!(cfg.key_path(), Path::new("/opt/ferry/keys/ferry_key"));
        assert_eq!(cfg.mapping_path(), Path::new("/opt/ferry/mapping.toml"));
        assert_eq!(cfg.spool_dir(), Path::new("/opt/ferry/data/spool"));
        assert_eq!(cfg.journal_path(), Path::new("/opt/ferry/data/journal.db"));
        assert_eq!(cfg.registration_path(), Path::new("/opt/ferry/data/registration.json"));
        assert_eq!(cfg.delivery.inbound_dir.as_deref(), Some(Path::new("/opt/ferry/from_cloud")));
        assert_eq!(cfg.delivery.date_format, crate::delivery::DateFormat::Spec);
    }

    /// Every value `init` writes comes back exactly: Windows drive and UNC paths (a TOML basic string would read
    /// `\t` as a tab), spaces, non-ASCII letters, and a password with quotes and backslashes.
    #[test]
    fn the_skeleton_keeps_windows_paths_and_awkward_passwords_exact() {
        for url in [
            r"C:\ERP\data.db",
            r"Z:\tmp\erp.db",
            r"\\server\share\erp.db",
            r"C:\Program Files\Société Générale\ERP daten\données.db",
            "Driver={ODBC Driver 18 for SQL Server};Server=erp\\sql;Database=ERP",
        ] {
            for password in [None, Some(r#"p"a\ss\"w'o\\rd"#.to_string()), Some("tab\there\nnewline".to_string())] {
                let erp = InitErp { kind: "odbc".into(), url: url.into(), password: password.clone() };
                let text = skeleton(&erp);
                let raw: RawConfig = toml::from_str(&text).unwrap_or_else(|e| panic!("{url}: {e}\n{text}"));
                assert_eq!(raw.erp.url, url);
                match (&password, raw.validate(Path::new("/opt/ferry")).unwrap().erp.password) {
                    (None, Password::None) => {}
                    (Some(p), Password::Inline(got)) => assert_eq!(&got.0, p),
                    (want, got) => panic!("password {want:?} came back as {got:?}"),
                }
            }
        }
    }

    #[test]
    fn each_error_names_its_key() {
        let with = |erp: &str, rest: &str| format!("[erp]\nkind = \"sqlite\"\nurl = \"e.db\"\n{erp}\n{rest}");
        let e = load(&with("", "[schedule]\ndaily_at = \"25:00\"")).unwrap_err().to_string();
        assert!(e.contains("schedule.daily_at \"25:00\""), "{e}");
        let cfg = load(&with("", "[schedule]\ndaily_at = \"\"")).unwrap();
        assert_eq!(cfg.schedule.daily_at, None);
        let e = load("[erp]\nkind = \"oracle\"\nurl = \"x\"\n").unwrap_err().to_string();
        assert!(e.contains("erp.kind \"oracle\"") && e.contains("\"odbc\" or \"csv\""), "{e}");
        let e = load(&with("encoding = \"ebcdic\"", "")).unwrap_err().to_string();
        assert!(e.contains("[erp] encoding"), "{e}");
        let e = load(&with("password = \"a\"\npassword_env = \"B\"", "")).unwrap_err().to_string();
        assert!(e.contains("only one of [erp] password"), "{e}");
        let cfg = load(&with("password_file = \"pw.txt\"\nencoding = \"cp1252\"", "")).unwrap();
        assert_eq!(cfg.erp.password, Password::File(PathBuf::from("/opt/ferry/pw.txt")));
        assert_eq!(cfg.erp.encoding, TextEncoding::Windows1252);
        let e = load(&with("", "[extract]\nlevel = 0")).unwrap_err().to_string();
        assert!(e.contains("extract.level"), "{e}");
        let cfg = load(&with("", "[delivery]\ndate_format = \"iso\"")).unwrap();
        assert_eq!(cfg.delivery.date_format, crate::delivery::DateFormat::Iso);
        let e = format!("{:#}", load(&with("", "[delivery]\ndate_format = \"ISO-8601\"")).unwrap_err());
        assert!(e.contains("date_format") && e.contains("expected `spec` or `iso`"), "{e}");
    }
}
