//! `app.toml`: every key has a default; the one thing an operator must add is the Comms service key(s) allowed
//! to call this App server (`ferry comms info` prints it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use russh::keys::PublicKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Instances (one SQLite file per tenant), keys, certificate and the SFTP area live here.
    /// Relative paths here and in `tls_cert`/`tls_key` are taken from the config file's folder.
    pub data_dir: PathBuf,
    pub listen_https: SocketAddr,
    pub listen_ssh: SocketAddr,
    /// The buyer's web page (HTTPS, same certificate as `listen_https`), on its own listener so that it can face
    /// the buyers' network while the service API stays private. Default `127.0.0.1:9444`; `"off"` (or `""`)
    /// serves no page.
    #[serde(with = "listen_web")]
    pub listen_web: Option<SocketAddr>,
    /// The admin listener: Prometheus `GET /metrics` (HTTPS, same certificate, bearer token from
    /// `<data_dir>/admin.token`, as the Comms server's admin API). Default `127.0.0.1:9445` (loopback: a
    /// Prometheus on this host); `"off"` (or `""`) serves none.
    #[serde(with = "listen_admin")]
    pub listen_admin: Option<SocketAddr>,
    /// The page's address as buyers reach it (`https://plan.example.com`), for the links `ferry app user add`
    /// prints. Empty: `https://<listen_web>`.
    pub web_url: String,
    pub tls_names: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub signature_max_age_secs: i64,
    /// OpenSSH public keys of the Comms servers allowed to call this App server (parsed at load).
    pub comms_keys: Vec<CommsKey>,
    /// Cap on the decompressed size of any one file of a batch (bzip2 bombs).
    pub max_decompressed_bytes: u64,
    /// Run the planner after every successful import and send the recommended orders down.
    pub plan_after_import: bool,
    /// Service level for the planner's safety stock (0.5-0.9999).
    pub service_level: f64,
    /// Instances kept open at once (two SQLite connections each); the least recently used idle one is closed
    /// beyond this, and opened again on its next request.
    pub max_open_instances: usize,
    /// Tenants the announcer serves at once (each tenant's files still go one after another). Default 8.
    pub max_concurrent_tenants: usize,
    /// The Comms server this App announces downstream files to.
    pub comms: CommsEndpoint,
    /// Connection caps and deadlines of the HTTPS and SSH listeners.
    pub connections: ferry_io::accept::ConnectionLimits,
    /// `[retention]`: the files of rejected (and other finished) batches are removed after `keep_secs`
    /// (default 7 days); the batch log keeps their verdicts.
    pub retention: ferry_web::retention::Retention,
    /// `[planner]`: how released orders count in later plans.
    pub planner: PlannerConfig,
}

/// A Comms service key allowed to call this App server: an OpenSSH public key line in `app.toml`, parsed once at
/// load, with its fingerprint (the `keyid` of the requests it signs).
#[derive(Debug, Clone)]
pub struct CommsKey {
    pub key: PublicKey,
    pub fingerprint: String,
}

impl CommsKey {
    pub fn new(key: PublicKey) -> Self {
        CommsKey { fingerprint: ferry_io::keys::fingerprint(&key), key }
    }
}

impl Serialize for CommsKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let line = ferry_io::keys::public_key_openssh(&self.key).map_err(serde::ser::Error::custom)?;
        s.serialize_str(&line)
    }
}

impl<'de> Deserialize<'de> for CommsKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let line = String::deserialize(d)?;
        let key = ferry_io::keys::parse_public_key(&line).map_err(|e| {
            serde::de::Error::custom(format!("not an OpenSSH public key (copy it from `ferry comms info`): {e}"))
        })?;
        Ok(CommsKey::new(key))
    }
}

/// `[planner]` of `app.toml`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlannerConfig {
    /// Days a released line counts as on order when the ERP's extract never shows it; 0 (the default) = the
    /// line's lead time plus the review period (`docs/planner.md`, "Release").
    pub release_expiry_days: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommsEndpoint {
    /// `https://comms.example:8443`
    pub api_url: String,
    /// `sha256:<hex>` of the Comms TLS certificate (`ferry comms info`); empty = CA-verified.
    pub tls_fingerprint: String,
}

/// `listen_web`: an address, or `"off"`/`""` for none.
mod listen_web {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(a) => s.serialize_str(&a.to_string()),
            None => s.serialize_str("off"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        parse("listen_web", "0.0.0.0:9444", &String::deserialize(d)?).map_err(serde::de::Error::custom)
    }

    /// An address, or `None` for `"off"`/`""`; the error names the key and gives an example.
    pub fn parse(key: &str, example: &str, text: &str) -> Result<Option<SocketAddr>, String> {
        match text.trim() {
            "" | "off" => Ok(None),
            t => {
                t.parse().map(Some).map_err(|e| format!("{key} {t:?} is not an address like {example} or \"off\": {e}"))
            }
        }
    }
}

