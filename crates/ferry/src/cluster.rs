//! A complete Ferry system in one process on 127.0.0.1 (port 0): an App server, a Comms server wired to it
//! (service key trusted by the App, App fingerprints pinned by Comms), and helpers to add tenants and set up
//! Connectors. What the demo runs, and what the integration tests talk to over real sockets.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ferry_app::AppConfig;
use ferry_app::config::CommsEndpoint;
use ferry_app::server::AppHandle;
use ferry_comms::admin::Admin;
use ferry_comms::config::AppEndpoint;
use ferry_comms::{CommsConfig, CommsHandle};
use ferry_connector::agent::{self, Connector};
use ferry_io::keys::KeyAlgorithm;
use ferry_web::identity::ServerIdentity;
use sqlx::Connection;

/// The demo's downstream delivery: inbound folder plus SQL write-back of recommended orders.
pub const WRITE_BACK: &str = r#"
[delivery]
inbound_dir = "from_cloud"
only = ["po_"]
[[delivery.sql]]
statement = "INSERT INTO recommended_orders(order_number, line, item, location, supplier, qty, due_date) VALUES (?, ?, ?, ?, ?, ?, ?)"
params = ["order_number", "line", "item", "location", "supplier", "qty", "due_date"]
"#;

/// Set to a `postgres://` URL (a role with CREATEDB), every cluster keeps its Comms metadata in a new database
/// on that server instead of SQLite: how the Comms tests run against PostgreSQL.
pub const TEST_COMMS_DB: &str = "FERRY_TEST_COMMS_DB";
/// `s3`: every cluster keeps the Comms tenants' files on the test S3 server (`scripts/test-s3.sh`), each under a
/// fresh prefix of `FERRY_TEST_S3_BUCKET`.
pub const TEST_COMMS_STORAGE: &str = "FERRY_TEST_COMMS_STORAGE";

/// `[storage]` on the test S3 server (`FERRY_TEST_S3_ENDPOINT`, `FERRY_TEST_S3_BUCKET`; credentials in
/// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`), under a fresh random prefix. Err without a test server.
pub fn test_s3_storage() -> anyhow::Result<ferry_comms::store::StorageConfig> {
    let endpoint = std::env::var("FERRY_TEST_S3_ENDPOINT")
        .map_err(|_| anyhow::anyhow!("FERRY_TEST_S3_ENDPOINT is not set (start a server with scripts/test-s3.sh)"))?;
    let bucket = std::env::var("FERRY_TEST_S3_BUCKET").unwrap_or_else(|_| "ferry-test".into());
    let prefix = format!("t{:016x}", rand::random::<u64>());
    Ok(ferry_comms::store::StorageConfig {
        url: format!("s3://{bucket}/{prefix}"),
        endpoint,
        allow_http: true,
        part_size_mib: 5,
        ..Default::default()
    })
}

pub struct Cluster {
    pub dir: PathBuf,
    pub app: AppHandle,
    pub comms: CommsHandle,
}

async fn listeners() -> anyhow::Result<(std::net::TcpListener, tokio::net::TcpListener)> {
    let https = std::net::TcpListener::bind("127.0.0.1:0")?;
    let ssh = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok((https, ssh))
}

impl Cluster {
    /// Start App then Comms under `dir/app` and `dir/comms`.
    pub async fn start(dir: &Path) -> anyhow::Result<Cluster> {
        Self::start_with(dir, |_| {}, |_| {}).await
    }

    /// Like [`Cluster::start`], with the Comms server serving HTTPS and SSH on one port.
    pub async fn start_one_port(dir: &Path) -> anyhow::Result<Cluster> {
        Self::start_inner(dir, true, |_| {}, |_| {}).await
    }

    /// [`Cluster::start_one_port`] with tweaks, as [`Cluster::start_with`].
    pub async fn start_one_port_with(
        dir: &Path,
        tweak_app: impl FnOnce(&mut AppConfig),
        tweak_comms: impl FnOnce(&mut CommsConfig),
    ) -> anyhow::Result<Cluster> {
        Self::start_inner(dir, true, tweak_app, tweak_comms).await
    }

