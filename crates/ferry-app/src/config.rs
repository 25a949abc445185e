//! `app.toml`: every key has a default; the one thing an operator must add is the Comms service key(s) allowed
//! to call this App server (`ferry comms info` prints it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// Instances (one SQLite file per tenant), keys, certificate and the SFTP area live here.
    /// Relative paths here and in `tls_cert`/`tls_key` are taken from the config file's folder.
    pub data_dir: PathBuf,
    pub listen_https: SocketAddr,
    pub listen_ssh: SocketAddr,
    pub tls_names: Vec<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub signature_max_age_secs: i64,
    /// OpenSSH public keys of the Comms servers allowed to call this App server.
    pub comms_keys: Vec<String>,
    /// Cap on the decompressed size of any one file of a batch (bzip2 bombs).
    pub max_decompressed_bytes: u64,
    /// Run the planner after every successful import and send the recommended orders down.
    pub plan_after_import: bool,
    /// Service level for the planner's safety stock (0.5-0.9999).
    pub service_level: f64,
    /// Instances kept open at once (two SQLite connections each); the least recently used idle one is closed
    /// beyond this, and opened again on its next request.
    pub max_open_instances: usize,
    /// The Comms server this App announces downstream files to.
    pub comms: CommsEndpoint,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommsEndpoint {
    /// `https://comms.example:8443`
    pub api_url: String,
    /// `sha256:<hex>` of the Comms TLS certificate (`ferry comms info`); empty = CA-verified.
    pub tls_fingerprint: String,
}

impl Default for AppConfig {
    fn default() -> Self {
        AppConfig {
            data_dir: PathBuf::from("ferry-data/app"),
            listen_https: SocketAddr::from(([127, 0, 0, 1], 9443)),
            listen_ssh: SocketAddr::from(([127, 0, 0, 1], 2223)),
            tls_names: vec![],
            tls_cert: None,
            tls_key: None,
            signature_max_age_secs: 300,
            comms_keys: vec![],
            max_decompressed_bytes: 8 * 1024 * 1024 * 1024,
            plan_after_import: true,
            service_level: 0.95,
            max_open_instances: 256,
            comms: CommsEndpoint::default(),
        }
    }
}

impl AppConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read the app config {}", path.display()))?;
        let mut cfg: AppConfig =
            toml::from_str(&text).with_context(|| format!("{} is not a valid app config", path.display()))?;
        cfg.data_dir = ferry_io::relative_to_config(path, &cfg.data_dir);
        for p in [&mut cfg.tls_cert, &mut cfg.tls_key].into_iter().flatten() {
            *p = ferry_io::relative_to_config(path, p);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        for (i, k) in self.comms_keys.iter().enumerate() {
            ferry_io::keys::parse_public_key(k).with_context(|| {
                format!("comms_keys[{i}] is not an OpenSSH public key (copy it from `ferry comms info`)")
            })?;
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
