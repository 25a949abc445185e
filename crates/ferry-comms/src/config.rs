//! `comms.toml`: every key has a default, so an empty file (or none, in the demo) gives a working loopback server.
//! Parsed once, validated, then passed down; nothing reads the environment or the file later.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::bail;
use serde::{Deserialize, Serialize};

pub use crate::db::{AppEndpoint, DatabaseConfig};
use crate::limits::Limits;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CommsConfig {
    /// Metadata database, keys, certificates and tenant file roots live here.
    /// Relative paths here and in `tls_cert`/`tls_key` are taken from the config file's folder.
    pub data_dir: PathBuf,
    /// HTTPS listener.
    pub listen_https: SocketAddr,
    /// SSH/SFTP listener. The same address as `listen_https` serves both protocols on one port (e.g. 443).
    pub listen_ssh: SocketAddr,
    /// The URL Connectors use (goes into registration tokens). Empty: `https://<listen_https>`.
    pub public_url: String,
    /// `host:port` Connectors dial for SFTP. Empty: the host of `public_url` with the SSH port.
    pub public_ssh_addr: String,
    /// Extra DNS names / IPs for the self-signed certificate created on first start.
    pub tls_names: Vec<String>,
    /// Operator-supplied certificate and key (PEM). Empty: self-signed under `data_dir/tls/`.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Registration tokens expire after this many hours.
    pub token_ttl_hours: i64,
    /// Signed requests older than this are refused.
    pub signature_max_age_secs: i64,
    /// A web-service request (reading its body included) that takes longer than this is answered 408. Must be
    /// above the longest long-poll (`GET /v1/files?wait=`, 60 s).
    pub request_timeout_secs: u64,
    /// The admin API (`/admin/v1/...`, HTTPS, bearer token from `<data_dir>/admin.token`). Loopback by
    /// default; leave it out to run without an admin API (the local CLI still works).
    pub listen_admin: Option<SocketAddr>,
    /// Plain-HTTP listener (port 80) that only redirects to `public_url`; none by default.
    pub listen_http_redirect: Option<SocketAddr>,
    /// Tenants the relay and the downstream worker each serve at once (a large import delays only its own tenant;
    /// each tenant's batches still go one after another, in order). Default 8.
    pub max_concurrent_tenants: usize,
    /// Copy each uploaded file to the App server as soon as its upload is complete, while the Connector is
    /// still sending the rest of the batch (the relay at `complete` then sends only what is missing). Default
    /// true; false relays every file at `complete`, as before.
    pub relay_early: bool,
    /// Refused registrations (`/v1/register` with a bad token or body) one source address may cause per minute;
    /// past it the address is answered 429 without any check until the minute ends. Default 10.
    pub max_refused_registrations_per_minute: u32,
    /// `[retention]`: the files of imported and rejected batches (and of delivered downstream files) are removed
    /// after `keep_secs` (default 7 days); the database rows and the audit log stay.
    pub retention: ferry_web::retention::Retention,
    /// Default limits of every tenant; `ferry comms tenant limits` overrides them per tenant.
    pub limits: Limits,
    /// Connection caps and deadlines of every listener (HTTPS, SSH, the shared port, admin, redirect).
    pub connections: ferry_io::accept::ConnectionLimits,
    /// An App server hosting tenants' instances: registered at start as the App server named `default`
    /// ([`crate::appclient::DEFAULT_APP`]); more are added with `ferry comms app add` (kept in the database).
    /// May be left empty when every App server is added that way.
    pub app: AppEndpoint,
    /// `[database]`: where the metadata lives (default: the SQLite file `<data_dir>/comms.db`).
    pub database: DatabaseConfig,
    /// `[storage]`: where tenants' files live (default: the local folder `<data_dir>/tenants/`; or
    /// `url = "s3://bucket/prefix"`, docs/scale-out.md).
    pub storage: crate::store::StorageConfig,
}

impl Default for CommsConfig {
    fn default() -> Self {
        CommsConfig {
            data_dir: PathBuf::from("ferry-data/comms"),
            listen_https: "127.0.0.1:8443".parse().unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 8443))),
            listen_ssh: SocketAddr::from(([127, 0, 0, 1], 2222)),
            public_url: String::new(),
            public_ssh_addr: String::new(),
            tls_names: vec![],
            tls_cert: None,
            tls_key: None,
            token_ttl_hours: 24,
            signature_max_age_secs: 300,
            request_timeout_secs: 90,
            listen_admin: Some(SocketAddr::from(([127, 0, 0, 1], 8444))),
            listen_http_redirect: None,
            max_concurrent_tenants: ferry_web::worker::DEFAULT_MAX_CONCURRENT_TENANTS,
            relay_early: true,
            max_refused_registrations_per_minute: 10,
            retention: ferry_web::retention::Retention::default(),
            limits: Limits::default(),
            connections: ferry_io::accept::ConnectionLimits::default(),
            app: AppEndpoint::default(),
            database: DatabaseConfig::default(),
            storage: crate::store::StorageConfig::default(),
        }
    }
}

impl ferry_io::config::ConfigFile for CommsConfig {
    const WHAT: &'static str = "comms config";

    /// `data_dir`, `tls_cert`, `tls_key` and `[database] password_file`.
    fn paths(&mut self) -> Vec<&mut PathBuf> {
        let mut paths = vec![&mut self.data_dir];
        paths.extend([&mut self.tls_cert, &mut self.tls_key, &mut self.database.password_file].into_iter().flatten());
        paths
    }

    fn validate(&mut self) -> anyhow::Result<()> {
        CommsConfig::validate(self)
    }
}

impl CommsConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        ferry_io::config::load(path)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        self.retention.validate()?;
        self.database.validate()?;
        self.storage.validate()?;
        if self.token_ttl_hours <= 0 || self.signature_max_age_secs <= 0 {
            bail!("token_ttl_hours and signature_max_age_secs must be positive");
        }
        self.connections.validate()?;
        if self.max_concurrent_tenants == 0 {
            bail!("max_concurrent_tenants must be at least 1");
        }
        if !self.public_url.is_empty() && !self.public_url.starts_with("https://") {
            bail!("public_url must start with https:// (got {:?})", self.public_url);
        }
        if self.request_timeout_secs <= crate::api::MAX_LONG_POLL_SECS {
            bail!(
                "request_timeout_secs must be above {} (the longest long-poll); got {}",
                crate::api::MAX_LONG_POLL_SECS,
                self.request_timeout_secs
            );
        }
        if let Some(a) = self.listen_admin
            && !a.ip().is_loopback()
        {
            tracing::warn!(
                "listen_admin = {a} is not a loopback address: the admin API is reachable from the network \
                 (it still needs the admin token)"
            );
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            bail!("set both tls_cert and tls_key, or neither (a self-signed certificate is then created)");
        }
        Ok(())
    }

    /// This server's keys and certificate (created under `data_dir` on first use).
    pub fn identity(&self) -> anyhow::Result<ferry_web::identity::ServerIdentity> {
        ferry_web::identity::ServerIdentity::load_or_create(
            &self.data_dir,
            self.tls_cert.as_deref().zip(self.tls_key.as_deref()),
            &self.tls_names,
        )
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join("comms.db")
    }

    /// The admin API's bearer token (mode 0600, created with the data directory).
    pub fn admin_token_path(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }

    /// The URL Connectors use: `public_url`, or `https://<listen_https>`.
    pub fn public_base_url(&self) -> String {
        if self.public_url.is_empty() {
            format!("https://{}", self.listen_https)
        } else {
            self.public_url.trim_end_matches('/').to_string()
        }
    }
}