    pub async fn start_with(
        dir: &Path,
        tweak_app: impl FnOnce(&mut AppConfig),
        tweak_comms: impl FnOnce(&mut CommsConfig),
    ) -> anyhow::Result<Cluster> {
        Self::start_inner(dir, false, tweak_app, tweak_comms).await
    }

    async fn start_inner(
        dir: &Path,
        one_port: bool,
        tweak_app: impl FnOnce(&mut AppConfig),
        tweak_comms: impl FnOnce(&mut CommsConfig),
    ) -> anyhow::Result<Cluster> {
        let comms_dir = dir.join("comms");
        // The Comms identity and listeners exist before the App starts, so the App can trust its service key
        // and knows where to announce downstream files.
        let comms_id = ServerIdentity::load_or_create(&comms_dir, None, &[])?;
        let (comms_https, comms_ssh) = listeners().await?;
        let mut app_cfg = AppConfig {
            data_dir: dir.join("app"),
            comms_keys: vec![ferry_app::config::CommsKey::new(comms_id.service_key.public_key().clone())],
            comms: CommsEndpoint {
                api_url: format!("https://{}", comms_https.local_addr()?),
                tls_fingerprint: comms_id.tls_fingerprint.clone(),
            },
            ..AppConfig::default()
        };
        tweak_app(&mut app_cfg);
        let (h, s) = listeners().await?;
        // the buyer's web page on its own free port
        let web = std::net::TcpListener::bind("127.0.0.1:0")?;
        app_cfg.listen_web = Some(web.local_addr()?);
        // and its admin listener (/metrics)
        let admin = std::net::TcpListener::bind("127.0.0.1:0")?;
        app_cfg.listen_admin = Some(admin.local_addr()?);
        let mut app =
            ferry_app::web::start_with_web(app_cfg, h, s, Some(web)).await.context("starting the app server")?;
        app.serve_admin(admin).context("starting the app's admin listener")?;
        let mut comms_cfg = CommsConfig {
            data_dir: comms_dir,
            app: AppEndpoint {
                api_url: app.url(),
                tls_fingerprint: app.state.identity.tls_fingerprint.clone(),
                ssh_addr: app.ssh_addr.to_string(),
                ssh_host_key_fingerprint: app.state.identity.ssh_host_key_fingerprint(),
                service_key: ferry_io::keys::public_key_openssh(app.state.identity.service_key.public_key())?,
            },
            listen_https: comms_https.local_addr()?,
            listen_ssh: comms_ssh.local_addr()?,
            // an admin API on a free loopback port (the default 8444 would clash between clusters)
            listen_admin: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
            ..CommsConfig::default()
        };
        // FERRY_TEST_COMMS_DB=postgres://...: the Comms metadata in a fresh PostgreSQL database on that server
        if let Ok(url) = std::env::var(TEST_COMMS_DB)
            && !url.is_empty()
        {
            comms_cfg.database.url = ferry_comms::db::create_scratch_postgres(&url).await?;
        }
        // FERRY_TEST_COMMS_STORAGE=s3: the tenants' files on the test S3 server, under a fresh prefix
        if std::env::var(TEST_COMMS_STORAGE).is_ok_and(|v| v == "s3") {
            comms_cfg.storage = test_s3_storage().context("FERRY_TEST_COMMS_STORAGE=s3")?;
        }
        tweak_comms(&mut comms_cfg);
        let listeners = if one_port {
            drop(comms_ssh);
            comms_cfg.listen_ssh = comms_cfg.listen_https;
            comms_https.set_nonblocking(true)?;
            ferry_comms::Listeners::Shared(tokio::net::TcpListener::from_std(comms_https)?)
        } else {
            ferry_comms::Listeners::Separate { https: comms_https, ssh: comms_ssh }
        };
        let comms = ferry_comms::start_on(comms_cfg, listeners).await.context("starting the comms server")?;
        Ok(Cluster { dir: dir.to_path_buf(), app, comms })
    }