/// `listen_admin`: an address, or `"off"`/`""` for none.
mod listen_admin {
    use std::net::SocketAddr;

    use serde::{Deserialize, Deserializer};

    pub use super::listen_web::serialize;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        super::listen_web::parse("listen_admin", "127.0.0.1:9445", &String::deserialize(d)?)
            .map_err(serde::de::Error::custom)
    }
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            data_dir: PathBuf::from("ferry-data/app"),
            listen_https: SocketAddr::from(([127, 0, 0, 1], 9443)),
            listen_ssh: SocketAddr::from(([127, 0, 0, 1], 2223)),
            listen_web: Some(SocketAddr::from(([127, 0, 0, 1], 9444))),
            listen_admin: Some(SocketAddr::from(([127, 0, 0, 1], 9445))),
            web_url: String::new(),
            tls_names: vec![],
            tls_cert: None,
            tls_key: None,
            signature_max_age_secs: 300,
            comms_keys: vec![],
            max_decompressed_bytes: 8 * 1024 * 1024 * 1024,
            plan_after_import: true,
            service_level: 0.95,
            planner: PlannerConfig::default(),
            max_open_instances: 256,
            max_concurrent_tenants: ferry_web::worker::DEFAULT_MAX_CONCURRENT_TENANTS,
            connections: ferry_io::accept::ConnectionLimits::default(),
            comms: CommsEndpoint::default(),
            retention: ferry_web::retention::Retention::default(),
        }
    }
}

impl ferry_io::config::ConfigFile for AppConfig {
    const WHAT: &'static str = "app config";

    /// `data_dir`, `tls_cert` and `tls_key`.
    fn paths(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = vec![&mut self.data_dir];
        paths.extend([&mut self.tls_cert, &mut self.tls_key].into_iter().flatten());
        paths
    }

    fn validate(&mut self) -> anyhow::Result<()> {
        AppConfig::validate(self)
    }
}

impl AppConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        ferry_io::config::load(path)
    }

    /// Where buyers reach the web page (`web_url`, else `https://<listen_web>`); `None` when it is off.
    pub fn web_base(&self) -> Option<String> {
        if !self.web_url.trim().is_empty() {
            return Some(self.web_url.trim().trim_end_matches('/').to_string());
        }
        self.listen_web.map(|a| format!("https://{a}"))
    }

    /// The admin listener's bearer token (mode 0600, created at the first start with `listen_admin`).
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.connections.validate()?;
        self.retention.validate()?;
        if self.max_concurrent_tenants == 0 {
            bail!("max_concurrent_tenants must be at least 1");
        }
        if !(0.5..1.0).contains(&self.service_level) {
            bail!("service_level must be between 0.5 and 0.9999 (got {})", self.service_level);
        }
        if self.max_open_instances == 0 {
            bail!("max_open_instances must be at least 1");
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("set both tls_cert and tls_key, or neither (a self-signed certificate is then created)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod web_tests {
    use super::*;

    #[test]
    fn listen_web_is_an_address_or_off() {
        let on: AppConfig = toml::from_str("listen_web = \"0.0.0.0:9444\"").unwrap();
        assert_eq!(on.listen_web, Some(SocketAddr::from(([0, 0, 0, 0], 9444))));
        let off: AppConfig = toml::from_str("listen_web = \"off\"").unwrap();
        assert_eq!(off.listen_web, None);
        assert_eq!(off.web_base(), None);
        let default: AppConfig = toml::from_str("").unwrap();
        assert_eq!(default.web_base().as_deref(), Some("https://127.0.0.1:9444"));
        let err = toml::from_str::<AppConfig>("listen_web = \"nine\"").unwrap_err().to_string();
        assert!(err.contains("listen_web"), "{err}");
        // what `ferry app init` writes reads back the same
        let text = toml::to_string_pretty(&AppConfig::default()).unwrap();
        assert_eq!(toml::from_str::<AppConfig>(&text).unwrap().listen_web, AppConfig::default().listen_web);
    }

    #[test]
    fn listen_admin_is_an_address_or_off() {
        let default: AppConfig = toml::from_str("").unwrap();
        assert_eq!(default.listen_admin, Some(SocketAddr::from(([127, 0, 0, 1], 9445))));
        let off: AppConfig = toml::from_str("listen_admin = \"off\"").unwrap();
        assert_eq!(off.listen_admin, None);
        let err = toml::from_str::<AppConfig>("listen_admin = \"x\"").unwrap_err().to_string();
        assert!(err.contains("listen_admin") && err.contains("127.0.0.1:9445"), "{err}");
        let text = toml::to_string_pretty(&off).unwrap();
        assert_eq!(toml::from_str::<AppConfig>(&text).unwrap().listen_admin, None);
    }
}