    /// Start one more App server under `dir/apps/<name>` (trusting this Comms server's service key, announcing
    /// to it) on free ports and register it with the Comms server as `name`, as `ferry comms app add` does with
    /// the output of `ferry app info`. The caller stops it.
    pub async fn start_app(&self, name: &str) -> anyhow::Result<AppHandle> {
        let (h, s) = listeners().await?;
        let app = self.start_app_on(name, h, s).await?;
        let endpoint = AppEndpoint {
            api_url: app.url(),
            tls_fingerprint: app.state.identity.tls_fingerprint.clone(),
            ssh_addr: app.ssh_addr.to_string(),
            ssh_host_key_fingerprint: app.state.identity.ssh_host_key_fingerprint(),
            service_key: ferry_io::keys::public_key_openssh(app.state.identity.service_key.public_key())?,
        };
        self.admin().await?.add_app(name, &endpoint).await?;
        Ok(app)
    }

    /// Start again (same data, same addresses) an App server [`Cluster::start_app`] started and that was stopped.
    pub async fn restart_app(
        &self,
        name: &str,
        https: std::net::SocketAddr,
        ssh: std::net::SocketAddr,
    ) -> anyhow::Result<AppHandle> {
        let h = std::net::TcpListener::bind(https)?;
        let s = tokio::net::TcpListener::bind(ssh).await?;
        self.start_app_on(name, h, s).await
    }

    async fn start_app_on(
        &self,
        name: &str,
        https: std::net::TcpListener,
        ssh: tokio::net::TcpListener,
    ) -> anyhow::Result<AppHandle> {
        let id = &self.comms.state.identity;
        let cfg = AppConfig {
            data_dir: self.dir.join("apps").join(name),
            comms_keys: vec![ferry_app::config::CommsKey::new(id.service_key.public_key().clone())],
            comms: CommsEndpoint { api_url: self.comms.url(), tls_fingerprint: id.tls_fingerprint.clone() },
            listen_web: None,
            listen_admin: None,
            ..AppConfig::default()
        };
        ferry_app::server::start(cfg, https, ssh).await.with_context(|| format!("starting App server {name}"))
    }

    pub async fn admin(&self) -> anyhow::Result<Admin> {
        Admin::open(self.comms.state.cfg.clone()).await
    }

    /// Create a tenant (and its instance); returns a registration token.
    pub async fn add_tenant(&self, name: &str) -> anyhow::Result<String> {
        self.admin().await?.add_tenant(name, &self.comms.url()).await
    }

    /// `connector init` in `dir/connectors/<name>` against `erp_db`, then register with a fresh token.
    pub async fn connector(&self, name: &str, erp_db: &Path, token: &str) -> anyhow::Result<Connector> {
        let cdir = self.dir.join("connectors").join(name);
        let erp = ferry_connector::config::InitErp::sqlite(erp_db.display().to_string());
        agent::init(&cdir, &erp, ferry_sample::MAPPING, KeyAlgorithm::Rsa2048, false)?;
        let c = Connector::load(&cdir.join("connector.toml"))?;
        c.register(token).await?;
        Ok(c)
    }

    /// Like [`Cluster::connector`], with downstream delivery into `from_cloud/` and the SQL write-back of
    /// `po_` files into the ERP table `recommended_orders` (created if absent).
    pub async fn connector_with_write_back(&self, name: &str, erp_db: &Path, token: &str) -> anyhow::Result<Connector> {
        let conn = self.connector(name, erp_db, token).await?;
        let cfg_path = conn.cfg.base.join("connector.toml");
        let text = std::fs::read_to_string(&cfg_path)?;
        let head = text.split("\n[delivery]").next().unwrap_or_default();
        std::fs::write(&cfg_path, format!("{head}{WRITE_BACK}"))?;
        let mut db = sqlx::SqliteConnection::connect(&format!("sqlite:{}?mode=rwc", erp_db.display())).await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS recommended_orders (order_number TEXT NOT NULL, line INTEGER NOT NULL,
             item TEXT NOT NULL, location TEXT, supplier TEXT, qty REAL NOT NULL, due_date TEXT)",
        )
        .execute(&mut db)
        .await?;
        Connector::load(&cfg_path)
    }

    pub async fn stop(self) {
        self.comms.stop().await;
        self.app.stop().await;
    }
}
